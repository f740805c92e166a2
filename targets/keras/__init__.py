"""IR -> Keras 3 for the TFLite and FPGA back ends: ``emit`` re-exports the builder that
lives in ``tapeout.compiler.keras_model`` (fine-tuning shares it; the compiler imports no target).

Import ``tapeout.targets.keras.emit`` (it imports Keras); this package itself imports nothing.
"""
