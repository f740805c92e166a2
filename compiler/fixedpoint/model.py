"""The NumPy bit-accurate model of an hls4ml design: the IR run layer by layer in ap_fixed.

``hls_layers(graph)`` lists the layers hls4ml makes of the IR (a dense/conv with a fused
activation becomes two layers, the activation named ``{node}_{activation}`` as hls4ml's
Keras 3 parser names it). A ``PrecisionPlan`` gives every such layer its types;
``run_fixed`` executes the graph on float inputs and returns raw fixed-point values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tapeout.compiler.fixedpoint import layers as L
from tapeout.compiler.fixedpoint.layers import Fx, SoftmaxTypes
from tapeout.compiler.fixedpoint.types import FixedType, FixedTypeError, fixed
from tapeout.compiler.ir import Graph, Node

# IR ops with weights (hls4ml Dense / Conv1D / Conv2D), element-wise LUT and plain activations.
WEIGHTED = ("dense", "conv")
TABLE_ACTIVATIONS = ("sigmoid", "tanh", "softmax")
ACTIVATIONS = ("relu", "identity", *TABLE_ACTIVATIONS)
POOLS = ("max_pool", "avg_pool")
GLOBAL_POOLS = ("global_max_pool", "global_avg_pool")  # hls4ml's pool_op over every position: same arithmetic
PASSTHROUGH = ("flatten", "reshape", "dropout")  # no arithmetic: hls4ml reinterprets the array
SUPPORTED = (*WEIGHTED, *ACTIVATIONS, *POOLS, *GLOBAL_POOLS, "add", *PASSTHROUGH)

DEFAULT_TABLE = fixed(18, 8)
DEFAULT_SOFTMAX_TABLE = fixed(18, 8, "AP_RND", "AP_SAT")


@dataclass(frozen=True)
class LayerPrecision:
    """The types of one hls4ml layer (hls4ml's ``Precision`` keys: result, weight, bias, accum, table...)."""

    result: FixedType
    weight: FixedType | None = None
    bias: FixedType | None = None
    accum: FixedType | None = None
    table: FixedType | None = None  # sigmoid/tanh table_t; softmax exp_table_t
    inv_table: FixedType | None = None  # softmax only
    inv_inp: FixedType | None = None  # softmax only (None: same as the exp table)
    table_size: int = 1024

    def types(self) -> dict[str, FixedType]:
        out = {"result": self.result}
        for k in ("weight", "bias", "accum", "table", "inv_table", "inv_inp"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


@dataclass
class PrecisionPlan:
    inputs: dict[str, FixedType]  # graph input -> its type (hls4ml's input layer result_t)
    layers: dict[str, LayerPrecision] = field(default_factory=dict)  # hls layer name -> types

    def of(self, layer: str) -> LayerPrecision:
        try:
            return self.layers[layer]
        except KeyError:
            raise FixedTypeError(f"no precision for layer {layer!r}") from None


@dataclass(frozen=True)
class HlsLayer:
    name: str  # the hls4ml layer name
    kind: str  # "dense", "conv", "relu", "sigmoid", "tanh", "softmax", "identity", "max_pool", ...
    node: Node
    inputs: tuple[str, ...]  # IR values read (activations only, not constants)
    output: str  # the IR value this layer produces (for a split node's first half: a derived name)


def activation_of(node: Node) -> str:
    act = node.attrs.get("activation")
    return "identity" if act is None else act.op


def hls_layers(graph: Graph) -> list[HlsLayer]:
    """The layers hls4ml builds from ``graph``, in order; raises FixedTypeError on an unsupported op."""
    out: list[HlsLayer] = []
    for n in graph.nodes:
        if n.op not in SUPPORTED:
            raise FixedTypeError(f"node {n.name!r}: op {n.op!r} has no hls4ml fixed-point model; "
                                 f"supported: {', '.join(SUPPORTED)}")
        data = tuple(i for i in n.inputs if i and i not in graph.constants)
        if n.op in WEIGHTED:
            if n.op == "conv" and int(n.attrs.get("groups", 1)) != 1:
                raise FixedTypeError(f"node {n.name!r}: grouped/depthwise conv is not modelled")
            act = activation_of(n)
            if act not in ACTIVATIONS:
                raise FixedTypeError(f"node {n.name!r}: fused activation {act!r} is not modelled")
            if act == "identity":
                out.append(HlsLayer(n.name, n.op, n, data, n.outputs[0]))
            else:
                pre = f"{n.outputs[0]}:linear"
                out.append(HlsLayer(n.name, n.op, n, data, pre))
                out.append(HlsLayer(f"{n.name}_{act}", act, n, (pre,), n.outputs[0]))
        elif n.op in PASSTHROUGH:
            continue
        else:
            out.append(HlsLayer(n.name, n.op, n, data, n.outputs[0]))
    return out


def pool_cells(graph: Graph, layer: HlsLayer) -> int:
    """Cells one output of a pooling layer reads: its kernel, or every position for a global pool."""
    if layer.kind in GLOBAL_POOLS:
        return math.prod(int(d) for d in graph.type_of(layer.node.inputs[0]).shape[1:-1])
    return math.prod(int(k) for k in layer.node.attrs["kernel"])


def _alias_map(graph: Graph) -> dict[str, str]:
    """Value -> the value it is a pure reinterpretation of (flatten, reshape, dropout)."""
    alias: dict[str, str] = {}
    for n in graph.nodes:
        if n.op in PASSTHROUGH:
            src = n.inputs[0]
            alias[n.outputs[0]] = alias.get(src, src)
    return alias


def _const(graph: Graph, node: Node, idx: int, t: FixedType | None) -> Fx | None:
    if len(node.inputs) <= idx or not node.inputs[idx]:
        return None
    if t is None:
        raise FixedTypeError(f"node {node.name!r}: no type for input {idx}")
    return Fx.of(np.asarray(graph.constants[node.inputs[idx]], np.float64), t)


def _spatial(node: Node, nsp: int):
    strides = tuple(node.attrs.get("strides") or (1,) * nsp)
    pads = tuple(tuple(p) for p in (node.attrs.get("pads") or ((0, 0),) * nsp))
    dil = tuple(node.attrs.get("dilations") or (1,) * nsp)
    return strides, pads, dil


def softmax_types(lp: LayerPrecision, input_t: FixedType) -> SoftmaxTypes:
    exp_t = lp.table or DEFAULT_SOFTMAX_TABLE
    return SoftmaxTypes.derive(input_t, exp_t, lp.inv_table or DEFAULT_SOFTMAX_TABLE,
                               lp.accum or DEFAULT_SOFTMAX_TABLE, lp.inv_inp, lp.table_size)


def eval_layer(graph: Graph, layer: HlsLayer, lp: LayerPrecision, args: list[Fx]) -> Fx:
    n, kind = layer.node, layer.kind
    if kind in WEIGHTED:
        if lp.weight is None or lp.accum is None:
            raise FixedTypeError(f"layer {layer.name!r}: weight and accum types are required")
        w = _const(graph, n, 1, lp.weight)
        b = _const(graph, n, 2, lp.bias or lp.weight)
        assert w is not None
        if kind == "dense":
            return L.dense(args[0], w, b, lp.accum, lp.result)
        nsp = args[0].raw.ndim - 2
        strides, pads, dil = _spatial(n, nsp)
        return L.conv(args[0], w, b, lp.accum, lp.result, strides=strides, pads=pads, dilations=dil)
    if kind == "relu":
        return L.relu(args[0], lp.result)
    if kind == "identity":
        return L.linear(args[0], lp.result)
    if kind in ("sigmoid", "tanh"):
        fn = L.sigmoid if kind == "sigmoid" else L.tanh
        return fn(args[0], lp.result, lp.table or DEFAULT_TABLE, lp.table_size)
    if kind == "softmax":
        return L.softmax(args[0], lp.result, softmax_types(lp, args[0].type))
    if kind in POOLS:
        nsp = args[0].raw.ndim - 2
        strides, pads, _ = _spatial(n, nsp)
        kernel = tuple(n.attrs["kernel"])
        acc = lp.accum or lp.result
        if kind == "max_pool":
            return L.max_pool(args[0], acc, lp.result, kernel=kernel, strides=strides, pads=pads)
        return L.avg_pool(args[0], acc, lp.result, kernel=kernel, strides=strides, pads=pads,
                          count_include_pad=bool(n.attrs.get("count_include_pad", False)))
    if kind in GLOBAL_POOLS:
        x = args[0]
        kernel = tuple(int(d) for d in x.raw.shape[1:-1])
        zero = ((0, 0),) * len(kernel)
        fn = L.max_pool if kind == "global_max_pool" else L.avg_pool
        y = fn(x, lp.accum or lp.result, lp.result, kernel=kernel, strides=kernel, pads=zero)
        out_shape = tuple(int(d) for d in graph.type_of(n.outputs[0]).shape[1:])
        return Fx(y.raw.reshape(y.raw.shape[0], *out_shape), y.type)
    if kind == "add":
        return L.add(args[0], args[1], lp.result)
    raise FixedTypeError(f"layer {layer.name!r}: kind {kind!r} is not modelled")  # pragma: no cover


def _shaped(x: Fx, graph: Graph, value: str) -> Fx:
    """``x`` in the shape of IR value ``value`` (a flatten/reshape only reinterprets the array)."""
    t = graph.types.get(value)
    if t is None or tuple(x.raw.shape[1:]) == tuple(t.shape[1:]):
        return x
    return Fx(x.raw.reshape(x.raw.shape[0], *(int(d) for d in t.shape[1:])), x.type)


def run_fixed(graph: Graph, plan: PrecisionPlan, feeds: dict[str, np.ndarray], *,
              keep_intermediates: bool = False) -> dict[str, Fx]:
    """Run ``graph`` as hls4ml's C++ would with ``plan``'s types.

    Returns the graph outputs by name, or with ``keep_intermediates`` every layer's output
    keyed by hls layer name (plus the graph inputs, by name) instead: a layer may share its
    name with an IR value, so the two are never mixed in one dict.
    """
    alias = _alias_map(graph)
    env: dict[str, Fx] = {}
    for i in graph.inputs:
        env[i] = Fx.of(np.asarray(feeds[i], np.float64), plan.inputs[i])
    trace: dict[str, Fx] = dict(env) if keep_intermediates else {}
    for layer in hls_layers(graph):
        args = [_shaped(env[alias.get(v, v)], graph, v) for v in layer.inputs]
        y = eval_layer(graph, layer, plan.of(layer.name), args)
        env[layer.output] = y
        if keep_intermediates:
            trace[layer.name] = y
    if keep_intermediates:
        return trace
    outs: dict[str, Fx] = {}
    for o in graph.outputs:
        src = env[alias.get(o, o)]
        shape = (src.raw.shape[0], *(d for d in graph.types[o].shape[1:])) if o in graph.types else src.raw.shape
        outs[o] = Fx(src.raw.reshape(shape), src.type)
    return outs


def predict_fixed(graph: Graph, plan: PrecisionPlan, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float outputs of the fixed-point model (what hls4ml's C simulation returns)."""
    return {k: v.to_float() for k, v in run_fixed(graph, plan, feeds).items()}
