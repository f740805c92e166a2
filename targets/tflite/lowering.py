"""IR rewrites made only for TFLite's integer variants (int8, int16x8), before the Keras build.

A per-channel ``batch_norm`` or ``affine`` that the fuse passes could not fold into a conv or
dense (DenseNet's pre-activation norms after a concat, MobileNetV3's, NASNet's) becomes
TensorFlow's BatchNormalization or a broadcast multiply-add, which the converter turns into a
float MUL and ADD between a DEQUANTIZE and a QUANTIZE: not integer-only, so Vela puts it on
the CPU and TFLite Micro runs it in float. ``lower_channel_scales`` rewrites each such node as
``y = x * s + t`` in a 1x1 depthwise conv (weights ``s``, bias ``t``, one per channel), which
TFLite, TFLite Micro and Vela all run as an int8 (or 16x8) DEPTHWISE_CONV_2D. The new weights
and bias are annotated as the quantize pass annotates a conv's: int8 symmetric per channel
(one weight per channel, so each is exactly +-127 steps) and input scale x weight scale.

A rank-4 NHWC input is lowered as it is; [N, C] and [N, L, C] (static L) go through
[N, 1, L, C] and back (EXPAND_DIMS and RESHAPE, same scale on both sides: no requantization;
``StaticReshape``). Other ranks are left alone. Nodes kept
float by request, and norms whose operands do not run along the channels, are left alone.
The hls4ml target builds from the same Keras builder but never sees this rewrite.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import keras
import numpy as np

from tapeout.compiler.ir import Activation, Graph, Node, TensorQuant, TensorType, fresh_name
from tapeout.compiler.keras_model import keras_activation
from tapeout.compiler.passes.distribute import channel_scale_shift
from tapeout.compiler.passes.quantize import per_channel_weights

_BIAS = {"int8": ("int32", -2**31, 2**31 - 1), "int16x8": ("int64", -2**63, 2**63 - 1)}


def _plan(graph: Graph, n: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) when ``n`` is a per-channel batch_norm/affine between two integer activations that
    ``lower_channel_scales`` rewrites, else None."""
    q = graph.quant
    if q is None or n.op not in ("batch_norm", "affine") or n.name in q.float_nodes:
        return None
    x, y = n.inputs[0], n.outputs[0]
    tx, ty = q.tensors.get(x), q.tensors.get(y)
    if tx is None or ty is None or not (tx.is_integer and ty.is_integer and tx.role == ty.role == "activation"):
        return None
    t = graph.type_of(x)
    if np.dtype(t.dtype).kind != "f" or tuple(graph.type_of(y).shape) != tuple(t.shape):
        return None
    # Ranks 2 and 3 go through [N, 1, L, C]; a 3D (rank 5) norm has no TFLite use without 3D pooling.
    if not (t.rank == 4 or (t.rank in (2, 3) and all(isinstance(d, int) and d > 0 for d in t.shape[1:]))):
        return None
    return channel_scale_shift(graph, n, int(t.shape[-1]))


def _fusable_clamp(graph: Graph, value: str, consumers: dict[str, list[Node]]) -> Node | None:
    """The relu (or clip to [0, 6]) that alone reads ``value``, when the conv can apply it (a Keras
    activation TFLite fuses): the norm's own int8 output would be a second, coarser rounding."""
    readers = consumers.get(value, [])
    if value in graph.outputs or len(readers) != 1 or len(readers[0].inputs) != 1:
        return None
    r = readers[0]
    q = graph.quant
    tq = q.tensors.get(r.outputs[0])
    if r.name in q.float_nodes or tq is None or not tq.is_integer or r.op not in ("relu", "clip"):
        return None
    act = Activation.of(r.op, **r.attrs)
    return r if keras_activation(act, graph.type_of(value).rank) in ("relu", "relu6") else None


def lower_channel_scales(graph: Graph) -> Graph:
    """``graph`` with every lowerable per-channel batch_norm/affine as a 1x1 depthwise conv (a copy;
    ``graph`` itself when there is none, or when it carries no integer annotations)."""
    q = graph.quant
    if q is None or q.scheme not in _BIAS or not lowered_nodes(graph):
        return graph
    g = graph.copy()
    tensors = dict(q.tensors)
    taken = set(g.names())
    dropped: set[str] = set()
    reshapes: set[str] = set()

    def fresh(base: str) -> str:
        name = fresh_name(base, taken.__contains__)
        taken.add(name)
        return name

    consumers = g.consumers()
    fused: set[int] = set()  # ids of the relu / clip nodes folded into a lowered norm
    nodes: list[Node] = []
    for n in g.nodes:
        if id(n) in fused:
            continue
        st = _plan(g, n)
        if st is None:
            nodes.append(n)
            continue
        x, y = n.inputs[0], n.outputs[0]
        attrs: dict[str, Any] = {"groups": int(g.type_of(x).shape[-1])}
        act = _fusable_clamp(g, y, consumers)
        if act is not None:  # one rounding, on the clamp's finer grid, as TFLite fuses it into the conv
            fused.add(id(act))
            tensors.pop(y, None)
            g.types.pop(y, None)
            y = act.outputs[0]
            attrs["activation"] = Activation.of(act.op, **act.attrs)
        t, tx, ty = g.type_of(x), tensors[x], tensors[y]
        channels = int(t.shape[-1])
        s, shift = st
        w = fresh(f"{n.name}_dw_w")
        b = fresh(f"{n.name}_dw_b")
        g.constants[w] = s.astype(np.float32).reshape(1, 1, 1, channels)
        g.constants[b] = shift.astype(np.float32)
        wq = per_channel_weights(g.constants[w], 3)
        dtype, qmin, qmax = _BIAS[q.scheme]
        tensors[w] = wq
        bias = tuple(float(v) for v in g.constants[b])
        tensors[b] = TensorQuant(dtype, "bias", tuple(tx.scale[0] * c for c in wq.scale), (0,) * channels, 0,
                                 qmin, qmax, bias, bias)
        dropped.update(n.inputs[1:])
        if t.rank == 4:
            nodes.append(Node("conv", n.name, [x, w, b], [y], attrs))
            continue
        # [N, C] or [N, L, C] -> [N, 1, L, C] -> depthwise -> back; the reshapes keep their input's scale.
        inner = (1, *([1] if t.rank == 2 else [int(t.shape[1])]), channels)
        x4, y4 = fresh(f"{x}_nhwc"), fresh(f"{y}_nhwc")
        g.types[x4] = TensorType((t.shape[0], *inner), t.dtype)
        g.types[y4] = g.types[x4]
        tensors[y4] = ty
        to4, back = fresh(f"{n.name}_to_nhwc"), fresh(f"{n.name}_from_nhwc")
        nodes.append(Node("reshape", to4, [x], [x4], {"shape": inner}))
        nodes.append(Node("conv", n.name, [x4, w, b], [y4], attrs))
        nodes.append(Node("reshape", back, [y4], [y], {"shape": tuple(int(d) for d in t.shape[1:])}))
        reshapes.update((to4, back))
    g.nodes = nodes
    still_read = {i for m in nodes for i in m.inputs}
    for c in dropped - still_read:
        g.constants.pop(c, None)
        tensors.pop(c, None)
    g.quant = replace(q, tensors=tensors)
    g.metadata = {**g.metadata, RESHAPES: tuple(sorted(reshapes))}
    return g


RESHAPES = "tflite_lowering_reshapes"  # metadata key: the reshape nodes lower_channel_scales added


class StaticReshape(keras.layers.Layer):
    """Reshape to ``[-1, *shape]`` with a constant shape operand: one RESHAPE or EXPAND_DIMS in TFLite.

    Keras's Reshape computes the shape from the dynamic batch (SHAPE + STRIDED_SLICE + PACK).
    Adding leading unit axes uses EXPAND_DIMS: a constant RESHAPE right after a CONCATENATION
    made the converter requantize the concat (its inputs' joint range, then a QUANTIZE to the
    annotated one) instead of keeping the concat's annotated scale."""

    def __init__(self, shape: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shape = tuple(int(d) for d in shape)

    def call(self, x: Any) -> Any:
        extra = len(self.shape) - (len(x.shape) - 1)
        if extra > 0 and self.shape[extra:] == tuple(x.shape[1:]) and set(self.shape[:extra]) == {1}:
            for _ in range(extra):
                x = keras.ops.expand_dims(x, 1)
            return x
        return keras.ops.reshape(x, (-1, *self.shape))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], *self.shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "shape": self.shape}


def reshape_builders(graph: Graph) -> dict[str, Any]:
    """Keras builders for the reshape nodes ``lower_channel_scales`` added to ``graph``."""

    def build(ctx: Any, node: Node) -> Any:
        return StaticReshape(tuple(node.attrs["shape"]), name=ctx.name(node))(ctx.tensor(node, node.inputs[0]))

    return {name: build for name in graph.metadata.get(RESHAPES, ())}


def lowered_nodes(graph: Graph) -> list[str]:
    """Names of the nodes ``lower_channel_scales`` rewrites."""
    q = graph.quant
    if q is None or q.scheme not in _BIAS:
        return []
    return [n.name for n in graph.nodes if _plan(graph, n) is not None]
