"""Fusions: batch norm into conv/dense weights, activations into their producer, shape-op chains."""

from __future__ import annotations

from typing import Callable

import numpy as np

from tapeout.compiler.ir import Activation, Graph, Node
from tapeout.compiler.ops import get_schema
from tapeout.compiler.passes.base import Editor, RewritePass
from tapeout.compiler.passes.pipeline import Pipeline

LINEAR_OPS = ("conv", "dense")


def _bn_affine(graph: Graph, bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """The batch norm as y = x * s + t (float64), or None when its parameters are not constants."""
    if not all(i in graph.constants for i in bn.inputs[1:]):
        return None
    scale, bias, mean, var = (graph.constants[i].astype(np.float64) for i in bn.inputs[1:])
    s = scale / np.sqrt(var + float(bn.attr("epsilon")))
    return s, bias - mean * s


def _weights(graph: Graph, node: Node) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(weights, bias or None) of a conv/dense whose parameters are constants, else None."""
    params = [i for i in node.inputs[1:] if i]
    if not all(i in graph.constants for i in params):
        return None
    w = graph.constants[node.inputs[1]]
    b = graph.constants[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else None
    return w, b


def _set_params(ed: Editor, node: Node, w: np.ndarray, b: np.ndarray, dtype: np.dtype) -> None:
    # New constants (never written into the shared arrays of the input graph).
    weights = ed.add_constant(f"{node.name}_w", w.astype(dtype))
    bias = ed.add_constant(f"{node.name}_b", b.astype(dtype))
    ed.set_inputs(node, [node.inputs[0], weights, bias])


def _is_linear(node: Node) -> bool:
    return node.op in LINEAR_OPS and node.attr("activation").is_identity


class NodeRewrite(RewritePass):
    """A rewrite that visits each candidate node once, in one editor, and says what it did."""

    def candidates(self, graph: Graph) -> list[Node]:
        raise NotImplementedError

    def rewrite_node(self, ed: Editor, node: Node) -> str | None:
        raise NotImplementedError

    def rewrite(self, graph: Graph) -> list[str]:
        nodes = self.candidates(graph)
        if not nodes:
            return []
        details = []
        with Editor(graph) as ed:
            for n in nodes:
                msg = self.rewrite_node(ed, n) if ed.alive(n) else None
                if msg:
                    details.append(msg)
        return details


class FuseBatchNorm(NodeRewrite):
    """Fold inference batch norms into an adjacent conv/dense.

    Into the preceding conv/dense (its output feeds only the BN, no fused activation):
    scale the output channels of the weights and shift the bias.

    Into the following conv/dense (the BN output feeds only that node): scale the weights'
    input channels and push the shift through the weights into the bias. A conv must have
    no padding: its pads hold zeros in the normalized domain, which the folded conv would
    read as zeros in the raw domain, missing the shift at the borders.
    """

    name = "fuse-batch-norm"

    def candidates(self, graph: Graph) -> list[Node]:
        return [n for n in graph.nodes if n.op == "batch_norm"]

    def rewrite_node(self, ed: Editor, bn: Node) -> str | None:
        return self._into_producer(ed, bn) or self._into_consumer(ed, bn)

    @staticmethod
    def _into_producer(ed: Editor, bn: Node) -> str | None:
        graph = ed.graph
        prod = ed.producer.get(bn.inputs[0])
        if prod is None or not _is_linear(prod) or ed.sole_consumer(prod.outputs[0]) is not bn:
            return None
        st, wb = _bn_affine(graph, bn), _weights(graph, prod)
        if st is None or wb is None:
            return None
        (s, t), (w, b) = st, wb
        b64 = np.zeros(w.shape[-1]) if b is None else b.astype(np.float64)
        # The output channel is the last weight axis for both conv [*K, Cg, F] and dense [K, M].
        _set_params(ed, prod, w.astype(np.float64) * s, b64 * s + t, w.dtype)
        ed.absorb_into_producer(prod, bn)
        return f"folded batch_norm {bn.name!r} into {prod.op} {prod.name!r}"

    @staticmethod
    def _into_consumer(ed: Editor, bn: Node) -> str | None:
        graph = ed.graph
        user = ed.sole_consumer(bn.outputs[0])
        if user is None or user.op not in LINEAR_OPS or user.inputs[0] != bn.outputs[0]:
            return None
        if user.op == "conv" and any(a or b for a, b in (user.attrs.get("pads") or ())):
            return None
        st, wb = _bn_affine(graph, bn), _weights(graph, user)
        if st is None or wb is None:
            return None
        (s, t), (w, b) = st, wb
        w64 = w.astype(np.float64)
        b64 = np.zeros(w.shape[-1]) if b is None else b.astype(np.float64)
        if user.op == "dense":
            new_w, new_b = w64 * s[:, None], b64 + t @ w64
        else:
            # Per (input channel within group, output channel) factor: output f of group g
            # reads input channels g*Cg .. g*Cg+Cg-1.
            groups = int(user.attr("groups"))
            cg, f = w.shape[-2], w.shape[-1]
            group_of = np.arange(f) // (f // groups)
            s_cf = s.reshape(groups, cg)[group_of].T  # [Cg, F]
            t_cf = t.reshape(groups, cg)[group_of].T
            new_w = w64 * s_cf
            new_b = b64 + (w64 * t_cf).reshape(-1, f).sum(axis=0)
        _set_params(ed, user, new_w, new_b, w.dtype)
        ed.set_input(user, 0, bn.inputs[0])
        ed.remove(bn)
        return f"folded batch_norm {bn.name!r} into the following {user.op} {user.name!r}"


def _channel_shift(ed: Editor, n: Node, accepts: Callable[[Node], bool]) -> tuple[Node, np.ndarray] | None:
    """(producer, c) when ``n`` is ``y * c``, ``y + c`` or ``y - c`` (either order but ``c - y``)
    with no activation, ``c`` a constant with one value per channel of ``y`` (or one value), and
    ``y`` read by ``n`` alone from a producer that ``accepts`` takes; ``c`` as float64 [channels]."""
    graph = ed.graph
    consts = [i for i in n.inputs if i in graph.constants]
    if len(consts) != 1 or n.attrs.get("activation") not in (None, Activation()):
        return None
    data = next(i for i in n.inputs if i not in graph.constants)
    if n.op == "sub" and n.inputs[0] != data:  # c - y is not a shift of y
        return None
    prod = ed.producer.get(data)
    if prod is None or not accepts(prod) or ed.sole_consumer(data) is not n:
        return None
    out_t, in_t = graph.types.get(n.outputs[0]), graph.types.get(data)
    if out_t is None or in_t is None or tuple(out_t.shape) != tuple(in_t.shape):
        return None  # the constant broadcasts the output wider: not a per-channel shift
    c = np.asarray(graph.constants[consts[0]], np.float64)
    channels = int(in_t.shape[-1])
    if c.ndim > in_t.rank or any(int(d) != 1 for d in c.shape[:-1]) or (c.ndim and c.shape[-1] not in (1, channels)):
        return None
    return prod, np.broadcast_to(c.reshape(-1), (channels,))


class ShiftRewrite(NodeRewrite):
    """A fold of ``y * c``, ``y + c`` or ``y - c`` into the node producing ``y`` (``_channel_shift``)."""

    def candidates(self, graph: Graph) -> list[Node]:
        return [n for n in graph.nodes if n.op in ("add", "sub", "mul") and len(n.inputs) == 2]


class FuseConstantShift(ShiftRewrite):
    """Fold ``y + c``, ``y - c`` and ``y * c`` into the conv/dense producing ``y``, for a constant
    ``c`` with one value per output channel (or one value): into its bias, or its weights and bias.

    Keras's MobileNetV3 writes its squeeze-excite gate as ``relu6(conv(x) + 3) / 6``: left as an
    op, the ``+ 3`` is one more int8 rounding between the conv and its activation, and nine more
    ADDs than TensorFlow's converter, which folds it; once folded, the relu6 fuses into the conv.
    """

    name = "fuse-constant-shift"

    def rewrite_node(self, ed: Editor, n: Node) -> str | None:
        found = _channel_shift(ed, n, _is_linear)
        wb = None if found is None else _weights(ed.graph, found[0])
        if found is None or wb is None:
            return None
        (prod, c), (w, b) = found, wb
        b64 = np.zeros(len(c)) if b is None else b.astype(np.float64)
        w64 = w.astype(np.float64)
        if n.op == "mul":
            w64, b64 = w64 * c, b64 * c
        else:
            b64 = b64 + c if n.op == "add" else b64 - c
        _set_params(ed, prod, w64, b64, w.dtype)
        ed.absorb_into_producer(prod, n)
        return f"folded constant {n.op} {n.name!r} into {prod.op} {prod.name!r}"


class FuseNormShift(ShiftRewrite):
    """Fold ``y * c``, ``y + c`` and ``y - c`` into the batch norm or affine producing ``y``, for a
    constant ``c`` with one value per channel (or one value): into its scale and bias.

    The ONNX light zoo's Caffe2 nets write every batch norm as BatchNormalization, then Mul and Add
    by per-channel constants; DenseNet's pre-activation norms (after a concat, before relu and
    conv) fold into no conv, so each was three int8 roundings where one affine needs one.
    """

    name = "fuse-norm-shift"

    def rewrite_node(self, ed: Editor, n: Node) -> str | None:
        graph = ed.graph

        def norm(p: Node) -> bool:
            return p.op in ("batch_norm", "affine") and all(i in graph.constants for i in p.inputs[1:])

        found = _channel_shift(ed, n, norm)
        if found is None:
            return None
        prod, c = found
        scale_name, shift_name = prod.inputs[1], prod.inputs[2]  # batch_norm: scale, bias; affine: scale, shift
        scale, shift = (graph.constants[i].astype(np.float64) for i in (scale_name, shift_name))
        if any(a.ndim and a.shape[-1] not in (1, len(c)) for a in (scale, shift)):
            return None  # an affine whose operands do not run along the channels
        if n.op == "mul":
            scale, shift = scale * c, shift * c
        else:
            shift = shift + c if n.op == "add" else shift - c
        dtype = graph.constants[scale_name].dtype
        new_scale = ed.add_constant(f"{prod.name}_scale", scale.astype(dtype))
        new_shift = ed.add_constant(f"{prod.name}_shift", shift.astype(dtype))
        ed.set_inputs(prod, [prod.inputs[0], new_scale, new_shift, *prod.inputs[3:]])
        ed.absorb_into_producer(prod, n)
        return f"folded constant {n.op} {n.name!r} into {prod.op} {prod.name!r}"


class FuseActivation(RewritePass):
    """Move a unary activation into the conv/dense producing its input as ``attrs["activation"]``.

    softmax is fused only into dense and only over the last axis: that is the classifier
    head every target supports; softmax after a conv stays a separate node.
    """

    name = "fuse-activation"
    FUSABLE = ("relu", "clip", "leaky_relu", "elu", "sigmoid", "hard_sigmoid", "tanh", "swish",
               "hard_swish", "gelu", "softmax")

    def rewrite(self, graph: Graph) -> list[str]:
        details = []
        acts = [n for n in graph.nodes if n.op in self.FUSABLE]
        if not acts:
            return details
        with Editor(graph) as ed:
            for act in acts:
                prod = ed.producer.get(act.inputs[0])
                if prod is None or not _is_linear(prod) or ed.sole_consumer(prod.outputs[0]) is not act:
                    continue
                attrs = {**get_schema(act.op).defaults, **act.attrs}
                if act.op == "softmax":
                    rank = graph.type_of(act.inputs[0]).rank
                    if prod.op != "dense" or attrs["axis"] % rank != rank - 1:
                        continue
                    attrs["axis"] = -1
                prod.attrs["activation"] = Activation.of(act.op, **attrs)
                ed.absorb_into_producer(prod, act)
                details.append(f"fused {act.op} {act.name!r} into {prod.op} {prod.name!r}")
        return details


class FuseReshapeTranspose(RewritePass):
    """Collapse chains of reshape/flatten into the last one and transposes into one composed perm.

    reshape and flatten both reinterpret the non-batch elements in row-major order, so
    only the last of a chain matters. A transpose with the identity perm is removed.
    """

    name = "fuse-reshape-transpose"
    SHAPE_OPS = ("reshape", "flatten")

    def rewrite(self, graph: Graph) -> list[str]:
        details = []
        shape_ops = [n for n in graph.nodes if n.op in (*self.SHAPE_OPS, "transpose")]
        if not shape_ops:
            return details
        with Editor(graph) as ed:
            for n in shape_ops:
                if not ed.alive(n):
                    continue
                prev = ed.producer.get(n.inputs[0])
                same_kind = prev is not None and (prev.op == n.op == "transpose"
                                                  or (prev.op in self.SHAPE_OPS and n.op in self.SHAPE_OPS))
                if same_kind and ed.sole_consumer(prev.outputs[0]) is n:
                    if n.op == "transpose":
                        p1, p2 = prev.attrs["perm"], n.attrs["perm"]
                        n.attrs["perm"] = tuple(int(p1[i]) for i in p2)
                    ed.set_input(n, 0, prev.inputs[0])
                    ed.remove(prev)
                    details.append(f"merged {prev.op} {prev.name!r} into {n.op} {n.name!r}")
                if n.op == "transpose" and tuple(n.attrs["perm"]) == tuple(range(len(n.attrs["perm"]))):
                    if ed.bypass(n):
                        details.append(f"removed identity transpose {n.name!r}")
        return details


class Fuse(Pipeline):
    """Its passes, repeated until a round changes nothing (at most 10 rounds)."""

    name = "fuse"

    def __init__(self, check: bool = True) -> None:
        super().__init__([FuseBatchNorm(), FuseConstantShift(), FuseNormShift(), FuseActivation(),
                          FuseReshapeTranspose()],
                         check=check, max_iterations=10)
