"""The Python API behind the CLI: compile, inspect, verify.

Each call returns an object (the CLI only prints it), raises the errors of
``tapeout.compiler.errors`` for user mistakes, and never prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from tapeout.compiler.errors import FrontendError, MissingToolError, UsageError
from tapeout.compiler.frontends.loader import SourceInfo, load_model
from tapeout.compiler.ir import Graph
from tapeout.compiler.ops import graph_macs, graph_params, node_macs
from tapeout.compiler.quiet import quiet_environment
from tapeout.compiler.report import CompileReport, TargetReport, Verification
from tapeout.compiler.staging import close_stage, install, open_stage, output_error
from tapeout.runtime.compare import ComparisonResult, Tolerance, compare
from tapeout.runtime.data import Dataset, load_data, synthesize
from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.protocol import IOSpec, Runner
from tapeout.runtime.runners.select import is_hls4ml_project, runner_for
from tapeout.runtime.verify import attach_expected_errors, expected_output_errors, run_batches, verify
from tapeout.targets.base import Target
from tapeout.targets.registry import parse_target

Progress = Callable[[str], None]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
SYNTHETIC_SAMPLES = 8
SYNTHETIC_CALIBRATION_SAMPLES = 32
SYNTHETIC = "synthetic"  # --calibration synthetic: random inputs, recorded as such


def _noop(_: str) -> None:
    pass


# ---------------------------------------------------------------- inspect
@dataclass
class NodeRow:
    name: str
    op: str
    shape: str
    params: int
    macs: int


@dataclass
class InspectResult:
    graph: Graph
    source: SourceInfo
    rows: list[NodeRow]

    @property
    def totals(self) -> dict[str, int]:
        return {"nodes": len(self.rows), "params": graph_params(self.graph), "macs": graph_macs(self.graph)}

    def to_json(self) -> dict:
        return {
            "source": self.source.to_json(),
            "graph": graph_summary(self.graph),
            "nodes": [r.__dict__ for r in self.rows],
        }


def graph_summary(graph: Graph) -> dict:
    def io(name: str) -> dict:
        t = graph.type_of(name)
        return {"name": name, "shape": list(t.shape), "dtype": t.dtype, "layout": graph.io_layouts.get(name)}

    return {
        "name": graph.name,
        "inputs": [io(i) for i in graph.inputs],
        "outputs": [io(o) for o in graph.outputs],
        "nodes": len(graph.nodes),
        "params": graph_params(graph),
        "macs": graph_macs(graph),
    }


def inspect_model(model: str | Path, weights: str | Path | None = None, *, optimize: bool = False) -> InspectResult:
    quiet_environment()
    graph, info = load_model(model, weights)
    if optimize:
        from tapeout.compiler.passes.registry import default_pipeline

        graph = default_pipeline().run(graph).graph
    rows = []
    for n in graph.nodes:
        params = sum(int(graph.constants[i].size) for i in n.inputs if i in graph.constants)
        shape = ", ".join(str(graph.type_of(o)) for o in n.outputs)
        rows.append(NodeRow(n.name, n.op, shape, params, node_macs(n, graph)))
    return InspectResult(graph, info, rows)


# ------------------------------------------------------------------ data
def choose_data(specs: Sequence[IOSpec], eval_data: str | Path | None, calibration: str | Path | None,
                samples: int = SYNTHETIC_SAMPLES) -> Dataset:
    """Verification data: --eval if given, else --calibration, else synthetic inputs (and the report says so)."""
    if eval_data is not None:
        return load_data(eval_data, list(specs), kind="eval")
    if calibration is not None and str(calibration) != SYNTHETIC:
        return load_data(calibration, list(specs), kind="calibration")
    return synthesize(list(specs), num_samples=samples, seed=0)


def _summarize(result: ComparisonResult, runner: str, tol: Tolerance) -> Verification:
    outs = result.outputs

    def pick(attr: str, reduce: Callable[[Iterable[float]], float]) -> float | None:
        vals = [getattr(o, attr) for o in outs if getattr(o, attr) is not None]
        return float(reduce(vals)) if vals else None

    return Verification(
        passed=result.passed, runner=runner, samples=result.samples, data=result.data_kind,
        max_abs_err=pick("max_abs_err", max), mean_abs_err=pick("mean_abs_err", lambda v: float(np.mean(list(v)))),
        cosine=pick("cosine", min), top1_agreement=pick("top1_agreement", min),
        atol=tol.atol, rtol=tol.rtol, accuracy=result.accuracy,
        outputs=[o.to_json() for o in outs],
    )


# --------------------------------------------------------------- compile
def _dir_size(folder: Path, files: Sequence[str]) -> int:
    return sum((folder / f).stat().st_size for f in files)


def compile_model(
    model: str | Path,
    targets: Sequence[str] = ("onnx",),
    outdir: str | Path = "out",
    *,
    weights: str | Path | None = None,
    calibration: str | Path | None = None,
    eval_data: str | Path | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    calibration_method: str = "minmax",
    percentile: float | None = None,
    keep_float: Sequence[str] = (),
    prune: str | None = None,
    prune_exclude: Sequence[str] = (),
    train: str | Path | None = None,
    epochs: int | None = None,
    learning_rate: float | None = None,
    target_options: Mapping[str, Mapping[str, Any]] | None = None,
    max_accuracy_drop: float | None = None,
    fallback: bool = False,
    io_layout: str | None = None,
    verify_artifacts: bool = True,
    timings: bool = True,
    progress: Progress = _noop,
    trace: bool = False,
) -> CompileReport:
    """Compile ``model`` for each target, verify every artifact against the source, write OUTDIR/report.json.

    Quantized targets (``Target.quant_scheme``) get the graph annotated by the quantize pass;
    those quantizing activations need ``calibration`` (a data file, or "synthetic"), which is
    run once through the reference interpreter (``calibration_method``, ``percentile``) so
    every such target shares the same ranges. ``keep_float`` names layers left in float.
    ``target_options`` maps a target name ("tflite") or one variant ("tflite:int8") to the
    keyword options its class takes (``Target(variant, **options)``); the variant's win.
    ``max_accuracy_drop`` (percentage points, needs labelled ``eval_data``) fails every
    quantized artifact that loses more top-1 accuracy; ``fallback`` keeps the most sensitive
    layers in float until that budget (or, without one, the cosine / top-1 agreement
    criteria) holds on the quantization simulation (``compiler.accuracy_control``).
    ``prune`` names a pruning pass run after the default passes (``passes.prune.parse_prune``);
    ``prune_exclude`` names conv/dense layers it leaves alone. ``io_layout`` ("source" or
    "channels-last", ``targets.io``) is the layout of a channels-first source's rank >= 3 inputs and
    outputs in every artifact; None: each target's default (tflite channels-last, others source).
    """
    quiet_environment()
    if not targets:
        raise UsageError("no target given: pass -t TARGET (see `tapeout targets`)")
    chosen: list[tuple[type[Target], str]] = []
    for spec in targets:
        pair = parse_target(spec)
        if pair not in chosen:
            chosen.append(pair)
    _check_quantization_args(chosen, calibration, calibration_method, percentile)
    _check_accuracy_args(chosen, eval_data, max_accuracy_drop, fallback, verify_artifacts)
    if trace and not verify_artifacts:
        raise UsageError("--trace compares each artifact's layers during verification; drop --no-verify")
    traced_refs: dict[int, dict[str, np.ndarray]] = {}  # reference intermediates per emitted graph
    prune_pass = _prune_pass(prune, train, epochs, max_accuracy_drop, learning_rate, prune_exclude)
    # Built before the model loads, so a bad option is a usage error before any work.
    built = _build_targets(chosen, target_options or {})
    from tapeout.targets.io import IO_LAYOUTS, has_channels_first_io

    if io_layout is not None and io_layout not in IO_LAYOUTS:
        raise UsageError(f"unknown --io-layout {io_layout!r}; one of {', '.join(IO_LAYOUTS)}")
    layout_notes = [target.set_io_layout(io_layout) for target in built]
    for target in built:  # targets choosing settings from data (hls4ml's precision search) get the files
        if hasattr(target, "use_data"):
            target.use_data(calibration=calibration, eval_data=eval_data)
    for cls, _ in chosen:
        missing = cls.missing_requirements()
        if missing:
            raise MissingToolError(f"target {cls.name!r} needs {', '.join(missing)}: "
                                   f"pip install 'tapeout[{cls.name}]'")
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"{outdir}: exists and is not a folder")

    progress("import")
    graph, info = load_model(model, weights)
    nodes_in = len(graph.nodes)

    progress("passes")
    from tapeout.compiler.passes.registry import default_pipeline

    piped = default_pipeline().run(graph)
    graph = piped.graph
    pruning: dict[str, Any] | None = None
    if prune_pass is not None:
        progress("prune")
        graph, pruning = _prune(graph, prune_pass, str(prune), piped, train, epochs, progress,
                                eval_data, max_accuracy_drop, learning_rate)
    quantized = _quantize(graph, chosen, calibration, calibration_method, percentile, keep_float, progress)
    if fallback:
        quantized = _fallback(quantized, eval_data, calibration, max_accuracy_drop, progress)

    tol = Tolerance(atol if atol is not None else DEFAULT_ATOL, rtol if rtol is not None else DEFAULT_RTOL,
                    scale_atol=atol is None)
    dataset: Dataset | None = None
    reference: dict[str, np.ndarray] = {}
    exact: dict[str, np.ndarray] = {}  # the float IR in float64: what the error model judges against
    ir32: dict[str, np.ndarray] = {}  # and in float32
    source_notes: list[str] = []  # what the source runner did to run the source (an opset upgrade)
    if verify_artifacts:
        progress("source run")
        with runner_for(model, weights) as source:
            dataset = choose_data(source.input_specs(), eval_data, calibration)
            if max_accuracy_drop is not None and dataset.labels is None:
                raise UsageError(f"--max-accuracy-drop needs labels: {eval_data} has no array 'y'")
            reference = run_batches(source, dataset)
            source_name = source.name
            source_notes = list(getattr(source, "notes", []))
        if pruning is not None:
            # Artifacts are checked against the pruned IR; the source only gives the unpruned accuracy.
            reference = _pruned_reference(graph, dataset, reference, pruning)
            source_name = "pruned IR (reference interpreter)"
        if any(_error_model_applies(target, variant, atol, rtol) for (_, variant), target in zip(chosen, built)):
            progress("IR run (float64, float32)")
            exact = _ir_outputs(graph, dataset, "float64")
            # The float32 IR measures float32 rounding alone (the error model's bounds); pruned, it is the reference.
            ir32 = reference if pruning is not None else _ir_outputs(graph, dataset, "float32")
    data_info = {"kind": dataset.kind if dataset else None,
                 "samples": dataset.num_samples if dataset else 0,
                 "labels": dataset is not None and dataset.labels is not None}

    summary = graph_summary(graph)
    summary["source_nodes"] = nodes_in
    report = CompileReport(source=info.to_json(), graph=summary, passes=piped.to_json(), data=data_info,
                           outdir=str(outdir), notes=[*graph.metadata.get("notes", []), *source_notes])
    report.pruning = None if pruning is None else {k: v for k, v in pruning.items() if not k.startswith("_")}

    staging: Path | None = None
    try:  # compiler.staging: a locked stage next to OUTDIR, stale ones cleaned, installed under a lock
        staging = open_stage(outdir)
        for (cls, variant), target, layout_note in zip(chosen, built, layout_notes):
            folder = f"{cls.name}-{variant}"
            tdir = staging / folder
            tdir.mkdir()
            progress(f"emit {cls.name}:{variant}")
            scheme = cls.quant_scheme(variant)
            qgraph, qinfo = quantized[scheme] if scheme else (graph, None)
            if hasattr(target, "set_build_context"):  # tensorrt: timing cache under OUTDIR, fusions in plan.json
                target.set_build_context(outdir=outdir, pass_records=piped.to_json())
            t0 = time.perf_counter()
            emitted = target.emit(qgraph, tdir)
            seconds = time.perf_counter() - t0
            size = _dir_size(tdir, emitted.size_artifacts or emitted.artifacts)
            tr = TargetReport(cls.name, variant, [f"{folder}/{a}" for a in emitted.artifacts], size, seconds,
                              list(emitted.notes), extra=dict(emitted.extra), interface=_io_report(tdir, qgraph))
            if layout_note and has_channels_first_io(qgraph):
                tr.notes.append(layout_note)
            if qinfo is not None:
                tr.extra["quantization"] = qinfo
            if verify_artifacts and dataset is not None:
                progress(f"verify {cls.name}:{variant}")
                ttol = _target_tolerance(target, variant, atol, rtol, tol)
                tr.verification = _verify_target(target, tdir, dataset, reference, ttol, source_name, exact, ir32)
                if max_accuracy_drop is not None and cls.default_tolerance(variant) is not None:
                    _judge_accuracy(tr, max_accuracy_drop)
                if trace:  # --trace: per-layer error against the reference interpreter (compiler.trace)
                    progress(f"trace {cls.name}:{variant}")
                    tr.extra["trace"] = _trace_target(cls.name, qgraph, tdir, dataset, traced_refs)
            report.targets.append(tr)
        report.write(staging / "report.json", timings)
        _write_html(report, staging / "report.html", timings)
        install(staging, outdir, [f"{t.target}-{t.variant}" for t in report.targets], ["report.html", "report.json"])
    except OSError as e:  # a full disk or a read-only OUTDIR: one line, OUTDIR as it was
        error = output_error(outdir, e)
        if error is None:
            raise
        raise error from None
    finally:
        if staging is not None:
            close_stage(staging)
    return report


def _write_html(report: CompileReport, path: Path, timings: bool) -> None:
    """report.html beside report.json (compiler.report_html), from the same dict."""
    from tapeout.compiler.report_html import write_html

    write_html(report.to_json(timings), path)


def _trace_target(target: str, graph: Graph, tdir: Path, dataset: Dataset,
                  refs: dict[int, dict[str, np.ndarray]]) -> dict[str, Any]:
    """The "trace" entry of one target (docs/report.md); the reference run is shared by the targets
    emitted from the same graph."""
    from tapeout.compiler.trace import UNTRACEABLE, reference_values, trace_folder

    if target not in UNTRACEABLE and id(graph) not in refs:
        refs[id(graph)] = reference_values(graph, dataset)
    return trace_folder(tdir, graph, dataset, target, refs.get(id(graph)))


def _io_report(tdir: Path, graph: Graph) -> dict[str, Any]:
    """Each input/output of the artifact: its name there, layout and shape (tapeout_io.json, which the
    target wrote; a target writing none keeps the source's names and layouts)."""
    from tapeout.runtime.io_map import IOMap
    from tapeout.targets.io import io_map

    found = IOMap.load(tdir) or io_map(graph, graph)
    return {"inputs": [p.to_json() for p in found.inputs], "outputs": [p.to_json() for p in found.outputs]}


def _build_targets(chosen: Sequence[tuple[type[Target], str]],
                   options: Mapping[str, Mapping[str, Any]]) -> list[Target]:
    names = {cls.name for cls, _ in chosen} | {f"{cls.name}:{v}" for cls, v in chosen}
    unused = sorted(k for k in options if k not in names)
    if unused:
        raise UsageError(f"options given for {', '.join(unused)}, which is not among the chosen targets")
    return [cls(variant, **{**options.get(cls.name, {}), **options.get(f"{cls.name}:{variant}", {})})
            for cls, variant in chosen]


def _verify_target(target: Target, tdir: Path, dataset: Dataset, reference: dict[str, np.ndarray],
                   tol: Tolerance, source_name: str, exact: Mapping[str, np.ndarray] | None = None,
                   ir32: Mapping[str, np.ndarray] | None = None) -> Verification:
    runner = target.runner(tdir)
    with runner:
        candidate = run_batches(runner, dataset)
        name = runner.name
    # Top-1 agreement only means something for [N, classes] outputs; others keep the cosine test.
    per_output = {k: tol if tol.min_top1_agreement is None or (np.ndim(v) == 2 and np.shape(v)[1] > 1)
                  else replace(tol, min_top1_agreement=None) for k, v in reference.items()}
    result = compare(reference, candidate, per_output, labels=dataset.labels, data_kind=dataset.kind,
                     exact=exact if tol.error_model else None, ir_float32=ir32 if tol.error_model else None)
    if not tol.error_model:  # quantized and fixed-point outputs: their output rounding's expected error
        attach_expected_errors(result, expected_output_errors(primary_artifact(tdir)))
    return _summarize(result, f"{name} vs {source_name}", tol)


def primary_artifact(tdir: Path) -> Path:
    """What `tapeout verify` takes for a target folder: the hls4ml project folder itself, else its
    .tflite / .plan / .onnx model (in that order), else the folder."""
    if is_hls4ml_project(tdir):
        return tdir
    for suffix in (".tflite", ".plan", ".onnx"):
        found = sorted(tdir.glob(f"*{suffix}"))
        if found:
            return found[0]
    return tdir


def _error_model_applies(cls: type[Target] | Target, variant: str, atol: float | None, rtol: float | None) -> bool:
    """A float32 variant judged by default: onnx, tflite:fp32 (no default tolerance) and
    tensorrt:fp32 (an elementwise default: its engine's error is float32's too, or TF32's, which
    the 1e-5 default fails as well). --atol/--rtol keep every target elementwise."""
    if atol is not None or rtol is not None or cls.quant_scheme(variant) is not None:
        return False
    default = cls.default_tolerance(variant)
    return default is None or default.elementwise


def _ir_outputs(graph: Graph, dataset: Dataset, precision: str) -> dict[str, np.ndarray]:
    """The float IR (before quantization; pruned when pruning ran) on the verification data, in the
    source's layout. In float64: the near-exact values the error model judges source and artifact against."""
    from tapeout.compiler.reference_runner import ReferenceRunner

    with ReferenceRunner(graph, source_layout=True, precision=precision) as runner:
        return run_batches(runner, dataset)


def _source_ir_outputs(source: str | Path, weights: str | Path | None, dataset: Dataset, notes: list[str],
                       fallback: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The source's float IR in float64 and float32 on ``dataset``, for the error model of ``verify``;
    ({}, {}) with a note saying ``fallback`` when the source does not import."""
    try:
        graph, _ = load_model(source, weights)
    except FrontendError as e:
        notes.append(f"{fallback}: the source does not import for the error model ({e})")
        return {}, {}
    return _ir_outputs(graph, dataset, "float64"), _ir_outputs(graph, dataset, "float32")


def _target_tolerance(cls: type[Target] | Target, variant: str, atol: float | None, rtol: float | None,
                      tol: Tolerance) -> Tolerance:
    """--atol/--rtol when given (elementwise for every target); a float32 variant's error model; else
    the variant's default."""
    if atol is not None or rtol is not None:
        return tol
    if _error_model_applies(cls, variant, atol, rtol):
        # atol/rtol stay for an output the float64 run lacks (judged elementwise).
        return replace(tol, error_model=True)
    default = cls.default_tolerance(variant)
    if default is None:
        return tol
    # An elementwise default is the variant's own atol/rtol.
    return default if default.elementwise else replace(default, atol=tol.atol, rtol=tol.rtol)


# ------------------------------------------------------- accuracy control
def _check_accuracy_args(chosen: Sequence[tuple[type[Target], str]], eval_data: str | Path | None,
                         max_drop: float | None, fallback: bool, verifying: bool) -> None:
    if max_drop is not None:
        if not max_drop >= 0:
            raise UsageError(f"--max-accuracy-drop must be >= 0 percentage points, got {max_drop:g}")
        if eval_data is None:
            raise UsageError("--max-accuracy-drop needs --eval DATA with labels y")
        if not verifying and not fallback:
            raise UsageError("--max-accuracy-drop is checked by verification; drop --no-verify")
    if fallback and not any(cls.quant_scheme(v) for cls, v in chosen):
        raise UsageError("--fallback applies to quantized targets only (e.g. tflite:int8)")


def _fallback(quantized: dict[str, tuple[Graph, dict]], eval_data: str | Path | None,
              calibration: str | Path | None, max_drop: float | None,
              progress: Progress) -> dict[str, tuple[Graph, dict]]:
    from tapeout.compiler.accuracy_control import Criterion, apply
    from tapeout.compiler.calibration import source_specs
    from tapeout.targets.base import QUANTIZED_TOLERANCE

    graph = next(iter(quantized.values()))[0]
    data = choose_data(source_specs(graph), eval_data, calibration)
    if max_drop is not None and data.labels is None:
        raise UsageError(f"--max-accuracy-drop needs labels: {eval_data} has no array 'y'")
    return apply(quantized, data.feeds, data.labels, Criterion(max_drop, QUANTIZED_TOLERANCE), progress)


def _judge_accuracy(tr: TargetReport, max_drop: float) -> None:
    """A quantized artifact with an accuracy budget passes on accuracy, not on cosine/agreement."""
    from tapeout.compiler.accuracy_control import drop_pt

    v = tr.verification
    assert v is not None
    drop = drop_pt(v.accuracy)
    finite = all(o.get("nonfinite_mismatches", 0) == 0 for o in v.outputs)
    v.passed = bool(drop is not None and drop <= max_drop + 1e-9 and finite)
    v.max_accuracy_drop = max_drop
    if drop is not None:
        tr.notes.append(f"top-1 accuracy drop {drop:.2f} pt "
                        f"{'within' if v.passed else 'exceeds'} --max-accuracy-drop {max_drop:g}")


# ---------------------------------------------------------------- pruning
def _prune_pass(spec: str | None, train: str | Path | None, epochs: int | None,
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


def _prune(graph: Graph, prune_pass: Any, spec: str, piped: Any, train: str | Path | None, epochs: int | None,
           progress: Progress, eval_data: str | Path | None = None,
           max_accuracy_drop: float | None = None,
           learning_rate: float | None = None) -> tuple[Graph, dict[str, Any]]:
    """Run the pruning pass after the default pipeline (its record joins the report's passes), then
    fine-tune on ``train`` when given, holding the pruned zeros (``compiler.finetune``).

    ``--prune auto`` first bisects the sparsity on the ``eval_data`` labels: the largest whose
    accuracy (each candidate fine-tuned when ``train`` is given) is within ``max_accuracy_drop``.
    """
    from tapeout.compiler.calibration import source_specs
    from tapeout.compiler.finetune import DEFAULT_EPOCHS, DEFAULT_LR, finetune
    from tapeout.compiler.passes.pipeline import Pipeline
    from tapeout.compiler.passes.prune import AutoPrune, pruning_report, unmatched_layers, weighted_nodes

    unknown = unmatched_layers(graph, prune_pass.exclude)
    if unknown:
        layers = ", ".join(n.name for n in weighted_nodes(graph)) or "none"
        raise UsageError(f"--prune-exclude: no conv/dense layer named {', '.join(map(repr, unknown))}; "
                         f"they are {layers}")
    data = None
    tuning = {"epochs": epochs or DEFAULT_EPOCHS, "seed": 0, "learning_rate": learning_rate or DEFAULT_LR}
    if train is not None:
        data = load_data(train, source_specs(graph), kind="file")
        if data.labels is None:
            raise UsageError(f"--train {train}: no labels; the file needs an array 'y'")

    def build(p: Any) -> tuple[Any, Graph]:
        res = Pipeline([p]).run(graph)
        if data is None:
            return res, res.graph
        return res, finetune(res.graph, data.feeds, data.labels, **tuning)[0]

    search = None
    if isinstance(prune_pass, AutoPrune):
        prune_pass, spec, search = _search_pruning(graph, prune_pass, build, eval_data, max_accuracy_drop, progress)
    res = Pipeline([prune_pass]).run(graph)
    piped.records.extend(res.records)
    details = [d for r in res.records for d in r.details]
    pruned = res.graph
    report = pruning_report(spec, graph, pruned, details)
    if data is not None:
        progress("fine-tune")
        tuned, info = finetune(pruned, data.feeds, data.labels, **tuning)
        report = pruning_report(spec, graph, tuned, details)
        report.update(one_shot=False, fine_tuning={"data": str(train), **info.to_json()}, _one_shot=pruned)
        pruned = tuned
    if search is not None:
        report["search"] = search
    return pruned, report


def _search_pruning(graph: Graph, auto: Any, build: Callable[[Any], tuple[Any, Graph]], eval_data: str | Path | None,
                    max_drop: float | None, progress: Progress) -> tuple[Any, str, dict[str, Any]]:
    """--prune auto: bisect the sparsity against the eval labels; the pass, spec and curve it chose."""
    from tapeout.compiler.calibration import source_specs
    from tapeout.compiler.passes.prune import search_sparsity
    from tapeout.compiler.reference_runner import ReferenceRunner

    assert eval_data is not None and max_drop is not None  # checked with the flags
    data = load_data(eval_data, source_specs(graph), kind="eval")
    if data.labels is None:
        raise UsageError(f"--prune auto needs labels: {eval_data} has no array 'y'")

    def accuracy(g: Graph) -> float:
        with ReferenceRunner(g, source_layout=True) as runner:
            acc = _top1(run_batches(runner, data), data.labels)
        if acc is None:
            raise UsageError("--prune auto needs a classifier output [N, classes] to measure top-1 accuracy")
        return acc

    def at(fraction: float) -> float:
        progress(f"prune {auto.kind}:{fraction:g}{auto.suffix}")
        return accuracy(build(auto.make(fraction))[1])

    baseline = accuracy(graph)
    best, curve = search_sparsity(at, baseline, max_drop)
    search = {"kind": auto.kind, "max_accuracy_drop": max_drop, "baseline_accuracy": round(baseline, 6),
              "data": str(eval_data), "chosen": best, "curve": curve}
    return auto.make(best), f"{auto.kind}:{best:g}{auto.suffix if best > 0 else ''}", search


def _top1(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> float | None:
    for v in outputs.values():
        if np.ndim(v) == 2 and np.shape(v)[1] > 1:
            return float(np.mean(np.argmax(v, axis=1) == labels))
    return None


def _pruned_reference(graph: Graph, dataset: Dataset, source_ref: dict[str, np.ndarray],
                      pruning: dict[str, Any]) -> dict[str, np.ndarray]:
    """The pruned IR's outputs on the verification data (source layout); accuracies go to ``pruning``."""
    from tapeout.compiler.reference_runner import ReferenceRunner

    with ReferenceRunner(graph, source_layout=True) as runner:
        ref = run_batches(runner, dataset)
    if dataset.labels is not None:
        pruning["accuracy"] = {"unpruned": _top1(source_ref, dataset.labels), "pruned": _top1(ref, dataset.labels),
                               "data": dataset.kind, "samples": dataset.num_samples}
        if "_one_shot" in pruning:  # fine-tuned: also the accuracy before fine-tuning
            with ReferenceRunner(pruning["_one_shot"], source_layout=True) as runner:
                pruning["accuracy"]["pruned_one_shot"] = _top1(run_batches(runner, dataset), dataset.labels)
    return ref


# ----------------------------------------------------------- quantization
def _check_quantization_args(chosen: Sequence[tuple[type[Target], str]], calibration: str | Path | None,
                             method: str, percentile: float | None) -> None:
    """Refuse bad quantization flags before any model is loaded."""
    from tapeout.compiler.calibration import METHODS
    from tapeout.compiler.passes.quantize import CALIBRATED_SCHEMES

    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}; one of {', '.join(METHODS)}")
    if percentile is not None and method != "percentile":
        raise UsageError("--percentile applies to --calibration-method percentile only")
    needing = [f"{cls.name}:{v}" for cls, v in chosen if cls.quant_scheme(v) in CALIBRATED_SCHEMES]
    if needing and calibration is None:
        one = len(needing) == 1
        raise UsageError(f"{', '.join(needing)} {'quantizes' if one else 'quantize'} activations and "
                         f"{'needs' if one else 'need'} calibration data: pass --calibration DATA (.npz/.npy of "
                         "representative inputs), or --calibration synthetic to use random inputs")


def _quantize(graph: Graph, chosen: Sequence[tuple[type[Target], str]], calibration: str | Path | None,
              method: str, percentile: float | None, keep_float: Sequence[str],
              progress: Progress) -> dict[str, tuple[Graph, dict]]:
    """scheme -> (annotated graph, report entry) for every scheme the chosen targets consume.

    One calibration serves every scheme, so all quantized artifacts share the same ranges.
    """
    from tapeout.compiler.calibration import DEFAULT_PERCENTILE, calibrate, source_specs
    from tapeout.compiler.passes.pipeline import Pipeline
    from tapeout.compiler.passes.quantize import CALIBRATED_SCHEMES, Quantize, SplitActivations, is_excluded

    schemes = list(dict.fromkeys(s for cls, v in chosen if (s := cls.quant_scheme(v))))
    if not schemes:
        if keep_float:
            raise UsageError("--keep-float applies to quantized targets only (e.g. onnx:int8)")
        return {}
    split = Pipeline([SplitActivations()]).run(graph).graph if set(schemes) & set(CALIBRATED_SCHEMES) else graph
    # Names of layers and of the activation nodes split off them ("dense/softmax").
    names = {n.name for n in [*graph.nodes, *split.nodes]}
    unknown = [k for k in keep_float if not any(is_excluded(n, [k]) for n in names)]
    if unknown:
        raise UsageError(f"--keep-float: no layer named {', '.join(map(repr, unknown))}; "
                         f"`tapeout inspect MODEL` lists them")
    calibrated: Graph | None = None
    if split is not graph:
        progress("calibration")
        specs = source_specs(split)
        if str(calibration) == SYNTHETIC:
            data = synthesize(specs, num_samples=SYNTHETIC_CALIBRATION_SAMPLES, seed=0)
        else:
            assert calibration is not None
            data = load_data(calibration, specs, kind="calibration")
        p = percentile if percentile is not None else DEFAULT_PERCENTILE
        calibrated = calibrate(split, data.feeds, method=method, percentile=p, data_kind=data.kind)
    out: dict[str, tuple[Graph, dict]] = {}
    for scheme in schemes:
        progress(f"quantize {scheme}")
        base = calibrated if calibrated is not None and scheme in CALIBRATED_SCHEMES else graph
        # A split-off activation named for the unsplit (fp16) graph is fused there and float anyway.
        here = [k for k in keep_float if any(is_excluded(n.name, [k]) for n in base.nodes)]
        res = Pipeline([Quantize(scheme, here)]).run(base)
        q = res.graph.quant
        assert q is not None
        cal = res.graph.calibration if scheme in CALIBRATED_SCHEMES else None
        info = {
            "scheme": scheme,
            "calibration": None if cal is None else {
                "method": cal.method, "percentile": cal.percentile, "data": cal.data, "samples": cal.samples,
                "file": None if cal.data == SYNTHETIC else str(calibration)},
            "float_layers": list(q.float_nodes),
            "ranges": _quant_ranges(res.graph),
            "details": [d for r in res.records for d in r.details if not d.startswith("warning: ")],
            "warnings": [d[len("warning: "):] for r in res.records for d in r.details if d.startswith("warning: ")],
        }
        out[scheme] = (res.graph, info)
    return out


def _quant_ranges(graph: Graph) -> list[dict[str, Any]]:
    """Each quantized activation in graph order: its range, dtype, scale and zero point (report.html's
    quantization table); per-tensor only, as activations are."""
    q = graph.quant
    if q is None:
        return []
    order = list(graph.inputs) + [o for n in graph.nodes for o in n.outputs if o]
    rows = []
    for name in dict.fromkeys(order):
        tq = q.tensors.get(name)
        if tq is None or tq.role != "activation" or tq.per_channel:
            continue
        rows.append({"tensor": name, "dtype": tq.dtype,
                     "min": float(f"{tq.rmin[0]:.9g}") if tq.rmin else None,
                     "max": float(f"{tq.rmax[0]:.9g}") if tq.rmax else None,
                     "scale": float(f"{tq.scale[0]:.9g}") if tq.scale else None,
                     "zero_point": int(tq.zero_point[0]) if tq.zero_point else None})
    return rows


# ---------------------------------------------------------------- verify
def verify_artifact(source: str | Path, artifact: str | Path, *, weights: str | Path | None = None,
                    data: str | Path | None = None, atol: float | None = None,
                    rtol: float | None = None, trace: bool = False) -> ComparisonResult:
    """Run ``source`` and ``artifact`` on the same inputs and compare every output.

    A quantized artifact (integer or float16 tensors in a .tflite, Q/DQ or QLinear nodes in an
    .onnx) is judged by cosine and top-1 agreement, as compile judges it, unless ``atol`` or
    ``rtol`` is given. A float one is judged by the error model (``runtime.compare``) against the
    source's IR run in float64, as compile judges it, unless ``atol`` or ``rtol`` is given or the
    source does not import (then elementwise, with a note).
    """
    result = _verify_artifact(source, artifact, weights, data, atol, rtol)
    if trace:  # --trace: the per-layer error, as compile's report.json holds it (result.trace)
        result.trace = _trace_artifact(source, artifact, weights, data)  # type: ignore[attr-defined]
    return result


def _trace_artifact(source: str | Path, artifact: str | Path, weights: str | Path | None,
                    data: str | Path | None) -> dict[str, Any]:
    from tapeout.compiler.passes.registry import default_pipeline
    from tapeout.compiler.trace import trace_artifact
    from tapeout.runtime.trace import untraced

    try:
        graph, _ = load_model(source, weights)
    except FrontendError as e:
        return untraced(f"the source does not import, so there is no reference interpreter run ({e})")
    graph = default_pipeline().run(graph).graph
    from tapeout.compiler.calibration import source_specs

    dataset = load_data(data, source_specs(graph), kind="eval") if data else synthesize(
        source_specs(graph), num_samples=SYNTHETIC_SAMPLES, seed=0)
    return trace_artifact(artifact, graph, dataset)


def _verify_artifact(source: str | Path, artifact: str | Path, weights: str | Path | None,
                     data: str | Path | None, atol: float | None, rtol: float | None) -> ComparisonResult:
    quiet_environment()
    tol = Tolerance(atol if atol is not None else DEFAULT_ATOL, rtol if rtol is not None else DEFAULT_RTOL,
                    scale_atol=atol is None)
    with runner_for(source, weights) as ref, runner_for(artifact) as cand:
        dataset = load_data(data, ref.input_specs(), kind="eval") if data else synthesize(
            ref.input_specs(), num_samples=SYNTHETIC_SAMPLES, seed=0)
        scheme = quantized_artifact(artifact) if atol is None and rtol is None else None
        if scheme is None:
            exact: dict[str, np.ndarray] = {}
            ir32: dict[str, np.ndarray] = {}
            notes = list(getattr(ref, "notes", []))
            if atol is None and rtol is None:
                # A float artifact: the error model, against the source's IR in float64, as compile judges it.
                exact, ir32 = _source_ir_outputs(source, weights, dataset, notes, "judged elementwise")
                if exact:
                    tol = replace(tol, error_model=True)
            result = verify(ref, cand, dataset, tol, exact=exact, ir_float32=ir32)
            result.notes[:0] = notes
            return result
        from tapeout.targets.base import QUANTIZED_TOLERANCE
        from tapeout.targets.hls4ml.target import Hls4mlTarget

        # Judged as compile judges that kind of artifact; top-1 agreement only means something
        # for [N, classes] outputs.
        q = Hls4mlTarget.default_tolerance(Hls4mlTarget.default_variant) if scheme == HLS4ML_PROJECT \
            else QUANTIZED_TOLERANCE
        q = replace(q, atol=tol.atol, rtol=tol.rtol)
        per_output = {k: q if np.ndim(v) == 2 and np.shape(v)[1] > 1 else replace(q, min_top1_agreement=None)
                      for k, v in run_batches(ref, dataset).items()}
        result = verify(ref, cand, dataset, per_output)
        attach_expected_errors(result, expected_output_errors(artifact))
        result.notes[:0] = getattr(ref, "notes", [])
        result.notes.append(f"{scheme} artifact: judged by cosine >= {q.min_cosine:g} and top-1 agreement >= "
                            f"{q.min_top1_agreement:g}; pass --atol/--rtol for elementwise checks")
        return result


HLS4ML_PROJECT = "fixed-point hls4ml project"


def quantized_artifact(path: str | Path) -> str | None:
    """What makes an artifact quantized ("int8 .tflite", "QDQ .onnx", ...), or None for a float one."""
    path = Path(path)
    if is_hls4ml_project(path):
        return HLS4ML_PROJECT
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        from tapeout.runtime.runners.litert import interpreter_class

        cls, _ = interpreter_class()
        try:
            details = cls(model_path=str(path)).get_tensor_details()
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the runner itself
            return None
        kinds = {np.dtype(d["dtype"]).name for d in details}
        found = [k for k in ("int8", "uint8", "int16", "float16") if k in kinds]
        return f"{'/'.join(found)} .tflite" if found else None
    if suffix == ".onnx":
        try:
            import onnx

            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - as above
            return None
        ops = {n.op_type for n in model.graph.node}
        if ops & {"QuantizeLinear", "DequantizeLinear"}:
            return "QDQ .onnx"
        if any(op.startswith("QLinear") or op in ("MatMulInteger", "ConvInteger") for op in ops):
            return "integer .onnx"
    return None


# --------------------------------------------------------- verify a build
def is_build_folder(path: str | Path) -> bool:
    """A folder given to `tapeout verify` as the artifact: a whole build (OUTDIR), not one hls4ml project."""
    p = Path(path)
    return p.is_dir() and not is_hls4ml_project(p)


def verify_build(source: str | Path, outdir: str | Path, *, weights: str | Path | None = None,
                 data: str | Path | None = None, atol: float | None = None, rtol: float | None = None,
                 max_accuracy_drop: float | None = None, trace: bool = False,
                 progress: Progress = _noop) -> CompileReport:
    """Verify every artifact a compile wrote into ``outdir`` (found through OUTDIR/report.json)
    against ``source``, with compile's judging rules: each target's runner, its variant's tolerance
    (the error model for float32 variants, cosine/top-1 for quantized ones), the expected error of
    quantized outputs, and with ``max_accuracy_drop`` the accuracy budget on ``data``'s labels.
    Returns a report in compile's format (the artifacts' sizes and notes from the build's report);
    an artifact that is missing or cannot be run fails, with the reason. Writes nothing.
    """
    import json

    quiet_environment()
    outdir = Path(outdir)
    found = outdir / "report.json"
    if not found.is_file():
        raise UsageError(f"{outdir}: no report.json and not an hls4ml project (no tapeout_csim.json); give the "
                         "OUTDIR `tapeout compile -o` wrote, an hls4ml project folder, or one artifact file")
    try:
        built = json.loads(found.read_text())
        entries = list(built["targets"])
        pairs = [parse_target(f"{t['target']}:{t['variant']}") for t in entries]
    except (ValueError, KeyError, TypeError, UsageError) as e:
        raise UsageError(f"{found}: not a tapeout compile report ({e})") from None
    if max_accuracy_drop is not None:
        if not max_accuracy_drop >= 0:
            raise UsageError(f"--max-accuracy-drop must be >= 0 percentage points, got {max_accuracy_drop:g}")
        if data is None:
            raise UsageError("--max-accuracy-drop needs --data FILE with labels y")
    tol = Tolerance(atol if atol is not None else DEFAULT_ATOL, rtol if rtol is not None else DEFAULT_RTOL,
                    scale_atol=atol is None)
    notes: list[str] = []
    calibration = None if data is not None else _build_calibration(built)
    if calibration is not None:
        # Without --data, the build's own calibration file: synthetic inputs outside its ranges say
        # little about a quantized artifact (compile, given no --eval, verified on it too).
        notes.append(f"verified on the build's calibration data {calibration} (pass --data for other inputs)")
    progress("source run")
    with runner_for(source, weights) as ref:
        if data is not None:
            dataset = load_data(data, ref.input_specs(), kind="eval")
        elif calibration is not None:
            dataset = load_data(calibration, ref.input_specs(), kind="calibration")
        else:
            dataset = synthesize(ref.input_specs(), num_samples=SYNTHETIC_SAMPLES, seed=0)
        if max_accuracy_drop is not None and dataset.labels is None:
            raise UsageError(f"--max-accuracy-drop needs labels: {data} has no array 'y'")
        reference = run_batches(ref, dataset)
        source_name = ref.name
        notes[:0] = list(getattr(ref, "notes", []))
    exact: dict[str, np.ndarray] = {}
    ir32: dict[str, np.ndarray] = {}
    if any(_error_model_applies(cls, v, atol, rtol) for cls, v in pairs):
        progress("IR run (float64, float32)")
        exact, ir32 = _source_ir_outputs(source, weights, dataset, notes, "float artifacts judged elementwise")
    traced_graph: Graph | None = None
    if trace:  # --trace: each artifact as `verify SOURCE ARTIFACT --trace` traces it (compiler.trace)
        try:
            from tapeout.compiler.passes.registry import default_pipeline

            traced_graph = default_pipeline().run(load_model(source, weights)[0]).graph
        except FrontendError as e:
            notes.append(f"not traced: the source does not import ({e})")
    if built.get("pruning"):
        notes.append("the build was pruned: its artifacts are judged against the unpruned source here, while "
                     "compile judged them against the pruned IR")
    report = CompileReport(source=built.get("source", {"path": str(source)}), graph=built.get("graph", {}),
                           passes=built.get("passes", []), pruning=built.get("pruning"),
                           data={"kind": dataset.kind, "samples": dataset.num_samples,
                                 "labels": dataset.labels is not None},
                           outdir=str(outdir), notes=notes)
    for entry, (cls, variant) in zip(entries, pairs):
        folder = f"{cls.name}-{variant}"
        tdir = outdir / folder
        tr = TargetReport(cls.name, variant, list(entry.get("artifacts", [])), int(entry.get("size_bytes", 0)),
                          float(entry.get("seconds") or 0.0), [], interface=entry.get("interface"),
                          extra={k: v for k, v in entry.items() if k not in _TARGET_FIELDS})
        progress(f"verify {cls.name}:{variant}")
        missing = [a for a in tr.artifacts if not (outdir / a).exists()]
        ttol = _target_tolerance(cls, variant, atol, rtol, tol)
        if ttol.error_model and not exact:
            ttol = replace(ttol, error_model=False)
        if missing:
            tr.verification = _unrun(f"missing: {', '.join(missing)}", ttol, dataset)
        else:
            try:
                tr.verification = _verify_target(cls(variant), tdir, dataset, reference, ttol, source_name,
                                                 exact, ir32)
            except (FrontendError, RuntimeInputError) as e:  # a damaged artifact; a missing tool stays exit 3
                tr.verification = _unrun(f"could not be run: {e}", ttol, dataset)
        if max_accuracy_drop is not None and tr.verification.error is None \
                and cls.default_tolerance(variant) is not None:
            _judge_accuracy(tr, max_accuracy_drop)
        if traced_graph is not None and not missing:
            from tapeout.compiler.trace import trace_artifact

            progress(f"trace {cls.name}:{variant}")
            tr.extra["trace"] = trace_artifact(primary_artifact(tdir), traced_graph, dataset)
        report.targets.append(tr)
    return report


def _build_calibration(built: Mapping[str, Any]) -> str | None:
    """The calibration file a build's quantized targets recorded, when it still exists."""
    for t in built.get("targets", []):
        cal = ((t.get("quantization") or {}).get("calibration") or {}).get("file")
        if cal and Path(cal).is_file():
            return str(cal)
    return None


# Fields of a target's entry in report.json that verify_build recomputes or carries itself.
_TARGET_FIELDS = {"target", "variant", "artifacts", "size_bytes", "seconds", "notes", "verification", "interface",
                  "trace"}


def _unrun(reason: str, tol: Tolerance, dataset: Dataset) -> Verification:
    return Verification(passed=False, runner="-", samples=dataset.num_samples, data=dataset.kind,
                        max_abs_err=None, mean_abs_err=None, cosine=None, top1_agreement=None,
                        atol=tol.atol, rtol=tol.rtol, error=reason)


def failing_artifacts(report: CompileReport) -> list[str]:
    """'target:variant (artifact, ...)' for every target that failed verification."""
    return [f"{t.target}:{t.variant} ({', '.join(t.artifacts) or t.folder})" for t in report.targets if not t.passed]
