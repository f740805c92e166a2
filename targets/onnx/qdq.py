"""IR with int8 annotations -> an ONNX QDQ model (``onnx:int8``).

The float model is lowered as for ``onnx:fp32``; then, from ``graph.quant`` and nothing
else, every annotated weight, bias and constant becomes an integer initializer read
through DequantizeLinear, and every annotated activation gets a QuantizeLinear ->
DequantizeLinear pair with the annotation's scale and zero point. onnxruntime fuses
DQ -> op -> Q into its integer kernels (QLinearConv, QGemm, ...) when the session loads.

Why not ``onnxruntime.quantization.quantize_static``: it calibrates the ONNX model itself
and computes scales from ranges in its own way; feeding it ours takes a calibration cache
*and* a ``TensorQuantOverrides`` entry per tensor, keyed by ONNX tensor names that its
Relu/Clip removal renames. Writing the Q/DQ nodes from the annotations keeps the IR the
single source of truth (the scale/zero point of a tensor here is exactly the one the TFLite
artifact gets), needs only ``onnx`` to emit, and is byte-for-byte deterministic.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tapeout.compiler.ir import Graph, IRError, TensorQuant
from tapeout.compiler.passes.quantize import quantize_array
from tapeout.targets.onnx.emit import MIN_OPSET, graph_to_onnx

# Ops that only move or select elements: a tensor next to one of them carries the same
# quantization, so a pooled-then-flattened or transposed value is quantized on both sides
# (onnxruntime then runs the op on int8 and drops the extra pair).
_MOVEMENT = ("Flatten", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze")


def graph_to_qdq(graph: Graph, *, opset: int = MIN_OPSET, values: dict | None = None) -> onnx.ModelProto:
    """The QDQ model of an int8-annotated graph (run ``Quantize("int8")`` first); ``values`` as
    ``graph_to_onnx`` fills it (the float tensors, before Q/DQ)."""
    if graph.quant is None or graph.quant.scheme != "int8":
        raise IRError("onnx:int8 needs a graph annotated by the quantize pass with scheme int8")
    return insert_qdq(graph_to_onnx(graph, opset=opset, values=values), graph)


def _initializer_source(name: str, constants: list[str]) -> str | None:
    """The IR constant an initializer holds: its own name, or ``<constant>/<transform>``."""
    if name in constants:
        return name
    best = None
    for c in constants:
        if name.startswith(c + "/") and (best is None or len(c) > len(best)):
            best = c
    return best


def _channel_axis(init: onnx.TensorProto, users: list[tuple[onnx.NodeProto, int]]) -> int:
    """The ONNX axis of a per-channel initializer, from how its consumers read it."""
    rank = len(init.dims)
    axes = set()
    for node, pos in users:
        if rank == 1:
            axes.add(0)
        elif node.op_type == "Conv" and pos == 1:
            axes.add(0)  # [F, C/g, *K]
        elif node.op_type == "Gemm" and pos == 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes.add(0 if trans_b else 1)
        elif node.op_type == "MatMul" and pos == 1:
            axes.add(rank - 1)
        else:
            raise IRError(f"per-channel initializer {init.name!r} is read by {node.op_type} input {pos}, "
                          "for which no channel axis is known")
    if len(axes) != 1:
        raise IRError(f"per-channel initializer {init.name!r} is read along different axes {sorted(axes)}")
    return axes.pop()


class _Editor:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self.taken = {t for n in self.g.node for t in [*n.input, *n.output]}
        self.taken |= {i.name for i in self.g.initializer} | {i.name for i in self.g.input}
        self.taken |= {n.name for n in self.g.node}
        self.new_inits: list[onnx.TensorProto] = []
        self.after: dict[str, list[onnx.NodeProto]] = {}  # tensor -> nodes to place right after its producer
        self.front: list[onnx.NodeProto] = []  # nodes reading graph inputs or initializers

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def params(self, base: str, tq: TensorQuant) -> tuple[str, str]:
        scale = np.asarray(tq.scale, np.float32)
        zp = np.asarray(tq.zero_point).astype(tq.dtype)
        if tq.axis is None:
            scale, zp = scale.reshape(()), zp.reshape(())
        s, z = self.fresh(f"{base}/scale"), self.fresh(f"{base}/zero_point")
        self.new_inits += [numpy_helper.from_array(scale, s), numpy_helper.from_array(zp, z)]
        return s, z


def insert_qdq(model: onnx.ModelProto, graph: Graph) -> onnx.ModelProto:
    """Add the Q/DQ nodes ``graph.quant`` asks for to ``model`` (``graph`` lowered to float ONNX)."""
    assert graph.quant is not None
    tensors = graph.quant.tensors
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ed = _Editor(out)
    g = out.graph
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in g.node:
        for pos, t in enumerate(node.input):
            users.setdefault(t, []).append((node, pos))

    # ---- constants: integer initializers read through DequantizeLinear (same tensor name).
    constants = sorted(c for c, tq in tensors.items() if c in graph.constants and tq.is_integer)
    kept: list[onnx.TensorProto] = []
    for init in g.initializer:
        # Only float initializers hold IR constants (shapes, pads and axes are int64 helpers).
        src = _initializer_source(init.name, constants) if init.data_type == onnx.TensorProto.FLOAT else None
        if src is None:
            kept.append(init)
            continue
        tq = tensors[src]
        array = numpy_helper.to_array(init)
        if tq.axis is not None:
            axis = _channel_axis(init, users.get(init.name, []))
            if array.shape[axis] != len(tq.scale):
                raise IRError(f"initializer {init.name!r} has {array.shape[axis]} channels on axis {axis}, "
                              f"its annotation {len(tq.scale)}")
            tq = replace(tq, axis=axis)
        qname = ed.fresh(f"{init.name}/quantized")
        kept.append(numpy_helper.from_array(quantize_array(array, tq), qname))
        s, z = ed.params(init.name, tq)
        attrs = {} if tq.axis is None else {"axis": tq.axis}
        ed.front.append(helper.make_node("DequantizeLinear", [qname, s, z], [init.name],
                                         name=ed.fresh(f"{init.name}/dequantize"), **attrs))
    del g.initializer[:]
    g.initializer.extend(kept)

    # ---- activations: which ONNX tensors carry which annotation.
    produced = {o: n for n in g.node for o in n.output}
    graph_inputs = {i.name for i in g.input}
    carried: dict[str, TensorQuant] = {}
    for v, tq in tensors.items():
        if tq.role == "activation" and (v in produced or v in graph_inputs):
            carried[v] = tq
    changed = True
    while changed:  # spread across movement ops, both ways
        changed = False
        for node in g.node:
            if node.op_type not in _MOVEMENT or not node.input or not node.output:
                continue
            src, dst = node.input[0], node.output[0]
            if dst in carried and src not in carried and src in produced:
                carried[src] = carried[dst]
                changed = True
            elif src in carried and dst not in carried:
                carried[dst] = carried[src]
                changed = True

    outputs = {o.name for o in g.output}
    for t in sorted(carried, key=_order(g)):
        tq = carried[t]
        s, z = ed.params(t, tq)
        q = ed.fresh(f"{t}/quantized")
        if t in outputs:
            # The graph output keeps its name on the DequantizeLinear; the producer writes t/float.
            src = ed.fresh(f"{t}/float")
            producer = produced[t]
            producer.output[:] = [src if o == t else o for o in producer.output]
            dq = t  # internal readers keep reading t, now the dequantized value
        else:
            src, dq = t, ed.fresh(f"{t}/dequantized")
            for node, pos in users.get(t, []):
                node.input[pos] = dq
        nodes = [helper.make_node("QuantizeLinear", [src, s, z], [q], name=ed.fresh(f"{t}/quantize")),
                 helper.make_node("DequantizeLinear", [q, s, z], [dq], name=ed.fresh(f"{t}/dequantize"))]
        if t in graph_inputs:
            ed.front.extend(nodes)
        else:
            ed.after.setdefault(src, []).extend(nodes)  # right after the producer (of t, or of t/float)

    ordered: list[onnx.NodeProto] = list(ed.front)
    for node in g.node:
        ordered.append(node)
        for o in node.output:
            ordered.extend(ed.after.get(o, []))
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(ed.new_inits)
    onnx.checker.check_model(out)
    return out


def _order(g: onnx.GraphProto):
    """Sort key: graph inputs first, then tensors in the order their producers appear."""
    pos = {i.name: -1 for i in g.input}
    for k, node in enumerate(g.node):
        for o in node.output:
            pos.setdefault(o, k)
    return lambda t: (pos.get(t, len(g.node)), t)
