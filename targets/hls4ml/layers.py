"""The Keras layer tapeout hands hls4ml for a lookup-table activation of a quantization-aware model
(compiler.fixedpoint.qat.lut_pair): hls4ml's Keras 3 reader turns it into a UnaryLUT through the
handler ``lower.register_handlers`` installs. Its ``call`` does the lookup on the input's code (the
model hls4ml saves in the project loads and runs; its per-tensor quantizers are linear activations
there, typed only by the hls4ml config, so only the C++ computes the design)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "tapeout_hls4ml"


@keras.saving.register_keras_serializable(package=PACKAGE)
class UnaryTable(keras.layers.Layer):
    """``table[code(x)]``: ``code`` is x's raw ``ap_[u]fixed<width, width - frac>`` bits as an unsigned index."""

    def __init__(self, width: int, frac: int, signed: bool, out_width: int, out_integer: int, out_signed: bool,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width, self.frac, self.signed = int(width), int(frac), bool(signed)
        self.out_width, self.out_integer, self.out_signed = int(out_width), int(out_integer), bool(out_signed)
        self.table = self.add_weight(shape=(1 << self.width,), initializer="zeros", trainable=False, name="table")

    def call(self, x: Any) -> Any:
        code = ops.floor(x * (2.0**self.frac))
        code = code - (2.0**self.width) * ops.floor(code / (2.0**self.width))
        return ops.take(ops.cast(self.table, x.dtype), ops.cast(code, "int32"))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "width": self.width, "frac": self.frac, "signed": self.signed,
                "out_width": self.out_width, "out_integer": self.out_integer, "out_signed": self.out_signed}
