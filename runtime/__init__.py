"""tapeout.runtime: runners and the comparator. Imports NumPy only; each runner imports its own runtime lazily."""
