"""IR -> Keras 3 model, for the back ends that emit through Keras (TFLite, hls4ml).

The builder lives in ``tapeout.compiler.keras_model``: fine-tuning trains the same model, and
the compiler does not import targets. This module keeps the names the targets import.
"""

from __future__ import annotations

from tapeout.compiler.keras_model import (BUILDERS, BuildContext, KerasModel, ValueHook,  # noqa: F401
                                          activation_layer, apply, cpp_identifier, graph_to_keras,
                                          keras_activation)
