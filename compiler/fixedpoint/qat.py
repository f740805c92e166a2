"""Types of a quantization-aware graph (one with ``fixed_quant`` nodes, from HGQ2 or QONNX): no
search. The quantizers the user trained fix the grids; every other layer gets the type that holds
its exact result (interval arithmetic on the layer's inputs and constant weights), so the design
rounds only where a quantizer does and hls4ml's C simulation equals the reference interpreter.

- ``fixed_quant``: per tensor, its own ``ap_[u]fixed<k+i+f, k+i, Q, O>`` (hls4ml: a linear
  activation of that result type); per element, hls4ml's FixedPointQuantizer (one cast per
  element) with a result type that holds every element's type.
- A graph input feeds quantizers only. One per-tensor quantizer: the input type is that quantizer's
  type (the C simulation's float -> ap_fixed conversion rounds and fits as the quantizer does).
  Otherwise it truncates to enough fractional bits that the quantizers still round as from the
  float: one more than the finest grid for AP_TRN/AP_RND, 25 more for the other modes (a float32's
  mantissa: the bits that decide a tie survive), and saturates (or wraps, when every quantizer
  wraps) one integer bit above the widest; 16 more when it wraps before a mode that rounds by the
  sign (AP_TRN_ZERO, AP_RND_ZERO, AP_RND_INF: exact while |x| < 2**16 x the quantizer's range).
- Weights and biases: the smallest type holding every value (front ends fold weight quantizers into
  the constants). Accumulators keep every product bit; results equal the accumulator.
- Refused (FixedTypeError, one line naming the node): an input that reaches a layer without a
  quantizer, weights needing more than ``MAX_WEIGHT_BITS`` bits (not quantized), average pooling
  (a division), an exact type wider than the NumPy model's 62 bits.
- An element-wise activation between two quantizers (``lut_pair``) is an exact table over every
  input code (hls4ml's UnaryLUT). Sigmoid, tanh and softmax elsewhere keep hls4ml's approximating
  tables with the search's starting types: the only layers not bit-exact, and a note says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tapeout.compiler.fixedpoint.model import (DEFAULT_SOFTMAX_TABLE, DEFAULT_TABLE, GLOBAL_POOLS, PASSTHROUGH,
                                               POOLS, TABLE_ACTIVATIONS, HlsLayer, LayerPrecision, PrecisionPlan,
                                               _alias_map, hls_layers, scale_shift)
from tapeout.compiler.fixedpoint.types import FixedType, FixedTypeError, fixed
from tapeout.compiler.ir import Graph, Node

MAX_WEIGHT_BITS = 24  # wider exact weights are float32 mantissas: the weights were not quantized
MAX_BITS = 62  # the NumPy model's int64 headroom
EXACT_ROUNDING = ("AP_TRN", "AP_RND")  # re-rounding a truncated input to fewer bits gives the same result
SIGN_ROUNDING = ("AP_TRN_ZERO", "AP_RND_ZERO", "AP_RND_INF")  # the direction depends on the sign
WRAP_HEADROOM = 16  # integer bits added to an input that wraps before such a mode: exact below 2**16 x range
TIE_GUARD_BITS = 25  # a float32 has 24 significant bits: this many more keep a tie's deciding bits


def is_qat(graph: Graph) -> bool:
    return any(n.op == "fixed_quant" for n in graph.nodes)


@dataclass(frozen=True)
class Span:
    """What is known of a value: its bounds and its fractional bits (an exact grid)."""

    lo: float
    hi: float
    frac: int

    def type(self, what: str) -> FixedType:
        return fitting(self.lo, self.hi, self.frac, what)

    @staticmethod
    def of(t: FixedType) -> "Span":
        return Span(t.min, t.max, t.frac)


def fitting(lo: float, hi: float, frac: int, what: str) -> FixedType:
    """The narrowest ap_[u]fixed with ``frac`` fractional bits holding [lo, hi]."""
    rlo, rhi = math.floor(lo * 2.0**frac), math.ceil(hi * 2.0**frac)
    if rlo < 0:
        bits = max((-rlo - 1).bit_length(), max(rhi, 0).bit_length()) + 1
    else:
        bits = max(rhi.bit_length(), 1)
    if bits > MAX_BITS:
        raise FixedTypeError(f"{what} needs {bits} bits to stay exact, more than the NumPy model holds (62)")
    return FixedType(bits, bits - frac, rlo < 0)


def exact_type(values: np.ndarray, what: str, limit: int = MAX_WEIGHT_BITS) -> FixedType:
    """The narrowest type holding every value of ``values`` exactly."""
    v = np.asarray(values, np.float64).ravel()
    v = v[v != 0.0]
    if v.size == 0:
        return FixedType(1, 1, False)
    frac = -64
    while frac < 80 and not np.all(np.floor(np.ldexp(v, frac)) == np.ldexp(v, frac)):
        frac += 1
    t = fitting(float(min(v.min(), 0.0)), float(max(v.max(), 0.0)), frac, what)
    if t.width > limit:
        raise FixedTypeError(f"{what} need {t.width} bits to be exact: not quantized (a fixed_quant on them, "
                             f"or --precision without quantizers, is needed); at most {limit} bits are taken")
    return t


def quantizer_grid(graph: Graph, n: Node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k, i, f of a fixed_quant node, broadcast to one sample's shape (int64)."""
    shape = tuple(int(d) for d in graph.type_of(n.inputs[0]).shape[1:])
    k, i, f = (np.broadcast_to(np.asarray(graph.constants[c], np.int64), shape) for c in n.inputs[1:])
    return k, i, f


def live(graph: Graph, n: Node) -> np.ndarray:
    """The elements a fixed_quant does not set to 0: more than 0 bits, and not a signed 1-bit AP_SAT_SYM
    grid (its symmetric range is [-0, 0]; ap_types' cast would give the minimum instead)."""
    k, i, f = quantizer_grid(graph, n)
    width = k + i + f
    return (width > 0) & ~((n.attr("overflow") == "AP_SAT_SYM") & (k > 0) & (width == 1))


def tensor_kif(graph: Graph, n: Node) -> tuple[int, int, int] | None:
    """k, i, f of a fixed_quant whose grid is one for the whole tensor; None when it differs per element.
    Read from the constants as stored (a constant of one value broadcasts to one value), so a tensor
    with a dynamic dimension beyond the batch needs no shape."""
    raw = [np.asarray(graph.constants[c], np.int64) for c in n.inputs[1:]]
    if any(np.unique(a).size != 1 for a in raw):
        return None
    k, i, f = (int(a.flat[0]) for a in raw)
    return k, i, f


def per_tensor_type(graph: Graph, n: Node) -> FixedType | None:
    """The quantizer's ``ap_[u]fixed<k+i+f, k+i, Q, O>`` when one grid covers the tensor; None when the
    grid differs per element or has no bits (see ``live``)."""
    kif = tensor_kif(graph, n)
    if kif is None:
        return None
    kk, ii, ff = kif
    if kk + ii + ff <= 0 or (n.attr("overflow") == "AP_SAT_SYM" and kk > 0 and kk + ii + ff == 1):
        return None
    return FixedType(kk + ii + ff, kk + ii, bool(kk), n.attr("rounding"), n.attr("overflow"))


MAX_LUT_BITS = 14  # a lookup table of 2**14 entries at most


def lut_pair(graph: Graph, n: Node) -> tuple[Node, Node] | None:
    """(input quantizer, output quantizer) of an element-wise activation read from one quantizer (its
    type, or the union of its elements' types, at most MAX_LUT_BITS bits) and read only by a
    per-tensor one: the activation is then a table of the output quantizer's values over every input
    code, exact by construction (hls4ml's UnaryLUT, as HGQ2's QUnaryFunctionLUT lowers)."""
    producers, consumers = graph.producers(), graph.consumers()
    src = producers.get(n.inputs[0])
    users = consumers.get(n.outputs[0], [])
    if src is None or src.op != "fixed_quant" or len(users) != 1 or users[0].op != "fixed_quant":
        return None
    if n.outputs[0] in graph.outputs or users[0].inputs[0] != n.outputs[0]:
        return None
    if not all(c in graph.constants for q in (src, users[0]) for c in q.inputs[1:]):
        return None
    t_in, t_out = quantizer_type(graph, src), per_tensor_type(graph, users[0])
    if t_out is None or t_in.width > MAX_LUT_BITS:
        return None
    return src, users[0]


def quantizer_type(graph: Graph, n: Node) -> FixedType:
    """A fixed_quant's result type: its own per tensor, else the union of its elements' types."""
    return per_tensor_type(graph, n) or union_type(graph, n)


def lut_table(graph: Graph, n: Node) -> tuple[np.ndarray, FixedType, FixedType]:
    """The table of ``lut_pair``'s activation: the output quantizer's raw values, indexed by the input
    code's bits (two's complement for a signed input), computed with the interpreter's own kernels."""
    from tapeout.compiler.fixedpoint.arith import from_float
    from tapeout.compiler.interpreter import eval_node

    pair = lut_pair(graph, n)
    assert pair is not None
    src, dst = pair
    t_in, t_out = quantizer_type(graph, src), per_tensor_type(graph, dst)
    assert t_out is not None
    idx = np.arange(1 << t_in.width, dtype=np.int64)
    raw = np.where(idx >= (1 << (t_in.width - 1)), idx - (1 << t_in.width), idx) if t_in.signed else idx
    x = np.ldexp(raw.astype(np.float64), -t_in.frac).astype(np.float32)[None]
    y = eval_node(n, [x])[0]
    q = eval_node(dst, [y, *(graph.constants[c] for c in dst.inputs[1:])])[0]
    return from_float(np.asarray(q, np.float64)[0], t_out), t_in, t_out


def union_type(graph: Graph, n: Node) -> FixedType:
    """A type holding every element's quantized values (the per-element quantizer's result_t)."""
    k, i, f = quantizer_grid(graph, n)
    on = live(graph, n)
    if not np.any(on):
        return FixedType(1, 1, False)
    signed = bool(np.any(k[on] > 0))
    frac = int(np.max(f[on]))
    integer = int(np.max(i[on])) + int(signed)
    width = integer + frac
    if width > MAX_BITS or width < 1:
        raise FixedTypeError(f"node {n.name!r}: fixed_quant's elements need a {width}-bit result type")
    return FixedType(width, integer, signed)


def readers(graph: Graph, value: str, consumers: dict[str, list[Node]]) -> list[Node]:
    """The nodes that compute on ``value``, looking through flatten/reshape/dropout (no arithmetic)."""
    out: list[Node] = []
    for u in consumers.get(value, []):
        out.extend(readers(graph, u.outputs[0], consumers) if u.op in PASSTHROUGH else [u])
    return out


def input_type(graph: Graph, name: str, users: list[Node]) -> FixedType:
    if not users or any(u.op != "fixed_quant" for u in users):
        other = next((u for u in users if u.op != "fixed_quant"), None)
        where = f" (it feeds node {other.name!r}, {other.op})" if other is not None else ""
        raise FixedTypeError(f"graph input {name!r} reaches a layer without a fixed_quant{where}: a "
                             "quantization-aware model needs a quantizer on every input for hls4ml")
    if len(users) == 1:
        t = per_tensor_type(graph, users[0])
        if t is not None:
            return t
    unions = [union_type(graph, u) for u in users]
    modes = {u.attr("rounding") for u in users}
    wraps = {u.attr("overflow") == "AP_WRAP" for u in users}
    if len(wraps) > 1:
        raise FixedTypeError(f"graph input {name!r} feeds both wrapping and saturating quantizers: no one input "
                             "type serves both exactly")
    frac = max(t.frac for t in unions) + (1 if modes <= set(EXACT_ROUNDING) else TIE_GUARD_BITS)
    integer = max(t.integer + (0 if t.signed else 1) for t in unions) + 1
    if True in wraps and modes & set(SIGN_ROUNDING):
        integer += WRAP_HEADROOM  # a wrapped input can change sign, and with it these modes' direction
    if integer + frac > MAX_BITS:
        raise FixedTypeError(f"graph input {name!r} needs {integer + frac} bits for its quantizers to round exactly")
    return FixedType(integer + frac, integer, True, "AP_TRN", "AP_WRAP" if True in wraps else "AP_SAT")


def _weighted_span(x: Span, w: np.ndarray, b: np.ndarray | None, fw: int, fb: int | None) -> Span:
    """Bounds of x @ w (+ b) over every x in [x.lo, x.hi] (zero included: padding), per output, joined."""
    lo_x, hi_x = min(x.lo, 0.0), max(x.hi, 0.0)
    pos, neg = np.maximum(w, 0.0), np.minimum(w, 0.0)
    hi = pos.sum(axis=0) * hi_x + neg.sum(axis=0) * lo_x
    lo = pos.sum(axis=0) * lo_x + neg.sum(axis=0) * hi_x
    if b is not None:
        hi, lo = hi + b, lo + b
    frac = max(x.frac + fw, fb if fb is not None else -10**6)
    return Span(float(np.min(lo)), float(np.max(hi)), frac)


def qat_plan(graph: Graph) -> tuple[PrecisionPlan, list[str]]:
    """The plan of a quantization-aware graph (module docstring), and notes for the report."""
    layers = hls_layers(graph)
    users = graph.consumers()
    alias = _alias_map(graph)
    plan = PrecisionPlan({i: input_type(graph, i, readers(graph, i, users)) for i in graph.inputs})
    spans: dict[str, Span] = {i: Span.of(t) for i, t in plan.inputs.items()}
    notes: list[str] = []
    tables: list[str] = []
    for layer in layers:
        x = spans[alias.get(layer.inputs[0], layer.inputs[0])] if layer.inputs else None
        lp, span = _layer(graph, layer, x, [spans[alias.get(v, v)] for v in layer.inputs])
        if layer.kind in TABLE_ACTIVATIONS:
            tables.append(layer.name)
        plan.layers[layer.name] = lp
        spans[layer.output] = span
    if tables:
        notes.append(f"lookup-table layer(s) {', '.join(tables)} keep hls4ml's table types: the only layers of this "
                     "quantization-aware model not bit-exact to the reference interpreter")
    return plan, notes


def _layer(graph: Graph, layer: HlsLayer, x: Span | None, xs: list[Span]) -> tuple[LayerPrecision, Span]:
    n, kind, what = layer.node, layer.kind, f"layer {layer.name!r}"
    if kind == "fixed_quant":
        t = quantizer_type(graph, n)
        return LayerPrecision(result=t), Span.of(t)
    if kind == "unary_lut":
        _, t_in, t_out = lut_table(graph, n)
        return LayerPrecision(result=t_out, table_size=1 << t_in.width), Span.of(t_out)
    assert x is not None
    if kind in ("dense", "conv"):
        w = np.asarray(graph.constants[n.inputs[1]], np.float64)
        b = np.asarray(graph.constants[n.inputs[2]], np.float64) if len(n.inputs) > 2 and n.inputs[2] else None
        wt = exact_type(w, f"{what}: the weights")
        bt = exact_type(b, f"{what}: the bias") if b is not None else None
        channels = int(w.shape[-1])
        w2 = w.reshape(-1, channels)
        span = _weighted_span(x, w2, b, wt.frac, bt.frac if bt is not None else None)
        acc = span.type(f"{what}'s accumulator")
        # The bias type must have the accumulator's grid or coarser (hls4ml starts the sum at (accum_t) bias).
        return LayerPrecision(result=acc, weight=wt, bias=bt or wt, accum=acc), span
    if kind == "batch_norm":
        s, t = (np.asarray(a, np.float64) for a in scale_shift(graph, n))
        st, tt = exact_type(s, f"{what}: the scale"), exact_type(t, f"{what}: the shift")
        lo_x, hi_x = x.lo, x.hi
        cand = np.stack([s * lo_x, s * hi_x]) + t
        span = Span(float(cand.min()), float(cand.max()), max(x.frac + st.frac, tt.frac))
        return LayerPrecision(result=span.type(f"{what}'s result"), weight=st, bias=tt), span
    if kind == "identity":
        return LayerPrecision(result=x.type(f"{what}'s result")), x
    if kind in ("relu", "relu6"):
        top = 6.0 if kind == "relu6" else math.inf
        span = Span(min(max(x.lo, 0.0), top), min(max(x.hi, 0.0), top), x.frac)
        return LayerPrecision(result=span.type(f"{what}'s result")), span
    if kind in ("max_pool", "global_max_pool", "zero_pad", "resize"):
        span = Span(min(x.lo, 0.0), max(x.hi, 0.0), x.frac) if kind == "zero_pad" else x
        if kind == "max_pool" and any(tuple(p) != (0, 0) for p in (n.attrs.get("pads") or ())):
            span = x  # padded cells hold the type's minimum and never win
        t = span.type(f"{what}'s result")
        return LayerPrecision(result=t, accum=t if kind in (*POOLS, *GLOBAL_POOLS) else None), span
    if kind in ("avg_pool", "global_avg_pool"):
        raise FixedTypeError(f"{what} ({kind}) divides: a quantization-aware model is compiled bit-exactly, and "
                             "hls4ml's average pooling rounds its division; use max pooling or a quantized dense")
    if kind == "add":
        a, b = xs
        span = Span(a.lo + b.lo, a.hi + b.hi, max(a.frac, b.frac))
        return LayerPrecision(result=span.type(f"{what}'s result")), span
    if kind == "concat":
        span = Span(min(s.lo for s in xs), max(s.hi for s in xs), max(s.frac for s in xs))
        return LayerPrecision(result=span.type(f"{what}'s result")), span
    if kind == "softmax":
        t = fixed(17, 1, "AP_RND", "AP_SAT")
        return LayerPrecision(result=t, table=DEFAULT_SOFTMAX_TABLE, inv_table=DEFAULT_SOFTMAX_TABLE,
                              accum=DEFAULT_SOFTMAX_TABLE), Span.of(t)
    if kind in ("sigmoid", "tanh"):
        t = fixed(11, 2, "AP_RND", "AP_SAT")
        return LayerPrecision(result=t, table=DEFAULT_TABLE), Span.of(t)
    raise FixedTypeError(f"{what} ({kind}) has no exact type in a quantization-aware model")
