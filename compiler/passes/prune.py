"""Pruning passes: unstructured magnitude, N:M semi-structured, and structured channel pruning.

None of them is in the default pipeline; ``compile_model(prune=...)`` (``--prune``) runs one
after it. Zeros written by ``prune:magnitude`` and ``prune:2:4`` are exact zeros in the
constants. ``prune:channels`` removes whole output channels of conv/dense layers and the
matching slices of everything that carries or reads those channels, so the result is a
smaller dense graph that computes exactly what the original computes when every weight
producing or reading a pruned channel is zero (see docs/pruning.md).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Graph, Node
from tapeout.compiler.ops import ACTIVATION_OPS, node_macs
from tapeout.compiler.passes.base import Editor, Pass, PassResult, RewritePass

WEIGHTED_OPS = ("conv", "dense")
SALIENCIES = ("l1", "l2", "bn")


# ------------------------------------------------------------------ queries
def weighted_nodes(graph: Graph) -> list[Node]:
    """conv/dense nodes whose weights are constants, in graph order."""
    return [n for n in graph.nodes if n.op in WEIGHTED_OPS and n.inputs[1] in graph.constants]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def unmatched_layers(graph: Graph, patterns: Sequence[str]) -> list[str]:
    """The names or globs in ``patterns`` that match no weighted layer (a likely typo)."""
    names = [n.name for n in weighted_nodes(graph)]
    return [p for p in patterns if not any(_matches(name, [p]) for name in names)]


def layer_stats(graph: Graph) -> list[dict[str, Any]]:
    """Per weighted layer: weights, non-zero weights, sparsity, MACs and MACs of non-zero weights.

    Every weight of a conv or dense is used the same number of times per sample, so the
    MACs a sparse kernel needs are the dense MACs scaled by the non-zero fraction.
    """
    rows = []
    for n in weighted_nodes(graph):
        w = graph.constants[n.inputs[1]]
        nnz = int(np.count_nonzero(w))
        macs = node_macs(n, graph)
        rows.append({"name": n.name, "op": n.op, "shape": [int(d) for d in w.shape], "weights": int(w.size),
                     "nonzero": nnz, "sparsity": round(1.0 - nnz / w.size, 6) if w.size else 0.0,
                     "macs": macs, "nonzero_macs": macs * nnz // w.size if w.size else 0})
    return rows


# An end layer (first or last weighted) is kept dense by default only while it is small. The
# usual reason to keep them dense (Han et al. 2015, Gale et al. 2019) is that they are the most
# sensitive and hold few weights (a CNN stem, a classifier head), so sparing them costs little;
# one holding more than this share of the weights (the 16x64 input layer of the jet MLP holds a
# quarter) is pruned like the rest, or the sparsity asked for would be out of reach.
END_LAYER_SHARE = 0.10
KEEP_ENDS = ("small", "always", "never")


def _checked_keep_ends(keep_ends: str) -> str:
    if keep_ends not in KEEP_ENDS:
        raise ValueError(f"keep_ends must be one of {KEEP_ENDS}, got {keep_ends!r}")
    return keep_ends


def _eligible(graph: Graph, exclude: Sequence[str], keep_ends: str) -> tuple[list[Node], list[str]]:
    """Weighted layers a pass may touch, and detail lines for those it leaves alone.

    ``keep_ends``: "small" leaves the first and last weighted layers dense when each holds at most
    ``END_LAYER_SHARE`` of the weighted layers' weights; "always" leaves them dense; "never" prunes them.
    """
    layers = weighted_nodes(graph)
    total = sum(graph.constants[n.inputs[1]].size for n in layers) or 1
    ends = {n.name: where for n, where in ((layers[-1], "last"), (layers[0], "first"))} if layers else {}
    keep, notes = [], []
    for n in layers:
        share = graph.constants[n.inputs[1]].size / total
        end_dense = n.name in ends and (keep_ends == "always" or (keep_ends == "small" and share <= END_LAYER_SHARE))
        if end_dense:
            notes.append(f"left {n.op} {n.name!r} unpruned ({ends[n.name]} weighted layer)")
        elif _matches(n.name, exclude):
            notes.append(f"left {n.op} {n.name!r} unpruned (excluded)")
        else:
            keep.append(n)
            if n.name in ends and keep_ends == "small":
                notes.append(f"pruned the {ends[n.name]} weighted layer {n.name!r} too: it holds {100 * share:.0f}% "
                             f"of the weights (end layers stay dense up to {100 * END_LAYER_SHARE:.0f}%)")
    return keep, notes


def _not_quantized(graph: Graph) -> str | None:
    # Quantization annotations name the weight constants a pruning pass replaces.
    return "the graph is already quantized; prune before quantizing" if graph.quant is not None else None


def _set_weights(ed: Editor, node: Node, w: np.ndarray) -> None:
    # A new constant: the input graph shares the old array (passes never write into one).
    ed.set_input(node, 1, ed.add_constant(f"{node.name}_w", w))


def _sparsity_line(node: Node, w: np.ndarray) -> str:
    zeros = w.size - int(np.count_nonzero(w))
    return f"{node.op} {node.name!r}: {100.0 * zeros / w.size:.1f}% sparse ({zeros} of {w.size} weights zero)"


# -------------------------------------------------------- prune:magnitude
class PruneMagnitude(Pass):
    """Zero the smallest-magnitude weights of conv/dense layers, to ``sparsity`` per layer or globally.

    ``scope="layer"`` gives every eligible layer the same sparsity; ``"global"`` ranks all their
    weights together (layers with many small weights lose more). ``keep_ends`` says which of the
    first and last weighted layers stay dense (see ``_eligible``: by default those holding at most
    ``END_LAYER_SHARE`` of the weights); ``exclude`` names (or globs) more.
    Ties are broken by position (stable sort) so the result is deterministic. Biases are kept.
    """

    name = "prune:magnitude"

    def __init__(self, sparsity: float = 0.5, scope: str = "layer", exclude: Sequence[str] = (),
                 keep_ends: str = "small") -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.sparsity, self.scope = float(sparsity), scope
        self.exclude, self.keep_ends = tuple(exclude), _checked_keep_ends(keep_ends)

    def requires(self, graph: Graph) -> str | None:
        return _not_quantized(graph)

    def run(self, graph: Graph) -> PassResult:
        g = graph.copy()
        layers, notes = _eligible(g, self.exclude, self.keep_ends)
        weights = [g.constants[n.inputs[1]] for n in layers]
        if self.scope == "layer":
            masks = [_smallest_mask(np.abs(w).ravel(), round(self.sparsity * w.size)) for w in weights]
        else:
            flat = np.concatenate([np.abs(w).ravel() for w in weights]) if weights else np.zeros(0)
            cut = _smallest_mask(flat, round(self.sparsity * flat.size))
            bounds = np.cumsum([0] + [w.size for w in weights])
            masks = [cut[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        details = []
        with Editor(g) as ed:
            for n, w, m in zip(layers, weights, masks):
                pruned = np.where(m.reshape(w.shape), np.zeros((), w.dtype), w)
                if np.array_equal(pruned, w):
                    continue
                _set_weights(ed, n, pruned)
                details.append(f"pruned {_sparsity_line(n, pruned)}")
        if details:
            g.remove_unused_constants()
            details += notes
        return PassResult(g, bool(details), details)


def _smallest_mask(values: np.ndarray, k: int) -> np.ndarray:
    """True at the ``k`` smallest entries (earlier positions win ties)."""
    mask = np.zeros(values.size, dtype=bool)
    if k > 0:
        mask[np.argsort(values, kind="stable")[:k]] = True
    return mask


# ----------------------------------------------------------------- prune:N:M
def nm_reduction_layout(node: Node, w: np.ndarray) -> tuple[int, int] | None:
    """(axis, length) of the reduction axis that N:M groups run along, or None when there is none.

    Dense ``[K, M]``: axis 0. Conv ``[*K, C/groups, F]``: the input-channel axis, as sparse
    tensor cores (TensorRT) want it; depthwise convs (one input channel per group) have none.
    """
    if node.op == "dense":
        return 0, int(w.shape[0])
    if int(node.attr("groups")) > 1 and w.shape[-2] == 1:
        return None
    return w.ndim - 2, int(w.shape[-2])


class PruneNM(Pass):
    """N:M semi-structured sparsity: in every run of ``m`` weights along the reduction axis, zero
    the ``m - n`` smallest. Layers whose reduction axis is not a multiple of ``m`` are left dense.

    Sets ``graph.metadata["sparsity_pattern"]`` ("2:4") so a GPU back end can request sparse weights.
    """

    name = "prune:2:4"

    def __init__(self, n: int = 2, m: int = 4, exclude: Sequence[str] = (), keep_ends: str = "never") -> None:
        if not 0 < n < m:
            raise ValueError(f"N:M sparsity needs 0 < N < M, got {n}:{m}")
        self.n, self.m = n, m
        self.exclude, self.keep_ends = tuple(exclude), _checked_keep_ends(keep_ends)

    def requires(self, graph: Graph) -> str | None:
        return _not_quantized(graph)

    def run(self, graph: Graph) -> PassResult:
        g = graph.copy()
        layers, notes = _eligible(g, self.exclude, self.keep_ends)
        details = []
        with Editor(g) as ed:
            for node in layers:
                w = g.constants[node.inputs[1]]
                layout = nm_reduction_layout(node, w)
                if layout is None or layout[1] % self.m:
                    why = ("depthwise" if layout is None
                           else f"reduction axis of {layout[1]} is not a multiple of {self.m}")
                    notes.append(f"left {node.op} {node.name!r} unpruned ({why})")
                    continue
                pruned = _nm_prune(w, layout[0], self.n, self.m)
                if not np.array_equal(pruned, w):
                    _set_weights(ed, node, pruned)
                    details.append(f"pruned {self.n}:{self.m} {_sparsity_line(node, pruned)}")
        if details:
            g.remove_unused_constants()
            g.metadata["sparsity_pattern"] = f"{self.n}:{self.m}"
            details += notes
        return PassResult(g, bool(details), details)


def _nm_prune(w: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    moved = np.moveaxis(w, axis, -1)  # [..., K]
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    order = np.argsort(np.abs(groups), axis=-1, kind="stable")
    drop = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(drop, order[..., : m - n], True, axis=-1)
    out = np.where(drop, np.zeros((), w.dtype), groups).reshape(moved.shape)
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


def nm_violations(w: np.ndarray, axis: int, n: int = 2, m: int = 4) -> int:
    """How many runs of ``m`` weights along ``axis`` hold fewer than ``m - n`` zeros."""
    moved = np.moveaxis(w, axis, -1)
    groups = moved.reshape(-1, m)
    return int(np.sum(np.sum(groups == 0, axis=-1) < m - n))


# ----------------------------------------------------------- prune:channels
_SAME_CHANNELS = tuple(op for op in ACTIVATION_OPS if op != "softmax") + (
    "dropout", "batch_norm", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool", "resize")
_BINARY = ("add", "sub", "mul", "div", "maximum", "minimum")


class _Spaces:
    """Channel spaces: which values share the meaning of their last axis.

    A leaf space is made by a conv/dense (its output channels) or is opaque (a graph input,
    an op we do not see through). Element-wise ops between two values join their spaces
    (union-find): a residual add group is one space. ``concat`` along channels and
    ``flatten`` make composite spaces whose channels are laid out from their parts. A frozen
    space keeps every channel; freezing a composite freezes its parts.
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.kind: list[str] = []  # "leaf", "concat" or "tile"
        self.parts: list[tuple[Any, ...]] = []
        self.frozen: list[bool] = []

    def new(self, size: int, kind: str = "leaf", parts: tuple[Any, ...] = (), frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.kind.append(kind)
        self.parts.append(parts)
        self.frozen.append(False)
        s = len(self.parent) - 1
        if frozen:
            self.freeze(s)
        return s

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.kind[ra] != "leaf" or self.kind[rb] != "leaf" or self.size[ra] != self.size[rb]:
            # Composite layouts cannot be matched against other channels: leave both alone.
            self.freeze(ra)
            self.freeze(rb)
            return
        self.parent[rb] = ra
        self.frozen[ra] = self.frozen[ra] or self.frozen[rb]
        if self.frozen[ra]:
            self.freeze(ra, force=True)

    def freeze(self, s: int, force: bool = False) -> None:
        r = self.find(s)
        if self.frozen[r] and not force:
            return
        self.frozen[r] = True
        if self.kind[r] == "concat":
            for p in self.parts[r]:
                self.freeze(p)
        elif self.kind[r] == "tile":
            self.freeze(self.parts[r][1])


@dataclass
class ChannelPlan:
    """What ``prune:channels`` removes: per group of layers sharing channels, the channels dropped."""

    removed: dict[str, tuple[int, ...]] = field(default_factory=dict)  # source layer -> removed output channels
    groups: list[tuple[tuple[str, ...], int, tuple[int, ...]]] = field(default_factory=list)  # (sources, C, removed)
    left_alone: list[tuple[str, ...]] = field(default_factory=list)  # groups that must keep every channel
    notes: list[str] = field(default_factory=list)
    _spaces: _Spaces | None = None
    _space_of: dict[str, int] = field(default_factory=dict)
    _keep: dict[int, np.ndarray] = field(default_factory=dict)

    def keep_of(self, value: str) -> np.ndarray | None:
        """Indices of the last axis of ``value`` that stay, or None when all stay."""
        return self._keep_space(self._space_of[value]) if value in self._space_of else None

    def _keep_space(self, s: int) -> np.ndarray | None:
        sp = self._spaces
        assert sp is not None
        r = sp.find(s)
        if sp.kind[r] == "leaf":
            return self._keep.get(r)
        if sp.kind[r] == "concat":
            pieces = [self._keep_space(p) for p in sp.parts[r]]
            if all(k is None for k in pieces):
                return None
            out, offset = [], 0
            for p, k in zip(sp.parts[r], pieces):
                c = sp.size[p]
                out.append(offset + (np.arange(c) if k is None else k))
                offset += c
            return np.concatenate(out)
        count, part = sp.parts[r]
        k = self._keep_space(part)
        if k is None:
            return None
        c = sp.size[part]
        # flatten of [N, *S, C] puts element (s, c) at s * C + c (channels-last order).
        return (np.arange(count)[:, None] * c + k[None, :]).ravel()


def _last_dim(graph: Graph, value: str) -> int:
    return int(graph.type_of(value).shape[-1])


def _is_depthwise(graph: Graph, n: Node) -> bool:
    w = graph.constants[n.inputs[1]]
    c = _last_dim(graph, n.inputs[0])
    return int(n.attr("groups")) == c and w.shape[-2] == 1 and w.shape[-1] == c


def _trace(graph: Graph) -> tuple[_Spaces, dict[str, int], dict[int, list[str]]]:
    """Give every value a channel space; return the spaces, value -> space and leaf -> source layers."""
    sp = _Spaces()
    space: dict[str, int] = {}
    sources: dict[int, list[str]] = {}
    for i in graph.inputs:
        space[i] = sp.new(_last_dim(graph, i), frozen=True)
    for n in graph.nodes:
        ins = [v for v in n.inputs if v and v not in graph.constants]
        out = n.outputs[0]
        c_out = _last_dim(graph, out)
        x = n.inputs[0]
        same: int | None = None  # the output keeps the space of this one
        if n.op in WEIGHTED_OPS and n.inputs[1] in graph.constants and x not in graph.constants:
            if n.op == "dense" or int(n.attr("groups")) == 1:
                s = sp.new(c_out)
                sources[s] = [n.name]
                space[out] = s
                continue
            if _is_depthwise(graph, n):
                same = space[x]
        elif n.op in _SAME_CHANNELS and x in space:
            same = space[x]
        elif n.op == "softmax" and x in space:
            rank = graph.type_of(x).rank
            if int(n.attr("axis")) % rank != rank - 1:
                same = space[x]
        elif n.op == "pad" and x in space and tuple(n.attrs["pads"][-1]) == (0, 0):
            same = space[x]
        elif n.op == "reshape" and x in space and c_out == _last_dim(graph, x):
            same = space[x]  # row-major: an unchanged last axis keeps every channel in place
        elif n.op == "transpose" and x in space and n.attrs["perm"][-1] == len(n.attrs["perm"]) - 1:
            same = space[x]
        elif n.op == "flatten" and x in space:
            t = graph.type_of(x)
            if t.rank == 2:
                same = space[x]
            else:
                count = math.prod(int(d) for d in t.shape[1:-1])
                space[out] = sp.new(c_out, "tile", (count, space[x]))
                continue
        elif n.op == "concat" and ins:
            rank = graph.type_of(out).rank
            if int(n.attrs["axis"]) % rank == rank - 1:
                parts = tuple(space[v] if v in space else sp.new(_last_dim(graph, v), frozen=True)
                              for v in n.inputs)
                space[out] = sp.new(c_out, "concat", parts)
                continue
            if all(v in space for v in n.inputs):
                for v in n.inputs[1:]:
                    sp.union(space[n.inputs[0]], space[v])
                same = space[x]
        elif n.op in _BINARY or n.op == "affine":
            live = [v for v in ins if v in space]
            wide = [v for v in live if _last_dim(graph, v) == c_out]
            for v in live:
                if v not in wide:
                    sp.freeze(space[v])
            consts_ok = all(graph.constants[v].ndim == 0 or graph.constants[v].shape[-1] in (1, c_out)
                            for v in n.inputs if v in graph.constants)
            if wide and consts_ok:
                for v in wide[1:]:
                    sp.union(space[wide[0]], space[v])
                same = space[wide[0]]
        if same is not None and _last_dim(graph, x) == c_out:
            space[out] = same
            continue
        # Anything else reads its inputs' channels in a way we do not follow: leave them alone.
        for v in ins:
            if v in space:
                sp.freeze(space[v])
        space[out] = sp.new(c_out, frozen=True)
    for o in graph.outputs:
        if o in space:
            sp.freeze(space[o])
    return sp, space, sources


def _saliency(graph: Graph, layers: list[Node], bns: list[Node], how: str) -> np.ndarray:
    if how == "bn" and bns:
        return np.sum([np.abs(graph.constants[b.inputs[1]].astype(np.float64)) for b in bns], axis=0)
    total = 0.0
    for n in layers:
        w = graph.constants[n.inputs[1]].astype(np.float64)
        cols = w.reshape(-1, w.shape[-1])
        total = total + (np.abs(cols).sum(axis=0) if how != "l2" else np.sqrt((cols ** 2).sum(axis=0)))
    return np.asarray(total)


def plan_channels(graph: Graph, ratio: float, saliency: str = "l1", exclude: Sequence[str] = (),
                  min_channels: int = 1) -> ChannelPlan:
    """Decide which output channels of which conv/dense layers ``prune:channels`` removes.

    Each group of layers whose outputs meet in element-wise ops loses ``round(ratio * C)``
    channels (at least ``min_channels`` stay), the same ones in every member, chosen by the
    smallest saliency summed over the group: the L1 or L2 norm of each layer's output-channel
    weights, or with ``"bn"`` the |scale| of the batch norms reading the group (L1 where none).
    Groups that reach a graph output, a graph input or an op that mixes channels are left alone.
    """
    sp, space, sources = _trace(graph)
    plan = ChannelPlan(_spaces=sp, _space_of=space)
    by_root: dict[int, list[str]] = {}
    for s, names in sources.items():
        by_root.setdefault(sp.find(s), []).extend(names)
    bns: dict[int, list[Node]] = {}
    for n in graph.nodes:
        if n.op == "batch_norm" and n.inputs[0] in space and all(i in graph.constants for i in n.inputs[1:]):
            bns.setdefault(sp.find(space[n.inputs[0]]), []).append(n)
    by_name = {n.name: n for n in graph.nodes}
    for root, names in by_root.items():
        layers = [by_name[nm] for nm in names]
        excluded = [nm for nm in names if _matches(nm, exclude)]
        if sp.frozen[root] or excluded:
            plan.left_alone.append(tuple(names))
            continue
        c = sp.size[root]
        drop = min(int(round(ratio * c)), c - min_channels)
        if drop <= 0:
            continue
        if saliency == "bn" and not bns.get(root):
            plan.notes.append(f"no batch norm reads {', '.join(map(repr, names))}: ranked by L1 norm")
        score = _saliency(graph, layers, bns.get(root, []), saliency)
        removed = np.sort(np.argsort(score, kind="stable")[:drop])
        plan._keep[root] = np.setdiff1d(np.arange(c), removed)
        plan.groups.append((tuple(names), c, tuple(int(i) for i in removed)))
        for nm in names:
            plan.removed[nm] = tuple(int(i) for i in removed)
    return plan


def _take(ed: Editor, value: str, keep: np.ndarray, axis: int, base: str) -> str:
    return ed.add_constant(base, np.take(ed.graph.constants[value], keep, axis=axis))


def apply_channel_plan(graph: Graph, plan: ChannelPlan) -> None:
    """Shrink ``graph`` in place: every node keeps only the channels the plan keeps."""
    with Editor(graph) as ed:
        _apply_channel_plan(ed, plan)


def _apply_channel_plan(ed: Editor, plan: ChannelPlan) -> None:
    graph = ed.graph
    old_types = {n.outputs[0]: graph.type_of(n.outputs[0]) for n in graph.nodes}
    for n in graph.nodes:
        out = n.outputs[0]
        k_out = plan.keep_of(out)
        k_in = plan.keep_of(n.inputs[0]) if n.inputs and n.inputs[0] not in graph.constants else None
        if n.op in WEIGHTED_OPS and n.inputs[1] in graph.constants and n.inputs[0] not in graph.constants:
            w = graph.constants[n.inputs[1]]
            if n.op == "conv" and int(n.attr("groups")) > 1:  # depthwise: one filter per channel
                if k_out is not None:
                    ed.set_input(n, 1, _take(ed, n.inputs[1], k_out, -1, f"{n.name}_w"))
                    n.attrs["groups"] = int(len(k_out))
            else:
                if k_in is not None:
                    ed.set_input(n, 1, _take(ed, n.inputs[1], k_in, 0 if n.op == "dense" else w.ndim - 2,
                                             f"{n.name}_w"))
                if k_out is not None:
                    ed.set_input(n, 1, _take(ed, n.inputs[1], k_out, -1, f"{n.name}_w"))
            if k_out is not None and len(n.inputs) > 2 and n.inputs[2]:
                ed.set_input(n, 2, _take(ed, n.inputs[2], k_out, 0, f"{n.name}_b"))
        elif n.op == "reshape" and k_out is not None and int(n.attrs["shape"][-1]) != -1:
            # The target shape names the channel count (an SE gate's [1, 1, C]).
            n.attrs["shape"] = (*n.attrs["shape"][:-1], int(len(k_out)))
        elif n.op == "batch_norm" and k_out is not None:
            ed.set_inputs(n, [n.inputs[0], *(_take(ed, p, k_out, 0, f"{n.name}_p") for p in n.inputs[1:])])
        elif (n.op in _BINARY or n.op == "affine") and k_out is not None:
            full = int(old_types[out].shape[-1])
            for i, v in enumerate(n.inputs):
                c = graph.constants.get(v)
                if c is not None and c.ndim and c.shape[-1] == full and full > 1:
                    ed.set_input(n, i, _take(ed, v, k_out, -1, f"{n.name}_c"))


class PruneChannels(RewritePass):
    """Structured pruning: remove the least salient output channels of conv/dense layers.

    The removal follows every reader of the channels: the input channels of the next conv
    or dense, batch norms and other per-channel constants, depthwise convs (the same channels,
    ``groups`` shrinks), concatenations (at their offsets), flatten followed by dense (the rows
    of every position, in channels-last order) and residual adds (one decision for the whole
    add group, or the group is left alone). See ``plan_channels`` for the choice.
    """

    name = "prune:channels"

    def __init__(self, ratio: float = 0.5, saliency: str = "l1", exclude: Sequence[str] = (),
                 min_channels: int = 1) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"channel ratio must be in [0, 1), got {ratio}")
        if saliency not in SALIENCIES:
            raise ValueError(f"saliency must be one of {', '.join(SALIENCIES)}, got {saliency!r}")
        self.ratio, self.saliency = float(ratio), saliency
        self.exclude, self.min_channels = tuple(exclude), min_channels

    def requires(self, graph: Graph) -> str | None:
        return _not_quantized(graph)

    def rewrite(self, graph: Graph) -> list[str]:
        plan = plan_channels(graph, self.ratio, self.saliency, self.exclude, self.min_channels)
        if not plan.groups:
            return []
        apply_channel_plan(graph, plan)
        # Calibrated ranges were measured per value, not per channel: they stay valid.
        details = []
        for names, c, removed in plan.groups:
            who = ", ".join(map(repr, names))
            details.append(f"removed {len(removed)} of {c} channels of {who} ({self.saliency})")
        details += [f"left every channel of {', '.join(map(repr, names))} (reaches an op or output "
                    "that must keep them)" for names in plan.left_alone]
        return details + plan.notes


# ------------------------------------------------------------------ specs
_ENDS_SUFFIX = {"": "small", "all": "never", "keep-ends": "always"}
PRUNE_SPECS = ("magnitude:S, magnitude-global:S (:all prunes the first and last layers too, :keep-ends leaves them dense), channels:R, channels-l2:R, channels-bn:R, 2:4 (N:M), "
               "auto (= magnitude:auto), KIND:auto")


@dataclass(frozen=True)
class AutoPrune:
    """``--prune auto``: the largest sparsity of ``kind`` within an accuracy budget (``search_sparsity``)."""

    kind: str  # a --prune kind taking a fraction: "magnitude", "channels", ...
    suffix: str = ""  # what followed "auto" (magnitude: ":all" or ":keep-ends")
    exclude: tuple[str, ...] = ()  # layers (names or globs) every candidate leaves alone

    def make(self, fraction: float) -> Pass:
        if fraction > 0:
            return parse_prune(f"{self.kind}:{fraction:g}{self.suffix}", self.exclude)
        return _PASS_OF[self.kind](0.0)


def search_sparsity(accuracy_at: Callable[[float], float], baseline: float, max_drop_pt: float,
                    high: float = 0.95, steps: int = 6) -> tuple[float, list[dict[str, Any]]]:
    """Bisection for the largest fraction whose top-1 accuracy is within ``max_drop_pt`` points of
    ``baseline``; ``accuracy_at(fraction)`` prunes (and fine-tunes) and evaluates one candidate.

    The top of the range is tried first (often within budget for over-parameterized models);
    then ``steps`` halvings of the interval between the best passing and the lowest failing
    fraction. Returns the best fraction (0.0 when none passes) and every candidate tried.
    """
    curve: list[dict[str, Any]] = []

    def ok(fraction: float) -> bool:
        acc = float(accuracy_at(fraction))
        drop = 100.0 * (baseline - acc)
        within = drop <= max_drop_pt + 1e-9
        curve.append({"sparsity": round(fraction, 6), "accuracy": round(acc, 6), "drop_pt": round(drop, 4),
                      "within_budget": within})
        return within

    lo, hi = 0.0, high
    if ok(hi):
        return hi, _sorted(curve)
    for _ in range(steps):
        mid = round((lo + hi) / 2, 4)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, _sorted(curve)


def _sorted(curve: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(curve, key=lambda c: c["sparsity"])


def parse_prune(spec: str, exclude: Sequence[str] = ()) -> Pass | AutoPrune:
    """The pass a ``--prune`` spec names: magnitude:0.7, channels:0.5, 2:4, auto, ... (UsageError if bad).

    ``exclude`` (``--prune-exclude``): conv/dense layers, by name or glob, the pass leaves alone.
    """
    exclude = tuple(exclude)
    spec = spec.strip()
    if "" in spec.split(":"):
        raise UsageError(f"--prune {spec!r}: an empty field; one of {PRUNE_SPECS}")
    if spec == "auto":
        return AutoPrune("magnitude", exclude=exclude)
    kind, _, arg = spec.partition(":")
    if arg.partition(":")[0] == "auto" and kind in _PASS_OF:
        suffix = arg[len("auto"):]
        if suffix and (kind not in ("magnitude", "magnitude-global") or suffix[1:] not in _ENDS_SUFFIX):
            raise UsageError(f"--prune {spec!r}: expected {kind}:auto" + (
                f", {kind}:auto:all or {kind}:auto:keep-ends" if kind.startswith("magnitude") else ""))
        return AutoPrune(kind, suffix, exclude)

    def fraction() -> float:
        try:
            value = float(arg)
        except ValueError:
            raise UsageError(f"--prune {spec!r}: {arg!r} is not a number; expected e.g. {kind}:0.5") from None
        if not 0.0 < value < 1.0:
            raise UsageError(f"--prune {spec!r}: the fraction must be between 0 and 1 (exclusive)")
        return value

    if kind in ("magnitude", "magnitude-global"):
        # A trailing ":all" also prunes the first and last weighted layers, ":keep-ends" keeps them
        # dense whatever their size (by default they stay dense while small, see _eligible).
        arg, _, ends = arg.partition(":")
        if ends not in _ENDS_SUFFIX:
            raise UsageError(f"--prune {spec!r}: expected {kind}:S, {kind}:S:all or {kind}:S:keep-ends")
        return PruneMagnitude(fraction(), scope="global" if kind.endswith("global") else "layer",
                              exclude=exclude, keep_ends=_ENDS_SUFFIX[ends])
    if kind in ("channels", "channels-l1", "channels-l2", "channels-bn"):
        return PruneChannels(fraction(), saliency=kind.partition("-")[2] or "l1", exclude=exclude)
    if kind.isdigit() and arg.isdigit():
        n, m = int(kind), int(arg)
        if not 0 < n < m:
            raise UsageError(f"--prune {spec!r}: N:M sparsity needs 0 < N < M")
        return PruneNM(n, m, exclude=exclude)
    raise UsageError(f"--prune {spec!r}: unknown pruning; one of {PRUNE_SPECS}")


_PASS_OF: dict[str, Callable[[float], Pass]] = {
    "magnitude": lambda f: PruneMagnitude(f),
    "magnitude-global": lambda f: PruneMagnitude(f, scope="global"),
    "channels": lambda f: PruneChannels(f),
    "channels-l1": lambda f: PruneChannels(f),
    "channels-l2": lambda f: PruneChannels(f, saliency="l2"),
    "channels-bn": lambda f: PruneChannels(f, saliency="bn"),
}


# ------------------------------------------------------------------ report
def _totals(graph: Graph) -> dict[str, int]:
    from tapeout.compiler.ops import graph_macs, graph_params

    rows = layer_stats(graph)
    dense_macs = graph_macs(graph)
    return {"params": graph_params(graph), "nonzero_params": int(sum(np.count_nonzero(c) for c in graph.constants.values())),
            "macs": dense_macs,
            # MACs a sparse kernel needs: zero weights of conv/dense layers skipped.
            "nonzero_macs": dense_macs - sum(r["macs"] - r["nonzero_macs"] for r in rows)}


@dataclass
class PruningOutcome:
    """What pruning did, for the report's ``pruning`` entry: totals and per-layer weights,
    sparsity and MACs before and after, plus fine-tuning, the --prune auto search and the
    accuracies measured on the verification data, each when there is one.

    ``one_shot_graph`` is the pruned graph before fine-tuning (None without fine-tuning): the
    compile measures its accuracy too. It stays off the report.
    """

    spec: str
    before: dict[str, int]
    after: dict[str, int]
    layers: list[dict[str, Any]]
    details: list[str]
    fine_tuning: dict[str, Any] | None = None  # {"data": file, **FineTuneInfo.to_json()}
    one_shot_graph: Graph | None = None
    search: dict[str, Any] | None = None  # --prune auto: the bisection's curve and choice
    accuracy: dict[str, Any] | None = None  # top-1 unpruned / pruned (/ pruned_one_shot), when labelled

    @classmethod
    def measure(cls, spec: str, before: Graph, after: Graph, details: Sequence[str]) -> PruningOutcome:
        """Compare the graph before pruning with the one after (pruned, or pruned and fine-tuned)."""
        old = {r["name"]: r for r in layer_stats(before)}
        layers = []
        for r in layer_stats(after):
            o = old.get(r["name"], r)
            layers.append({"name": r["name"], "op": r["op"], "shape_before": o["shape"], "shape_after": r["shape"],
                           "sparsity_before": o["sparsity"], "sparsity_after": r["sparsity"],
                           "macs_before": o["macs"], "macs_after": r["macs"],
                           "nonzero_macs_before": o["nonzero_macs"], "nonzero_macs_after": r["nonzero_macs"]})
        return cls(spec, _totals(before), _totals(after), layers, list(details))

    @property
    def one_shot(self) -> bool:
        """Pruned without fine-tuning."""
        return self.fine_tuning is None

    def to_json(self) -> dict[str, Any]:
        b, a = self.before, self.after
        out: dict[str, Any] = {
            "spec": self.spec, "before": dict(b), "after": dict(a),
            "macs_ratio": round(a["macs"] / b["macs"], 6) if b["macs"] else None,
            "nonzero_macs_ratio": round(a["nonzero_macs"] / b["nonzero_macs"], 6) if b["nonzero_macs"] else None,
            "fine_tuning": self.fine_tuning, "one_shot": self.one_shot, "layers": list(self.layers),
            "details": list(self.details)}
        if self.search is not None:
            out["search"] = self.search
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        return out

