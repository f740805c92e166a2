"""One lowering per IR op: ``LOWERINGS[op](builder, node)`` appends the ONNX nodes.

Spatial ops (conv, pools, batch norm, resize) run channels-first; elementwise ops run in
whatever layout their inputs already have; flatten/reshape/matmul/dense on rank > 2 need
channels-last element order. ``Builder.get`` inserts a Transpose only where layouts differ.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Node
from tapeout.compiler.ops import ACTIVATION_OPS, slice_bounds, slice_spec
from tapeout.compiler.passes.prune import nm_violations
from tapeout.targets.onnx.activations import emit_activation
from tapeout.targets.onnx.builder import Builder
from tapeout.targets.onnx.layout import (broadcast_constant, flatten_row_order, physical_axes, physical_axis,
                                        physical_shape)

Lowering = Callable[[Builder, Node], None]
LOWERINGS: dict[str, Lowering] = {}


def _lowers(*ops: str) -> Callable[[Lowering], Lowering]:
    def deco(fn: Lowering) -> Lowering:
        for op in ops:
            LOWERINGS[op] = fn
        return fn

    return deco


def _optional(n: Node, i: int) -> str:
    return n.inputs[i] if len(n.inputs) > i and n.inputs[i] else ""


def _with_activation(b: Builder, n: Node, op_type: str, inputs: list[str], cf: bool, **attrs) -> None:
    """The main node named as the IR node, then its fused activation as a separate node."""
    out = n.outputs[0]
    act = n.attr("activation")
    pre = out if act.is_identity else b.fresh(f"{out}/linear")
    b.add(op_type, inputs, pre, n.name, **attrs)
    rank = b.rank(out)
    if not act.is_identity:
        emit_activation(b, act.op, act.attr_dict(), pre, out, b.fresh(f"{n.name}/{act.op}"), rank, cf)
    b.define(out, out, cf)


def _spatial_attrs(n: Node, nsp: int, pads_key: str = "pads") -> dict:
    strides = n.attrs.get("strides") or (1,) * nsp
    pads = n.attrs.get(pads_key) or ((0, 0),) * nsp
    return {"strides": [int(s) for s in strides],
            "pads": [int(p[0]) for p in pads] + [int(p[1]) for p in pads]}


# ----------------------------------------------------------------- dense/conv
@_lowers("dense")
def _dense(b: Builder, n: Node) -> None:
    x, w, bias = n.inputs[0], n.inputs[1], _optional(n, 2)
    if b.rank(x) == 2:
        order = b.row_orders.get(x)
        w_name = b.get(w) if order is None else b.derived(w, f"rows_of_{x}", lambda a: a[order])
        _with_activation(b, n, "Gemm", [b.get(x), w_name, b.get(bias) if bias else ""], False)
        return
    # Rank > 2: MatMul over the last (channel) axis, so channels-last.
    xw = [b.get(x, False), b.get(w)]
    if bias:
        mm = b.add_aux("MatMul", xw, f"{n.outputs[0]}/matmul")
        _with_activation(b, n, "Add", [mm, b.get(bias)], False)
    else:
        _with_activation(b, n, "MatMul", xw, False)


@_lowers("conv")
def _conv(b: Builder, n: Node) -> None:
    x, w, bias = n.inputs[0], n.inputs[1], _optional(n, 2)
    nsp = b.rank(x) - 2
    # [*K, C/g, F] -> [F, C/g, *K]
    perm = [nsp + 1, nsp, *range(nsp)]
    if w in b.graph.constants:
        w_name = b.derived(w, "oi" + "k" * nsp, lambda a: a.transpose(perm))
    else:
        w_name = b.add_aux("Transpose", [b.get(w)], f"{w}/oi{'k' * nsp}", perm=perm)
    attrs = _spatial_attrs(n, nsp)
    attrs["dilations"] = [int(d) for d in (n.attrs.get("dilations") or (1,) * nsp)]
    attrs["kernel_shape"] = [int(k) for k in b.graph.type_of(w).shape[:nsp]]
    attrs["group"] = int(n.attr("groups"))
    _with_activation(b, n, "Conv", [b.get(x, True), w_name, b.get(bias) if bias else ""], True, **attrs)


@_lowers("matmul")
def _matmul(b: Builder, n: Node) -> None:
    b.add("MatMul", [b.get(i, False) for i in n.inputs], n.outputs[0], n.name)
    b.define(n.outputs[0], n.outputs[0], False)


# -------------------------------------------------------------- normalisation
@_lowers("batch_norm")
def _batch_norm(b: Builder, n: Node) -> None:
    ins = [b.get(n.inputs[0], True)] + [b.get(i) for i in n.inputs[1:]]
    b.add("BatchNormalization", ins, n.outputs[0], n.name, epsilon=float(n.attr("epsilon")))
    b.define(n.outputs[0], n.outputs[0], True)


@_lowers("affine")
def _affine(b: Builder, n: Node) -> None:
    out = n.outputs[0]
    rank = b.rank(out)
    cf = b.common_layout(n.inputs, rank)
    x, scale, shift = (b.operand(i, cf, rank) for i in n.inputs)
    scaled = b.add_aux("Mul", [x, scale], f"{out}/scaled")
    b.add("Add", [scaled, shift], out, n.name)
    b.define(out, out, cf)


@_lowers("lrn")
def _lrn(b: Builder, n: Node) -> None:
    x, out = n.inputs[0], n.outputs[0]
    rank = b.rank(x)
    attrs = {"size": int(n.attr("size")), "alpha": float(n.attr("alpha")), "beta": float(n.attr("beta")),
             "bias": float(n.attr("bias"))}
    if rank == 4:
        b.add("LRN", [b.get(x, True)], out, n.name, **attrs)
        b.define(out, out, True)
        return
    # onnxruntime runs 4D LRN only: channels-first [N, C, *S] viewed as [N, C, S, 1] and back.
    phys = physical_shape(b.graph.type_of(x).shape, True)
    as_4d = b.int64s(f"{n.name}/shape_4d", [0, int(phys[1]), -1, 1])
    y = b.add("LRN", [b.add_aux("Reshape", [b.get(x, True), as_4d], f"{out}/4d")], b.fresh(f"{out}/lrn"), n.name,
              **attrs)
    b.add("Reshape", [y, b.int64s(f"{n.name}/shape", [0, *(int(d) for d in phys[1:])])], out, b.fresh(f"{out}/back"))
    b.define(out, out, True)


# ---------------------------------------------------------------- activations
def _activation(b: Builder, n: Node) -> None:
    x = n.inputs[0]
    cf = b.is_cf(x)
    emit_activation(b, n.op, n.attrs, b.get(x), n.outputs[0], n.name, b.rank(x), cf)
    b.define(n.outputs[0], n.outputs[0], cf)


_lowers(*ACTIVATION_OPS, "dropout")(_activation)


# -------------------------------------------------------------------- pooling
@_lowers("max_pool", "avg_pool")
def _pool(b: Builder, n: Node) -> None:
    x = n.inputs[0]
    kernel = [int(k) for k in n.attrs["kernel"]]
    attrs = _spatial_attrs(n, len(kernel))
    attrs["kernel_shape"] = kernel
    if n.op == "avg_pool":
        attrs["count_include_pad"] = int(bool(n.attr("count_include_pad")))
    b.add("MaxPool" if n.op == "max_pool" else "AveragePool", [b.get(x, True)], n.outputs[0], n.name, **attrs)
    b.define(n.outputs[0], n.outputs[0], True)


@_lowers("global_avg_pool", "global_max_pool")
def _global_pool(b: Builder, n: Node) -> None:
    out = n.outputs[0]
    op_type = "GlobalAveragePool" if n.op == "global_avg_pool" else "GlobalMaxPool"
    x = b.get(n.inputs[0], True)
    if n.attr("keepdims"):
        b.add(op_type, [x], out, n.name)
    else:
        # [N, C, 1, ...] -> [N, C]: spatial dims are 1, so the element order is layout-free.
        pooled = b.add_aux(op_type, [x], f"{out}/pooled")
        b.add("Flatten", [pooled], out, n.name, axis=1)
    b.define(out, out, True)


# ------------------------------------------------------------------- binaries
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "maximum": "Max", "minimum": "Min"}


@_lowers(*_BINARY)
def _binary(b: Builder, n: Node) -> None:
    out = n.outputs[0]
    rank = b.rank(out)
    cf = b.common_layout(n.inputs, rank)
    b.add(_BINARY[n.op], [b.operand(i, cf, rank) for i in n.inputs], out, n.name)
    b.define(out, out, cf)


@_lowers("concat")
def _concat(b: Builder, n: Node) -> None:
    out = n.outputs[0]
    rank = b.rank(out)
    cf = b.common_layout(n.inputs, rank)
    axis = physical_axis(int(n.attrs["axis"]), rank, cf)
    b.add("Concat", [b.operand(i, cf, rank) for i in n.inputs], out, n.name, axis=axis)
    b.define(out, out, cf)


# -------------------------------------------------------------------- shaping
@_lowers("flatten")
def _flatten(b: Builder, n: Node) -> None:
    x, out = n.inputs[0], n.outputs[0]
    users = b.consumers.get(out, [])
    # A channels-first input feeding only a dense with constant weights: flatten as is and
    # reorder the weight rows instead (no Transpose at run time).
    trick = (b.rank(x) >= 3 and b.is_cf(x) and out not in b.graph.outputs and len(users) == 1
             and users[0].op == "dense" and users[0].inputs[0] == out
             and users[0].inputs[1] in b.graph.constants and out not in users[0].inputs[1:])
    if trick:
        order = flatten_row_order(b.graph.type_of(x).shape[1:])
        if _breaks_nm_pattern(b, b.graph.constants[users[0].inputs[1]], order):
            trick = False  # a Transpose costs less than losing the sparse tensor-core pattern
        elif np.any(order != np.arange(order.size)):  # all-1 spatial dims: same order, keep the weights
            b.row_orders[out] = order
    layout = None if _no_spatial_extent(b, x) else trick  # [N, 1.., C]: both layouts hold one order
    b.add("Flatten", [b.get(x, layout)], out, n.name, axis=1)
    b.define(out, out, False)


def _breaks_nm_pattern(b: Builder, w: np.ndarray, order: np.ndarray) -> bool:
    """True when the weights hold the graph's N:M pattern along K and rows reordered by ``order`` would not."""
    pattern = b.graph.metadata.get("sparsity_pattern")
    if not pattern:
        return False
    n, m = (int(v) for v in str(pattern).split(":"))
    if w.shape[0] % m:
        return False
    return nm_violations(w, 0, n, m) == 0 and nm_violations(w[order], 0, n, m) > 0


def _no_spatial_extent(b: Builder, value: str) -> bool:
    """[N, C] or [N, 1, ..., 1, C]: channels-first and channels-last storage hold the same element order."""
    shape = b.graph.type_of(value).shape
    return len(shape) < 3 or all(d == 1 for d in shape[1:-1])


@_lowers("reshape")
def _reshape(b: Builder, n: Node) -> None:
    x, out = n.inputs[0], n.outputs[0]
    if _no_spatial_extent(b, x) and _no_spatial_extent(b, out):
        # Only unit axes come or go (a squeeze/unsqueeze around a global pool): reshape the
        # data as it is stored and keep rank >= 3 results channels-first, for the convs.
        cf = b.rank(out) >= 3
        phys = physical_shape(b.graph.type_of(out).shape, cf)
        shape = b.int64s(f"{n.name}/shape", [0, *(int(d) for d in phys[1:])])
        b.add("Reshape", [b.get(x), shape], out, n.name)
        b.define(out, out, cf)
        return
    # 0 copies the (dynamic) batch dim.
    shape = b.int64s(f"{n.name}/shape", [0, *(int(d) for d in n.attrs["shape"])])
    b.add("Reshape", [b.get(x, False), shape], out, n.name)
    b.define(out, out, False)


@_lowers("transpose")
def _transpose(b: Builder, n: Node) -> None:
    x, out = n.inputs[0], n.outputs[0]
    rank, cf = b.rank(x), b.is_cf(x)
    perm = [int(p) for p in n.attrs["perm"]]
    q = physical_axes(rank, cf)
    # The output keeps the input's storage layout; compose the logical perm with it.
    onnx_perm = [q.index(perm[q[j]]) for j in range(rank)]
    if onnx_perm == list(range(rank)):
        b.add("Identity", [b.get(x)], out, n.name)
    else:
        b.add("Transpose", [b.get(x)], out, n.name, perm=onnx_perm)
    b.define(out, out, cf)


@_lowers("pad")
def _pad(b: Builder, n: Node) -> None:
    x, out = n.inputs[0], n.outputs[0]
    rank, cf = b.rank(x), b.is_cf(x)
    pads = [tuple(int(v) for v in p) for p in n.attrs["pads"]]
    phys = [pads[a] for a in physical_axes(rank, cf)]
    pads_name = b.int64s(f"{n.name}/pads", [p[0] for p in phys] + [p[1] for p in phys])
    b.add("Pad", [b.get(x), pads_name, b.scalar(float(n.attr("value")))], out, n.name, mode="constant")
    b.define(out, out, cf)


@_lowers("slice")
def _slice(b: Builder, n: Node) -> None:
    x, out = n.inputs[0], n.outputs[0]
    rank, cf = b.rank(x), b.is_cf(x)
    shape = b.graph.type_of(x).shape
    axes, starts, ends, steps = [], [], [], []
    for axis, start, end, step in slice_spec(n, rank):
        lo, hi, step = slice_bounds(int(shape[axis]), start, end, step)
        axes.append(physical_axis(axis, rank, cf))
        starts.append(lo)
        ends.append(hi if hi >= 0 else -2**63)  # -1 after clamping: through element 0 (a negative step)
        steps.append(step)
    ins = [b.get(x), b.int64s(f"{n.name}/starts", starts), b.int64s(f"{n.name}/ends", ends),
           b.int64s(f"{n.name}/axes", axes), b.int64s(f"{n.name}/steps", steps)]
    b.add("Slice", ins, out, n.name)
    b.define(out, out, cf)


@_lowers("resize")
def _resize(b: Builder, n: Node) -> None:
    if n.attr("mode") != "nearest":
        raise UsageError(f"node {n.name!r}: the onnx target supports only nearest resize, not {n.attr('mode')!r}")
    out = n.outputs[0]
    scales = b.initializer(f"{n.name}/scales", np.array([1, 1, *n.attrs["scales"]], np.float32))
    b.add("Resize", [b.get(n.inputs[0], True), "", scales], out, n.name, mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    b.define(out, out, True)


# --------------------------------------------------------------- quantization
@_lowers("fixed_quant")
def _fixed_quant(b: Builder, n: Node) -> None:
    """The kernel's arithmetic in float ops, exact (``fixedpoint.arith.kif_grid`` says why): scale by
    2**f, floor, the rounding mode's +1 from the dropped fraction, wrap or saturate, scale back."""
    from tapeout.compiler.fixedpoint.arith import kif_grid
    from tapeout.compiler.ir import IRError
    from tapeout.compiler.ops import fixed_quant_modes

    x, *kif = n.inputs
    out, name = n.outputs[0], n.name
    try:
        rounding, overflow = fixed_quant_modes(n, b.graph.constants, "the onnx target")
    except IRError as e:
        raise UsageError(str(e)) from None  # the onnx target's bad input: exit 2
    try:
        grid = kif_grid(*(b.graph.constants[c] for c in kif))
    except ValueError as e:
        raise UsageError(f"node {name!r}: {e}") from None
    rank = b.rank(x)
    cf = b.is_cf(x) and rank >= 3
    src = b.get(x)

    def const(key: str, array: np.ndarray) -> str:
        return b.initializer(f"{name}/{key}", broadcast_constant(np.asarray(array, np.float32), rank, cf))

    def aux(op_type: str, *ins: str, **attrs) -> str:
        return b.add_aux(op_type, list(ins), f"{name}/{op_type.lower()}", **attrs)

    v = aux("Mul", src, const("scale", grid["scale"]))
    q = aux("Floor", v)
    d = aux("Sub", v, q)
    half, zero = b.scalar(0.5), b.scalar(0.0)
    qb = aux("GreaterOrEqual", d, half)
    rest = aux("And", aux("Not", aux("Equal", d, zero)), aux("Not", aux("Equal", d, half)))
    neg = aux("Less", src, zero)
    if rounding == "AP_RND":
        inc = qb
    elif rounding == "AP_RND_ZERO":
        inc = aux("And", qb, aux("Or", neg, rest))
    elif rounding == "AP_RND_MIN_INF":
        inc = aux("And", qb, rest)
    elif rounding == "AP_RND_INF":
        inc = aux("And", qb, aux("Or", aux("Not", neg), rest))
    elif rounding == "AP_RND_CONV":
        odd = aux("Sub", q, aux("Mul", b.scalar(2.0), aux("Floor", aux("Mul", q, half))))
        inc = aux("And", qb, aux("Or", aux("Not", aux("Equal", odd, zero)), rest))
    elif rounding == "AP_TRN_ZERO":
        inc = aux("And", neg, aux("Or", qb, rest))
    else:  # AP_TRN
        inc = ""
    raw = aux("Add", q, aux("Cast", inc, to=1)) if inc else q  # to=1: FLOAT
    if overflow == "AP_WRAP":
        lo, top, m = const("lo", grid["lo"]), const("top", grid["top"]), const("modulus", grid["modulus"])
        r = aux("Sub", raw, aux("Mul", m, aux("Floor", aux("Div", raw, m))))
        signed_over = aux("And", aux("Less", lo, zero), aux("GreaterOrEqual", r, top))
        r = aux("Where", signed_over, aux("Sub", r, m), r)  # signed: back into [lo, top)
        raw = aux("Where", aux("Or", aux("Less", raw, lo), aux("GreaterOrEqual", raw, top)), r, raw)
    elif overflow in ("AP_SAT", "AP_SAT_SYM"):
        lo = const("lo", grid["lo_sym" if overflow == "AP_SAT_SYM" else "lo"])
        raw = aux("Min", aux("Max", raw, lo), const("hi", grid["hi"]))
    else:  # AP_SAT_ZERO
        lo, top = const("lo", grid["lo"]), const("top", grid["top"])
        over = aux("Or", aux("Less", raw, lo), aux("GreaterOrEqual", raw, top))
        raw = aux("Where", over, zero, raw)
    b.add("Mul", [raw, const("step", grid["step"])], out, name)
    b.define(out, out, cf)
