"""QONNX quantizer nodes as IR ops: ``Quant``/``IntQuant``, ``BipolarQuant``, ``Trunc``.

QONNX's arithmetic (``qonnx.custom_op.general``): ``Quant`` is
``(R(clamp(x / scale + zp, lo, hi)) - zp) * scale`` with ``[lo, hi]`` the ``bitwidth``-bit
integer range (``signed``; ``narrow`` drops the lowest code) and ``R`` the ``rounding_mode``.
With ``zp = 0`` and ``scale = 2**-f`` that is ``ap_[u]fixed<bitwidth, bitwidth - f>`` with
saturation: ``fixed_quant(x, k=signed, i=bitwidth-signed-f, f)``. Clamping before or after a
monotone rounding to integers gives the same integers, so the order does not matter.

Activations (runtime values) become ``fixed_quant`` nodes; quantizers of constants are
evaluated with ``evaluate_constant`` (any scale and rounding mode) by ``qonnx.prepare``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tapeout.compiler.frontends.onnx_context import Bound, Context, Handler, OnnxNode, Value, registrar
from tapeout.compiler.frontends.onnx_layout import align_constant
from tapeout.runtime.runners.qonnx_exec import QONNX_DOMAINS

__all__ = ["HANDLERS", "QONNX_DOMAINS", "QONNX_OPS", "evaluate_constant", "input_names"]

# Op -> its inputs in order (Trunc from version 2 of the domain; version 1 has no output scale).
QONNX_OPS: dict[str, tuple[str, ...]] = {
    "Quant": ("x", "scale", "zero point", "bit width"),
    "IntQuant": ("x", "scale", "zero point", "bit width"),
    "BipolarQuant": ("x", "scale"),
    "Trunc": ("x", "scale", "zero point", "input bit width", "output scale", "output bit width"),
}
TRUNC_V1 = ("x", "scale", "zero point", "input bit width", "output bit width")

# QONNX rounding_mode -> ap_fixed quantization mode, for runtime values. Checked against
# qonnx's own functions in tests/compiler/frontends/test_qonnx.py.
AP_ROUNDING = {
    "ROUND": "AP_RND_CONV",  # numpy.round: half to even
    "HALF_EVEN": "AP_RND_CONV",
    "FLOOR": "AP_TRN",
    "DOWN": "AP_TRN_ZERO",  # numpy.fix: toward zero
    "HALF_UP": "AP_RND_INF",  # half away from zero
    "HALF_DOWN": "AP_RND_ZERO",  # half toward zero
}
# CEIL and UP (away from zero) have no ap_fixed mode: constants only.

HANDLERS: dict[str, Handler] = {}
handles = registrar(HANDLERS)

Fail = Callable[[str], Exception]


def input_names(op: str, count: int) -> tuple[str, ...]:
    return TRUNC_V1 if op == "Trunc" and count == 5 else QONNX_OPS[op]


# ----------------------------------------------------------------- QONNX arithmetic
def _round(mode: str, fail: Fail) -> Callable[[np.ndarray], np.ndarray]:
    modes: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "ROUND": np.round, "HALF_EVEN": np.round, "CEIL": np.ceil, "FLOOR": np.floor, "DOWN": np.fix,
        "UP": lambda y: np.sign(y) * np.ceil(np.abs(y)),
        "HALF_UP": lambda y: np.sign(y) * np.floor(np.abs(y) + 0.5),
        "HALF_DOWN": lambda y: np.sign(y) * np.ceil(np.abs(y) - 0.5),
    }
    if mode not in modes:
        raise fail(f"unknown rounding_mode {mode!r} (QONNX knows {', '.join(modes)})")
    return modes[mode]


def int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """The integer codes of a ``bits``-bit QONNX quantizer."""
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(narrow)


def _bits(value: np.ndarray, what: str, fail: Fail) -> int:
    v = np.asarray(value)
    if v.size != 1 or not np.isfinite(v).all() or float(v.reshape(-1)[0]) != int(v.reshape(-1)[0]):
        raise fail(f"{what} must be one integer, not {v.reshape(-1)[:4].tolist()}{' ...' if v.size > 4 else ''}")
    bits = int(v.reshape(-1)[0])
    if not 1 <= bits <= 32:
        raise fail(f"{what} {bits} is outside 1..32")
    return bits


def _flag(attrs: dict[str, Any], name: str, fail: Fail) -> bool:
    """``signed``/``narrow`` of a Quant: required attributes in QONNX (qonnx refuses to run without)."""
    if name not in attrs:
        raise fail(f"attribute {name!r} is missing (QONNX's Quant requires signed and narrow)")
    return bool(attrs[name])


def _mode(attrs: dict[str, Any], default: str) -> str:
    mode = attrs.get("rounding_mode", default)
    return (mode.decode() if isinstance(mode, bytes) else str(mode)).upper()


def evaluate_constant(op: str, arrays: list[np.ndarray], attrs: dict[str, Any], fail: Fail) -> np.ndarray:
    """A quantizer applied to constants, in float32 as qonnx's ``execute_onnx`` computes it."""
    x, *params = (np.asarray(a, dtype=np.float32) for a in arrays)
    if op == "BipolarQuant":
        return (np.where(x >= 0, np.float32(1), np.float32(-1)) * params[0]).astype(np.float32)
    if op == "Trunc":
        return _trunc_constant(x, params, attrs, fail)
    scale, zp, bw = params
    bits = _bits(bw, "bit width", fail)
    signed, narrow = _flag(attrs, "signed", fail), _flag(attrs, "narrow", fail)
    y = x / scale + zp
    if bits == 1 and signed:  # qonnx's 1-bit signed Quant is bipolar
        y = np.where(y >= 0, np.float32(1), np.float32(-1))
    else:
        lo, hi = int_range(bits, signed, narrow)
        y = _round(_mode(attrs, "ROUND"), fail)(np.clip(y, np.float32(lo), np.float32(hi)))
    return ((y - zp) * scale).astype(np.float32)


def _trunc_constant(x: np.ndarray, params: list[np.ndarray], attrs: dict[str, Any], fail: Fail) -> np.ndarray:
    rnd = _round(_mode(attrs, "FLOOR"), fail)
    if len(params) == 4:  # version 1: (scale, zp, input bits, output bits), no clamp
        scale, zp, in_bits, out_bits = params
        y = rnd(np.round(x / scale + zp) / np.float32(2.0 ** float(in_bits - out_bits)))
        return ((y - zp) * scale).astype(np.float32)
    scale, zp, _in_bits, out_scale, out_bits = params
    lo, hi = int_range(_bits(out_bits, "output bit width", fail), bool(attrs.get("signed", 1)),
                       bool(attrs.get("narrow", 0)))
    shift = np.float32(2.0) ** np.round(np.log2(out_scale / scale))
    y = np.clip(np.round(x / scale + zp) / shift, np.float32(lo), np.float32(hi))
    return ((rnd(y) - zp / shift) * out_scale).astype(np.float32)


# ------------------------------------------------------------------ runtime values
def _param(ctx: Context, i: int, x: Value) -> np.ndarray:
    """Constant input ``i`` as float32, checked to broadcast onto ``x`` without touching the batch."""
    what = input_names(ctx.node.op, len(ctx.node.inputs))[i]
    c = np.asarray(ctx.need_const(i, what), dtype=np.float32)
    rank = x.layout.rank
    if c.ndim > rank or (c.ndim == rank and c.shape[0] != 1):
        raise ctx.fail(f"{what} has shape {list(c.shape)}, which reaches the batch axis of the rank-{rank} input")
    try:
        np.broadcast_shapes(c.shape, ctx.onnx_shape(x))
    except ValueError:
        raise ctx.fail(f"{what} of shape {list(c.shape)} does not broadcast onto the input "
                       f"{list(ctx.onnx_shape(x))}") from None
    if not np.all(np.isfinite(c)):
        raise ctx.fail(f"{what} is not finite")
    return c


def _positive(ctx: Context, scale: np.ndarray, what: str = "scale") -> None:
    if np.any(scale <= 0):
        raise ctx.fail(f"{what} must be positive (min {float(scale.min())})")


def _no_zero_point(ctx: Context, zp: np.ndarray) -> None:
    if np.any(zp != 0):
        raise ctx.fail("a zero point other than 0 is not supported (its clamp range is no ap_fixed range); "
                       "export with a zero point of 0")


def _split_scale(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scale = c * 2**-f`` with ``c`` in [1, 2) (1 where ``scale`` is a power of two)."""
    mant, exp = np.frexp(scale.astype(np.float64))
    return (mant * 2).astype(np.float32), (1 - exp).astype(np.int32)


def _const(ctx: Context, base: str, c: np.ndarray, x: Value, dtype: Any) -> str:
    """A constant operand laid out like ``x``; one value for all elements is stored as a scalar."""
    c = np.asarray(c, dtype=dtype)
    if c.size and np.all(c == c.reshape(-1)[0]):
        return ctx.add_constant(base, np.asarray(c.reshape(-1)[0], dtype=dtype))
    return ctx.add_constant(base, align_constant(c, x.layout))


def _rounding(ctx: Context, mode: str) -> str:
    if mode not in AP_ROUNDING:
        raise ctx.fail(f"rounding_mode {mode} has no ap_fixed equivalent for run-time values (supported: "
                       f"{', '.join(AP_ROUNDING)})")
    return AP_ROUNDING[mode]


def fixed_quant(ctx: Context, x: Value, k: Any, i: Any, f: Any, rounding: str, overflow: str, name: str) -> str:
    """Emit ``fixed_quant(x, k, i, f)`` with k/i/f (ONNX-order arrays) laid out like ``x``."""
    base = ctx.node.label
    kk, ii, ff = (_const(ctx, f"{base}/{c}", np.broadcast_arrays(k, i, f)[j], x, np.int32)
                  for j, c in enumerate("kif"))
    return ctx.emit("fixed_quant", [x.ir, kk, ii, ff], name, rounding=rounding, overflow=overflow)


def _sign(ctx: Context, x: Value, scale: np.ndarray, name: str) -> str:
    """``scale`` where x >= 0, else ``-scale``: floor onto ap_fixed<1,1> saturating gives -1 for
    x < 0 and 0 otherwise; then ``2 * scale * q + scale``."""
    q = fixed_quant(ctx, x, 1, 0, 0, "AP_TRN", "AP_SAT", f"{name}/sign")
    twice = ctx.emit("mul", [q, _const(ctx, f"{ctx.node.label}/2scale", 2 * scale, x, np.float32)], f"{name}/2s")
    return ctx.emit("add", [twice, _const(ctx, f"{ctx.node.label}/scale", scale, x, np.float32)], name)


@handles("Quant", "IntQuant")
def _quant(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    scale, zp, bw = (_param(ctx, j, x) for j in (1, 2, 3))
    _positive(ctx, scale)
    _no_zero_point(ctx, zp)
    bits = _bits(bw, "bit width", ctx.fail)
    signed, narrow = _flag(n.attrs, "signed", ctx.fail), _flag(n.attrs, "narrow", ctx.fail)
    out = n.outputs[0]
    if bits == 1 and signed:  # qonnx's 1-bit signed Quant is bipolar (x / scale >= 0 is x >= 0)
        return [Value(_sign(ctx, x, scale, out), x.layout)]
    rounding = _rounding(ctx, _mode(n.attrs, "ROUND"))
    c, f = _split_scale(scale)
    rescale = not np.all(c == 1)
    src = x
    if rescale:  # x / scale == (x / c) * 2**f exactly in float32, so divide by the mantissa first
        mantissa = _const(ctx, f"{n.label}/mantissa", c, x, np.float32)
        src = Value(ctx.emit("div", [x.ir, mantissa], f"{n.label}/unscaled"), x.layout)
    overflow = "AP_SAT_SYM" if signed and narrow else "AP_SAT"
    last = not rescale and not (narrow and not signed)
    q = fixed_quant(ctx, src, int(signed), bits - int(signed) - f, f, rounding, overflow,
                    out if last else f"{out}/fixed")
    if narrow and not signed:  # codes 0 .. 2**bits - 2: one below ap_ufixed's top
        top = np.ldexp(np.float32((1 << bits) - 2), -f).astype(np.float32)
        q = ctx.emit("minimum", [q, _const(ctx, f"{n.label}/top", top, x, np.float32)],
                     out if not rescale else f"{out}/narrow")
    if rescale:
        q = ctx.emit("mul", [q, mantissa], out)
        ctx.note("QONNX quantizers with scales that are not powers of two are read as divide, fixed_quant, "
                 "multiply; fixed-point targets may not express them")
    return [Value(q, x.layout)]


@handles("BipolarQuant")
def _bipolar(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    scale = _param(ctx, 1, x)
    _positive(ctx, scale)
    return [Value(_sign(ctx, x, scale, n.outputs[0]), x.layout)]


def _power_of_two(ctx: Context, scale: np.ndarray, what: str) -> np.ndarray:
    _positive(ctx, scale, what)
    c, f = _split_scale(scale)
    if not np.all(c == 1):
        raise ctx.fail(f"{what} is not a power of two; Trunc is read with power-of-two scales only")
    return f


@handles("Trunc")
def _trunc(ctx: Context, n: OnnxNode) -> list[Bound]:
    """RNE onto the input grid (wide enough for ``input bit width`` bits, signed or not), then
    the output rounding: version 1 scales by 2**-(in - out bits) and keeps the input scale,
    version 2 clamps to the output bits on the output scale's grid."""
    x = ctx.value(0)
    v1 = len(n.inputs) == 5
    params = [_param(ctx, j, x) for j in range(1, len(n.inputs))]
    scale, zp, in_bw = params[:3]
    f = _power_of_two(ctx, scale, "scale")
    _no_zero_point(ctx, zp)
    in_bits = _bits(in_bw, "input bit width", ctx.fail)
    rounding = _rounding(ctx, _mode(n.attrs, "FLOOR"))
    out = n.outputs[0]
    # qonnx does not clamp the input: an input beyond its declared width saturates here.
    a = fixed_quant(ctx, x, 1, in_bits - f, f, "AP_RND_CONV", "AP_SAT", f"{out}/input")
    av = Value(a, x.layout)
    if v1:
        out_bits = _bits(params[3], "output bit width", ctx.fail)
        shift = in_bits - out_bits
        scaled = ctx.emit("mul", [a, ctx.add_const(f"{n.label}/shift", np.array(2.0 ** -shift))], f"{out}/shifted")
        return [Value(fixed_quant(ctx, Value(scaled, x.layout), 1, out_bits - f, f, rounding, "AP_SAT", out),
                      x.layout)]
    out_scale, out_bw = params[3], params[4]
    f_out = _power_of_two(ctx, out_scale, "output scale")
    out_bits = _bits(out_bw, "output bit width", ctx.fail)
    signed, narrow = bool(n.attr("signed", 1)), bool(n.attr("narrow", 0))
    if narrow and not signed:
        raise ctx.fail("an unsigned narrow Trunc is not supported")
    overflow = "AP_SAT_SYM" if signed and narrow else "AP_SAT"
    return [Value(fixed_quant(ctx, av, int(signed), out_bits - int(signed) - f_out, f_out, rounding, overflow, out),
                  x.layout)]
