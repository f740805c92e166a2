"""The custom Keras layers the IR -> Keras builder uses; defined in ``tapeout.compiler.keras_model_layers``
(importing either module registers them for ``keras.saving.load_model``)."""

from __future__ import annotations

from tapeout.compiler.keras_model_layers import (CUSTOM_LAYERS, PACKAGE, Affine, Binary, Clip,  # noqa: F401
                                                 ConstantBinary, Gelu, HardSigmoid, Pad, Slice)
