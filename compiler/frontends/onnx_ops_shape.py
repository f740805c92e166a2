"""Handlers for shape ops: Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Slice, Split.

A Transpose moves no data: it only changes how the IR tensor maps to ONNX axes, so
pairs of transposes cancel and a transpose before a conv is absorbed. A reshape moves
data only when ``plan_reshape`` says the element order really changes (channel
shuffle); a flatten of a channels-last tensor stays flattened in IR order until a
consumer needs ONNX order (a dense layer never does: it permutes its weight rows).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

from tapeout.compiler.frontends.onnx_context import Bound, Context, Handler, OnnxNode, Value, registrar
from tapeout.compiler.frontends.onnx_layout import (
    Layout, after_transpose, plan_reshape, reshape_target, slice_axes, split_sizes, to_ir_shape)

HANDLERS: dict[str, Handler] = {}
handles = registrar(HANDLERS)


def reshape(ctx: Context, x: Value, dst: Sequence[int], name: str) -> Value:
    """``x`` reshaped to the ONNX shape ``dst`` (batch at axis 0, as ``ctx.batch``)."""
    src = ctx.onnx_shape(x)
    dst = tuple(int(d) for d in dst)
    if not dst or dst[0] != ctx.batch:
        raise ctx.fail(f"reshapes {list(src)} to {list(dst)}, which changes the batch axis "
                       f"(its first dimension must stay {ctx.batch})")
    if dst == src:
        return x
    if 0 in src:
        # The axis-run planner needs sizes >= 1, and the ONNX target writes a 0 in a Reshape
        # target as "copy this dim"; an empty tensor has no data to reshape anyway.
        raise ctx.fail(f"reshapes the empty tensor {list(src)} to {list(dst)}; not supported")
    if x.layout.flat is not None:
        x = ctx.unflat(x)
    plan = plan_reshape(src, x.layout.perm, dst)
    if plan.flatten:
        return ctx.flatten(x, name)
    if plan.before is None:
        resized = _repeat_as_resize(ctx, x.ir, to_ir_shape(dst, plan.after), name)
        if resized is not None:
            return Value(resized, Layout(plan.after))
    if plan.before is not None:
        x = ctx.with_perm(x, plan.before)
    return ctx.reshape_to(x, plan.after, dst, name)


def _repeat_as_resize(ctx: Context, ir: str, out_shape: Sequence[int], name: str) -> str | None:
    """Unsqueeze -> Tile/Expand -> Reshape (how exporters write nearest UpSampling) as one IR resize.

    Matches IR ``reshape(v, unit axis after spatial axis j) * ones(r on it)`` being merged
    back into axis j: that is every pixel of v repeated r times along j.
    """
    g = ctx.graph
    mul = ctx.producer.get(ir)
    ones = g.constants.get(mul.inputs[1]) if mul is not None and mul.op == "mul" else None
    if ones is None or not np.all(ones == 1):
        return None
    unsq = ctx.producer.get(mul.inputs[0])
    if unsq is None or unsq.op != "reshape":
        return None
    src = tuple(g.type_of(unsq.inputs[0]).shape)
    mid, grown = tuple(g.type_of(unsq.outputs[0]).shape), tuple(g.type_of(mul.outputs[0]).shape)
    for j in range(1, len(src) - 1):
        r = grown[j + 1] if len(grown) == len(src) + 1 else 0
        if (mid == (*src[:j + 1], 1, *src[j + 1:]) and grown == (*src[:j + 1], r, *src[j + 1:])
                and tuple(out_shape[1:]) == (*src[1:j], src[j] * r, *src[j + 1:])):
            scales = tuple(r if k == j else 1 for k in range(1, len(src) - 1))
            return ctx.emit("resize", [unsq.inputs[0]], name, scales=scales, mode="nearest")
    return None


@handles("Reshape")
def _reshape(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    target = ctx.need_const(1, "shape")
    src = ctx.onnx_shape(x)
    allowzero = bool(int(n.attr("allowzero", 0)))
    try:
        dst = reshape_target(src, [int(d) for d in np.asarray(target).reshape(-1)], allowzero)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    return [reshape(ctx, x, dst, n.outputs[0])]


@handles("Flatten")
def _flatten(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    src = ctx.onnx_shape(x)
    rank = len(src)
    axis = int(n.attr("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis <= rank:
        raise ctx.fail(f"axis {axis} is out of range for rank {rank}")
    if axis == 0:
        if ctx.fixed_batch != 1:
            raise ctx.fail("axis 0 flattens the whole batch into one row; only a model with a fixed batch "
                           "of 1 can do that")
        ctx.note(f"Flatten {n.label!r} has axis 0, which ties the model to batch 1; it is imported as a "
                 "per-sample flatten, identical at batch 1 (run the compiled model at batch 1 to keep "
                 "the source's meaning)")
        ctx.tied_batch = True
    elif math.prod(src[1:axis]) != 1:
        raise ctx.fail(f"axis {axis} merges the batch with axes 1..{axis - 1}; not supported")
    return [reshape(ctx, x, (src[0], math.prod(src[max(axis, 1):])), n.outputs[0])]


def _axes(ctx: Context, n: OnnxNode, rank: int) -> list[int] | None:
    raw = n.attr("axes") if ctx.opset < 13 else ctx.const(1)
    if ctx.opset >= 13 and ctx.has(1) and raw is None:
        raise ctx.fail("axes (input 1) must be a constant")
    if raw is None:
        return None
    return sorted(ctx.axis(int(a), rank) for a in np.asarray(raw, np.int64).reshape(-1))


@handles("Squeeze")
def _squeeze(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    src = ctx.onnx_shape(x)
    axes = _axes(ctx, n, len(src))
    if axes is None:
        if ctx.fixed_batch == 1:
            raise ctx.fail("squeezing every unit axis would remove the batch axis of this batch-1 model; "
                           "give explicit axes")
        axes = [a for a in range(1, len(src)) if src[a] == 1]
    if any(src[a] != 1 for a in axes):
        raise ctx.fail(f"axes {axes} of shape {list(src)} are not all of size 1")
    kept = [a for a in range(1, len(src)) if a not in axes]
    if 0 in axes:
        # At a fixed batch of 1, dropping axis 0 when the next kept axis is a unit one (x[0] of a
        # [1, 1, ...] tensor, as PyTorch indexes) equals dropping that axis instead.
        if ctx.fixed_batch != 1 or not kept or src[kept[0]] != 1:
            raise ctx.fail("removing the batch axis is not supported")
        ctx.note(f"Squeeze {n.label!r} removes axis 0, which ties the model to batch 1; it is imported as "
                 f"removing axis {kept[0]} instead, identical at batch 1 (run the compiled model at batch 1 to "
                 "keep the source's meaning)")
        ctx.tied_batch = True
        axes = sorted({*axes, kept[0]} - {0})
    dst = [d for a, d in enumerate(src) if a not in axes]
    return [reshape(ctx, x, dst, n.outputs[0])]


@handles("Unsqueeze")
def _unsqueeze(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    src = list(ctx.onnx_shape(x))
    raw = n.attr("axes") if ctx.opset < 13 else ctx.need_const(1, "axes")
    rank = len(src) + len(np.asarray(raw).reshape(-1))
    axes = sorted(ctx.axis(int(a), rank) for a in np.asarray(raw, np.int64).reshape(-1))
    if 0 in axes:
        raise ctx.fail("inserting an axis before the batch axis is not supported")
    for a in axes:
        src.insert(a, 1)
    return [reshape(ctx, x, src, n.outputs[0])]


@handles("Transpose")
def _transpose(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    rank = x.layout.rank
    perm = [int(p) for p in (n.attr("perm") or range(rank - 1, -1, -1))]
    if sorted(perm) != list(range(rank)):
        raise ctx.fail(f"perm {perm} is not a permutation of {rank} axes")
    if perm[0] != 0:
        raise ctx.fail(f"perm {perm} moves the batch axis; not supported")
    if perm == list(range(rank)):
        return [x]
    x = ctx.unflat(x)
    return [Value(x.ir, Layout(after_transpose(x.layout.perm, perm)))]


@handles("Concat")
def _concat(ctx: Context, n: OnnxNode) -> list[Bound]:
    names = [i for i in n.inputs if i]
    bound = [ctx.bound(name) for name in names]
    if any(isinstance(b, np.ndarray) for b in bound):
        raise ctx.fail("concatenating a constant with computed values is not supported (it would need a copy "
                       "per sample)")
    values = [ctx.unflat(b) for b in bound]
    rank = values[0].layout.rank
    if any(v.layout.rank != rank for v in values):
        raise ctx.fail("inputs have different ranks")
    axis = ctx.axis(int(n.attr("axis")), rank)
    if axis == 0:
        raise ctx.fail("concatenating along the batch axis is not supported")
    if len(values) == 1:
        return [values[0]]
    perm = Counter(v.layout.perm for v in values).most_common(1)[0][0]
    ins = [ctx.with_perm(v, perm).ir for v in values]
    return [Value(ctx.emit("concat", ins, n.outputs[0], axis=perm.index(axis)), Layout(perm))]


def _ones_like_growth(ctx: Context, x: Value, grown: Sequence[int], name: str) -> Value:
    """Broadcast the unit axes of ``x`` to the ONNX shape ``grown`` by multiplying with ones."""
    src = ctx.onnx_shape(x)
    ir_in = [src[a] for a in x.layout.perm]
    ir_out = [grown[a] for a in x.layout.perm]
    if ir_in == ir_out:
        return x
    ones = np.ones([1, *(o if i != o else 1 for i, o in zip(ir_in[1:], ir_out[1:]))], np.float32)
    return Value(ctx.emit("mul", [x.ir, ctx.add_const(f"{name}/ones", ones)], name), x.layout)


@handles("Tile")
def _tile(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.unflat(ctx.value(0))
    src = ctx.onnx_shape(x)
    reps = [int(r) for r in ctx.need_const(1, "repeats").reshape(-1)]
    if len(reps) != len(src) or min(reps) < 1:
        raise ctx.fail(f"repeats {reps} must give a positive count for each of {len(src)} axes")
    if reps[0] != 1:
        raise ctx.fail("repeating along the batch axis is not supported")
    # A unit axis repeated is a broadcast (multiply by ones); any other axis, a concat of copies.
    out = _ones_like_growth(ctx, x, [r if d == 1 else d for d, r in zip(src, reps)], f"{n.outputs[0]}/grown")
    for a, r in enumerate(reps):
        if r > 1 and src[a] != 1:
            ir_axis = out.layout.perm.index(a)
            out = Value(ctx.emit("concat", [out.ir] * r, f"{n.outputs[0]}/axis{a}", axis=ir_axis), out.layout)
    return [out]


@handles("Expand")
def _expand(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.unflat(ctx.value(0))
    src = ctx.onnx_shape(x)
    target = [int(d) for d in ctx.need_const(1, "shape").reshape(-1)]
    try:
        grown = list(np.broadcast_shapes(tuple(src), tuple(target)))
    except ValueError:
        raise ctx.fail(f"shape {target} does not broadcast with {list(src)}") from None
    if len(grown) != len(src) or grown[0] != src[0]:
        raise ctx.fail(f"expanding {list(src)} to {grown} changes the rank or the batch axis; not supported")
    return [_ones_like_growth(ctx, x, grown, n.outputs[0])]


def _slice(ctx: Context, x: Value, axes: Sequence[int], starts: Sequence[int], ends: Sequence[int],
           steps: Sequence[int], name: str) -> Value:
    """``x`` sliced along ONNX axes, in its own storage (each axis remapped to where it is stored)."""
    x = ctx.unflat(x)
    try:
        spec = slice_axes(ctx.onnx_shape(x), axes, starts, ends, steps, ctx.fixed_batch is not None)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    if not spec:
        return x
    ir = [(x.layout.perm.index(a), b, e, s) for a, b, e, s in spec]
    out = ctx.emit("slice", [x.ir], name, axes=tuple(a for a, *_ in ir), starts=tuple(b for _, b, _, _ in ir),
                   ends=tuple(e for _, _, e, _ in ir), steps=tuple(s for *_, s in ir))
    return Value(out, x.layout)


def _ints(a: np.ndarray | None) -> list[int] | None:
    return None if a is None else [int(v) for v in np.asarray(a).reshape(-1)]


@handles("Slice")
def _slice_op(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    rank = x.layout.rank
    if ctx.opset < 10:  # Slice-1: attributes
        starts, ends, axes, steps = n.attr("starts"), n.attr("ends"), n.attr("axes"), None
    else:  # Slice-10+: constant inputs
        starts, ends = _ints(ctx.need_const(1, "starts")), _ints(ctx.need_const(2, "ends"))
        axes = _ints(ctx.need_const(3, "axes")) if ctx.has(3) else None
        steps = _ints(ctx.need_const(4, "steps")) if ctx.has(4) else None
    starts, ends = [int(v) for v in starts], [int(v) for v in ends]
    axes = list(range(len(starts))) if axes is None else [ctx.axis(int(a), rank) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.fail(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} differ in length")
    return [_slice(ctx, x, axes, starts, ends, steps, n.outputs[0])]


@handles("Split")
def _split(ctx: Context, n: OnnxNode) -> list[Bound]:
    """One IR slice per output (the IR's ops have one output each)."""
    x = ctx.value(0)
    src = ctx.onnx_shape(x)
    axis = ctx.axis(int(n.attr("axis", 0)), len(src))
    if ctx.opset < 13:  # Split-2/11: the sizes are an attribute
        sizes = n.attr("split")
    else:  # Split-13: an optional input; Split-18: or num_outputs
        sizes = _ints(ctx.need_const(1, "split")) if ctx.has(1) else None
    count = int(n.attr("num_outputs", len(n.outputs)))
    try:
        sizes = split_sizes(src[axis], None if sizes is None else [int(v) for v in sizes], count,
                            uneven=n.attr("num_outputs") is not None)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    if len(sizes) != len(n.outputs):
        raise ctx.fail(f"has {len(n.outputs)} outputs but splits into {len(sizes)} parts")
    if axis == 0:
        raise ctx.fail("splitting along the batch axis is not supported")
    out, begin = [], 0
    for name, size in zip(n.outputs, sizes):
        out.append(_slice(ctx, x, [axis], [begin], [begin + size], [1], name or f"{n.label}/part"))
        begin += size
    return out
