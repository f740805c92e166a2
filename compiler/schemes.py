"""Quantization names shared by the flag checks and the passes, in a module light enough for
`tapeout build`'s no-op path (the passes import the interpreter, and with it SciPy)."""

METHODS = ("minmax", "percentile", "entropy")  # calibration methods (compiler.calibration)
CALIBRATED_SCHEMES = ("int8", "int16x8")  # they quantize activations, so they need calibrated ranges
