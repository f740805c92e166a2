"""Handlers for Gemm and MatMul: dense layers (weights constant) or matmuls of two runtime values.

A dense layer reading a flattened channels-first tensor (``Layout.flat``) absorbs the
element order by permuting its weight rows, so no transpose runs before it.
"""

from __future__ import annotations

import numpy as np

from tapeout.compiler.frontends.onnx_context import Bound, Context, Handler, OnnxNode, Value, registrar
from tapeout.compiler.frontends.onnx_layout import Layout, identity
from tapeout.compiler.frontends.onnx_ops_shape import reshape

HANDLERS: dict[str, Handler] = {}
handles = registrar(HANDLERS)


def dense(ctx: Context, x: Value, w: np.ndarray, bias: np.ndarray | None, name: str, base: str) -> Value:
    """``x @ w (+ bias)`` over x's last ONNX axis, in x's layout where that keeps the axis last."""
    w = np.asarray(w, dtype=np.float32)
    if x.layout.flat is not None:
        w = w[x.layout.flat.order]
    elif x.layout.perm[-1] != x.layout.rank - 1:
        x = ctx.native(x)
    ins = [x.ir, ctx.add_const(f"{base}/weights", w)]
    if bias is not None:
        ins.append(ctx.add_const(f"{base}/bias", np.asarray(bias, dtype=np.float32)))
    layout = Layout(identity(2)) if x.layout.flat is not None else x.layout
    return Value(ctx.emit("dense", ins, name), layout)


def _gemm_bias(ctx: Context, c: np.ndarray, m: int) -> np.ndarray:
    """Gemm's C as one row of M: it must be the same for every sample."""
    c = np.asarray(c, dtype=np.float32)
    if c.ndim > 2:
        raise ctx.fail(f"C has rank {c.ndim}; at most 2 is allowed")
    c2 = c.reshape((1,) * (2 - c.ndim) + c.shape)
    try:
        rows = np.broadcast_to(c2, (c2.shape[0], m))
    except ValueError:
        raise ctx.fail(f"C of shape {list(c.shape)} does not broadcast to [batch, {m}]") from None
    if not np.all(rows == rows[:1]):
        raise ctx.fail("C differs per sample (one row per batch element); that ties the model to one batch size")
    return rows[0]


@handles("Gemm")
def _gemm(ctx: Context, n: OnnxNode) -> list[Bound]:
    if int(n.attr("transA", 0)):
        raise ctx.fail("transA=1 puts the batch on the contracted axis; not supported")
    x = ctx.value(0)
    if x.layout.rank != 2:
        raise ctx.fail(f"A must have rank 2, got {x.layout.rank}")
    b = ctx.need_const(1, "B (the weights)")
    w = (b.T if int(n.attr("transB", 0)) else b) * np.float32(n.attr("alpha", 1.0))
    beta = np.float32(n.attr("beta", 1.0))
    c = ctx.const(2)
    if ctx.has(2) and c is None:  # C computed at run time: a dense, then a broadcasting add
        y = dense(ctx, x, w, None, f"{n.outputs[0]}/matmul", n.label)
        terms = [y.ir, ctx.unflat(ctx.value(2)).ir]
        if beta != 1:
            terms[1] = ctx.emit("mul", [terms[1], ctx.add_const(f"{n.label}/beta", np.array([beta]))],
                                f"{n.outputs[0]}/beta_c")
        return [Value(ctx.emit("add", terms, n.outputs[0]), y.layout)]
    bias = None if c is None else _gemm_bias(ctx, c, w.shape[1]) * beta
    return [dense(ctx, x, w, bias, n.outputs[0], n.label)]


@handles("MatMul")
def _matmul(ctx: Context, n: OnnxNode) -> list[Bound]:
    a, b = (ctx.bound(n.inputs[i]) for i in (0, 1))
    if isinstance(a, Value) and isinstance(b, np.ndarray) and b.ndim == 2:
        return [dense(ctx, a, b, None, n.outputs[0], n.label)]
    if isinstance(a, Value) and isinstance(b, np.ndarray) and b.ndim == 1:
        # x @ v contracts the last axis and drops it: a dense to one feature, then a reshape.
        y = dense(ctx, a, b.reshape(-1, 1), None, f"{n.outputs[0]}/column", n.label)
        return [reshape(ctx, y, ctx.onnx_shape(y)[:-1], n.outputs[0])]
    return [_general_matmul(ctx, n, a, b)]


def _general_matmul(ctx: Context, n: OnnxNode, a: Bound, b: Bound) -> Value:
    """NumPy matmul on ONNX-ordered operands; the batch must stay the leading batch axis."""
    ranks = [x.layout.rank if isinstance(x, Value) else x.ndim for x in (a, b)]
    rank = max(ranks)
    if rank < 3 or any(isinstance(x, Value) and x.layout.rank != rank for x in (a, b)):
        raise ctx.fail(f"a matmul of ranks {ranks} would contract or move the batch axis")
    ins = []
    for name, x in zip(n.inputs[:2], (a, b)):
        if isinstance(x, Value):
            ins.append(ctx.native(x).ir)
        else:
            if x.ndim == rank and x.shape[0] != 1:
                raise ctx.fail(f"constant {name!r} has a batch axis of {x.shape[0]}; that ties the batch size")
            ins.append(ctx.add_const(name, x.reshape(x.shape[1:]) if x.ndim == rank else x))
    return Value(ctx.emit("matmul", ins, n.outputs[0]), Layout(identity(rank)))
