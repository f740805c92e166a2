"""`tapeout sweep`: design-space sweeps of one model (issue 19; docs/sweeps.md)."""
