"""Handlers for ops over spatial axes: Conv, BatchNormalization, LRN, pooling, reductions, Pad, Resize.

These run channels-last in the IR: their input is asked for in ``channels_last`` storage
(free for the output of another such op) and their output stays channels-last.
Convolution weights [F, C/g, *K] are transposed to the IR's [*K, C/g, F] at compile time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tapeout.compiler.frontends.onnx_context import Bound, Context, Handler, OnnxNode, Value, registrar
from tapeout.compiler.frontends.onnx_layout import Layout, identity

HANDLERS: dict[str, Handler] = {}
handles = registrar(HANDLERS)

Pads = list[tuple[int, int]]


def _ints(v: Sequence | None, n: int, default: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if v is not None and len(v) else (default,) * n


def _spatial_input(ctx: Context) -> Value:
    x = ctx.value(0)
    if x.layout.rank < 3:
        raise ctx.fail(f"needs a [N, C, *spatial] input, got rank {x.layout.rank}")
    return x


def window_pads(ctx: Context, n: OnnxNode, sizes: Sequence[int], kernel: Sequence[int],
                strides: Sequence[int], dil: Sequence[int]) -> Pads:
    """(before, after) per spatial axis from ``pads`` or ``auto_pad``."""
    nsp = len(kernel)
    auto = n.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pairs = []
        for size, k, s, d in zip(sizes, kernel, strides, dil):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pairs.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return pairs
    if auto == "VALID":
        return [(0, 0)] * nsp
    if auto != "NOTSET":
        raise ctx.fail(f"auto_pad={auto!r} is not supported")
    pads = _ints(n.attr("pads"), 2 * nsp, 0)
    if len(pads) != 2 * nsp or min(pads) < 0:
        raise ctx.fail(f"pads {list(pads)} must be {2 * nsp} non-negative numbers")
    return [(pads[i], pads[i + nsp]) for i in range(nsp)]


def ceil_extra(sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], pads: Pads) -> list[int]:
    """Extra end padding that makes floor-mode windows give ceil_mode's output size.

    ceil_mode adds a last, partial window unless it would start inside the end padding.
    """
    extra = []
    for size, k, s, (pb, pe) in zip(sizes, kernel, strides, pads):
        span = size + pb + pe - k
        out = -(-span // s) + 1
        if (out - 1) * s >= size + pb:
            out -= 1
        extra.append(max((out - 1) * s + k - (size + pb + pe), 0))
    return extra


# ---------------------------------------------------------------------- conv
@handles("Conv")
def _conv(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = _spatial_input(ctx)
    w = ctx.need_const(1, "W (the weights)").astype(np.float32)
    nsp = x.layout.rank - 2
    if w.ndim != nsp + 2:
        raise ctx.fail(f"weights of rank {w.ndim} do not fit a rank-{x.layout.rank} input")
    kernel = tuple(int(k) for k in w.shape[2:])
    if n.attr("kernel_shape") is not None and tuple(n.attr("kernel_shape")) != kernel:
        raise ctx.fail(f"kernel_shape {list(n.attr('kernel_shape'))} disagrees with the weights {list(w.shape)}")
    strides = _ints(n.attr("strides"), nsp, 1)
    dil = _ints(n.attr("dilations"), nsp, 1)
    sizes = ctx.onnx_shape(x)[2:]
    pads = window_pads(ctx, n, sizes, kernel, strides, dil)
    x = ctx.channels_last(x)
    ins = [x.ir, ctx.add_const(f"{n.label}/kernel", w.transpose(*range(2, nsp + 2), 1, 0))]
    if ctx.has(2):
        ins.append(ctx.add_const(f"{n.label}/bias", ctx.need_const(2, "B (the bias)").reshape(-1)))
    out = ctx.emit("conv", ins, n.outputs[0], strides=strides, dilations=dil, pads=tuple(pads),
                   groups=int(n.attr("group", 1)))
    return [Value(out, x.layout)]


@handles("BatchNormalization")
def _batch_norm(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    if int(n.attr("training_mode", 0)):
        raise ctx.fail("training_mode=1 is not supported (inference only)")
    params = [ctx.need_const(i, what).astype(np.float32) for i, what in
              ((1, "scale"), (2, "B"), (3, "mean"), (4, "var"))]
    if any(p.ndim != 1 for p in params) or (int(n.attr("spatial", 1)) == 0 and x.layout.rank > 2):
        raise ctx.fail("only per-channel statistics are supported (spatial=1)")
    if x.layout.flat is not None:
        params = [p[x.layout.flat.order] for p in params]
    elif x.layout.rank >= 3:
        x = ctx.channels_last(x)
    elif x.layout.rank != 2:
        raise ctx.fail(f"needs a [N, C, ...] input, got rank {x.layout.rank}")
    names = [ctx.add_const(f"{n.label}/{k}", p) for k, p in zip(("scale", "bias", "mean", "var"), params)]
    out = ctx.emit("batch_norm", [x.ir, *names], n.outputs[0], epsilon=float(n.attr("epsilon", 1e-5)))
    return [Value(out, x.layout)]


@handles("LRN")
def _lrn(ctx: Context, n: OnnxNode) -> list[Bound]:
    size = n.attr("size")
    if size is None or int(size) < 1:
        raise ctx.fail(f"size {size!r} must be a positive integer")
    x = ctx.value(0)
    # The window runs along the channels: they must be the IR's last axis, in ONNX order.
    x = ctx.channels_last(x) if x.layout.rank >= 3 else ctx.unflat(x)
    if x.layout.rank < 2:
        raise ctx.fail(f"needs a [N, C, ...] input, got rank {x.layout.rank}")
    out = ctx.emit("lrn", [x.ir], n.outputs[0], size=int(size), alpha=float(n.attr("alpha", 1e-4)),
                   beta=float(n.attr("beta", 0.75)), bias=float(n.attr("bias", 1.0)))
    return [Value(out, x.layout)]


# ------------------------------------------------------------------- pooling
def _pool_window(ctx: Context, n: OnnxNode, x: Value) -> tuple[tuple[int, ...], tuple[int, ...], Pads, list[int]]:
    nsp = x.layout.rank - 2
    kernel = _ints(n.attr("kernel_shape"), nsp, 0)
    if len(kernel) != nsp or min(kernel) < 1:
        raise ctx.fail(f"kernel_shape {list(kernel)} must give {nsp} positive sizes")
    if any(d != 1 for d in _ints(n.attr("dilations"), nsp, 1)):
        raise ctx.fail("dilated pooling is not supported")
    strides = _ints(n.attr("strides"), nsp, 1)
    sizes = ctx.onnx_shape(x)[2:]
    pads = window_pads(ctx, n, sizes, kernel, strides, (1,) * nsp)
    ceil = int(n.attr("ceil_mode", 0)) and (n.attr("auto_pad", "NOTSET") or "NOTSET") == "NOTSET"
    extra = ceil_extra(sizes, kernel, strides, pads) if ceil else [0] * nsp
    return kernel, strides, pads, extra


@handles("MaxPool")
def _max_pool(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = _spatial_input(ctx)
    kernel, strides, pads, extra = _pool_window(ctx, n, x)
    x = ctx.channels_last(x)
    total = tuple((a, b + e) for (a, b), e in zip(pads, extra))
    return [Value(ctx.emit("max_pool", [x.ir], n.outputs[0], kernel=kernel, strides=strides, pads=total),
                  x.layout)]


@handles("AveragePool")
def _avg_pool(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = _spatial_input(ctx)
    kernel, strides, pads, extra = _pool_window(ctx, n, x)
    x = ctx.channels_last(x)
    include = bool(int(n.attr("count_include_pad", 0)))
    if include and any(extra):
        # The explicit padding counts, the ceil_mode overhang does not: pad explicitly, then
        # pool the overhang without counting it.
        padded = ctx.emit("pad", [x.ir], f"{n.outputs[0]}/pad", pads=((0, 0), *pads, (0, 0)))
        out = ctx.emit("avg_pool", [padded], n.outputs[0], kernel=kernel, strides=strides,
                       pads=tuple((0, e) for e in extra), count_include_pad=False)
    else:
        total = tuple((a, b + e) for (a, b), e in zip(pads, extra))
        out = ctx.emit("avg_pool", [x.ir], n.outputs[0], kernel=kernel, strides=strides, pads=total,
                       count_include_pad=include)
    return [Value(out, x.layout)]


def _global_pool(ctx: Context, n: OnnxNode, op: str, keepdims: bool) -> Value:
    x = ctx.channels_last(_spatial_input(ctx))
    out = ctx.emit(op, [x.ir], n.outputs[0], keepdims=keepdims)
    return Value(out, x.layout if keepdims else Layout(identity(2)))


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global(ctx: Context, n: OnnxNode) -> list[Bound]:
    return [_global_pool(ctx, n, "global_avg_pool" if n.op == "GlobalAveragePool" else "global_max_pool", True)]


@handles("ReduceMean", "ReduceMax")
def _reduce(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    rank = x.layout.rank
    axes_in = ctx.const(1) if ctx.opset >= 18 else n.attr("axes")
    if ctx.opset >= 18 and ctx.has(1) and axes_in is None:
        raise ctx.fail("axes (input 1) must be a constant")
    axes = {ctx.axis(int(a), rank) for a in np.asarray(axes_in if axes_in is not None else [], np.int64).reshape(-1)}
    if not axes:
        if int(n.attr("noop_with_empty_axes", 0)):
            return [x]
        axes = set(range(rank))
    if 0 in axes:
        raise ctx.fail(f"reduces over axes {sorted(axes)}, the batch axis included; not supported")
    keepdims = bool(int(n.attr("keepdims", 1)))
    if 0 in [ctx.onnx_shape(x)[a] for a in axes]:
        return [_empty_reduction(ctx, n, x, axes, keepdims)]
    op = "global_avg_pool" if n.op == "ReduceMean" else "global_max_pool"
    return [reduce_axes(ctx, x, axes, op, keepdims, n.outputs[0])]


def _empty_reduction(ctx: Context, n: OnnxNode, x: Value, axes: set[int], keepdims: bool) -> Value:
    """ReduceMax over no elements: -inf, as the ONNX spec defines it (ReduceMean's is undefined).

    Each reduced axis is padded from 0 to 1 element holding -inf; no pool runs, as
    onnxruntime's max pools give -FLT_MAX, not -inf, for a window of -inf.
    """
    shape = ctx.onnx_shape(x)
    if n.op != "ReduceMax":
        raise ctx.fail(f"reduces the empty tensor {list(shape)} over axes {sorted(axes)}; ONNX leaves that "
                       "undefined")
    kept = [a for a in range(1, len(shape)) if a not in axes]
    if any(shape[a] for a in axes) or not all(shape[a] for a in kept):
        raise ctx.fail(f"reduces the empty tensor {list(shape)} over axes {sorted(axes)}; only a reduction over "
                       "empty axes alone, keeping non-empty ones, is supported")
    x = ctx.unflat(x)
    pads = tuple((0, 1) if a in axes else (0, 0) for a in x.layout.perm)
    padded = Value(ctx.emit("pad", [x.ir], n.outputs[0] if keepdims else f"{n.outputs[0]}/empty_set",
                            pads=pads, value=float("-inf")), x.layout)
    if keepdims:
        return padded
    # Every element holds the same value, so the unit axes can go in any storage order.
    out_shape = [shape[a] for a in range(len(shape)) if a not in axes]
    return ctx.reshape_to(padded, identity(len(out_shape)), out_shape, n.outputs[0])


def reduce_axes(ctx: Context, x: Value, axes: set[int], op: str, keepdims: bool, name: str) -> Value:
    """A mean/max over non-batch ``axes`` as a global pool over the IR axes between batch and last.

    The input is stored with the reduced axes first and the kept ones last (a transpose only
    if they are interleaved); several kept axes are merged into the last one by a reshape.
    """
    rank = x.layout.rank
    if axes != set(range(1, rank)):  # a reduction over every feature ignores their order
        x = ctx.unflat(x)
    perm = x.layout.perm if x.layout.flat is None else identity(rank)
    red = [a for a in perm if a in axes]
    kept = [a for a in perm[1:] if a not in axes]
    shape = ctx.onnx_shape(x)
    x = ctx.with_perm(x, (0, *red, *kept)) if x.layout.flat is None else x
    if len(kept) != 1:
        total = [int(np.prod([shape[a] for a in red])), int(np.prod([shape[a] for a in kept]))]
        x = Value(ctx.emit("reshape", [x.ir], f"{name}/3d", shape=tuple(total)), Layout(identity(3)))
    pooled = ctx.emit(op, [x.ir], name if len(kept) == 1 else f"{name}/pool", keepdims=len(kept) == 1 and keepdims)
    out_perm = (0, *red, *kept) if keepdims else (0, *(sorted(kept).index(a) + 1 for a in kept))
    out_shape = [1 if a in axes else shape[a] for a in range(rank)] if keepdims else \
        [shape[0], *(shape[a] for a in sorted(kept))]
    layout = Layout(out_perm)
    if len(kept) == 1:
        return Value(pooled, layout if keepdims else Layout(identity(2)))
    return ctx.reshape_to(Value(pooled, Layout(identity(2))), out_perm, out_shape, name)


# ----------------------------------------------------------------------- pad
def _pad_amounts(ctx: Context, n: OnnxNode, rank: int) -> tuple[list[tuple[int, int]], float]:
    if ctx.opset < 11:
        pads, value = n.attr("pads"), float(n.attr("value", 0.0))
    else:
        pads = ctx.need_const(1, "pads")
        value = float(np.asarray(ctx.const(2)).reshape(-1)[0]) if ctx.has(2) else 0.0
        if ctx.has(2) and ctx.const(2) is None:
            raise ctx.fail("constant_value (input 2) must be a constant")
    pads = [int(p) for p in np.asarray(pads, np.int64).reshape(-1)]
    axes = list(range(rank))
    if ctx.has(3):
        axes = [ctx.axis(int(a), rank) for a in ctx.need_const(3, "axes").reshape(-1)]
    if len(pads) != 2 * len(axes):
        raise ctx.fail(f"pads {pads} must give a begin and an end for each of {len(axes)} axes")
    pairs = [(0, 0)] * rank
    for i, a in enumerate(axes):
        pairs[a] = (pads[i], pads[i + len(axes)])
    if min(pads, default=0) < 0:
        raise ctx.fail("negative pads (cropping) are not supported")
    if pairs[0] != (0, 0):
        raise ctx.fail("padding the batch axis is not supported")
    return pairs, value


@handles("Pad")
def _pad(ctx: Context, n: OnnxNode) -> list[Bound]:
    mode = n.attr("mode", "constant") or "constant"
    if mode != "constant":
        raise ctx.fail(f"mode={mode!r} is not supported (constant only)")
    x = ctx.unflat(ctx.value(0))
    pairs, value = _pad_amounts(ctx, n, x.layout.rank)
    ir_pads = tuple(pairs[a] for a in x.layout.perm)
    return [Value(ctx.emit("pad", [x.ir], n.outputs[0], pads=ir_pads, value=value), x.layout)]


# -------------------------------------------------------------------- resize
def _nearest_source(out: int, scale: int, size: int, coord: str, rounding: str) -> np.ndarray:
    """The input index ONNX's nearest Resize reads for each output index."""
    x = np.arange(out, dtype=np.float64)
    if coord in ("half_pixel", "half_pixel_symmetric") or (coord == "pytorch_half_pixel" and out > 1):
        src = (x + 0.5) / scale - 0.5
    elif coord == "pytorch_half_pixel":
        src = np.zeros_like(x)
    elif coord == "asymmetric":
        src = x / scale
    elif coord == "align_corners":
        src = x * (size - 1) / (out - 1) if out > 1 else np.zeros_like(x)
    elif coord == "tf_half_pixel_for_nn":
        src = (x + 0.5) / scale
    else:
        raise ValueError(coord)
    rounded = {"round_prefer_floor": np.ceil(src - 0.5), "round_prefer_ceil": np.floor(src + 0.5),
               "floor": np.floor(src), "ceil": np.ceil(src)}[rounding]
    return np.clip(rounded, 0, size - 1).astype(np.int64)


def _upsample(ctx: Context, n: OnnxNode, scales: np.ndarray, coord: str, rounding: str) -> list[Bound]:
    x = _spatial_input(ctx)
    shape = ctx.onnx_shape(x)
    if len(scales) != len(shape):
        raise ctx.fail(f"scales {scales.tolist()} must have one entry per axis of the rank-{len(shape)} input")
    if scales[0] != 1 or scales[1] != 1:
        raise ctx.fail("resizing the batch or channel axis is not supported")
    ints = [int(round(float(s))) for s in scales[2:]]
    if any(s < 1 or abs(float(f) - s) > 1e-6 for s, f in zip(ints, scales[2:])):
        raise ctx.fail(f"only integer upsampling factors are supported, got {scales[2:].tolist()}")
    for s, size in zip(ints, shape[2:]):
        try:
            src = _nearest_source(size * s, s, size, coord, rounding)
        except (ValueError, KeyError):
            raise ctx.fail(f"coordinate_transformation_mode={coord!r} / nearest_mode={rounding!r} "
                           "is not supported") from None
        if not np.array_equal(src, np.arange(size * s) // s):
            raise ctx.fail(f"nearest resize with {coord!r}/{rounding!r} at scale {s} is not a plain "
                           "repetition of pixels; not supported")
    if all(s == 1 for s in ints):
        return [x]
    x = ctx.channels_last(x)
    return [Value(ctx.emit("resize", [x.ir], n.outputs[0], scales=tuple(ints), mode="nearest"), x.layout)]


def _resize_scales(ctx: Context, n: OnnxNode, rank: int, shape: Sequence[int]) -> np.ndarray:
    if ctx.opset < 11:
        return np.asarray(ctx.need_const(1, "scales"), np.float64).reshape(-1)
    axes = [ctx.axis(int(a), rank) for a in (n.attr("axes") or range(rank))]
    scales, sizes = ctx.const(2), ctx.const(3)
    if (ctx.has(2) and scales is None) or (ctx.has(3) and sizes is None):
        raise ctx.fail("scales and sizes must be constants")
    full = np.ones(rank)
    if scales is not None and scales.size:
        full[axes] = np.asarray(scales, np.float64).reshape(-1)
    elif sizes is not None and sizes.size:
        if any(shape[a] == 0 for a in axes):
            raise ctx.fail(f"resizes the empty tensor {list(shape)} to sizes; no scale follows from them")
        full[axes] = np.asarray(sizes, np.float64).reshape(-1) / np.asarray([shape[a] for a in axes], np.float64)
        policy = n.attr("keep_aspect_ratio_policy", "stretch") or "stretch"
        if policy in ("not_larger", "not_smaller"):  # one scale for all listed axes
            full[axes] = (min if policy == "not_larger" else max)(full[axes])
        elif policy != "stretch":
            raise ctx.fail(f"keep_aspect_ratio_policy={policy!r} is not supported")
        if 0 in axes and int(np.asarray(sizes).reshape(-1)[axes.index(0)]) == ctx.batch:
            full[0] = 1.0  # the batch as exported (or as folded): the batch is kept, whatever it is
    else:
        raise ctx.fail("needs scales or sizes")
    return full


@handles("Resize")
def _resize(ctx: Context, n: OnnxNode) -> list[Bound]:
    mode = n.attr("mode", "nearest")
    if mode != "nearest":
        raise ctx.fail(f"mode={mode!r} is not supported (nearest only)")
    x = _spatial_input(ctx)
    shape = ctx.onnx_shape(x)
    scales = _resize_scales(ctx, n, len(shape), shape)
    if ctx.opset < 11:  # Resize-10 maps coordinates like Upsample
        return _upsample(ctx, n, scales, "asymmetric", "floor")
    coord = n.attr("coordinate_transformation_mode", "half_pixel")
    return _upsample(ctx, n, scales, coord, n.attr("nearest_mode", "round_prefer_floor"))


@handles("Upsample")
def _upsample_op(ctx: Context, n: OnnxNode) -> list[Bound]:
    mode = n.attr("mode", "nearest")
    if mode != "nearest":
        raise ctx.fail(f"mode={mode!r} is not supported (nearest only)")
    scales = n.attr("scales") if ctx.opset < 9 else ctx.need_const(1, "scales")
    return _upsample(ctx, n, np.asarray(scales, np.float64).reshape(-1), "asymmetric", "floor")

