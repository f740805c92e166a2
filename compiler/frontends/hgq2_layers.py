"""HGQ2 layers onto IR nodes: every trained quantizer becomes a ``fixed_quant`` with its own k, i, f.

HGQ2 (``hgq`` on import) quantizes a layer's input ("iq"), optionally its output ("oq"), its
kernel ("kq") and bias ("bq"), each with a fixed-point quantizer whose bit widths it learned:
per tensor, per channel or per element (the quantizer's bit-width mapper broadcasts its
variables against the tensor). In inference HGQ2 computes, per element, the value on the
``ap_[u]fixed<k+i+f, k+i>`` grid with its rounding and overflow modes, and 0 where
``k+i+f <= 0``: the IR's ``fixed_quant``. The trained k, i, f are read from HGQ2's own
``kif`` (bits rounded half to even, as HGQ2 rounds them), never searched.

Weights: the constant holds HGQ2's own quantized kernel and bias (``layer.qkernel``,
``layer.qbias``, exact on their grid) under a ``fixed_quant`` that states their type. HGQ2
rounds a WRAP weight quantizer's values without wrapping them, so where a weight would not
fit its trained type the integer bits (and sign) widen to hold it: the type then states
what HGQ2 computes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tapeout.compiler.errors import FrontendError
from tapeout.compiler.fixedpoint.arith import quantize_kif
from tapeout.compiler.frontends.keras_layers import (ACTIVATION_NAMES, Emitter, _global_pool, _pads, _pool, _tuple,
                                                     activation_of)

# HGQ2's rounding and overflow modes (quantizers.fixed_point) as ap_types names. S_ (stochastic)
# rounding is stochastic in training only; inference rounds as the plain mode.
ROUNDING = {"TRN": "AP_TRN", "RND": "AP_RND", "RND_CONV": "AP_RND_CONV", "TRN_ZERO": "AP_TRN_ZERO",
            "RND_ZERO": "AP_RND_ZERO", "RND_MIN_INF": "AP_RND_MIN_INF", "RND_INF": "AP_RND_INF",
            "S_RND": "AP_RND", "S_RND_CONV": "AP_RND_CONV"}
OVERFLOW = {"WRAP": "AP_WRAP", "SAT": "AP_SAT", "SAT_SYM": "AP_SAT_SYM"}
Q_TYPES = ("kbi", "kif", "dummy")


def _fail(layer: Any, why: str) -> FrontendError:
    return FrontendError(f"layer {layer.name!r} ({type(layer).__name__}, HGQ2): {why}")


def _numpy(v: Any) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(v))


def _ints(layer: Any, what: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
        raise _fail(layer, f"its {what} bit counts are not integers")
    dtype = np.int8 if np.all(np.abs(a) < 120) else np.int32
    return a.astype(dtype)


def _compact(a: np.ndarray) -> np.ndarray:
    """One value where every element has the same: per-tensor types stay scalars in the IR."""
    a = np.asarray(a)
    return np.asarray(a.flat[0], a.dtype) if a.size and np.all(a == a.flat[0]) else a


def quantizer_kif(layer: Any, q: Any, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, str] | None:
    """(k, i, f) in the quantizer's bit-width shape, rounding, overflow; None for HGQ2's dummy quantizer."""
    from hgq.quantizer.internal import DummyQuantizer, FixedPointQuantizerKBI, FixedPointQuantizerKIF

    inner = q.quantizer
    if isinstance(inner, DummyQuantizer):
        return None
    if not isinstance(inner, (FixedPointQuantizerKBI, FixedPointQuantizerKIF)):
        raise _fail(layer, f"its {what} quantizer is {type(inner).__name__} ({q.config.q_type!r}); only "
                           "HGQ2's fixed-point quantizers (kbi, kif) are supported")
    if getattr(q, "scaler", None) is not None or getattr(q, "affine", None) is not None:
        raise _fail(layer, f"its {what} quantizer has a scaler or affine transform, which is not supported")
    rnd, ovf = inner.round_mode, inner.overflow_mode
    if rnd not in ROUNDING or ovf not in OVERFLOW:
        bad = rnd if rnd not in ROUNDING else ovf
        raise _fail(layer, f"its {what} quantizer's mode {bad!r} has no ap_fixed equivalent; supported: "
                           f"{', '.join(ROUNDING)} rounding, {', '.join(OVERFLOW)} overflow")
    k, i, f = (_ints(layer, what, _numpy(v)) for v in inner.kif)
    return k, i, f, ROUNDING[rnd], OVERFLOW[ovf]


def _consts(e: Emitter, base: str, kif: tuple[np.ndarray, ...]) -> list[str]:
    return [e.graph.add_constant(f"{base}/{n}", _compact(a)) for n, a in zip("kif", kif)]


def quantize_value(e: Emitter, layer: Any, q: Any, x: str, name: str, what: str) -> str:
    """``fixed_quant`` on a datalane value [N, ...] with the quantizer's trained types."""
    got = quantizer_kif(layer, q, what)
    if got is None:
        return x
    k, i, f, rnd, ovf = got
    shape = e.shape(x)
    rank = len(shape)
    kif = []
    for a in (k, i, f):
        if a.ndim not in (0, rank):
            raise _fail(layer, f"its {what} quantizer's bit widths have shape {a.shape}, not of rank {rank}")
        if a.ndim and a.shape[0] != 1:
            raise _fail(layer, f"its {what} quantizer has a bit width per batch element, which is not supported")
        kif.append(a.reshape(a.shape[1:]) if a.ndim else a)
    try:
        for a in kif:
            np.broadcast_to(a, shape[1:])
    except ValueError:
        raise _fail(layer, f"its {what} quantizer's bit widths {kif[0].shape} do not broadcast against "
                           f"{shape[1:]}") from None
    return e.node("fixed_quant", name, [x, *_consts(e, name, tuple(kif))], rounding=rnd, overflow=ovf)


def _fits(v: np.ndarray, k: np.ndarray, i: np.ndarray, f: np.ndarray, rnd: str, ovf: str) -> np.ndarray:
    return quantize_kif(v, k, i, f, rnd, ovf) == v


def quantize_weight(e: Emitter, layer: Any, q: Any | None, values: Any, name: str, what: str) -> str:
    """HGQ2's quantized weight as a constant under a ``fixed_quant`` stating its type."""
    v = _numpy(values).astype(np.float32)
    c = e.const(name, v)
    got = None if q is None else quantizer_kif(layer, q, what)
    if got is None:
        return c
    k, i, f, rnd, ovf = got
    try:
        k, i, f = (np.broadcast_to(a, v.shape).copy() for a in (k, i, f))
    except ValueError:
        raise _fail(layer, f"its {what} quantizer's bit widths {k.shape} do not broadcast against the "
                           f"{what} {v.shape}") from None
    v64 = v.astype(np.float64)
    bad = ~_fits(v64, k, i, f, rnd, ovf)
    if np.any(bad):  # widen the integer part (and sign) to hold what HGQ2 computed
        mag = np.abs(v64) + np.ldexp(1.0, -f.astype(np.int32))
        need = np.ceil(np.log2(np.where(mag > 0, mag, 1.0))).astype(i.dtype)
        width_ok = k + i + f > 0
        i = np.where(bad, np.maximum(np.where(width_ok, i, -f), need), i).astype(i.dtype)
        k = np.where(bad & (v64 < 0), 1, k).astype(k.dtype)
        if not np.all(_fits(v64, k, i, f, rnd, ovf)):
            raise _fail(layer, f"its quantized {what} is not on its quantizer's fixed-point grid")
    return e.node("fixed_quant", f"{name}/q", [c, *_consts(e, f"{name}/q", (k, i, f))], rounding=rnd, overflow=ovf)


def _input(e: Emitter, layer: Any, x: str) -> str:
    if getattr(layer, "enable_iq", False):
        return quantize_value(e, layer, layer.iq, x, f"{layer.name}/iq", "input")
    return x


def _output(e: Emitter, layer: Any, y: str) -> str:
    if getattr(layer, "enable_oq", False):
        return quantize_value(e, layer, layer.oq, y, f"{layer.name}/oq", "output")
    return y


def _core_name(layer: Any) -> str:
    return f"{layer.name}/core" if getattr(layer, "enable_oq", False) else layer.name


# ---------------------------------------------------------------- converters
def _quantizer(e: Emitter, layer, cfg, ins):
    return quantize_value(e, layer, layer, ins[0], layer.name, "")


def _dense(e: Emitter, layer, cfg, ins):
    x = _input(e, layer, ins[0])
    inputs = [x, quantize_weight(e, layer, layer.kq, layer.qkernel, f"{layer.name}/kernel", "kernel")]
    if layer.bias is not None:
        inputs.append(quantize_weight(e, layer, layer.bq, layer.qbias, f"{layer.name}/bias", "bias"))
    y = e.node("dense", _core_name(layer), inputs, activation=activation_of(layer, cfg.get("activation")))
    return _output(e, layer, y)


def _conv(e: Emitter, layer, cfg, ins):
    if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
        raise _fail(layer, f"data_format={cfg['data_format']!r} is not supported (channels_last only)")
    x = _input(e, layer, ins[0])
    kernel = _numpy(layer.qkernel)
    nsp = kernel.ndim - 2
    strides = _tuple(cfg.get("strides", 1), nsp)
    dil = _tuple(cfg.get("dilation_rate", 1), nsp)
    if any(s > 1 for s in strides) and any(d > 1 for d in dil):
        raise _fail(layer, "strides > 1 together with dilation_rate > 1 is not supported")
    pads = _pads(layer, cfg, e.shape(x)[1:-1], kernel.shape[:nsp], strides, dil)
    inputs = [x, quantize_weight(e, layer, layer.kq, kernel, f"{layer.name}/kernel", "kernel")]
    if layer.bias is not None:
        inputs.append(quantize_weight(e, layer, layer.bq, layer.qbias, f"{layer.name}/bias", "bias"))
    y = e.node("conv", _core_name(layer), inputs, strides=strides, dilations=dil, pads=pads,
               groups=int(cfg.get("groups", 1)), activation=activation_of(layer, cfg.get("activation")))
    return _output(e, layer, y)


def _unary(e: Emitter, layer, cfg, ins):
    act = activation_of(layer, cfg.get("activation"))
    y = e.node(act.op, _core_name(layer), [_input(e, layer, ins[0])], **act.attr_dict())
    return _output(e, layer, y)


def _batch_norm(e: Emitter, layer, cfg, ins):
    """HGQ2's QBatchNormalization: x * q(scale) + q(offset), its scale and offset quantized."""
    rank = len(e.shape(ins[0]))
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if not isinstance(axis, int) or axis % rank != rank - 1:
        raise _fail(layer, f"normalizing over axis {axis} is not supported (the last axis only)")
    x = _input(e, layer, ins[0])
    scale, offset = layer.qscaler_and_qoffset
    s = quantize_weight(e, layer, layer.kq, scale, f"{layer.name}/scale", "scale")
    b = quantize_weight(e, layer, layer.bq, offset, f"{layer.name}/offset", "offset")
    return _output(e, layer, e.node("affine", _core_name(layer), [x, s, b]))


def _merge(op: str):
    """QAdd, QSubtract, QMultiply, QMaximum, QMinimum: each input through its own quantizer."""
    def convert(e: Emitter, layer, cfg, ins):
        if op == "sub" and len(ins) != 2:
            raise _fail(layer, f"a subtraction needs exactly 2 inputs, got {len(ins)}")
        if getattr(layer, "enable_iq", False):
            ins = [quantize_value(e, layer, q, x, f"{layer.name}/iq{j}", f"input {j}")
                   for j, (q, x) in enumerate(zip(layer.iq, ins))]
        y = ins[0]
        last = len(ins) - 1
        for j, z in enumerate(ins[1:], start=1):
            y = e.node(op, _core_name(layer) if j == last else f"{layer.name}/{j}", [y, z])
        return _output(e, layer, y)
    return convert


def _pooled(convert):
    def wrapped(e: Emitter, layer, cfg, ins):
        y = convert(e, layer, cfg, [_input(e, layer, ins[0])])
        return _output(e, layer, y)
    return wrapped


CONVERTERS = {
    "Quantizer": _quantizer,
    "QDense": _dense,
    "QBatchNormDense": _dense,  # HGQ2 folds the batch norm into its quantized kernel and bias
    "QConv1D": _conv,
    "QConv2D": _conv,
    "QUnaryFunctionLUT": _unary,
    "QBatchNormalization": _batch_norm,
    "QAdd": _merge("add"),
    "QSubtract": _merge("sub"),
    "QMultiply": _merge("mul"),
    "QMaximum": _merge("maximum"),
    "QMinimum": _merge("minimum"),
    "QMaxPooling1D": _pooled(_pool("max_pool")),
    "QMaxPooling2D": _pooled(_pool("max_pool")),
    "QGlobalMaxPooling1D": _pooled(_global_pool("global_max_pool")),
    "QGlobalMaxPooling2D": _pooled(_global_pool("global_max_pool")),
}
HGQ2_LAYERS = tuple(sorted(CONVERTERS))
UNARY_ACTIVATIONS = tuple(a for a in ACTIVATION_NAMES if a != "softmax")
