"""The passes stage: the default pipeline (canonicalize, fuse), then the pruning pass --prune names,
with fine-tuning on --train and, for --prune auto, a sparsity search within the accuracy budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Graph
from tapeout.compiler.stages.data import BuildData
from tapeout.compiler.stages.spec import Progress
from tapeout.compiler.passes.prune import PruningOutcome
from tapeout.runtime.compare import is_classifier
from tapeout.runtime.data import Dataset
from tapeout.runtime.verify import run_batches


def run_default(graph: Graph) -> Any:
    """The default pipeline's result (graph and records)."""
    from tapeout.compiler.passes.registry import default_pipeline

    return default_pipeline().run(graph)


# ---------------------------------------------------------------- pruning
def prune_pass_for(spec: str | None, train: str | Path | None, epochs: int | None,
                max_accuracy_drop: float | None = None, learning_rate: float | None = None,
                exclude: Sequence[str] = ()) -> Any:
    """The pruning pass --prune names (None without one); a bad spec is a usage error before any work."""
    if spec is None:
        if train is not None or epochs is not None or learning_rate is not None:
            raise UsageError("--train/--epochs/--learning-rate fine-tune a pruned model: add --prune SPEC")
        if exclude:
            raise UsageError("--prune-exclude names layers a pruning pass leaves alone: add --prune SPEC")
        return None
    for flag, value in (("--epochs", epochs), ("--learning-rate", learning_rate)):
        if value is not None and train is None:
            raise UsageError(f"{flag} needs --train DATA (inputs and labels y) to fine-tune on")
    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    if learning_rate is not None and not 0 < learning_rate < float("inf"):
        raise UsageError(f"--learning-rate must be a positive number, got {learning_rate:g}")
    if train is not None and not Path(train).is_file():
        raise UsageError(f"--train {train}: no such file")
    from tapeout.compiler.passes.prune import AutoPrune, parse_prune

    chosen = parse_prune(spec, exclude)
    if isinstance(chosen, AutoPrune) and max_accuracy_drop is None:
        raise UsageError(f"--prune {spec} searches the sparsity within an accuracy budget: add --max-accuracy-drop P "
                         "and --eval DATA with labels y")
    return chosen


def prune(graph: Graph, prune_pass: Any, spec: str, piped: Any, build_data: BuildData, epochs: int | None,
          progress: Progress,
           max_accuracy_drop: float | None = None,
           learning_rate: float | None = None) -> tuple[Graph, PruningOutcome]:
    """Run the pruning pass after the default pipeline (its record joins the report's passes), then
    fine-tune on ``train`` when given, holding the pruned zeros (``compiler.finetune``).

    ``--prune auto`` first bisects the sparsity on the ``eval_data`` labels: the largest whose
    accuracy (each candidate fine-tuned when ``train`` is given) is within ``max_accuracy_drop``.
    """
    from tapeout.compiler.calibration import source_specs
    from tapeout.compiler.finetune import DEFAULT_MAX_DROP, finetune, validation_verdict
    from tapeout.compiler.passes.pipeline import Pipeline
    from tapeout.compiler.passes.prune import AutoPrune, unmatched_layers, weighted_nodes

    unknown = unmatched_layers(graph, prune_pass.exclude)
    if unknown:
        layers = ", ".join(n.name for n in weighted_nodes(graph)) or "none"
        raise UsageError(f"--prune-exclude: no conv/dense layer named {', '.join(map(repr, unknown))}; "
                         f"they are {layers}")
    data = None
    # Without --epochs, train until within the budget: --max-accuracy-drop when given, else 1 point.
    tuning = {"epochs": epochs, "seed": 0, "learning_rate": learning_rate, "baseline": graph,
              "max_drop": DEFAULT_MAX_DROP if max_accuracy_drop is None else max_accuracy_drop}
    train = build_data.train_file
    if train is not None:
        data = build_data.train(source_specs(graph))
        assert data is not None
        if data.labels is None:
            raise UsageError(f"--train {train}: no labels; the file needs an array 'y'")

    def build(p: Any) -> Graph:
        """The graph pruned by ``p`` (and fine-tuned, with --train): a --prune auto candidate."""
        pruned = Pipeline([p]).run(graph).graph
        return pruned if data is None else finetune(pruned, data.feeds, data.labels, **tuning)[0]

    search = None
    if isinstance(prune_pass, AutoPrune):
        prune_pass, spec, search = _search_pruning(graph, prune_pass, build, build_data, max_accuracy_drop, progress)
    res = Pipeline([prune_pass]).run(graph)
    # The pass is chosen on the default pipeline's output (--prune auto searches it), so it runs
    # after that pipeline, not inside it; its record joins the report's passes.
    piped.records.extend(res.records)
    details = [d for r in res.records for d in r.details]
    pruned = res.graph
    outcome = PruningOutcome.measure(spec, graph, pruned, details)
    if data is not None:
        progress("fine-tune")
        tuned, info = finetune(pruned, data.feeds, data.labels, **tuning)
        outcome = PruningOutcome.measure(spec, graph, tuned, details)
        outcome.fine_tuning = {"data": str(train), **info.to_json()}
        if info.budget_met is not None:  # judged again on the --eval labels when there are some
            outcome.fine_tuning["budget"] = validation_verdict(info)
        outcome.one_shot_graph = pruned
        pruned = tuned
    outcome.search = search
    return pruned, outcome


def _search_pruning(graph: Graph, auto: Any, build: Callable[[Any], Graph], build_data: BuildData,
                    max_drop: float | None, progress: Progress) -> tuple[Any, str, dict[str, Any]]:
    """--prune auto: bisect the sparsity against the eval labels; the pass, spec and curve it chose."""
    from tapeout.compiler.calibration import source_specs
    from tapeout.compiler.passes.prune import search_sparsity
    from tapeout.compiler.reference_runner import ReferenceRunner

    eval_data = build_data.eval_file
    assert eval_data is not None and max_drop is not None  # checked with the flags
    data = build_data.eval(source_specs(graph))
    assert data is not None
    if data.labels is None:
        raise UsageError(f"--prune auto needs labels: {eval_data} has no array 'y'")

    def accuracy(g: Graph) -> float:
        with ReferenceRunner(g, source_layout=True) as runner:
            acc = top1(run_batches(runner, data), data.labels)
        if acc is None:
            raise UsageError("--prune auto needs a classifier output [N, classes] to measure top-1 accuracy")
        return acc

    def at(fraction: float) -> float:
        progress(f"prune {auto.kind}:{fraction:g}{auto.suffix}")
        return accuracy(build(auto.make(fraction)))

    baseline = accuracy(graph)
    best, curve = search_sparsity(at, baseline, max_drop)
    search = {"kind": auto.kind, "max_accuracy_drop": max_drop, "baseline_accuracy": round(baseline, 6),
              "data": str(eval_data), "chosen": best, "curve": curve}
    return auto.make(best), f"{auto.kind}:{best:g}{auto.suffix if best > 0 else ''}", search



def pruned_reference(graph: Graph, dataset: Dataset, source_ref: dict[str, np.ndarray],
                     pruning: PruningOutcome) -> dict[str, np.ndarray]:
    """The pruned IR's outputs on the verification data (source layout); accuracies go to ``pruning``."""
    from tapeout.compiler.reference_runner import ReferenceRunner

    with ReferenceRunner(graph, source_layout=True) as runner:
        ref = run_batches(runner, dataset)
    if dataset.labels is not None:
        pruning.accuracy = {"unpruned": top1(source_ref, dataset.labels), "pruned": top1(ref, dataset.labels),
                            "data": dataset.kind, "samples": dataset.num_samples}
        if pruning.one_shot_graph is not None:  # fine-tuned: also the accuracy before fine-tuning
            with ReferenceRunner(pruning.one_shot_graph, source_layout=True) as runner:
                pruning.accuracy["pruned_one_shot"] = top1(run_batches(runner, dataset), dataset.labels)
        ft = pruning.fine_tuning or {}
        acc = pruning.accuracy
        if ft.get("budget") and acc["unpruned"] is not None and acc["pruned"] is not None:
            from tapeout.compiler.finetune import accuracy_verdict

            ft["budget"] = accuracy_verdict(ft, acc["unpruned"], acc["pruned"], dataset.kind, dataset.num_samples)
    return ref


def top1(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float | None:
    for v in outputs.values():
        if is_classifier(v):
            return float(np.mean(np.argmax(v, axis=1) == labels))
    return None
