"""Each emitter's per-layer trace map (``tapeout_trace.json``, ``tapeout.runtime.trace``): which
artifact tensor holds which IR value, its layout against the IR's, its quantization.

One IR value per node output, in graph order; fused ops are traced at their fused output (the
IR value), which is also what the artifacts compute. Values an artifact does not hold (a
fused-away reshape, an hls4ml pass-through) are simply not listed.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import numpy as np

from tapeout.compiler.ir import Graph, Node
from tapeout.compiler.ops import ACTIVATION_OPS
from tapeout.runtime.trace import TraceMap, TracedTensor
from tapeout.compiler.layout import to_channels_last


def _kind(graph: Graph) -> str:
    q = graph.quant
    return q.scheme if q is not None and q.scheme in ("int8", "int16x8") else "float"


def _node_outputs(graph: Graph) -> Iterator[tuple[int, Node, str]]:
    for i, n in enumerate(graph.nodes):
        for o in n.outputs:
            if o and o in graph.types:
                yield i, n, o


def _int_range(scale: float, zp: int, dtype: str) -> tuple[float, float]:
    info = np.iinfo(np.dtype(dtype))
    return (int(info.min) - zp) * scale, (int(info.max) - zp) * scale


# ------------------------------------------------------------------ onnx
def onnx_map(graph: Graph, model: Any, values: dict[str, tuple[str, bool, Any]]) -> TraceMap:
    """The ONNX artifact's map; ``values`` from ``graph_to_onnx(values=...)``. A quantized value is
    traced at its QuantizeLinear output (the integer tensor onnxruntime's fused kernels write),
    dequantized with that node's scale and zero point."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    q_of: dict[str, Any] = {}  # float tensor -> its QuantizeLinear node
    dq_of: dict[str, Any] = {}  # DequantizeLinear output -> node
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            q_of[n.input[0]] = n
        elif n.op_type == "DequantizeLinear":
            dq_of[n.output[0]] = n
    quant_by_q = {n.output[0]: n for n in q_of.values()}
    tensors = []
    for i, node, v in _node_outputs(graph):
        if v not in values:
            continue
        name, cf, flat = values[v]
        rank = graph.type_of(v).rank
        perm = tuple(to_channels_last(rank)) if cf and rank >= 3 else None
        extra: dict[str, Any] = {}
        q = q_of.get(name)
        if q is None and name in dq_of and dq_of[name].input[0] in quant_by_q:
            q = quant_by_q[dq_of[name].input[0]]  # a graph output: the DequantizeLinear keeps its name
        if q is not None and len(q.input) >= 3 and q.input[1] in inits and q.input[2] in inits:
            scale, zp = numpy_helper.to_array(inits[q.input[1]]), numpy_helper.to_array(inits[q.input[2]])
            if scale.size == 1:
                s, z = float(scale.reshape(())), int(zp.reshape(()))
                lo, hi = _int_range(s, z, zp.dtype.name)
                name = q.output[0]
                extra = {"scale": s, "zero_point": z, "lo": lo, "hi": hi, "dtype": zp.dtype.name}
        tensors.append(TracedTensor(v, node.op, i, name, node.name, perm, flat, **extra))
    return TraceMap("model.onnx", _kind(graph), tensors)


# ---------------------------------------------------------------- tflite
_SANITIZE = re.compile(r"[^A-Za-z0-9_.\-]")


def _mentions(tensor_name: str, layer: str, others: set[str], first: bool = False) -> bool:
    """Whether a TFLite tensor name (TensorFlow op paths joined by ';') comes from Keras layer ``layer``
    (its name scope is the layer's name, or that name with a call suffix '_1'). Only the scopes of a
    path count, not its last part: that is the op's own name ('mul', 'add'), which a layer of that
    name would otherwise claim inside every other layer (a hard swish's 'getitem_27/mul').
    ``first``: only the first path counts, the op's own (the rest are ops fused into it, or
    constants it shares with other layers: one bias folded for two convs names both)."""
    pat = re.compile(re.escape(layer) + r"(_\d+)?")
    for part in tensor_name.split(";")[:1] if first else tensor_name.split(";"):
        for c in part.split("/")[:-1]:
            if pat.fullmatch(c) and (c == layer or c not in others):
                return True
    return False


def _size(graph: Graph, v: str) -> int:
    return int(np.prod([int(d) for d in graph.type_of(v).shape[1:]]))


def _before_dequantize(info: Any, tensor: int) -> int:
    """The integer tensor a DEQUANTIZE turns into ``tensor`` (float outputs of an int8 model), else itself."""
    for op in info.ops:
        if op.op == "DEQUANTIZE" and tensor in op.outputs and op.inputs and op.inputs[0] >= 0:
            return int(op.inputs[0])
    return tensor


def tflite_map(graph: Graph, data: bytes, layer_names: dict[str, str]) -> TraceMap:
    """The .tflite's map: each IR node's value is the last tensor, in execution order, written by an
    op of the Keras layer that computes it (or of the FakeQuant layer after it) with the value's size."""
    from tapeout.runtime.runners.litert import interpreter_class
    from tapeout.targets.tflite.flatbuffer import read_model

    info = read_model(data)
    cls, _ = interpreter_class()
    details = {int(d["index"]): d for d in cls(model_content=data).get_tensor_details()}
    written = [t for op in info.ops for t in op.outputs if t >= 0 and not info.tensors[t].constant]
    sizes: dict[str, set[int]] = {}  # Keras layer -> the sizes of the values it computes
    for _, node, v in _node_outputs(graph):
        sizes.setdefault(layer_names.get(node.name, node.name), set()).add(_size(graph, v))
    layers = set(layer_names.values())
    written_by = {t: op for op in info.ops for t in op.outputs}
    readers = graph.consumers()
    # A separate IR activation that the converter fused into the op before it (ADD + RELU): that
    # op's tensor holds the activation's output, so it is the activation's value, not its input's.
    fused_into: dict[str, int] = {}
    tensors = []
    for i, node, v in _node_outputs(graph):
        layer = layer_names.get(node.name, node.name)
        names = [layer, _SANITIZE.sub("_", f"{v}_quant")]
        act = node.attrs.get("activation")
        if act is not None and not act.is_identity:  # one Keras cannot fuse: a helper layer after it
            names.append(_SANITIZE.sub("_", f"{node.name}_{act.op}"))
        shape = graph.type_of(v).shape
        size = _size(graph, v)
        # A scope 'mul_1' is layer mul_1's or layer mul's second; only a layer that could have
        # written a tensor of this size claims it for itself.
        others = {n for n in layers if size in sizes.get(n, {size})}
        found = [t for t in written if int(np.prod(info.tensors[t].shape[1:])) == size
                 and any(_mentions(info.tensors[t].name, n, others) for n in names)]
        own = [t for t in found if any(_mentions(info.tensors[t].name, n, others, first=True) for n in names)]
        idx = (own or found)[-1] if found else None
        out_tensor = info.signature["outputs"].get(v) if v in graph.outputs else None
        if out_tensor is not None:  # a graph output is the signature's tensor (named after the function)
            idx = _before_dequantize(info, int(out_tensor))
        if idx is None:
            idx = fused_into.pop(v, None)
        elif out_tensor is None and node.op not in ACTIVATION_OPS and (act is None or act.is_identity) and \
                written_by.get(idx) is not None and written_by[idx].fused_activation not in (None, "NONE"):
            nxt = readers.get(v, [])
            if len(nxt) == 1 and nxt[0].op in ("relu", "clip") and nxt[0].outputs[0] in graph.types:
                fused_into[nxt[0].outputs[0]] = idx
            continue
        if idx is None:
            continue
        d = details[idx]
        have = tuple(int(x) for x in info.tensors[idx].shape[1:])
        perm = None
        if len(shape) >= 3 and have != tuple(int(x) for x in shape[1:]):
            perm = tuple(to_channels_last(len(shape)))  # a channels-first tensor of --io-layout source
        extra: dict[str, Any] = {}
        scale, zp = d.get("quantization", (0.0, 0))
        dtype = np.dtype(d["dtype"])
        if dtype.kind in "iu" and float(scale) > 0:
            lo, hi = _int_range(float(scale), int(zp), dtype.name)
            extra = {"scale": float(np.float32(scale)), "zero_point": int(zp), "lo": lo, "hi": hi,
                     "dtype": dtype.name}
        tensors.append(TracedTensor(v, node.op, i, str(d["name"]), node.name, perm, None, **extra))
    return TraceMap("model.tflite", _kind(graph), tensors)


# ---------------------------------------------------------------- hls4ml
def hls4ml_map(graph: Graph, layers: list[Any], names: dict[str, str], plan: Any,
               traced: list[dict[str, Any]]) -> TraceMap:
    """The hls4ml project's map: every traced layer whose output is an IR value (not a conv's linear
    half or a padding), read through the C simulation's trace hooks (channels-last, flat)."""
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    have = {t["name"] for t in traced}
    tensors = []
    for layer in layers:
        hname = names.get(layer.name, layer.name)
        if layer.output not in graph.types or hname not in have:
            continue
        t = plan.of(layer.name).result
        tensors.append(TracedTensor(layer.output, layer.node.op, index[layer.node.name], hname, layer.name,
                                    scale=t.lsb, lo=t.min, hi=t.max, dtype=str(t)))
    return TraceMap(".", "fixed", tensors)
