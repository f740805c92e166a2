"""IR -> Keras 3 emitter, shared by the TFLite and FPGA back ends and by fine-tuning.

Import ``tapeout.targets.keras.emit`` (it imports Keras); this package itself imports nothing.
"""
