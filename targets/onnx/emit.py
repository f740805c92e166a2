"""IR graph -> ONNX ModelProto.

The model keeps the source model's I/O layout (``graph.io_layouts``) and runs
channels-first inside, with Transposes only at boundaries that need them (see
``lowerings``). Output is deterministic: names come from the IR, no timestamps.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Graph, IRError
from tapeout.compiler.version import __version__
from tapeout.targets.onnx.builder import Builder
from tapeout.compiler.layout import is_channels_first
from tapeout.targets.onnx.layout import physical_shape
from tapeout.targets.onnx.lowerings import LOWERINGS

MIN_OPSET = 17


def _value_names(graph: Graph, b: Builder) -> dict:
    """IR value -> (ONNX tensor, channels-first, flatten order) before outputs are exported (which renames)."""
    producers = graph.producers()
    out = {}
    for value, v in b.values.items():
        flat = None
        if value in b.row_orders:  # a flatten of a channels-first tensor: [N, C*S] in C-major order
            shape = [int(d) for d in graph.type_of(producers[value].inputs[0]).shape[1:]]
            flat = (shape[-1], *shape[:-1])
        out[value] = (v.name, v.cf, flat)
    return out


def _value_info(graph: Graph, value: str, cf: bool) -> onnx.ValueInfoProto:
    t = graph.type_of(value)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
    return helper.make_tensor_value_info(value, elem, physical_shape(t.shape, cf))


def graph_to_onnx(graph: Graph, *, opset: int = MIN_OPSET, values: dict | None = None) -> onnx.ModelProto:
    """Lower ``graph`` to an ONNX model at ``opset`` (17 up to what the installed onnx knows).

    ``values``, when given, is filled with IR value -> (ONNX tensor, stored channels-first,
    channels-first flatten order of this [C, *S] shape or None): the per-layer trace's name map."""
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(f"ONNX opset {opset} is not supported; use {MIN_OPSET}..{newest}")
    b = Builder(graph, opset)
    inputs = []
    for name in graph.inputs:
        cf = is_channels_first(graph.io_layouts.get(name), graph.type_of(name).rank)
        b.define(name, name, cf)
        inputs.append(_value_info(graph, name, cf))
    for node in graph.nodes:
        lower = LOWERINGS.get(node.op)
        if lower is None:
            raise IRError(f"node {node.name!r}: the onnx target has no lowering for op {node.op!r}")
        lower(b, node)
    if values is not None:
        values.update(_value_names(graph, b))
    outputs = []
    for name in graph.outputs:
        cf = is_channels_first(graph.io_layouts.get(name), graph.type_of(name).rank)
        if values is not None and name in values:
            values[name] = (name, cf and graph.type_of(name).rank >= 3, values[name][2])
        b.export_output(name, cf)
        outputs.append(_value_info(graph, name, cf))
    body = helper.make_graph(b.nodes, graph.name, inputs, outputs, list(b.initializers.values()))
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(body, opset_imports=opsets, producer_name="tapeout", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    for key in sorted(graph.metadata):
        value = graph.metadata[key]
        # Front-end notes are a list of sentences: one per line.
        text = "\n".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        model.metadata_props.add(key=key, value=text)
    return model
