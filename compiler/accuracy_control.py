"""Accuracy control: keep the most sensitive layers of a quantized graph in float until it
meets an accuracy budget (``--max-accuracy-drop P --fallback``) or, without labels, the
cosine / top-1 agreement criteria quantized artifacts are verified by.

Like OpenVINO/NNCF's accuracy control, the loop works on the quantization simulation
(``passes.quantize.simulate``, which computes what every artifact of the scheme computes)
and reverts one unit at a time, most sensitive first, re-measuring the real metric after
each step; the result is one set of annotations that every target of the scheme consumes.

Units and sensitivity. A value is quantized when its producer or any reader is quantized
(``Quantize``), so keeping one node in float cannot unquantize the value it writes: a
layer whose output has an outlier range crushes its readers' inputs whichever of the two
is float. The units that can be reverted are therefore:

- an activation value: its producer and every reader (then it stays float end to end);
- a node's quantized constants (weights, biases, operands): the node itself.

Each unit's sensitivity is measured per layer in one float pass over the data: the
noise-to-signal ratio ``sum((y_q - y)^2) / sum(y^2)`` at the output of each reader when
only that value (or only that node's constants) is quantized, the worst reader counting;
a graph output is measured on itself (this is what ranks a 1000-class softmax whose
fixed 1/256 output scale rounds everything to zero first). Ranking by this local
measure costs about three float passes instead of one simulated pass per unit, which keeps
MobileNetV2-sized graphs practical; the loop itself judges every step on the whole graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tapeout.compiler.interpreter import eval_node, run
from tapeout.compiler.ir import Graph
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize, fake_quantize, simulate
from tapeout.runtime.compare import Tolerance, compare, is_classifier

SENSITIVITY_SAMPLES = 256  # the ranking is a relative measure; a few hundred samples settle it
BATCH = 32


@dataclass
class Criterion:
    """What a step must meet: an accuracy budget (with labels) or cosine / top-1 agreement."""

    max_drop_pt: float | None = None  # percentage points of top-1 accuracy (needs labels)
    tolerance: Tolerance = field(default_factory=lambda: Tolerance(min_cosine=0.99, min_top1_agreement=0.99))

    def describe(self) -> str:
        if self.max_drop_pt is not None:
            return f"top-1 accuracy drop <= {self.max_drop_pt:g} pt"
        return (f"cosine >= {self.tolerance.min_cosine:g} and top-1 agreement >= "
                f"{self.tolerance.min_top1_agreement:g} against the float graph")


@dataclass
class Step:
    kept_float: list[str]  # nodes this step added to the float set ([] for the first measurement)
    passed: bool
    accuracy: float | None
    drop_pt: float | None
    cosine: float
    top1_agreement: float | None

    def to_json(self) -> dict[str, Any]:
        r = (lambda x: None if x is None else float(f"{x:.6g}"))
        return {"kept_float": self.kept_float, "passed": self.passed, "accuracy": r(self.accuracy),
                "accuracy_drop_pt": r(self.drop_pt), "cosine": r(self.cosine),
                "top1_agreement": r(self.top1_agreement)}


@dataclass
class Result:
    graph: Graph  # annotated with the final float set
    steps: list[Step]
    added: list[str]  # nodes kept float by the loop (beyond the user's --keep-float)
    met: bool
    float_accuracy: float | None
    ranking: list[tuple[tuple[str, ...], float]]  # units (node names) and their sensitivity, most first

    def to_json(self, criterion: Criterion) -> dict[str, Any]:
        return {"criterion": criterion.describe(), "met": self.met, "kept_float": self.added,
                "float_accuracy": None if self.float_accuracy is None else float(f"{self.float_accuracy:.6g}"),
                "steps": [s.to_json() for s in self.steps],
                "most_sensitive": [{"nodes": list(u), "noise_to_signal": float(f"{s:.4g}")}
                                   for u, s in self.ranking[:5]]}


# ------------------------------------------------------------- sensitivity
def _batches(feeds: Mapping[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    total = int(next(iter(feeds.values())).shape[0])
    n = min(n, total)
    return [{k: v[s:min(s + BATCH, n)] for k, v in feeds.items()} for s in range(0, n, BATCH)]


def units(graph: Graph) -> list[tuple[str, ...]]:
    """The revertible units of an annotated graph (see the module docstring), in graph order."""
    assert graph.quant is not None
    tensors, kept = graph.quant.tensors, set(graph.quant.float_nodes)
    producers, consumers = graph.producers(), graph.consumers()
    out: list[tuple[str, ...]] = []

    def add(nodes: list[str]) -> None:
        unit = tuple(dict.fromkeys(n for n in nodes if n not in kept))
        if unit and unit not in out:
            out.append(unit)

    for v in [*graph.inputs, *(o for n in graph.nodes for o in n.outputs)]:
        tq = tensors.get(v)
        if tq is not None and tq.role == "activation":
            p = producers.get(v)
            add(([p.name] if p is not None else []) + [c.name for c in consumers.get(v, [])])
    for n in graph.nodes:
        if any(i in graph.constants and i in tensors for i in n.inputs):
            add([n.name])
    return out


def sensitivity(graph: Graph, feeds: Mapping[str, np.ndarray], samples: int = SENSITIVITY_SAMPLES
                ) -> list[tuple[tuple[str, ...], float]]:
    """Every unit with its noise-to-signal ratio (IR-layout ``feeds``), most sensitive first."""
    assert graph.quant is not None
    tensors = graph.quant.tensors
    producers, consumers = graph.producers(), graph.consumers()
    acts = {v: tq for v, tq in tensors.items() if tq.role == "activation"}
    num: dict[tuple[str, str], float] = {}  # (what was quantized, where measured) -> noise energy
    den: dict[tuple[str, str], float] = {}

    def acc(key: tuple[str, str], y_q: np.ndarray, y: np.ndarray) -> None:
        y64 = y.astype(np.float64)
        num[key] = num.get(key, 0.0) + float(np.sum((y_q.astype(np.float64) - y64) ** 2))
        den[key] = den.get(key, 0.0) + float(np.sum(y64 ** 2))

    outputs = set(graph.outputs)
    last: dict[str, int] = {}
    for idx, n in enumerate(graph.nodes):
        for i in n.inputs:
            last[i] = idx
    for batch in _batches(feeds, samples):
        env = {k: np.asarray(v) for k, v in batch.items()}
        for v in graph.inputs:
            if v in outputs and v in acts:
                acc((v, v), fake_quantize(env[v], acts[v]), env[v])
        for idx, n in enumerate(graph.nodes):
            args = [(graph.constants[i] if i in graph.constants else env[i]) if i else None for i in n.inputs]
            ys = eval_node(n, args)
            for pos, i in enumerate(n.inputs):  # each quantized input alone, seen at this reader's output
                if i in acts and i not in graph.constants:
                    q_args = list(args)
                    q_args[pos] = fake_quantize(args[pos], acts[i])
                    for y_q, y in zip(eval_node(n, q_args), ys):
                        acc((i, n.name), y_q, y)
            consts = [pos for pos, i in enumerate(n.inputs) if i in graph.constants and i in tensors]
            if consts:
                q_args = [fake_quantize(a, tensors[n.inputs[p]]) if p in consts else a for p, a in enumerate(args)]
                for y_q, y in zip(eval_node(n, q_args), ys):
                    acc((f"{n.name}#constants", n.name), y_q, y)
            for o, y in zip(n.outputs, ys):
                env[o] = y
                if o in outputs and o in acts:
                    acc((o, o), fake_quantize(y, acts[o]), y)
            for i in n.inputs:
                if last.get(i) == idx and i not in outputs:
                    env.pop(i, None)

    worst: dict[str, float] = {}
    for (what, _where), e in num.items():
        d = den[(what, _where)]
        nsr = e / d if d > 0 else (0.0 if e == 0 else float("inf"))
        worst[what] = max(worst.get(what, 0.0), nsr)
    kept = set(graph.quant.float_nodes)
    ranked: dict[tuple[str, ...], float] = {}
    for unit in units(graph):
        ranked.setdefault(unit, 0.0)
    for what, nsr in worst.items():
        if what.endswith("#constants"):
            nodes = [what[:-len("#constants")]]
        else:
            p = producers.get(what)
            nodes = ([p.name] if p is not None else []) + [c.name for c in consumers.get(what, [])]
        unit = tuple(dict.fromkeys(n for n in nodes if n not in kept))
        if unit:
            ranked[unit] = max(ranked.get(unit, 0.0), nsr)
    order = {u: k for k, u in enumerate(ranked)}
    return sorted(ranked.items(), key=lambda kv: (-kv[1], order[kv[0]]))


# -------------------------------------------------------------------- loop
def _measure(graph: Graph, feeds: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
             labels: np.ndarray | None, float_acc: float | None, criterion: Criterion,
             added: list[str]) -> Step:
    parts = [simulate(graph, b) for b in _batches(feeds, 1 << 62)]
    got = {o: np.concatenate([p[o] for p in parts]) for o in graph.outputs}
    per_output = {k: criterion.tolerance if is_classifier(v)
                  else Tolerance(min_cosine=criterion.tolerance.min_cosine) for k, v in reference.items()}
    result = compare(reference, got, per_output, labels=labels)
    cos = min(o.cosine for o in result.outputs if o.cosine is not None)
    agree = [o.top1_agreement for o in result.outputs if o.top1_agreement is not None]
    accuracy = drop = None
    if result.accuracy is not None and float_acc is not None:
        accuracy = result.accuracy["artifact"]
        drop = 100.0 * (float_acc - accuracy)
    if criterion.max_drop_pt is not None:
        passed = drop is not None and drop <= criterion.max_drop_pt + 1e-9
    else:
        passed = result.passed
    return Step(added, bool(passed), accuracy, drop, cos, min(agree) if agree else None)


Requantize = Callable[[list[str]], Graph]  # nodes kept float -> the graph annotated with them float


def control(graph: Graph, scheme: str, feeds: Mapping[str, np.ndarray], labels: np.ndarray | None,
            criterion: Criterion, *, progress: Callable[[str], None] = lambda _: None,
            requantize: Requantize | None = None, float_graph: Graph | None = None) -> Result:
    """Keep units of ``graph`` (annotated with ``scheme``, calibrated) in float, most sensitive
    first, until ``criterion`` holds on ``feeds`` (IR layout) or no unit is left.

    ``requantize`` annotates again with more nodes float (default: ``Quantize`` on ``graph``);
    ``float_graph`` is the float model the steps are judged against (default: ``graph`` run in
    float). The quantize stage passes both when bias correction changed the annotated graph's
    biases: a node kept float gets its trained bias back, and the reference is the model's own."""
    if graph.quant is None:
        raise ValueError("accuracy control needs a graph annotated by the quantize pass")
    if criterion.max_drop_pt is not None and labels is None:
        raise ValueError("an accuracy budget needs labels")
    base = list(graph.quant.float_nodes)
    reference = {o: np.concatenate(parts) for o, parts in _collect(float_graph or graph, feeds).items()}
    float_acc = None
    if labels is not None:
        acc = compare(reference, reference, Tolerance(), labels=labels).accuracy
        float_acc = None if acc is None else acc["source"]
    progress(f"accuracy control {scheme}: ranking layers")
    ranking = sensitivity(graph, feeds)
    steps = [_measure(graph, feeds, reference, labels, float_acc, criterion, [])]
    current, added = graph, []
    for unit, _ in ranking:
        if steps[-1].passed:
            break
        new = [n for n in unit if n not in added]
        if not new:
            continue
        added += new
        progress(f"accuracy control {scheme}: step {len(steps)} keeps {', '.join(new)} float")
        current = (requantize(base + added) if requantize is not None
                   else Pipeline([Quantize(scheme, base + added)]).run(graph).graph)
        steps.append(_measure(current, feeds, reference, labels, float_acc, criterion, new))
    return Result(current, steps, added, steps[-1].passed, float_acc, ranking)


def _collect(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {o: [] for o in graph.outputs}
    for b in _batches(feeds, 1 << 62):
        for o, v in run(graph, b).items():
            out[o].append(v)
    return out


def drop_pt(accuracy: Mapping[str, float] | None) -> float | None:
    """Percentage points lost from source to artifact, from a verification's accuracy."""
    if not accuracy:
        return None
    return 100.0 * (accuracy["source"] - accuracy["artifact"])


def apply(quantized: dict[str, tuple[Graph, dict]], feeds: Mapping[str, np.ndarray], labels: np.ndarray | None,
          criterion: Criterion, progress: Callable[[str], None] = lambda _: None,
          requantizers: Mapping[str, tuple[Requantize, Graph]] | None = None) -> dict[str, tuple[Graph, dict]]:
    """``--fallback`` over every scheme of a compile (the quantize stage's result); ``feeds`` in the
    source layout; ``requantizers``: scheme -> (requantize, float graph), see ``control``. Each
    scheme's report entry gets ``float_layers`` updated and ``accuracy_control``."""
    from tapeout.compiler.calibration import to_ir_layout

    out = {}
    for scheme, (graph, info) in quantized.items():
        ir_feeds = to_ir_layout(graph, {i: np.asarray(feeds[i]) for i in graph.inputs})
        requantize, float_graph = (requantizers or {}).get(scheme, (None, None))
        result = control(graph, scheme, ir_feeds, labels, criterion, progress=progress, requantize=requantize,
                         float_graph=float_graph)
        assert result.graph.quant is not None
        entry = dict(info, float_layers=list(result.graph.quant.float_nodes),
                     accuracy_control=result.to_json(criterion))
        out[scheme] = (result.graph, entry)
    return out


__all__ = ["Criterion", "Step", "Result", "apply", "control", "sensitivity", "units", "drop_pt"]
