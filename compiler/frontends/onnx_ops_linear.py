"""Handlers for Gemm and MatMul: dense layers (weights constant) or matmuls of two runtime values.

A dense layer reading a flattened channels-first tensor (``Layout.flat``) absorbs the
element order by permuting its weight rows, so no transpose runs before it.
"""

from __future__ import annotations

import numpy as np

from tapeout.compiler.frontends.onnx_context import Bound, Context, Handler, OnnxNode, Value, registrar
from tapeout.compiler.frontends.onnx_layout import Layout, identity

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
    bias = None
    if ctx.has(2):
        c = ctx.need_const(2, "C (the bias)")
        bias = _gemm_bias(ctx, c, w.shape[1]) * np.float32(n.attr("beta", 1.0))
    return [dense(ctx, x, w, bias, n.outputs[0], n.label)]


@handles("MatMul")
def _matmul(ctx: Context, n: OnnxNode) -> list[Bound]:
    a, b = (ctx.bound(n.inputs[i]) for i in (0, 1))
    if isinstance(a, Value) and isinstance(b, np.ndarray) and b.ndim == 2:
        return [dense(ctx, a, b, None, n.outputs[0], n.label)]
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
