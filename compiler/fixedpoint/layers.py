"""hls4ml 1.3's layer implementations (Vivado/Vitis io_parallel C++), as NumPy on raw integers.

Every function takes and returns ``Fx`` values (raw int64 array + its type). Where the casts
happen is taken from hls4ml's nnet_utils templates:

- dense / conv (``dense_latency``, ``conv_*d_latency_cl``): each product ``x * w`` is computed
  exactly and stored into ``accum_t``; the accumulator starts at ``(accum_t) bias`` and adds the
  products in input order (kernel position, then channel); the sum is cast to ``result_t``.
- relu: ``x > 0 ? x : 0`` assigned to ``result_t``.
- max pooling: the max in the input type, through ``accum_t``, into ``result_t``; padded cells
  hold the type's most negative value. Average pooling sums in ``accum_t`` and divides by the
  number of real cells (C integer division, toward zero).
- add: the exact sum cast to ``result_t``.
- sigmoid / tanh (``nnet_activation.h``): a ``table_size`` table of ``table_t`` over [-8, 8)
  / [-4, 4), indexed by ``int(x * table_size / range) + table_size / 2`` (toward zero), clamped.
- softmax "stable": ``x_max - x`` in ``inp_norm_t``; its top bits index an exp table; the sum of
  the exps (``accum_t``, balanced adder tree) goes to ``inv_inp_t``, whose top bits index a 1/x
  table; each exp times that inverse is cast to ``result_t``.
- depthwise conv (``depthwise_product_latency``, and the stream kernel's per-pixel call of it):
  per channel, each product into ``accum_t``, the sum from ``(accum_t) bias`` in kernel order.
- batch norm (``nnet::normalize``): ``x * scale + bias`` exact, cast once to ``result_t``.
- relu6 (``relu_max<..., 6>``): ``x < 0 ? 0 : x > 6 ? 6 : x`` assigned to ``result_t``.
- zero padding, nearest upsampling (``resize_nearest``: source index ``(i * ((H << 16) / H_new
  + 1)) >> 16``) and concatenation copy values, each assigned to ``result_t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tapeout.compiler.fixedpoint.arith import INT, check_headroom, from_float, overflow, requantize, to_float
from tapeout.compiler.fixedpoint.types import FixedType

# Bound on the int64 elements materialized at once when products must be rounded one by one.
_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class Fx:
    raw: np.ndarray  # int64
    type: FixedType

    def to_float(self) -> np.ndarray:
        return to_float(self.raw, self.type)

    @staticmethod
    def of(x: np.ndarray, t: FixedType) -> "Fx":
        return Fx(from_float(x, t), t)


def cast(x: Fx, t: FixedType) -> Fx:
    return Fx(requantize(x.raw, x.type.frac, t), t)


# ------------------------------------------------------------------ dense
def _accumulate(x: np.ndarray, fx: int, w: np.ndarray, fw: int, bias: np.ndarray, acc: FixedType) -> np.ndarray:
    """acc_t sum of (acc_t)(x[..., k] * w[k, m]) over k, starting from the bias (already acc_t raw)."""
    k = w.shape[0]
    bits = _bits(x) + _bits(w) + max(1, math.ceil(math.log2(k + 1)))
    check_headroom(bits, "a product sum")
    fp = fx + fw
    exact = acc.frac >= fp  # every product is already on the accumulator's grid
    if exact and acc.overflow == "AP_WRAP":
        # Wrapping is modular: wrapping each product and partial sum equals wrapping the total.
        # NumPy's int64 matmul has no BLAS kernel (a conv's im2col took ~1 s per call); float64
        # BLAS is exact in any summation order while every product and partial sum is an
        # integer below 2**53, which ``bits`` bounds.
        if bits <= 53:
            prod = (x.astype(np.float64) @ w.astype(np.float64)).astype(INT)
        else:
            prod = x @ w
        total = prod << INT(acc.frac - fp)
        return overflow(total + bias, acc)
    lead = x.shape[:-1]
    xs = x.reshape(-1, k)
    out = np.empty((xs.shape[0], w.shape[1]), dtype=INT)
    rows = max(1, _CHUNK_ELEMENTS // max(1, k * w.shape[1]))
    for s in range(0, xs.shape[0], rows):
        prods = xs[s:s + rows, :, None] * w[None, :, :]  # [n, K, M], exact
        prods = requantize(prods, fp, acc)
        if acc.overflow == "AP_WRAP":
            out[s:s + rows] = overflow(prods.sum(axis=1) + bias, acc)
        else:
            # Saturation is not associative: add in the C++ loop's order.
            a = np.broadcast_to(bias, (prods.shape[0], w.shape[1])).astype(INT)
            for i in range(k):
                a = overflow(a + prods[:, i, :], acc)
            out[s:s + rows] = a
    return out.reshape(*lead, w.shape[1])


def _bits(a: np.ndarray) -> int:
    m = max(int(a.max()), -int(a.min())) if a.size else 0  # no |a| copy of a large im2col
    return max(1, m.bit_length()) + 1


def dense(x: Fx, w: Fx, b: Fx | None, acc: FixedType, res: FixedType) -> Fx:
    """y = (res_t) sum_k (acc_t)(x_k * w_k) + (acc_t) b  over the last axis; w is [K, M]."""
    bias = requantize(b.raw, b.type.frac, acc) if b is not None else np.zeros(w.raw.shape[1], INT)
    total = _accumulate(x.raw, x.type.frac, w.raw, w.type.frac, bias, acc)
    return Fx(requantize(total, acc.frac, res), res)


# ------------------------------------------------------------------- conv
def _window_view(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...], dil: tuple[int, ...]) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view

    nsp = len(kernel)
    eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil))
    v = sliding_window_view(x, eff, axis=tuple(range(1, 1 + nsp)))  # [N, *O, C, *eff]
    sl = (slice(None),) + tuple(slice(None, None, s) for s in strides) + (slice(None),)
    sl += tuple(slice(None, None, d) for d in dil)
    return v[sl]


def conv(x: Fx, w: Fx, b: Fx | None, acc: FixedType, res: FixedType, *, strides: tuple[int, ...],
         pads: tuple[tuple[int, int], ...], dilations: tuple[int, ...] | None = None) -> Fx:
    """Channels-last conv (groups 1) as hls4ml's im2col + dense; padded cells are zero."""
    nsp = x.raw.ndim - 2
    dil = dilations or (1,) * nsp
    kernel = tuple(w.raw.shape[:nsp])
    raw = x.raw
    if any(a or c for a, c in pads):
        raw = np.pad(raw, ((0, 0), *pads, (0, 0)))
    win = _window_view(raw, kernel, strides, dil)  # [N, *O, C, *K]
    perm = (*range(1 + nsp), *range(2 + nsp, 2 + 2 * nsp), 1 + nsp)  # -> [N, *O, *K, C]
    cols = np.ascontiguousarray(win.transpose(perm)).reshape(*win.shape[:1 + nsp], -1)
    wk = w.raw.reshape(-1, w.raw.shape[-1])
    return dense(Fx(cols, x.type), Fx(wk, w.type), b, acc, res)


def depthwise_conv(x: Fx, w: Fx, b: Fx | None, acc: FixedType, res: FixedType, *, strides: tuple[int, ...],
                   pads: tuple[tuple[int, int], ...]) -> Fx:
    """Channels-last depthwise conv (groups == channels); ``w`` is the IR's ``[*K, 1, C * m]``:
    output channel ``c * m + j`` reads input channel ``c``."""
    nsp = x.raw.ndim - 2
    kernel = tuple(w.raw.shape[:nsp])
    c = x.raw.shape[-1]
    m = w.raw.shape[-1] // c
    raw = x.raw
    if any(a or e for a, e in pads):
        raw = np.pad(raw, ((0, 0), *pads, (0, 0)))
    win = _window_view(raw, kernel, strides, (1,) * nsp)  # [N, *O, C, *K]
    lead = win.shape[:1 + nsp]
    cols = win.reshape(-1, c, math.prod(kernel))  # [rows, C, K], kernel positions row-major
    wk = w.raw.reshape(-1, c, m)  # [K, C, m]
    bias = requantize(b.raw, b.type.frac, acc) if b is not None else np.zeros(c * m, INT)
    out = np.empty((cols.shape[0], c * m), INT)
    for ch in range(c):
        out[:, ch * m:(ch + 1) * m] = _accumulate(cols[:, ch, :], x.type.frac, wk[:, ch, :], w.type.frac,
                                                  bias[ch * m:(ch + 1) * m], acc)
    return Fx(requantize(out.reshape(*lead, c * m), acc.frac, res), res)


def normalize(x: Fx, scale: Fx, bias: Fx, res: FixedType) -> Fx:
    """``(res_t)(x * scale + bias)``: scale and bias broadcast over the last axis."""
    fp = x.type.frac + scale.type.frac
    check_headroom(_bits(x.raw) + _bits(scale.raw) + 1, "a batch norm product")
    f = max(fp, bias.type.frac)
    total = ((x.raw * scale.raw) << INT(f - fp)) + (bias.raw << INT(f - bias.type.frac))
    return Fx(requantize(total, f, res), res)


# ------------------------------------------------------------- element-wise
def relu_max(x: Fx, res: FixedType, top: int) -> Fx:
    """hls4ml's ``relu_max<..., top>`` (relu6 for ``top`` 6): values above ``top`` become ``top``."""
    hi = Fx.of(np.asarray(float(top)), res).raw
    y = relu(x, res)
    over = x.raw > (INT(top) << INT(x.type.frac)) if x.type.frac >= 0 else x.raw > (top >> -x.type.frac)
    return Fx(np.where(over, hi, y.raw).astype(INT), res)


def zero_pad(x: Fx, pads: tuple[tuple[int, int], ...], res: FixedType) -> Fx:
    return cast(Fx(np.pad(x.raw, ((0, 0), *pads, (0, 0))), x.type), res)


def resize_nearest(x: Fx, scales: tuple[int, ...], res: FixedType) -> Fx:
    raw = x.raw
    for axis, s in enumerate(scales, start=1):
        n = raw.shape[axis]
        ratio = ((n << 16) // (n * s)) + 1
        raw = np.take(raw, (np.arange(n * s) * ratio) >> 16, axis=axis)
    return cast(Fx(raw, x.type), res)


def concat(xs: list[Fx], res: FixedType, axis: int = -1) -> Fx:
    return Fx(np.concatenate([cast(x, res).raw for x in xs], axis=axis), res)


def relu(x: Fx, res: FixedType) -> Fx:
    return cast(Fx(np.where(x.raw > 0, x.raw, 0).astype(INT), x.type), res)


def linear(x: Fx, res: FixedType) -> Fx:
    return cast(x, res)


def fixed_quant(x: Fx, k: np.ndarray, i: np.ndarray, f: np.ndarray, rounding: str, overflow_mode: str,
                res: FixedType) -> Fx:
    """hls4ml's FixedPointQuantizer (io_parallel): each element cast to its own
    ``ap_[u]fixed<k+i+f, k+i, rounding, overflow>`` (0 where k+i+f <= 0), then assigned to ``result_t``.
    ``k, i, f`` broadcast against one sample's shape."""
    shape = x.raw.shape[1:]
    k, i, f = (np.broadcast_to(np.asarray(a, INT), shape).reshape(-1) for a in (k, i, f))
    flat = x.raw.reshape(len(x.raw), -1)
    out = np.zeros_like(flat)
    kif = np.stack([k, i, f], axis=1)
    groups, which = np.unique(kif, axis=0, return_inverse=True)
    for g, (kk, ii, ff) in enumerate(groups):
        if kk + ii + ff <= 0:
            continue  # pruned element: 0
        cols = np.flatnonzero(which.reshape(-1) == g)
        t = FixedType(int(kk + ii + ff), int(kk + ii), bool(kk), rounding, overflow_mode)
        out[:, cols] = requantize(requantize(flat[:, cols], x.type.frac, t), t.frac, res)
    return Fx(out.reshape(x.raw.shape), res)


def add(a: Fx, b: Fx, res: FixedType) -> Fx:
    f = max(a.type.frac, b.type.frac)
    total = (a.raw << INT(f - a.type.frac)) + (b.raw << INT(f - b.type.frac))
    return Fx(requantize(total, f, res), res)


# ---------------------------------------------------------------- pooling
def max_pool(x: Fx, acc: FixedType, res: FixedType, *, kernel: tuple[int, ...], strides: tuple[int, ...],
             pads: tuple[tuple[int, int], ...]) -> Fx:
    nsp = len(kernel)
    raw = x.raw
    if any(a or c for a, c in pads):
        raw = np.pad(raw, ((0, 0), *pads, (0, 0)), constant_values=x.type.raw_min)
    win = _window_view(raw, kernel, strides, (1,) * nsp)
    m = win.max(axis=tuple(range(-nsp, 0)))
    return cast(cast(Fx(m, x.type), acc), res)


def avg_pool(x: Fx, acc: FixedType, res: FixedType, *, kernel: tuple[int, ...], strides: tuple[int, ...],
             pads: tuple[tuple[int, int], ...], count_include_pad: bool = False) -> Fx:
    nsp = len(kernel)
    raw = x.raw
    mask = np.ones((1, *x.raw.shape[1:-1], 1), INT)
    if any(a or c for a, c in pads):
        raw = np.pad(raw, ((0, 0), *pads, (0, 0)))
        mask = np.pad(mask, ((0, 0), *pads, (0, 0)))
    win = _window_view(raw, kernel, strides, (1,) * nsp)
    cells = win.reshape(*win.shape[:-nsp], -1)
    f = max(acc.frac, x.type.frac)
    y = np.zeros(cells.shape[:-1], INT)
    for i in range(cells.shape[-1]):  # y += x[i], each sum assigned to accum_t
        y = requantize((y << INT(f - acc.frac)) + (cells[..., i] << INT(f - x.type.frac)), f, acc)
    if count_include_pad:
        count = np.full_like(y, math.prod(kernel))
    else:
        count = _window_view(mask, kernel, strides, (1,) * nsp).sum(axis=tuple(range(-nsp, 0)))
    q = np.abs(y) // count * np.sign(y)  # C division truncates toward zero
    return cast(Fx(overflow(q, acc), acc), res)


# ----------------------------------------------------------- table lookups
def _trunc_div(num: np.ndarray, den: int) -> np.ndarray:
    return (np.abs(num) // den) * np.sign(num)


def _unary_table(x: Fx, res: FixedType, table: np.ndarray, table_t: FixedType, size: int, span: int) -> Fx:
    """``index = int(x * size / span) + size / 2``, clamped; ``span`` is the table's full input range."""
    f = x.type.frac
    num = x.raw * INT(size)
    idx = _trunc_div(num, span << f) if f >= 0 else _trunc_div(num << INT(-f), span)
    idx = np.clip(idx + size // 2, 0, size - 1)
    return cast(Fx(table[idx], table_t), res)


def _input_grid(size: int, span: float) -> np.ndarray:
    # hls4ml: float in_val = 2 * (span/2) * (ii - N/2.0) / N, computed in double, stored as float.
    ii = np.arange(size, dtype=np.float64)
    return (span * (ii - size / 2.0) / size).astype(np.float32)


_TABLE_CACHE: dict[tuple, object] = {}


def sigmoid_table(size: int, t: FixedType) -> np.ndarray:
    key = ("sigmoid", size, t)
    if key not in _TABLE_CACHE:
        x = _input_grid(size, 16.0)
        # 1.0 / (1 + std::exp(-x)) with a float exp and float sum, double division, float result.
        e = np.exp(-x).astype(np.float32)
        v = (1.0 / (np.float32(1) + e).astype(np.float64)).astype(np.float32)
        _TABLE_CACHE[key] = from_float(v, t)
    return _TABLE_CACHE[key]  # type: ignore[return-value]


def tanh_table(size: int, t: FixedType) -> np.ndarray:
    key = ("tanh", size, t)
    if key not in _TABLE_CACHE:
        x = _input_grid(size, 8.0)
        _TABLE_CACHE[key] = from_float(np.tanh(x.astype(np.float64)).astype(np.float32), t)
    return _TABLE_CACHE[key]  # type: ignore[return-value]


def sigmoid(x: Fx, res: FixedType, table_t: FixedType, table_size: int = 1024) -> Fx:
    return _unary_table(x, res, sigmoid_table(table_size, table_t), table_t, table_size, 16)


def tanh(x: Fx, res: FixedType, table_t: FixedType, table_size: int = 1024) -> Fx:
    return _unary_table(x, res, tanh_table(table_size, table_t), table_t, table_size, 8)


# ----------------------------------------------------------------- softmax
@dataclass(frozen=True)
class SoftmaxTypes:
    """The softmax layer's internal types and sizes, as hls4ml writes them into its config struct."""

    exp_table: FixedType
    inv_table: FixedType
    inv_inp: FixedType
    accum: FixedType
    inp_norm: FixedType
    exp_table_size: int
    inv_table_size: int
    exp_scale: float = 1.0

    @staticmethod
    def derive(input_t: FixedType, exp_table: FixedType, inv_table: FixedType, accum: FixedType,
               inv_inp: FixedType | None = None, table_size: int = 1024) -> "SoftmaxTypes":
        """The sizes and ``inp_norm_t`` hls4ml 1.3 derives for the "stable" implementation
        (``fix_softmax_table_size`` and the Vivado softmax config template)."""
        if 2 ** min(input_t.width, inv_table.width) < table_size:
            table_size = 2 ** min(input_t.width, inv_table.width)
        w, i = input_t.width - int(input_t.signed), input_t.integer - int(input_t.signed)
        exp_size = min(table_size, 2 ** w) if input_t.signed else table_size
        return SoftmaxTypes(exp_table, inv_table, inv_inp or exp_table, accum,
                            FixedType(w, i, signed=False), exp_size, table_size)


def _top_bits(raw: np.ndarray, t: FixedType, size: int) -> np.ndarray:
    """ap_fixed slice x(W-1, W-N) as an unsigned index, N = ceil(log2(size))."""
    n = max(0, math.ceil(math.log2(size)))
    unsigned = raw & INT((1 << t.width) - 1)  # the W raw bits, two's complement
    return unsigned >> INT(t.width - n)


def _from_top_bits(i: np.ndarray, t: FixedType, size: int) -> np.ndarray:
    """The float of a ``t`` value whose top N bits are ``i`` and the rest zero."""
    n = max(0, math.ceil(math.log2(size)))
    bits = i.astype(INT) << INT(t.width - n)
    if t.signed:
        bits = np.where(bits >= (1 << (t.width - 1)), bits - (1 << t.width), bits)
    return to_float(bits, t).astype(np.float32)


def softmax_tables(st: SoftmaxTypes) -> tuple[np.ndarray, np.ndarray]:
    key = ("softmax", st.exp_table_size, st.inv_table_size, st)
    if key not in _TABLE_CACHE:
        xs = _from_top_bits(np.arange(st.exp_table_size), st.inp_norm, st.exp_table_size)
        xs = -(xs * np.float32(st.exp_scale))
        exp_t = from_float(np.exp(xs).astype(np.float32), st.exp_table)
        vs = _from_top_bits(np.arange(st.inv_table_size), st.inv_inp, st.inv_table_size)
        with np.errstate(divide="ignore"):
            inv = (np.float32(1) / vs).astype(np.float32)
        _TABLE_CACHE[key] = (exp_t, from_float(inv, st.inv_table))  # type: ignore[index]
    return _TABLE_CACHE[key]  # type: ignore[index,return-value]


def _tree_sum(xs: list[np.ndarray], acc: FixedType) -> np.ndarray:
    """nnet::reduce with Op_add: a balanced tree, every partial sum in accum_t."""
    n = len(xs)
    if n == 1:
        return xs[0]
    if n == 2:
        return overflow(xs[0] + xs[1], acc)
    left = 1 << max(0, math.floor(math.log2(n - 1)))
    return overflow(_tree_sum(xs[:left], acc) + _tree_sum(xs[left:], acc), acc)


def softmax(x: Fx, res: FixedType, st: SoftmaxTypes) -> Fx:
    """hls4ml's softmax_stable over the last axis."""
    exp_t, inv_t = softmax_tables(st)
    xmax = x.raw.max(axis=-1, keepdims=True)
    d = requantize(xmax - x.raw, x.type.frac, st.inp_norm)
    e = requantize(exp_t[_top_bits(d, st.inp_norm, st.exp_table_size)], st.exp_table.frac, st.accum)
    total = _tree_sum([e[..., i] for i in range(e.shape[-1])], st.accum)
    s = requantize(total, st.accum.frac, st.inv_inp)
    inv = inv_t[_top_bits(s, st.inv_inp, st.inv_table_size)]
    prod = e * inv[..., None]
    return Fx(requantize(prod, st.accum.frac + st.inv_table.frac, res), res)
