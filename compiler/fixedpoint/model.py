"""The NumPy bit-accurate model of an hls4ml design: the IR run layer by layer in ap_fixed.

``hls_layers(graph)`` lists the layers hls4ml makes of the IR (a dense/conv with a fused
activation becomes two layers, the activation named ``{node}_{activation}`` as hls4ml's
Keras 3 parser names it). A ``PrecisionPlan`` gives every such layer its types;
``run_fixed`` executes the graph on float inputs and returns raw fixed-point values.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tapeout.compiler.fixedpoint import layers as L
from tapeout.compiler.fixedpoint.layers import Fx, SoftmaxTypes
from tapeout.compiler.fixedpoint.types import FixedType, FixedTypeError, fixed
from tapeout.compiler.ir import Graph, Node

# IR ops with weights (hls4ml Dense / Conv1D / Conv2D / DepthwiseConv1D / DepthwiseConv2D), element-wise
# LUT and plain activations.
WEIGHTED = ("dense", "conv")
TABLE_ACTIVATIONS = ("sigmoid", "tanh", "softmax")
ACTIVATIONS = ("relu", "identity", "relu6", *TABLE_ACTIVATIONS)
POOLS = ("max_pool", "avg_pool")
GLOBAL_POOLS = ("global_max_pool", "global_avg_pool")  # hls4ml's pool_op over every position: same arithmetic
PASSTHROUGH = ("flatten", "reshape", "dropout")  # no arithmetic: hls4ml reinterprets the array
# hls4ml BatchNormalization (nnet::normalize): a per-channel scale and bias, from batch_norm or affine.
SCALED = ("batch_norm", "affine")
# Layers that only move values (ZeroPadding, UpSampling -> Resize): their result type is their input's.
COPIES = ("zero_pad", "resize")
OTHER = ("add", "concat", "clip", "pad")
# add/mul of one tensor and a per-channel (or scalar) constant: input normalization in exports
# (x + mean, x * 1/std), which hls4ml computes as a BatchNormalization too (constant_scaling).
CONSTANT_SCALING = ("add", "mul")
# The QAT front ends' quantizers (HGQ2, QONNX): hls4ml's FixedPointQuantizer, or a linear activation
# whose result type is the quantizer's when the grid is one per tensor (compiler.fixedpoint.qat).
QUANTIZERS = ("fixed_quant",)
# Element-wise activations that become an exact lookup table (hls4ml's UnaryLUT, kind "unary_lut")
# between two per-tensor quantizers (compiler.fixedpoint.qat.lut_pair).
LUT_OPS = ("sigmoid", "tanh", "swish", "hard_swish", "gelu", "elu", "leaky_relu", "hard_sigmoid", "clip")
SUPPORTED = (*WEIGHTED, *ACTIVATIONS, *POOLS, *GLOBAL_POOLS, *SCALED, *OTHER, "mul", "resize", *PASSTHROUGH,
             *QUANTIZERS)

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
    kind: str  # "dense", "conv", "relu", "relu6", "sigmoid", "tanh", "softmax", "identity", "max_pool",
    # "batch_norm", "zero_pad", "resize", "concat", ... (a depthwise conv is a "conv" with groups == channels)
    node: Node
    inputs: tuple[str, ...]  # IR values read (activations only, not constants)
    output: str  # the IR value this layer produces (for a split node's first half: a derived name)
    padded: bool = False  # a conv whose pads are a separate zero_pad layer before it (not "same"/"valid")


def activation_of(node: Node) -> str:
    act = node.attrs.get("activation")
    return "identity" if act is None else act.op


def _clip_kind(lo, hi) -> str | None:
    """The hls4ml activation computing clip(lo, hi): relu (0, none), relu6 (0, 6), else None."""
    if lo is None or float(lo) != 0.0:
        return None
    if hi is None:
        return "relu"
    return "relu6" if float(hi) == 6.0 else None


def activation_kind(node: Node) -> str:
    """The hls4ml activation layer of a dense/conv's fused activation (its name suffix), or the op."""
    act = node.attrs.get("activation")
    if act is None:
        return "identity"
    if act.op == "clip":
        a = act.attr_dict()
        return _clip_kind(a.get("min"), a.get("max")) or "clip"
    return act.op


def _refuse(n: Node, why: str) -> FixedTypeError:
    return FixedTypeError(f"node {n.name!r}: op {n.op!r} {why}")


def is_depthwise(graph: Graph, n: Node) -> bool:
    return n.op == "conv" and int(n.attrs.get("groups", 1)) > 1 and \
        int(n.attrs.get("groups", 1)) == int(graph.type_of(n.inputs[0]).shape[-1])


def _same_or_valid(graph: Graph, n: Node, kernel: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether the node's pads are Keras's "valid" or "same" (what hls4ml's layers pad by themselves)."""
    from tapeout.compiler.ops import same_pads

    pads = tuple(tuple(p) for p in (n.attrs.get("pads") or ((0, 0),) * len(kernel)))
    if all(p == (0, 0) for p in pads):
        return True
    sizes = graph.type_of(n.inputs[0]).shape[1:-1]
    return all(tuple(pads[i]) == tuple(same_pads(int(sizes[i]), kernel[i], strides[i], 1)) for i in range(len(pads)))


def constant_scaling(graph: Graph, n: Node) -> bool:
    """An add or mul of exactly one runtime tensor and one constant: a scale or shift per channel."""
    if n.op not in CONSTANT_SCALING or len(n.inputs) != 2:
        return False
    return sum(i in graph.constants for i in n.inputs) == 1


def scale_shift(graph: Graph, n: Node) -> tuple[np.ndarray, np.ndarray]:
    """A batch_norm / affine node (or an add/mul of a constant, ``constant_scaling``) as hls4ml's
    per-channel (scale, bias), float32 of the channel count.

    batch_norm: scale = gamma / sqrt(var + eps), bias = beta - mean * scale (in float64, then float32):
    the lowering hands hls4ml exactly these two (a BatchNormalization with mean 0, variance 1 and
    epsilon 0), so the C++ weights are these float32 values.
    """
    if constant_scaling(graph, n):
        data = next(i for i in n.inputs if i not in graph.constants)
        c = next(i for i in n.inputs if i in graph.constants)
        channels = int(graph.type_of(data).shape[-1])
        v = np.asarray(graph.constants[c], np.float64)
        if v.ndim > graph.type_of(data).rank or any(int(d) != 1 for d in v.shape[:-1]) or \
                (v.ndim and v.shape[-1] not in (1, channels)):
            raise _refuse(n, f"with a constant of shape {tuple(v.shape)} (not one value per channel) has no "
                             "hls4ml layer")
        v = np.broadcast_to(v.reshape(-1), (channels,))
        one = np.ones(channels)
        s, t = (one, v) if n.op == "add" else (v, np.zeros(channels))
        return np.asarray(s, np.float32), np.asarray(t, np.float32)
    params = n.inputs[1:]
    if not all(p in graph.constants for p in params):
        raise _refuse(n, "with runtime (non-constant) parameters has no hls4ml BatchNormalization")
    channels = int(graph.type_of(n.inputs[0]).shape[-1])
    if n.op == "batch_norm":
        gamma, beta, mean, var = (np.asarray(graph.constants[p], np.float64) for p in params)
        s = gamma / np.sqrt(var + float(n.attrs.get("epsilon", 1e-3)))
        t = beta - mean * s
    else:
        out = []
        for p in params:
            v = np.asarray(graph.constants[p], np.float64)
            if any(int(d) != 1 for d in v.shape[:-1]) or (v.ndim and v.shape[-1] not in (1, channels)):
                raise _refuse(n, f"with a scale/shift of shape {tuple(v.shape)} (not one value per channel) has "
                                 "no hls4ml BatchNormalization")
            out.append(np.broadcast_to(v.reshape(-1), (channels,)))
        s, t = out
    return np.asarray(s, np.float32), np.asarray(t, np.float32)


def _luts(graph: Graph) -> set[str]:
    """Names of the activations computed as exact tables (only in graphs with quantizers)."""
    if not any(n.op == "fixed_quant" for n in graph.nodes):
        return set()
    from tapeout.compiler.fixedpoint.qat import lut_pair

    return {n.name for n in graph.nodes if n.op in LUT_OPS and lut_pair(graph, n) is not None}


def _check(graph: Graph, n: Node) -> None:
    """Refuse what hls4ml 1.3 cannot compute (or computes wrongly) for this node, in one line."""
    if n.op not in SUPPORTED:
        raise FixedTypeError(f"node {n.name!r}: op {n.op!r} has no hls4ml fixed-point model; "
                             f"supported: {', '.join(SUPPORTED)}")
    if n.op == "conv":
        groups = int(n.attrs.get("groups", 1))
        if groups != 1 and not is_depthwise(graph, n):
            raise _refuse(n, f"with {groups} groups (1 < groups < channels) is refused: hls4ml 1.3 computes "
                             "grouped convs wrongly; only groups 1 and depthwise (groups == channels) are supported")
        if groups != 1 and int(graph.type_of(n.inputs[1]).shape[-1]) != groups:
            raise _refuse(n, "as a depthwise conv with a depth multiplier above 1: hls4ml 1.3 implements "
                             "multiplier 1 only")
        nsp = graph.type_of(n.inputs[0]).rank - 2
        if nsp not in (1, 2):
            raise _refuse(n, f"over {nsp} spatial dimensions: hls4ml has 1D and 2D convs only")
        if any(int(d) != 1 for d in (n.attrs.get("dilations") or ())):
            raise _refuse(n, "with dilation: hls4ml 1.3's Keras converter ignores dilation_rate")
    if n.op in WEIGHTED:
        if any(i and i not in graph.constants for i in n.inputs[1:]):
            raise _refuse(n, "with runtime (non-constant) weights has no hls4ml layer")
        act = activation_kind(n)
        if act not in ACTIVATIONS:
            why = f"with fused activation {act} has no hls4ml fixed-point model"
            if act == "clip":
                a = n.attrs["activation"].attr_dict()
                why = (f"with fused activation clip({a.get('min')}, {a.get('max')}) has no hls4ml fixed-point model "
                       "(relu = clip(0, none) and relu6 = clip(0, 6) are hls4ml activations)")
            raise _refuse(n, why)
    if n.op in SCALED or constant_scaling(graph, n):
        scale_shift(graph, n)
    if n.op == "clip" and _clip_kind(n.attrs.get("min"), n.attrs.get("max")) is None:
        raise _refuse(n, f"clip({n.attrs.get('min')}, {n.attrs.get('max')}) is not an hls4ml activation "
                         "(relu = clip(0, none) and relu6 = clip(0, 6) are)")
    if n.op in POOLS:
        nsp = graph.type_of(n.inputs[0]).rank - 2
        kernel = tuple(int(k) for k in n.attrs["kernel"])
        strides = tuple(n.attrs.get("strides") or (1,) * nsp)
        if not _same_or_valid(graph, n, kernel, strides):
            raise _refuse(n, "with padding other than 'same' or 'valid' has no hls4ml pooling layer")
    if n.op == "pad":
        pads = [tuple(p) for p in n.attrs["pads"]]
        if float(n.attrs.get("value", 0.0)) != 0.0 or len(pads) not in (3, 4) or tuple(pads[-1]) != (0, 0):
            raise _refuse(n, "other than zero padding of the 1 or 2 spatial axes has no hls4ml layer "
                             "(ZeroPadding1D/2D)")
    if n.op == "resize":
        scales = tuple(int(s) for s in n.attrs["scales"])
        if n.attrs.get("mode", "nearest") != "nearest" or len(scales) not in (1, 2):
            raise _refuse(n, "other than nearest upsampling of 1 or 2 spatial axes has no hls4ml layer")
    if n.op == "concat":
        data = [i for i in n.inputs if i not in graph.constants]
        r = graph.type_of(n.inputs[0]).rank
        if len(n.inputs) != 2 or len(data) != 2:
            raise _refuse(n, f"of {len(n.inputs)} inputs: hls4ml's Concatenate joins two runtime tensors")
        if int(n.attrs["axis"]) % r != r - 1 or r > 4:
            raise _refuse(n, "other than along the last (channel) axis is not supported for hls4ml")
    if n.op == "mul" and not constant_scaling(graph, n):
        raise _refuse(n, "of two runtime tensors has no hls4ml fixed-point model (a constant per-channel "
                         "scale has: BatchNormalization)")
    if n.op == "add" and not constant_scaling(graph, n):
        if any(i in graph.constants for i in n.inputs):
            raise _refuse(n, "of two constants has no hls4ml layer")
        if graph.type_of(n.inputs[0]).shape[1:] != graph.type_of(n.inputs[1]).shape[1:]:
            raise _refuse(n, "with broadcasting has no hls4ml layer (its Add needs two tensors of one shape)")
    if n.op == "fixed_quant":
        if n.inputs[0] in graph.constants:
            raise _refuse(n, "on a constant is folded into the constant before hls4ml (canonicalize's fold-constants)")
        if not all(c in graph.constants for c in n.inputs[1:]):
            raise _refuse(n, "with runtime (non-constant) k, i or f has no hls4ml layer")
    if n.inputs and n.inputs[0] not in graph.constants and graph.type_of(n.inputs[0]).rank > 4:
        raise _refuse(n, f"on a rank-{graph.type_of(n.inputs[0]).rank} tensor: hls4ml has 1D and 2D layers only")


def hls_layers(graph: Graph) -> list[HlsLayer]:
    """The layers hls4ml builds from ``graph``, in order; raises FixedTypeError on an unsupported op."""
    out: list[HlsLayer] = []
    luts = _luts(graph)
    for n in graph.nodes:
        if n.name not in luts:
            _check(graph, n)
        data = tuple(i for i in n.inputs if i and i not in graph.constants)
        if n.name in luts:
            out.append(HlsLayer(n.name, "unary_lut", n, data, n.outputs[0]))
        elif n.op in WEIGHTED:
            padded = False
            if n.op == "conv":
                nsp = graph.type_of(n.inputs[0]).rank - 2
                kernel = tuple(int(k) for k in graph.type_of(n.inputs[1]).shape[:nsp])
                strides = tuple(n.attrs.get("strides") or (1,) * nsp)
                if not _same_or_valid(graph, n, kernel, strides):
                    # The Keras emitter writes a ZeroPadding layer "<node>_pad" and a "valid" conv.
                    padded_value = f"{n.outputs[0]}:padded"
                    out.append(HlsLayer(f"{n.name}_pad", "zero_pad", n, data[:1], padded_value))
                    data = (padded_value, *data[1:])
                    padded = True
            act = activation_kind(n)
            if act == "identity":
                out.append(HlsLayer(n.name, n.op, n, data, n.outputs[0], padded))
            else:
                pre = f"{n.outputs[0]}:linear"
                out.append(HlsLayer(n.name, n.op, n, data, pre, padded))
                out.append(HlsLayer(f"{n.name}_{act}", act, n, (pre,), n.outputs[0]))
        elif n.op in PASSTHROUGH:
            continue
        elif n.op in SCALED or constant_scaling(graph, n):
            out.append(HlsLayer(n.name, "batch_norm", n, data[:1], n.outputs[0]))
        elif n.op == "clip":
            out.append(HlsLayer(n.name, _clip_kind(n.attrs.get("min"), n.attrs.get("max")) or "clip", n, data,
                                n.outputs[0]))
        elif n.op == "pad":
            out.append(HlsLayer(n.name, "zero_pad", n, data, n.outputs[0]))
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


_WRITTEN: dict[tuple, np.ndarray] = {}


def written_weights(values: np.ndarray, t: FixedType) -> Fx:
    """Weights as hls4ml's C simulation holds them: its writer prints each value with as many
    decimals as ``t`` has fractional bits (``"{:.Ff}"``) and the C++ reads that text back into ``t``
    (a double, then ``t``'s rounding). A value exactly on a rounding tie (k + 1/2 steps, common for
    float32 weights and 16-odd fractional bits) is printed just off the tie and rounds the other way.
    Weights reach hls4ml through the Keras model, in float32."""
    arr = np.ascontiguousarray(values, dtype=np.float32)  # the Keras model handed to hls4ml holds float32
    key = (t, arr.shape, arr.dtype.str, hashlib.blake2b(arr.tobytes(), digest_size=16).digest())
    raw = _WRITTEN.get(key)
    if raw is None:
        d = max(0, t.frac)
        text = np.array([float(f"{float(v):.{d}f}") for v in arr.ravel()], np.float64).reshape(arr.shape)
        raw = Fx.of(text, t).raw
        if len(_WRITTEN) > 4096:
            _WRITTEN.clear()
        _WRITTEN[key] = raw
    return Fx(raw, t)


def _const(graph: Graph, node: Node, idx: int, t: FixedType | None) -> Fx | None:
    if len(node.inputs) <= idx or not node.inputs[idx]:
        return None
    if t is None:
        raise FixedTypeError(f"node {node.name!r}: no type for input {idx}")
    return written_weights(graph.constants[node.inputs[idx]], t)


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
        if layer.padded:
            pads = ((0, 0),) * nsp
        if is_depthwise(graph, n):
            return L.depthwise_conv(args[0], w, b, lp.accum, lp.result, strides=strides, pads=pads)
        return L.conv(args[0], w, b, lp.accum, lp.result, strides=strides, pads=pads, dilations=dil)
    if kind == "batch_norm":
        if lp.weight is None or lp.bias is None:
            raise FixedTypeError(f"layer {layer.name!r}: scale (weight) and bias types are required")
        s, t = scale_shift(graph, n)
        return L.normalize(args[0], written_weights(s, lp.weight), written_weights(t, lp.bias), lp.result)
    if kind == "zero_pad":
        nsp = args[0].raw.ndim - 2
        pads = _spatial(n, nsp)[1] if n.op == "conv" else tuple(tuple(p) for p in n.attrs["pads"][1:-1])
        return L.zero_pad(args[0], pads, lp.result)
    if kind == "resize":
        return L.resize_nearest(args[0], tuple(int(s) for s in n.attrs["scales"]), lp.result)
    if kind == "concat":
        return L.concat(args, lp.result)
    if kind == "relu":
        return L.relu(args[0], lp.result)
    if kind == "relu6":
        return L.relu_max(args[0], lp.result, 6)
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
    if kind == "unary_lut":
        from tapeout.compiler.fixedpoint.qat import lut_table

        table, in_t, out_t = lut_table(graph, n)
        x = L.cast(args[0], in_t)
        return L.cast(Fx(table[x.raw & ((1 << in_t.width) - 1)], out_t), lp.result)
    if kind == "fixed_quant":
        k, i, f = (graph.constants[c] for c in n.inputs[1:])
        return L.fixed_quant(args[0], k, i, f, n.attrs.get("rounding", "AP_TRN"), n.attrs.get("overflow", "AP_WRAP"),
                             lp.result)
    raise FixedTypeError(f"layer {layer.name!r}: kind {kind!r} is not modelled")  # pragma: no cover


def _shaped(x: Fx, graph: Graph, value: str) -> Fx:
    """``x`` in the shape of IR value ``value`` (a flatten/reshape only reinterprets the array)."""
    t = graph.types.get(value)
    if t is None or tuple(x.raw.shape[1:]) == tuple(t.shape[1:]):
        return x
    return Fx(x.raw.reshape(x.raw.shape[0], *(int(d) for d in t.shape[1:])), x.type)


class LayerCache:
    """Each layer's latest output in one search, keyed by its types and its inputs' keys: an
    evaluation that changes one layer's types recomputes only that layer and what it feeds (the
    search walks the layers in order, so most of a model is a hit). Bound to one set of feeds.
    Outputs are kept up to ``max_bytes`` in all; past that, layers are recomputed as before."""

    MAX_BYTES = 2 << 30

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.ids: dict[tuple, int] = {}  # (name, types, input ids) -> a small int, so keys stay flat
        self.entries: dict[str, tuple[int, Fx]] = {}  # layer or input name -> (key id, output)
        self.bytes = 0
        self.hits = self.misses = 0

    def key(self, *parts: object) -> int:
        return self.ids.setdefault(parts, len(self.ids))

    def get(self, name: str, key: int) -> Fx | None:
        entry = self.entries.get(name)
        if entry is not None and entry[0] == key:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, name: str, key: int, value: Fx) -> None:
        old = self.entries.pop(name, None)
        if old is not None:
            self.bytes -= old[1].raw.nbytes
        if self.bytes + value.raw.nbytes <= self.max_bytes:
            self.entries[name] = (key, value)
            self.bytes += value.raw.nbytes


def _cached(cache: LayerCache | None, name: str, key: int, compute: Callable[[], Fx]) -> Fx:
    if cache is None:
        return compute()
    y = cache.get(name, key)
    if y is None:
        y = compute()
        cache.put(name, key, y)
    return y


def run_fixed(graph: Graph, plan: PrecisionPlan, feeds: dict[str, np.ndarray], *,
              keep_intermediates: bool = False, cache: LayerCache | None = None) -> dict[str, Fx]:
    """Run ``graph`` as hls4ml's C++ would with ``plan``'s types.

    Returns the graph outputs by name, or with ``keep_intermediates`` every layer's output
    keyed by hls layer name (plus the graph inputs, by name) instead: a layer may share its
    name with an IR value, so the two are never mixed in one dict. With ``cache`` (always used
    with the same ``feeds``), layers whose types and inputs are unchanged since the last run are
    not recomputed; the kernels never write into their inputs, so a cached output is safe to share.
    """
    alias = _alias_map(graph)
    env: dict[str, Fx] = {}
    keys: dict[str, int] = {}
    for i in graph.inputs:
        keys[i] = cache.key("input", i, plan.inputs[i]) if cache is not None else 0
        env[i] = _cached(cache, "input:" + i, keys[i],
                         lambda i=i: Fx.of(np.asarray(feeds[i], np.float64), plan.inputs[i]))
    trace: dict[str, Fx] = dict(env) if keep_intermediates else {}
    for layer in hls_layers(graph):
        srcs = [alias.get(v, v) for v in layer.inputs]
        lp = plan.of(layer.name)
        key = cache.key(layer.name, lp, *(keys[v] for v in srcs)) if cache is not None else 0
        y = _cached(cache, layer.name, key, lambda layer=layer, srcs=srcs, lp=lp: eval_layer(
            graph, layer, lp, [_shaped(env[s], graph, v) for s, v in zip(srcs, layer.inputs)]))
        env[layer.output] = y
        keys[layer.output] = key
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


def predict_fixed(graph: Graph, plan: PrecisionPlan, feeds: dict[str, np.ndarray], *,
                  cache: LayerCache | None = None) -> dict[str, np.ndarray]:
    """Float outputs of the fixed-point model (what hls4ml's C simulation returns)."""
    return {k: v.to_float() for k, v in run_fixed(graph, plan, feeds, cache=cache).items()}
