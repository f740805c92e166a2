"""Handlers for element-wise ONNX ops: activations, broadcasting arithmetic, Softmax, Clip, no-ops.

Element-wise ops run in whatever layout their inputs already have; constants are
permuted to match (``align_constant``), so none of them moves data.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from tapeout.compiler.frontends.onnx_context import Bound, Context, Handler, OnnxNode, Value, registrar
from tapeout.compiler.frontends.onnx_layout import Layout, align_constant

HANDLERS: dict[str, Handler] = {}
handles = registrar(HANDLERS)

FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16 (onnx.TensorProto)
_F32_MAX = 3.4e38  # Clip's legacy attribute defaults are +-FLT_MAX: no bound


# -------------------------------------------------------------- unary
def unary(ctx: Context, op: str, **attrs: Any) -> list[Bound]:
    """``op`` applied to input 0, in its layout."""
    x = ctx.value(0)
    return [Value(ctx.emit(op, [x.ir], ctx.node.outputs[0], **attrs), x.layout)]


_SIMPLE = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hard_swish"}


@handles(*_SIMPLE)
def _simple(ctx: Context, n: OnnxNode) -> list[Bound]:
    return unary(ctx, _SIMPLE[n.op])


@handles("LeakyRelu")
def _leaky_relu(ctx: Context, n: OnnxNode) -> list[Bound]:
    return unary(ctx, "leaky_relu", alpha=float(n.attr("alpha", 0.01)))


@handles("Elu")
def _elu(ctx: Context, n: OnnxNode) -> list[Bound]:
    return unary(ctx, "elu", alpha=float(n.attr("alpha", 1.0)))


@handles("HardSigmoid")
def _hard_sigmoid(ctx: Context, n: OnnxNode) -> list[Bound]:
    return unary(ctx, "hard_sigmoid", alpha=float(n.attr("alpha", 0.2)), beta=float(n.attr("beta", 0.5)))


@handles("Gelu")
def _gelu(ctx: Context, n: OnnxNode) -> list[Bound]:
    approx = n.attr("approximate", "none")
    if approx not in ("none", "tanh"):
        raise ctx.fail(f"approximate={approx!r} is not supported (none or tanh)")
    return unary(ctx, "gelu", approximate=approx == "tanh")


@handles("Swish")
def _swish(ctx: Context, n: OnnxNode) -> list[Bound]:
    alpha = float(n.attr("alpha", 1.0))
    if alpha == 1.0:
        return unary(ctx, "swish")
    x = ctx.value(0)  # x * sigmoid(alpha * x)
    scaled = ctx.emit("mul", [x.ir, ctx.add_const(f"{n.label}/alpha", np.array([alpha]))], f"{n.outputs[0]}/ax")
    gate = ctx.emit("sigmoid", [scaled], f"{n.outputs[0]}/gate")
    return [Value(ctx.emit("mul", [x.ir, gate], n.outputs[0]), x.layout)]


def _bound(v: np.ndarray | None, default: float) -> float | None:
    x = default if v is None else float(np.asarray(v).reshape(-1)[0])
    return None if math.isnan(x) or abs(x) >= _F32_MAX else x


@handles("Clip")
def _clip(ctx: Context, n: OnnxNode) -> list[Bound]:
    if ctx.opset < 11:
        lo, hi = n.attr("min"), n.attr("max")
    else:
        for i, what in ((1, "min"), (2, "max")):
            if ctx.has(i) and ctx.const(i) is None:
                raise ctx.fail(f"{what} (input {i}) must be a constant")
        lo, hi = ctx.const(1), ctx.const(2)
    lo_v = _bound(None if lo is None else np.asarray(lo), -_F32_MAX)
    hi_v = _bound(None if hi is None else np.asarray(hi), _F32_MAX)
    return unary(ctx, "clip", min=lo_v, max=hi_v)


@handles("Identity", "Dropout")
def _identity(ctx: Context, n: OnnxNode) -> list[Bound]:
    if n.op == "Dropout" and ctx.has(2):
        training = ctx.need_const(2, "training_mode")
        if bool(np.asarray(training).reshape(-1)[0]):
            raise ctx.fail("training_mode=True is not supported (inference only)")
    return [ctx.bound(n.inputs[0])]


@handles("Cast")
def _cast(ctx: Context, n: OnnxNode) -> list[Bound]:
    if int(n.attr("to", 0)) not in FLOAT_TYPES:
        raise ctx.fail("only casts between float types are supported (the IR computes in float32)")
    return [ctx.value(0)]


@handles("Softmax")
def _softmax(ctx: Context, n: OnnxNode) -> list[Bound]:
    x = ctx.value(0)
    rank = x.layout.rank
    axis = ctx.axis(int(n.attr("axis", -1 if ctx.opset >= 13 else 1)), rank)
    if axis == 0:
        raise ctx.fail("softmax over the batch axis is not supported (it mixes samples)")
    if x.layout.flat is not None or ctx.opset >= 13 or axis == rank - 1:
        # One axis (a flattened value is normalized over all its features, in any order).
        ir_axis = 1 if x.layout.flat is not None else x.layout.perm.index(axis)
        return [Value(ctx.emit("softmax", [x.ir], n.outputs[0], axis=ir_axis), x.layout)]
    return [_coerced_softmax(ctx, n, x, axis)]


def _coerced_softmax(ctx: Context, n: OnnxNode, x: Value, axis: int) -> Value:
    """Opset < 13: softmax over axes ``axis..rank-1`` jointly (ONNX's coerce-to-2D)."""
    rank = x.layout.rank
    if set(x.layout.perm[axis:]) != set(range(axis, rank)):
        x = ctx.native(x)
    shape = ctx.ir_shape(x)
    flat = ctx.emit("reshape", [x.ir], f"{n.outputs[0]}/2d",
                    shape=(*(int(d) for d in shape[1:axis]), math.prod(int(d) for d in shape[axis:])))
    soft = ctx.emit("softmax", [flat], f"{n.outputs[0]}/softmax", axis=-1)
    return Value(ctx.emit("reshape", [soft], n.outputs[0], shape=tuple(int(d) for d in shape[1:])), x.layout)


# ----------------------------------------------------------- broadcasting
def _common_layout(ctx: Context, runtime: list[Value]) -> tuple[list[Value], Layout]:
    """Bring runtime operands to one layout: a shared flattened order, else the most common perm."""
    flats = {v.layout.flat for v in runtime}
    if len(flats) == 1 and None not in flats:
        return runtime, runtime[0].layout
    runtime = [ctx.unflat(v) for v in runtime]
    perm = Counter(v.layout.perm for v in runtime).most_common(1)[0][0]
    return [ctx.with_perm(v, perm) for v in runtime], Layout(perm)


def _batch_free(ctx: Context, c: np.ndarray, rank: int, what: str) -> np.ndarray:
    """A constant that reaches the batch axis is accepted only when it is the same for every sample."""
    if c.ndim > rank:
        raise ctx.fail(f"{what} has rank {c.ndim}, more than the rank-{rank} data: broadcasting would "
                       "move the batch axis")
    if c.ndim == rank and c.shape[0] != 1:
        if not np.all(c == c[:1]):
            raise ctx.fail(f"{what} differs per sample along the batch axis ({c.shape[0]}); "
                           "that ties the model to one batch size")
        c = c[:1]
    return c


def broadcast_inputs(ctx: Context, names: list[str]) -> tuple[list[str], Layout]:
    """IR operands for an ONNX broadcasting op over ``names``, and the result's layout."""
    bound = [ctx.bound(name) for name in names]
    runtime = [b for b in bound if isinstance(b, Value)]
    if not runtime:
        raise ctx.fail("computes on constants only, which folding should have removed")
    rank = max(v.layout.rank for v in runtime)
    if any(v.layout.rank != rank for v in runtime):
        raise ctx.fail("broadcasts values of different ranks against each other, which moves the batch axis")
    aligned, layout = _common_layout(ctx, runtime)
    it = iter(aligned)
    out: list[str] = []
    for name, b in zip(names, bound):
        if isinstance(b, Value):
            out.append(next(it).ir)
        else:
            c = _batch_free(ctx, np.asarray(b, dtype=np.float32), rank, f"constant {name!r}")
            out.append(ctx.add_const(name, align_constant(c, layout)))
    return out, layout


_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}
_VARIADIC = {"Sum": "add", "Max": "maximum", "Min": "minimum", "Mean": "add"}


@handles(*_BINARY)
def _binary(ctx: Context, n: OnnxNode) -> list[Bound]:
    if n.op == "Add":
        fused = _add_as_bias(ctx, n)
        if fused is not None:
            return [fused]
    ins, layout = broadcast_inputs(ctx, [n.inputs[0], n.inputs[1]])
    return [Value(ctx.emit(_BINARY[n.op], ins, n.outputs[0]), layout)]


@handles(*_VARIADIC)
def _variadic(ctx: Context, n: OnnxNode) -> list[Bound]:
    names = [i for i in n.inputs if i]
    if len(names) == 1 and isinstance(ctx.bound(names[0]), Value):
        return [ctx.bound(names[0])]
    ins, layout = broadcast_inputs(ctx, names)
    op = _VARIADIC[n.op]
    acc = ins[0]
    for k, other in enumerate(ins[1:], start=1):
        last = k == len(ins) - 1 and n.op != "Mean"
        acc = ctx.emit(op, [acc, other], n.outputs[0] if last else f"{n.outputs[0]}/{k}")
    if n.op == "Mean":
        scale = ctx.add_const(f"{n.outputs[0]}/scale", np.array([1.0 / len(ins)], np.float32))
        acc = ctx.emit("mul", [acc, scale], n.outputs[0])
    return [Value(acc, layout)]


def _add_as_bias(ctx: Context, n: OnnxNode) -> Value | None:
    """MatMul/Gemm (a bias-free dense) followed by Add of a per-feature constant: one dense with bias."""
    names = [n.inputs[0], n.inputs[1]]
    bound = [ctx.bound(x) for x in names]
    if sum(isinstance(b, Value) for b in bound) != 1:
        return None
    k = 0 if isinstance(bound[0], Value) else 1
    x, c = bound[k], np.asarray(bound[1 - k], dtype=np.float32)
    prod = ctx.producer.get(x.ir)
    if (prod is None or prod.op != "dense" or len(prod.inputs) != 2 or not ctx.read_once(x.ir)
            or c.ndim > x.layout.rank or any(d != 1 for d in c.shape[:-1])):
        return None
    m = int(ctx.graph.type_of(prod.inputs[1]).shape[1])
    if c.shape and c.shape[-1] not in (1, m):
        return None
    bias = np.broadcast_to(align_constant(c, x.layout).reshape(-1), (m,))
    prod.inputs.append(ctx.add_const(names[1 - k], bias))
    return x


@handles("Constant")
def _constant(ctx: Context, n: OnnxNode) -> list[Bound]:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in n.attrs:
            return [np.asarray(n.attrs[key])]
    raise ctx.fail(f"only numeric constants are supported, not {sorted(n.attrs)}")
