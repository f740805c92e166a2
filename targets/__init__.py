"""Back ends: each lowers the IR to the artifacts of one kind of hardware."""
