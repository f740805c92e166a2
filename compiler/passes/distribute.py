"""Distribute a per-channel norm over the concat it reads (integer schemes, before calibration).

DenseNet's pre-activation norms read a concat of every earlier layer's features. Quantized per
tensor, that concat has one scale for channels whose ranges differ widely; the norm then
multiplies the small-range channels up, and their rounding with them (zoo DenseNet121: SQNR
22 dB at the first concat, 9 dB after its norm; int8 cosine 0.976, TensorFlow's converter
0.979). ``norm(concat(a, b)) == concat(norm_a(a), norm_b(b))``, so each piece is normalized on
its own scale and the concat quantizes normalized values. A relu or clip that alone reads the
norm moves into each piece too (TFLite fuses it into the piece's integer 1x1 depthwise conv).
Concats along the same axis nest: their pieces are flattened, and a concat left unread is dropped.
"""

from __future__ import annotations

import numpy as np

from tapeout.compiler.ir import Graph, Node
from tapeout.compiler.passes.base import Editor, RewritePass

NORM_OPS = ("batch_norm", "affine")
# Inputs per concat the pass writes, wider ones nest: TFLite Micro refuses more than 10
# (kMaxInputNum in its concatenation kernel); DenseNet121's widest norm reads 25 pieces.
MAX_CONCAT_INPUTS = 10
_CLAMPS = ("relu", "clip")


def channel_scale_shift(graph: Graph, n: Node, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A batch_norm/affine as ``y = x * s + t`` with s, t of shape [channels] (float64), or None when
    its parameters are not constants with one value per channel (or one value)."""
    params = n.inputs[1:]
    if not all(p in graph.constants for p in params):
        return None
    if n.op == "batch_norm":
        gamma, beta, mean, var = (np.asarray(graph.constants[p], np.float64).reshape(-1) for p in params)
        s = gamma / np.sqrt(var + float(n.attr("epsilon")))
        return s, beta - mean * s
    out = []
    for p in params:
        a = np.asarray(graph.constants[p], np.float64)
        if a.size not in (1, channels) or (a.ndim and a.size != a.shape[-1]):
            return None  # varies along an axis other than the channels
        out.append(np.broadcast_to(a.reshape(-1), (channels,)).copy())
    return out[0], out[1]


def _last_axis_concat(graph: Graph, node: Node | None) -> bool:
    if node is None or node.op != "concat":
        return False
    rank = graph.type_of(node.outputs[0]).rank
    return int(node.attrs["axis"]) % rank == rank - 1


class DistributeNorms(RewritePass):
    """``clamp(norm(concat(a, b, ...)))`` -> ``concat(clamp(norm_a(a)), clamp(norm_b(b)), ...)``."""

    name = "distribute-norms"

    def rewrite(self, graph: Graph) -> list[str]:
        details: list[str] = []
        norms = [n for n in graph.nodes if n.op in NORM_OPS]
        if not norms:
            return details
        with Editor(graph) as ed:
            concats: list[Node] = []
            for n in norms:
                src = ed.producer.get(n.inputs[0])
                if not _last_axis_concat(graph, src):
                    continue
                pieces = self._pieces(ed, n.inputs[0])
                widths = [graph.type_of(p).shape[-1] for p in pieces]
                if not all(isinstance(w, int) and w > 0 for w in widths):
                    continue
                st = channel_scale_shift(graph, n, sum(widths))
                if st is None:
                    continue
                clamp = ed.sole_consumer(n.outputs[0])
                if clamp is None or clamp.op not in _CLAMPS or len(clamp.inputs) != 1:
                    clamp = None
                out = (clamp or n).outputs[0]
                dtype = graph.constants[n.inputs[1]].dtype
                parts, start = [], 0
                for i, (piece, width) in enumerate(zip(pieces, widths)):
                    s, t = (a[start:start + width] for a in st)
                    start += width
                    scale = ed.add_constant(f"{n.name}_scale_{i}", s.astype(dtype))
                    shift = ed.add_constant(f"{n.name}_shift_{i}", t.astype(dtype))
                    value = ed.unique_name(f"{n.outputs[0]}/part{i}")
                    norm = Node("affine", ed.unique_name(f"{n.name}/part{i}"), [piece, scale, shift], [value])
                    ed.insert_after(n, norm)
                    if clamp is not None:
                        clamped = ed.unique_name(f"{out}/part{i}")
                        ed.insert_after(n, Node(clamp.op, ed.unique_name(f"{clamp.name}/part{i}"), [value],
                                                [clamped], dict(clamp.attrs)))
                        value = clamped
                    parts.append(value)
                concats.append(src)
                ed.remove(n)
                if clamp is not None:
                    ed.remove(clamp)
                while len(parts) > MAX_CONCAT_INPUTS:
                    groups = [parts[k:k + MAX_CONCAT_INPUTS] for k in range(0, len(parts), MAX_CONCAT_INPUTS)]
                    parts = []
                    for group in groups:
                        if len(group) == 1:
                            parts.extend(group)
                            continue
                        value = ed.unique_name(f"{out}/group")
                        ed.insert_after(n, Node("concat", ed.unique_name(f"{n.name}/group"), group, [value],
                                                {"axis": -1}))
                        parts.append(value)
                ed.insert_after(n, Node("concat", n.name, parts, [out], {"axis": -1}))
                what = f"{n.op} {n.name!r}" + (f" and {clamp.op} {clamp.name!r}" if clamp else "")
                details.append(f"distributed {what} over the {len(pieces)} pieces of concat {src.name!r}")
            # Concats only the rewritten norms read; inner ones are read by outer ones, so repeat.
            changed = True
            while changed:
                changed = False
                for c in concats:
                    if ed.alive(c) and not ed.consumers(c.outputs[0]) and c.outputs[0] not in graph.outputs:
                        ed.remove(c)
                        changed = True
        return details

    @staticmethod
    def _pieces(ed: Editor, value: str) -> list[str]:
        """The values a channel concat is made of, through nested channel concats."""
        p = ed.producer.get(value)
        if not _last_axis_concat(ed.graph, p):
            return [value]
        return [v for i in p.inputs for v in DistributeNorms._pieces(ed, i)]
