"""NumPy kernels: one function per IR op. These define what each op means.

Every kernel has the signature ``kernel(node, inputs) -> outputs``: ``inputs`` are
the node's input arrays in order (``None`` for an absent optional input), the
result is the list of output arrays. Float results are float32; conv and dense
accumulate in float32 through BLAS (matmul), which stays within 1e-5 of TF.

Inside ``precision("float64")`` every float kernel computes in float64 instead (weights
upcast exactly): the near-exact outputs that verification judges float32 artifacts against.
A context variable rather than a parameter, so no kernel signature carries it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tapeout.compiler.ir import Activation, Node
from tapeout.compiler.ops import lrn_window, slice_bounds, slice_spec

Kernel = Callable[[Node, list], list]
KERNELS: dict[str, Kernel] = {}

try:  # scipy's erf is vectorized and exact; fall back to math.erf so scipy stays optional
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - scipy is installed in the dev env
    _erf = np.vectorize(math.erf, otypes=[np.float64])


def _kernel(*names: str) -> Callable[[Kernel], Kernel]:
    def deco(fn: Kernel) -> Kernel:
        for n in names:
            KERNELS[n] = fn
        return fn

    return deco


PRECISIONS = ("float32", "float64")
_DTYPE: ContextVar[np.dtype] = ContextVar("tapeout_kernel_dtype", default=np.dtype(np.float32))


@contextmanager
def precision(name: str) -> Iterator[None]:
    """Kernels run inside compute floats in ``name`` ("float32", the default, or "float64")."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; one of {', '.join(PRECISIONS)}")
    token = _DTYPE.set(np.dtype(name))
    try:
        yield
    finally:
        _DTYPE.reset(token)


def compute_dtype() -> np.dtype:
    """The float dtype kernels compute in here (see ``precision``)."""
    return _DTYPE.get()


def _f32(x: np.ndarray) -> np.ndarray:
    """As a float array of the compute dtype (float32 unless inside ``precision``)."""
    return np.asarray(x, dtype=_DTYPE.get())


def _promote(x: np.ndarray) -> np.ndarray:
    """Float arrays in float64 mode become float64 (a float32 constant with float32 data would
    otherwise stay float32); in float32 mode, as they are."""
    x = np.asarray(x)
    dtype = _DTYPE.get()
    if dtype != np.float32 and np.issubdtype(x.dtype, np.floating) and x.dtype != dtype:
        return x.astype(dtype)
    return x


# ---------------------------------------------------------------- activations
def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    if approximate:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        return 0.5 * x * (1.0 + np.tanh(inner))
    return (0.5 * x.astype(np.float64) * (1.0 + _erf(x.astype(np.float64) / math.sqrt(2.0)))).astype(x.dtype)


def _activate(op: str, x: np.ndarray, attrs: dict) -> np.ndarray:
    x = _f32(x)
    if op in ("identity", "dropout"):
        return x
    if op == "relu":
        return np.maximum(x, np.float32(0))
    if op == "clip":
        lo, hi = attrs.get("min"), attrs.get("max")
        if lo is None and hi is None:
            return x
        return _f32(np.clip(x, lo, hi))
    if op == "leaky_relu":
        return np.where(x >= 0, x, np.float32(attrs.get("alpha", 0.3)) * x)
    if op == "elu":
        alpha = np.float32(attrs.get("alpha", 1.0))
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
    if op == "sigmoid":
        return _sigmoid(x)
    if op == "hard_sigmoid":
        alpha, beta = attrs.get("alpha", 1.0 / 6.0), attrs.get("beta", 0.5)
        return _f32(np.clip(np.float32(alpha) * x + np.float32(beta), 0, 1))
    if op == "tanh":
        return np.tanh(x)
    if op == "softmax":
        return _softmax(x, int(attrs.get("axis", -1)))
    if op == "swish":
        return x * _sigmoid(x)
    if op == "hard_swish":
        return x * np.clip(x + 3, 0, 6) / np.float32(6)
    if op == "gelu":
        return _gelu(x, bool(attrs.get("approximate", False)))
    raise ValueError(f"unknown activation {op!r}")


def apply_activation(x: np.ndarray, act: Activation) -> np.ndarray:
    """Apply a fused activation (``Activation``) to ``x``."""
    return _activate(act.op, x, act.attr_dict())


@_kernel("identity", "relu", "clip", "leaky_relu", "elu", "sigmoid", "hard_sigmoid", "tanh",
         "softmax", "swish", "hard_swish", "gelu", "dropout")
def unary_activation(node: Node, inputs: list) -> list:
    return [_activate(node.op, inputs[0], node.attrs)]


# --------------------------------------------------------------- dense/matmul
def _with_bias_act(node: Node, y: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    if bias is not None:
        y = y + _f32(bias)
    act = node.attrs.get("activation")
    return _f32(y) if act is None else apply_activation(y, act)


@_kernel("dense")
def dense(node: Node, inputs: list) -> list:
    x, w = _f32(inputs[0]), _f32(inputs[1])
    bias = inputs[2] if len(inputs) > 2 else None
    return [_with_bias_act(node, x @ w, bias)]


@_kernel("matmul")
def matmul(node: Node, inputs: list) -> list:
    return [_f32(np.matmul(_f32(inputs[0]), _f32(inputs[1])))]


# ----------------------------------------------------------------------- conv
def _spatial(node: Node, nsp: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    strides = tuple(node.attrs.get("strides") or (1,) * nsp)
    dil = tuple(node.attrs.get("dilations") or (1,) * nsp)
    pads = tuple(tuple(p) for p in (node.attrs.get("pads") or ((0, 0),) * nsp))
    return strides, dil, pads


def _windows(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int], dil: Sequence[int]) -> np.ndarray:
    """A strided view [N, *out, C, *kernel] of every (dilated) window of a padded [N, *S, C] input."""
    nsp = len(kernel)
    eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil))
    v = sliding_window_view(x, eff, axis=tuple(range(1, 1 + nsp)))
    # Stride over output positions, then dilate inside the window.
    sl = (slice(None),) + tuple(slice(None, None, s) for s in strides) + (slice(None),)
    sl += tuple(slice(None, None, d) for d in dil)
    return v[sl]


def _pad_spatial(x: np.ndarray, pads: Sequence[tuple[int, int]], value: float) -> np.ndarray:
    if not any(a or b for a, b in pads):
        return x
    return np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)


@_kernel("conv")
def conv(node: Node, inputs: list) -> list:
    x, w = _f32(inputs[0]), _f32(inputs[1])
    nsp = x.ndim - 2
    strides, dil, pads = _spatial(node, nsp)
    groups = int(node.attrs.get("groups", 1))
    kernel = w.shape[:nsp]
    win = _windows(_pad_spatial(x, pads, 0.0), kernel, strides, dil)  # [N, *O, C, *K]
    if w.shape[-2] == 1 and groups > 1:
        y = _depthwise(win, w, groups)
    else:
        y = _grouped(win, w, groups)
    bias = inputs[2] if len(inputs) > 2 else None
    return [_with_bias_act(node, y, bias)]


def _depthwise(win: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """One input channel per group: an einsum straight on the window view (no im2col copy)."""
    nsp = w.ndim - 2
    out_sp, k = "hwd"[:nsp], "ijk"[:nsp]
    mult = w.shape[-1] // groups
    wg = w.reshape(*w.shape[:nsp], groups, mult)  # output channel c * mult + m reads input channel c
    y = np.einsum(f"n{out_sp}c{k},{k}cm->n{out_sp}cm", win, wg)
    return y.reshape(*y.shape[:-2], groups * mult)


def _grouped(win: np.ndarray, w: np.ndarray, groups: int) -> np.ndarray:
    """im2col: [positions, K*Cg] patches contracted with [K*Cg, F] weights (BLAS), per group."""
    nsp = w.ndim - 2
    ksize, cg, f = math.prod(w.shape[:nsp]), w.shape[-2], w.shape[-1]
    lead = win.shape[:1 + nsp]
    # Kernel axes in front of the channels, [N, *O, *K, C]: the order of the weights.
    perm = (*range(1 + nsp), *range(2 + nsp, 2 + 2 * nsp), 1 + nsp)
    win = np.ascontiguousarray(win.transpose(perm))
    if groups == 1:
        y = win.reshape(-1, ksize * cg) @ w.reshape(ksize * cg, f)
    else:
        # Channels split as [G, Cg]: every group is contracted in one einsum, no loop over groups.
        cols = win.reshape(-1, ksize, groups, cg)
        wg = w.reshape(ksize, cg, groups, f // groups)
        y = np.einsum("pkgc,kcgf->pgf", cols, wg, optimize=True)
    return y.reshape(*lead, f)


# ---------------------------------------------------------------- normalising
@_kernel("batch_norm")
def batch_norm(node: Node, inputs: list) -> list:
    x, scale, bias, mean, var = (_f32(a) for a in inputs)
    eps = np.float32(node.attrs.get("epsilon", 1e-3))
    return [_f32((x - mean) / np.sqrt(var + eps) * scale + bias)]


@_kernel("affine")
def affine(node: Node, inputs: list) -> list:
    x, scale, shift = (_f32(a) for a in inputs)
    return [_f32(x * scale + shift)]


@_kernel("lrn")
def lrn(node: Node, inputs: list) -> list:
    x = _f32(inputs[0])
    size = int(node.attrs["size"])
    before, after = lrn_window(size)
    # Zero channels beyond both ends: the window is clipped there, as in the ONNX spec.
    sq = np.pad(x * x, [(0, 0)] * (x.ndim - 1) + [(before, after)])
    square_sum = sliding_window_view(sq, size, axis=-1).sum(axis=-1)
    t = x.dtype.type
    alpha, beta, bias = (float(node.attr(k)) for k in ("alpha", "beta", "bias"))
    return [_f32(x / (t(bias) + t(alpha / size) * square_sum) ** t(beta))]


# -------------------------------------------------------------------- pooling
@_kernel("max_pool")
def max_pool(node: Node, inputs: list) -> list:
    x = _f32(inputs[0])
    nsp = x.ndim - 2
    kernel = tuple(node.attrs["kernel"])
    strides, _, pads = _spatial(node, nsp)  # strides default to 1, as in the schema
    win = _windows(_pad_spatial(x, pads, -np.inf), kernel, strides, (1,) * nsp)
    return [win.max(axis=tuple(range(-nsp, 0)))]


@_kernel("avg_pool")
def avg_pool(node: Node, inputs: list) -> list:
    x = _f32(inputs[0])
    nsp = x.ndim - 2
    kernel = tuple(node.attrs["kernel"])
    strides, _, pads = _spatial(node, nsp)  # strides default to 1, as in the schema
    axes = tuple(range(-nsp, 0))
    ones = (1,) * nsp
    total = _windows(_pad_spatial(x, pads, 0.0), kernel, strides, ones).sum(axis=axes)
    if node.attrs.get("count_include_pad", False):
        return [_f32(total / np.float32(math.prod(kernel)))]
    # Count the real (non-pad) elements of each window by pooling a mask of ones.
    mask = _pad_spatial(np.ones((1, *x.shape[1:-1], 1), np.float32), pads, 0.0)
    count = _windows(mask, kernel, strides, ones).sum(axis=axes)
    return [_f32(total / count)]


@_kernel("global_avg_pool", "global_max_pool")
def global_pool(node: Node, inputs: list) -> list:
    x = _f32(inputs[0])
    axes = tuple(range(1, x.ndim - 1))
    keep = bool(node.attrs.get("keepdims", False))
    reduce = np.mean if node.op == "global_avg_pool" else np.max
    return [_f32(reduce(x, axis=axes, keepdims=keep))]


# ------------------------------------------------------------------- binaries
_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "maximum": np.maximum, "minimum": np.minimum,
}


@_kernel(*_BINARY)
def binary(node: Node, inputs: list) -> list:
    a, b = _promote(inputs[0]), _promote(inputs[1])
    return [_BINARY[node.op](a, b)]


@_kernel("fixed_quant")
def fixed_quant(node: Node, inputs: list) -> list:
    from tapeout.compiler.fixedpoint.arith import quantize_kif

    x, k, i, f = inputs
    y = quantize_kif(x, k, i, f, node.attr("rounding"), node.attr("overflow"))
    return [_f32(y)]


@_kernel("concat")
def concat(node: Node, inputs: list) -> list:
    return [np.concatenate([_promote(x) for x in inputs], axis=int(node.attrs["axis"]))]


# -------------------------------------------------------------------- shaping
@_kernel("flatten")
def flatten(node: Node, inputs: list) -> list:
    x = inputs[0]
    return [x.reshape(x.shape[0], -1)]


@_kernel("reshape")
def reshape(node: Node, inputs: list) -> list:
    x = inputs[0]
    return [x.reshape(x.shape[0], *(int(d) for d in node.attrs["shape"]))]


@_kernel("transpose")
def transpose(node: Node, inputs: list) -> list:
    return [np.transpose(inputs[0], tuple(node.attrs["perm"]))]


@_kernel("slice")
def slice_(node: Node, inputs: list) -> list:
    x = inputs[0]
    index = [slice(None)] * x.ndim
    for axis, start, end, step in slice_spec(node, x.ndim):
        b, e, s = slice_bounds(x.shape[axis], start, end, step)
        index[axis] = slice(b, None if e < 0 else e, s)  # e == -1 (negative step): through element 0
    return [x[tuple(index)]]


@_kernel("pad")
def pad(node: Node, inputs: list) -> list:
    x = inputs[0]
    pads = tuple(tuple(int(v) for v in p) for p in node.attrs["pads"])
    value = node.attrs.get("value", 0.0)
    return [np.pad(x, pads, constant_values=value).astype(x.dtype, copy=False)]


@_kernel("resize")
def resize(node: Node, inputs: list) -> list:
    y = inputs[0]
    for i, s in enumerate(node.attrs["scales"]):
        if int(s) != 1:
            y = np.repeat(y, int(s), axis=1 + i)
    return [y]
