"""The "ethos-u" target: Arm Ethos-U NPUs through Arm's Vela compiler (docs/ethos-u.md)."""
