"""A NumPy bit-accurate model of ap_fixed arithmetic and of hls4ml 1.3's layers over the IR."""

from tapeout.compiler.fixedpoint.arith import from_float, overflow, quantize, requantize, to_float
from tapeout.compiler.fixedpoint.layers import Fx, SoftmaxTypes
from tapeout.compiler.fixedpoint.model import (HlsLayer, LayerPrecision, PrecisionPlan, hls_layers, predict_fixed,
                                               run_fixed)
from tapeout.compiler.fixedpoint.types import FixedType, FixedTypeError, fixed

__all__ = [
    "FixedType", "FixedTypeError", "Fx", "HlsLayer", "LayerPrecision", "PrecisionPlan", "SoftmaxTypes",
    "fixed", "from_float", "hls_layers", "overflow", "predict_fixed", "quantize", "requantize", "run_fixed",
    "to_float",
]
