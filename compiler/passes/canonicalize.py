"""Canonicalization: drop no-op nodes, fold constants, remove dead code, merge pads into windows,
spell x * hard_sigmoid(x) as hard_swish."""

from __future__ import annotations

import math

import numpy as np

from tapeout.compiler.ir import Graph, Node
from tapeout.compiler.passes.base import Editor, RewritePass
from tapeout.compiler.passes.pipeline import Pipeline

NO_OPS = ("identity", "dropout")  # dropout is the identity at inference


class RemoveIdentity(RewritePass):
    name = "remove-identity"

    def rewrite(self, graph: Graph) -> list[str]:
        details = []
        candidates = [n for n in graph.nodes if n.op in NO_OPS]
        if not candidates:
            return details
        with Editor(graph) as ed:
            for n in candidates:
                if ed.bypass(n):
                    details.append(f"removed {n.op} {n.name!r}")
        return details


class FoldConstants(RewritePass):
    """Evaluate nodes whose inputs are all constants with the reference interpreter.

    Nodes producing a graph output are left alone so every graph output stays computed
    by a node (emitters expect that).
    """

    name = "fold-constants"

    def rewrite(self, graph: Graph) -> list[str]:
        from tapeout.compiler.interpreter import eval_node

        details = []
        outputs = set(graph.outputs)
        folded: set[int] = set()
        for n in graph.nodes:
            ins = [i for i in n.inputs if i]
            if not ins or not all(i in graph.constants for i in ins):
                continue
            if any(o in outputs for o in n.outputs):
                continue
            values = eval_node(n, [graph.constants[i] if i else None for i in n.inputs])
            folded.add(id(n))
            for o, v in zip(n.outputs, values):
                graph.constants[o] = np.ascontiguousarray(v)
                graph.types.pop(o, None)
            details.append(f"folded {n.op} {n.name!r} into a constant")
        if folded:
            graph.nodes = [n for n in graph.nodes if id(n) not in folded]
        return details


class RemoveDead(RewritePass):
    """Drop nodes none of whose outputs is read or returned, then unused constants."""

    name = "remove-dead"

    def rewrite(self, graph: Graph) -> list[str]:
        details = []
        used = set(graph.outputs)
        keep = []
        for n in reversed(graph.nodes):  # consumers come after producers
            if any(o in used for o in n.outputs):
                keep.append(n)
                used.update(i for i in n.inputs if i)
            else:
                details.append(f"removed dead {n.op} {n.name!r}")
        graph.nodes = keep[::-1]
        details.reverse()
        unused = [c for c in graph.constants if c not in used]
        if unused:
            details.append(f"removed {len(unused)} unused constant(s)")
        return details


class MergePad(RewritePass):
    """Fold a constant ``pad`` of the spatial axes into the pads of the conv/pool reading it.

    Legal only when the window op pads with the same value the pad node used: conv pads
    with 0, max_pool with -inf; avg_pool pads with 0 and is merged only when counting the
    padding (count_include_pad=True) gives the same averages as before, i.e. the pool had
    no pads of its own or already counted its padding.
    """

    name = "merge-pad"

    def rewrite(self, graph: Graph) -> list[str]:
        details = []
        pad_nodes = [n for n in graph.nodes if n.op == "pad"]
        if not pad_nodes:
            return details
        with Editor(graph) as ed:
            for p in pad_nodes:
                user = ed.sole_consumer(p.outputs[0])
                if user is None or user.inputs[0] != p.outputs[0] or not self._legal(p, user):
                    continue
                pads = [tuple(x) for x in p.attrs["pads"]]
                spatial = pads[1:-1]
                own = [tuple(x) for x in (user.attrs.get("pads") or [(0, 0)] * len(spatial))]
                user.attrs["pads"] = tuple((a + c, b + d) for (a, b), (c, d) in zip(spatial, own))
                if user.op == "avg_pool":
                    user.attrs["count_include_pad"] = True
                ed.set_input(user, 0, p.inputs[0])
                ed.remove(p)
                details.append(f"merged pad {p.name!r} into {user.op} {user.name!r}")
        return details

    @staticmethod
    def _legal(p: Node, user: Node) -> bool:
        pads = [tuple(x) for x in p.attrs["pads"]]
        if len(pads) < 3 or pads[-1] != (0, 0):  # channel padding cannot live in a window op
            return False
        value = float(p.attr("value"))
        if user.op == "conv":
            return value == 0.0
        if user.op == "max_pool":
            return value == -math.inf
        if user.op == "avg_pool":
            own = user.attrs.get("pads") or ()
            return value == 0.0 and (user.attr("count_include_pad") or not any(a or b for a, b in own))
        return False


class FuseHardSwish(RewritePass):
    """``x * hard_sigmoid(x)`` with PyTorch's hard sigmoid (alpha 1/6, beta 1/2) is ``hard_swish(x)``.

    ONNX before opset 14 has no HardSwish: PyTorch exports it as ``Mul(x, HardSigmoid(x))``.
    As two ops, the int8 TFLite artifact ran each hard sigmoid in float between a DEQUANTIZE and
    a QUANTIZE (torchvision MobileNetV3-small at opset 13: 19 float islands, no use on an
    integer-only microcontroller or NPU); as one, it is TFLite's int8 HARD_SWISH.
    """

    name = "fuse-hard-swish"

    def rewrite(self, graph: Graph) -> list[str]:
        details = []
        muls = [n for n in graph.nodes if n.op == "mul" and len(n.inputs) == 2]
        if not muls:
            return details
        with Editor(graph) as ed:
            for m in muls:
                for x, g in (m.inputs, m.inputs[::-1]):
                    h = ed.producer.get(g)
                    if h is None or h.op != "hard_sigmoid" or h.inputs[0] != x or x == g or \
                            ed.sole_consumer(g) is not m or not self._torch_constants(h):
                        continue
                    m.op, m.attrs = "hard_swish", {}
                    ed.set_inputs(m, [x])
                    ed.remove(h)
                    graph.types.pop(g, None)
                    details.append(f"fused mul {m.name!r} and hard_sigmoid {h.name!r} into hard_swish")
                    break
        return details

    @staticmethod
    def _torch_constants(h: Node) -> bool:
        return math.isclose(float(h.attr("alpha")), 1 / 6, rel_tol=1e-6) and \
            math.isclose(float(h.attr("beta")), 0.5, rel_tol=1e-6)


class Canonicalize(Pipeline):
    """Its passes, repeated until a round changes nothing (at most 10 rounds)."""

    name = "canonicalize"

    def __init__(self, check: bool = True) -> None:
        super().__init__([RemoveIdentity(), FoldConstants(), MergePad(), FuseHardSwish(), RemoveDead()], check=check, max_iterations=10)
