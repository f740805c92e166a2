"""Names shared by the flag checks, the project file and the passes and targets, in a module light
enough for `tapeout build`'s no-op path (the passes import the interpreter, and with it SciPy)."""

METHODS = ("minmax", "percentile", "entropy")  # calibration methods (compiler.calibration)
CALIBRATED_SCHEMES = ("int8", "int16x8")  # they quantize activations, so they need calibrated ranges
IO_LAYOUTS = ("source", "channels-last")  # --io-layout (targets.io)
