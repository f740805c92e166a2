"""An fp16-emulating copy of an ONNX model, so onnxruntime on a CPU shows fp16's precision loss.

TensorRT's fp16 kernels read fp16 weights and write fp16 activations. The copy rounds every
float weight to fp16 and back, and puts Cast(float16) -> Cast(float) after every float
tensor a computing node writes (and after the graph inputs), except where a layer is pinned
to fp32. Q/DQ nodes and their scales are left alone (int8 tensors are exact already), so the
same function emulates ``best`` (int8 where quantized, fp16 elsewhere).

This model is a verification aid only; it is never written as an artifact.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_QDQ = ("QuantizeLinear", "DequantizeLinear")
# Nodes that only move data: rounding after them again changes nothing.
_MOVEMENT = ("Transpose", "Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Shape", "Gather",
             "Concat", "Slice")


def emulate_fp16(model: onnx.ModelProto, fp32_nodes: Iterable[str] = ()) -> onnx.ModelProto:
    """The fp16-emulating copy of ``model``; nodes named in ``fp32_nodes`` compute in float32."""
    keep = set(fp32_nodes)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inferred = onnx.shape_inference.infer_shapes(out)
    elem = {v.name: v.type.tensor_type.elem_type
            for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    # Private copies: the nodes are rewired below, then put back in a new order.
    nodes = []
    for node in g.node:
        c = onnx.NodeProto()
        c.CopyFrom(node)
        nodes.append(c)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for t in node.input:
            readers.setdefault(t, []).append(node)

    # Weights: rounded when any fp16 node reads them (Q/DQ scales excepted).
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        users = readers.get(init.name, [])
        if any(u.op_type in _QDQ for u in users) or not any(u.name not in keep for u in users):
            continue
        a = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(a.astype(np.float16).astype(np.float32), init.name))

    taken = {t for n in nodes for t in [*n.input, *n.output]} | {n.name for n in nodes}

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    def round_trip(src: str, dst: str) -> list[onnx.NodeProto]:
        half = fresh(f"{src}/fp16")
        return [helper.make_node("Cast", [src], [half], name=fresh(f"{src}/to_fp16"), to=TensorProto.FLOAT16),
                helper.make_node("Cast", [half], [dst], name=fresh(f"{src}/to_fp32"), to=TensorProto.FLOAT)]

    outputs = {o.name for o in g.output}
    ordered: list[onnx.NodeProto] = []
    for inp in g.input:
        users = readers.get(inp.name, [])
        if elem.get(inp.name) != TensorProto.FLOAT or not any(u.name not in keep and u.op_type not in _QDQ
                                                               for u in users):
            continue
        rounded = fresh(f"{inp.name}/rounded")
        for u in users:
            u.input[:] = [rounded if t == inp.name else t for t in u.input]
        ordered += round_trip(inp.name, rounded)
    for node in nodes:
        ordered.append(node)
        if node.name in keep or node.op_type in _QDQ or node.op_type in _MOVEMENT:
            continue
        for pos, t in enumerate(node.output):
            if not t or elem.get(t) != TensorProto.FLOAT:
                continue
            if t in outputs:  # the graph output keeps its name on the last Cast
                raw = fresh(f"{t}/fp32")
                node.output[pos] = raw
                ordered += round_trip(raw, t)
            else:
                rounded = fresh(f"{t}/rounded")
                for u in readers.get(t, []):
                    u.input[:] = [rounded if x == t else x for x in u.input]
                ordered += round_trip(t, rounded)
    del g.node[:]
    g.node.extend(ordered)
    onnx.checker.check_model(out)
    return out
