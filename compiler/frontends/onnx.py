"""ONNX front end: an ``.onnx`` file into the channels-last IR.

``load_onnx(path)`` reads and folds the model (``onnx_model``), then walks its nodes
in order, converting each with the handler of its op type (``onnx_ops.HANDLERS``).
NCHW/NCW tensors are stored channels-last; ``onnx_layout`` and ``onnx_context`` track
how every IR value relates to its ONNX tensor so that data moves only where an op
needs it. Graph inputs and outputs keep their ONNX names; ``graph.io_layouts`` records
their source layout so the ONNX target can keep it. Nothing from the file is executed
and TensorFlow is never imported.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from tapeout.compiler.errors import FrontendError
from tapeout.compiler.frontends.onnx_context import Context, Handler, OnnxNode, Value
from tapeout.compiler.frontends.onnx_layout import (
    Layout, Perm, channels_last, compose_onnx_transposes, identity, to_ir_shape, to_onnx_shape)
from tapeout.compiler.frontends.onnx_model import Prepared, prepare
from tapeout.compiler.frontends.onnx_ops import HANDLERS, supported_ops
from tapeout.compiler.gc_pause import gc_paused
from tapeout.compiler.ir import BATCH, Graph, IRError, TensorType

__all__ = ["load_onnx", "supported_ops"]

# Ops that want a channels-last input; a graph input that reaches one (through the ops
# below) is stored channels-last from the start.
_SPATIAL = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization",
            "LRN", "Resize", "Upsample"}
_LAYOUT_FREE = {"Relu", "Sigmoid", "Tanh", "HardSwish", "LeakyRelu", "Elu", "HardSigmoid", "Gelu", "Swish",
                "Clip", "Identity", "Dropout", "Cast", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean",
                "Pad", "Concat", "Slice", "Split",
                "Quant", "IntQuant", "BipolarQuant", "Trunc"}  # QONNX quantizers (frontends.qonnx)


def load_onnx(path: str | Path, model: Any = None) -> Graph:
    """Load an ONNX model file into a shape-checked IR graph (``model``: the file as
    ``onnx_model.read_model`` parsed it, else it is parsed here)."""
    p = Path(path)
    if not p.is_file():
        raise FrontendError(f"{p}: no such model file")
    with gc_paused():
        prepared = prepare(p, model)
        graph = convert(prepared, p)
    graph.metadata["source_format"] = "onnx"
    graph.metadata["source_opset"] = str(prepared.opset)
    return graph


# ------------------------------------------------------------ onnx_ir access
def _attr(a: Any) -> Any:
    import onnx_ir as ir

    t = a.type
    if t == ir.AttributeType.TENSOR:
        return a.value.numpy()
    if t == ir.AttributeType.TENSORS:
        return [x.numpy() for x in a.value]
    if isinstance(a.value, tuple):
        return list(a.value)
    return a.value


def _adapt(node: Any, names: dict[str, str]) -> OnnxNode:
    outputs = [o.name or "" for o in node.outputs]
    name = names.get(outputs[0], node.name or "") if outputs else node.name or ""
    return OnnxNode(node.op_type, name, [i.name if i is not None else None for i in node.inputs], outputs,
                    {k: _attr(a) for k, a in node.attributes.items()})


def _static_shape(value: Any) -> list[int | None]:
    shape = value.shape
    if shape is None:
        return []
    return [d if isinstance(d, int) else None for d in shape]


# ------------------------------------------------------------------- inputs
def input_perm(name: str, rank: int, consumers: dict[str, list[OnnxNode]]) -> Perm:
    """Channels-last storage for an input that reaches a spatial op, else ONNX order.

    Follows layout-free ops and Transposes (composing them) breadth first, so an input
    transposed NHWC -> NCHW before its first conv (old Keras exporters) stays as it is.
    """
    if rank < 3:
        return identity(rank)
    queue: deque[tuple[str, list[int]]] = deque([(name, list(range(rank)))])
    seen: set[str] = set()
    while queue:
        value, t = queue.popleft()
        if value in seen:
            continue
        seen.add(value)
        for node in consumers.get(value, []):
            if node.op in _SPATIAL and node.inputs[0] == value:
                perm = tuple(t[c] for c in channels_last(rank))
                return perm if perm[0] == 0 else identity(rank)
            if node.op == "Transpose" and len(node.attr("perm") or []) == rank:
                queue.append((node.outputs[0], compose_onnx_transposes(t, node.attr("perm"))))
            elif node.op in _LAYOUT_FREE:
                queue.extend((o, t) for o in node.outputs if o)  # every part of a Split
    return identity(rank)


def layout_name(perm: Perm) -> str:
    """The source layout of a graph input/output stored with ``perm`` ("NCHW": converted to NHWC)."""
    rank = len(perm)
    spatial = {1: "W", 2: "HW", 3: "DHW"}.get(rank - 2, "S" * max(rank - 2, 0))
    if rank >= 3 and perm == channels_last(rank):
        return f"NC{spatial}"
    return {1: "N", 2: "NC"}.get(rank, f"N{spatial}C")


def _bind_inputs(ctx: Context, g: Any, consumers: dict[str, list[OnnxNode]]) -> None:
    graph = ctx.graph
    for v in g.inputs:
        if v.dtype is None or not v.dtype.is_floating_point():
            raise FrontendError(f"{ctx.path}: input {v.name!r} has dtype {v.dtype}; only float inputs are supported")
        shape = [ctx.batch, *_static_shape(v)[1:]]
        perm = input_perm(v.name, len(shape), consumers)
        graph.inputs.append(v.name)
        graph.types[v.name] = TensorType((BATCH, *to_ir_shape(shape, perm)[1:]), "float32")
        graph.io_layouts[v.name] = layout_name(perm)
        ctx.bind(v.name, Value(v.name, Layout(perm)))
        if v.dtype.name != "FLOAT":
            ctx.note(f"input {v.name!r} is {v.dtype.name.lower()} in the source; the compiled model computes "
                     "in float32")


# -------------------------------------------------------------------- nodes
def _convert_node(ctx: Context, node: OnnxNode, handlers: dict[str, Handler]) -> None:
    ctx.node = node
    handler = handlers.get(node.op)
    if handler is None:
        raise FrontendError(f"{ctx.path}: node {node.label!r} ({node.op}) is not supported; "
                            f"supported ONNX ops: {', '.join(supported_ops())}")
    present = [i for i in node.inputs if i]
    if present and all(isinstance(ctx.bound(i), np.ndarray) for i in present):
        raise ctx.fail("computes only on constants but could not be folded")
    results = handler(ctx, node)
    for i, out in enumerate(node.outputs):
        if not out:
            continue
        if i < len(results):
            ctx.bind(out, results[i])
        elif ctx.uses.get(out, 0):
            raise ctx.fail(f"output {i} ({out!r}) is not supported (only the first {len(results)})")
    ctx.node = None


# ------------------------------------------------------------------ outputs
def _name_output(ctx: Context, ir_name: str, want: str) -> str:
    """Make the IR value computing an ONNX output carry the output's name."""
    graph = ctx.graph
    if ir_name == want:
        return want
    if want in ctx.producer:  # the name holds an earlier form of the value (before a transpose)
        ctx.rename(want, ctx.unique_name(f"{want}/inner"))
    elif want in graph.constants:  # an importer-made constant took the name first
        moved = ctx.add_constant(f"{want}/const", graph.constants.pop(want))
        graph.replace_uses(want, moved)
    if ir_name in graph.inputs or ir_name in graph.outputs or ir_name not in ctx.producer:
        return ctx.emit("identity", [ir_name], want)
    ctx.rename(ir_name, want)
    return want


def _bind_outputs(ctx: Context, g: Any) -> dict[str, Perm]:
    """Name and lay out every graph output; returns each output's storage perm."""
    graph = ctx.graph
    perms: dict[str, Perm] = {}
    for out in g.outputs:
        b = ctx.values.get(out.name)
        if not isinstance(b, Value):
            raise FrontendError(f"{ctx.path}: output {out.name!r} is a constant (it does not depend on the "
                                "inputs); not supported")
        v = ctx.unflat(b)
        rank = v.layout.rank
        if v.layout.perm not in (identity(rank), channels_last(rank)):
            v = ctx.native(v)
        name = _name_output(ctx, v.ir, out.name)
        graph.outputs.append(name)
        graph.io_layouts[name] = layout_name(v.layout.perm)
        perms[name] = v.layout.perm
    return perms


def _check_outputs(ctx: Context, g: Any, perms: dict[str, Perm]) -> None:
    for out in g.outputs:
        declared = _static_shape(out)
        got = to_onnx_shape(ctx.graph.type_of(out.name).shape, perms[out.name])
        if declared and (len(declared) != len(got) or any(
                d is not None and d != h for d, h in zip(declared[1:], got[1:]))):
            raise FrontendError(f"{ctx.path}: output {out.name!r} converts to shape {list(got)} but the model "
                                f"declares {declared}")


def _remove_dead(graph: Graph) -> None:
    """Drop nodes whose results nothing reads (left behind when a pattern became one node)."""
    used = set(graph.outputs)
    keep = []
    for node in reversed(graph.nodes):
        if any(o in used for o in node.outputs):
            keep.append(node)
            used.update(i for i in node.inputs if i)
    graph.nodes = keep[::-1]


# ------------------------------------------------------------------ convert
def _uses(g: Any, nodes: list[OnnxNode]) -> dict[str, int]:
    uses: dict[str, int] = {}
    for n in nodes:
        for i in n.inputs:
            if i:
                uses[i] = uses.get(i, 0) + 1
    for o in g.outputs:
        uses[o.name] = uses.get(o.name, 0) + 1
    return uses


def convert(prepared: Prepared, path: Path, handlers: dict[str, Handler] | None = None) -> Graph:
    """``handlers``: the op table (the QONNX front end adds its quantizers); default ``HANDLERS``."""
    g = prepared.model.graph
    nodes = [_adapt(n, prepared.node_names) for n in g]
    graph = Graph(name=g.name or path.stem, inputs=[], outputs=[])
    ctx = Context(graph, path, prepared.opset, prepared.batch, prepared.fixed_batch, _uses(g, nodes))
    ctx.notes.extend(prepared.notes)
    for name, v in g.initializers.items():
        try:
            value = v.const_value.numpy()
        except (ValueError, AttributeError) as e:  # raw bytes that do not fill the dims (the checker lets it pass)
            raise FrontendError(f"{path}: initializer {name!r} does not hold the data its shape declares "
                                f"({type(e).__name__}: {e})") from None
        ctx.bind(name, value)
    consumers: dict[str, list[OnnxNode]] = {}
    for n in nodes:
        for i in n.inputs:
            if i:
                consumers.setdefault(i, []).append(n)
    _bind_inputs(ctx, g, consumers)
    for n in nodes:
        _convert_node(ctx, n, HANDLERS if handlers is None else handlers)
    perms = _bind_outputs(ctx, g)
    _remove_dead(graph)
    try:
        graph.remove_unused_constants()
        graph.infer_shapes()
        graph.check()
    except IRError as e:
        raise FrontendError(f"{path}: the converted graph is inconsistent: {e}") from None
    _check_outputs(ctx, g, perms)
    if prepared.fixed_batch is not None and not ctx.tied_batch:
        ctx.note(f"the source model has a fixed batch of {prepared.fixed_batch}; the compiled model takes any "
                 "batch size (axis 0 of every input and output is dynamic)")
    if ctx.notes:
        graph.metadata["notes"] = list(ctx.notes)  # type: ignore[assignment]  # the report copies the list
    return graph
