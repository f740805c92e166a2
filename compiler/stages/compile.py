"""One model's build, stage by stage: check -> load -> passes -> quantize -> emit -> verify -> report.

``compile_spec`` runs a ``BuildSpec``. Every flag is checked (and every target built from its
options) before the model loads. Targets whose cache entry is valid are restored instead of built
(compiler.cache); when all are, the model is not even loaded. The rest emit and verify in up to
``jobs`` threads: they share one load, one calibration and one source run.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tapeout.compiler.errors import MissingToolError, UsageError
from tapeout.compiler.frontends.loader import load_model
from tapeout.compiler.ir import Graph
from tapeout.compiler.passes.prune import PruningOutcome
from tapeout.compiler.quiet import quiet_environment
from tapeout.compiler.schemes import IO_LAYOUTS
from tapeout.compiler.report import CompileReport, TargetReport
from tapeout.compiler.staging import close_stage, install, open_stage, output_error
from tapeout.compiler.stages import emit as emit_stage
from tapeout.compiler.stages import passes as passes_stage
from tapeout.compiler.stages import quantize as quantize_stage
from tapeout.compiler.stages import report as report_stage
from tapeout.compiler.stages import verify as verify_stage
from tapeout.compiler.stages.data import BuildData
from tapeout.compiler.stages.spec import BuildSpec, Progress, check_jobs, check_outdir, noop
from tapeout.runtime.data import Dataset
from tapeout.runtime.verify import run_batches
from tapeout.targets.base import EmitContext, Target
from tapeout.targets.registry import parse_target


_SERIAL_EMIT = threading.Lock()  # for targets with parallel_emit False, and a Keras source's load


def _ready() -> None:
    """A stage that has already run (the serial order): nothing to wait for."""


@dataclass
class Checked:
    """A build whose flags all passed: the targets built from their options, nothing loaded yet."""

    spec: BuildSpec
    chosen: list[tuple[type[Target], str]]
    built: list[Target]
    layout_notes: list[str | None]
    prune_pass: Any


def check(spec: BuildSpec) -> Checked:
    """Refuse every bad flag and option before any work (exit 2), and a missing tool (exit 3)."""
    if not spec.targets:
        raise UsageError("no target given: pass -t TARGET (see `tapeout targets`)")
    chosen: list[tuple[type[Target], str]] = []
    for name in spec.targets:
        pair = parse_target(name)
        if pair not in chosen:
            chosen.append(pair)
    quantize_stage.check_quantization_args(chosen, spec.calibration, spec.calibration_method, spec.percentile)
    quantize_stage.check_accuracy_args(chosen, spec.eval_data, spec.max_accuracy_drop, spec.fallback, spec.verify)
    if spec.trace and not spec.verify:
        raise UsageError("--trace compares each artifact's layers during verification; drop --no-verify")
    prune_pass = passes_stage.prune_pass_for(spec.prune, spec.train, spec.epochs, spec.max_accuracy_drop,
                                             spec.learning_rate, spec.prune_exclude)
    built = emit_stage.build_targets(chosen, spec.target_options, spec.options_base)
    if spec.io_layout is not None and spec.io_layout not in IO_LAYOUTS:
        raise UsageError(f"unknown --io-layout {spec.io_layout!r}; one of {', '.join(IO_LAYOUTS)}")
    layout_notes = [target.set_io_layout(spec.io_layout) for target in built]
    for cls, _ in chosen:
        missing = cls.missing_requirements()
        if missing:
            raise MissingToolError(f"target {cls.name!r} needs {', '.join(missing)}: "
                                   f"pip install 'tapeout[{cls.name}]'")
    check_outdir(spec.outdir)
    # After every flag and option (each refused without reading a file), before anything hashes
    # or reads these (the build cache's key does both).
    for what, path in (("model", spec.model), ("weights", spec.weights), *(("data", p) for p in spec.data_files())):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{path}: no such {what} file")
    return Checked(spec, chosen, built, layout_notes, prune_pass)


@dataclass
class Prepared:
    """What the targets share: the graph after passes, its quantized forms, the verification data
    and the source's outputs on it."""

    graph: Graph
    quantized: dict[str, tuple[Graph, dict]]
    pass_records: list[dict[str, Any]]
    report: CompileReport
    data: BuildData
    dataset: Dataset | None = None
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    exact: dict[str, np.ndarray] = field(default_factory=dict)  # the float IR in float64 (the error model)
    ir32: dict[str, np.ndarray] = field(default_factory=dict)  # and in float32
    source_name: str = ""
    traced: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    split: Graph | None = None  # integer_graph's float graph (the integer schemes'; their trace's reference)
    lock: threading.Lock = field(default_factory=threading.Lock)
    pruning: PruningOutcome | None = None


def prepare(c: Checked, targets: list[int], data: BuildData, progress: Progress) -> Prepared:
    """Load, run the passes, quantize for the ``targets`` (indices into c.chosen) and run the source."""
    p = load(c, data, progress)
    quantize(c, p, progress)
    source_run(c, p, targets, progress)
    return p


def load(c: Checked, data: BuildData, progress: Progress) -> Prepared:
    """Load and run the passes (pruning too): what quantize, the source run and the emits share."""
    spec = c.spec
    progress("import")
    graph, info = load_model(spec.model, spec.weights)
    nodes_in = len(graph.nodes)
    progress("passes")
    piped = passes_stage.run_default(graph)
    graph = piped.graph
    pruning: PruningOutcome | None = None
    if c.prune_pass is not None:
        progress("prune")
        graph, pruning = passes_stage.prune(graph, c.prune_pass, str(spec.prune), piped, data, spec.epochs, progress,
                                            spec.max_accuracy_drop, spec.learning_rate)
    summary = report_stage.graph_summary(graph)
    summary["source_nodes"] = nodes_in
    report = CompileReport(source=info.to_json(), graph=summary, passes=piped.to_json(),
                           data={"kind": None, "samples": 0, "labels": False},
                           outdir=str(spec.outdir), notes=list(graph.metadata.get("notes", [])))
    report.pruning = None if pruning is None else pruning.to_json()
    return Prepared(graph, {}, piped.to_json(), report, data, pruning=pruning)


def quantize(c: Checked, p: Prepared, progress: Progress) -> None:
    """Every chosen target's scheme, not only the ones to build: --fallback judges them together."""
    from tapeout.compiler.passes.quantize import integer_graph
    from tapeout.compiler.schemes import CALIBRATED_SCHEMES

    spec = c.spec
    integer = None
    if any(cls.quant_scheme(v) in CALIBRATED_SCHEMES for cls, v in c.chosen):
        integer = integer_graph(p.graph)
        p.split = integer[0]
    p.quantized = quantize_stage.quantize(p.graph, c.chosen, p.data, spec.calibration_method, spec.percentile,
                                          spec.keep_float, progress, spec.bias_correction, spec.fallback,
                                          spec.max_accuracy_drop, integer)


def source_run(c: Checked, p: Prepared, targets: list[int], progress: Progress) -> None:
    """The source on the verification data, and the IR in float64/float32 for the error model."""
    from tapeout.runtime.runners.select import runner_for

    spec, pruning = c.spec, p.pruning
    if not spec.verify:
        return
    progress("source run")
    with contextlib.ExitStack() as stack:
        with _SERIAL_EMIT:  # loading a Keras source names tensors from Keras's process-wide counters
            source = stack.enter_context(runner_for(spec.model, spec.weights))
        p.dataset = dataset = p.data.verification(source.input_specs())
        if spec.max_accuracy_drop is not None and dataset.labels is None:
            raise UsageError(f"--max-accuracy-drop needs labels: {spec.eval_data} has no array 'y'")
        p.reference = run_batches(source, dataset)
        p.source_name = source.name
        p.report.notes.extend(getattr(source, "notes", []))
    if pruning is not None:
        # Artifacts are checked against the pruned IR; the source only gives the unpruned accuracy.
        p.reference = passes_stage.pruned_reference(p.graph, dataset, p.reference, pruning)
        p.report.pruning = pruning.to_json()
        p.source_name = "pruned IR (reference interpreter)"
    if any(verify_stage.error_model_applies(c.built[i], c.chosen[i][1], spec.atol, spec.rtol) for i in targets):
        progress("IR run (float64, float32)")
        p.exact = verify_stage.ir_outputs(p.graph, dataset, "float64")
        # The float32 IR measures float32 rounding alone (the error model's bounds); pruned, it is the reference.
        p.ir32 = p.reference if pruning is not None else verify_stage.ir_outputs(p.graph, dataset, "float32")
    p.report.data = {"kind": dataset.kind, "samples": dataset.num_samples, "labels": dataset.labels is not None}


@dataclass
class Emitted:
    """One target's staged artifacts, before verification."""

    report: TargetReport
    result: Any  # targets.base.EmitResult
    graph: Graph  # the graph it was emitted from (quantized, fixed-point annotated)
    folder: Path


def emit_target(c: Checked, p: Prepared, i: int, staging: Path, progress: Progress,
                quantized: Callable[[], Any] = _ready) -> Emitted:
    """Emit target ``i`` into its staged folder; ``quantized`` waits for the quantize stage when it
    runs beside the emits (-j)."""
    from tapeout.targets.io import has_channels_first_io

    (cls, variant), target = c.chosen[i], c.built[i]
    tdir = staging / f"{cls.name}-{variant}"
    tdir.mkdir()
    scheme = cls.quant_scheme(variant)
    if scheme:
        quantized()
    progress(f"emit {cls.name}:{variant}")
    qgraph, qinfo = p.quantized[scheme] if scheme else (p.graph, None)
    ctx = EmitContext(tdir, p.data, c.spec.outdir, tuple(p.pass_records))
    with contextlib.nullcontext() if target.parallel_emit else _SERIAL_EMIT:
        request = target.precision_request()
        if request is not None:  # a fixed-point target's types: the precision search, then emit
            from tapeout.compiler.fixedpoint.precision import PrecisionSearch

            progress(f"precision search {cls.name}:{variant}")
            qgraph = PrecisionSearch(request, p.data, cls.name).run(qgraph).graph
        tr, emitted = emit_stage.emit(target, qgraph, ctx)
    if c.layout_notes[i] and has_channels_first_io(qgraph):
        tr.notes.append(str(c.layout_notes[i]))
    if qinfo is not None:
        tr.extra["quantization"] = qinfo
    return Emitted(tr, emitted, qgraph, tdir)


def verify_emitted(c: Checked, p: Prepared, i: int, e: Emitted, progress: Progress,
                   sourced: Callable[[], Any] = _ready) -> TargetReport:
    """Verify target ``i``'s staged artifacts against the source run (``sourced`` waits for it)."""
    spec = c.spec
    (cls, variant), target = c.chosen[i], c.built[i]
    tr = e.report
    if not spec.verify:
        return tr
    sourced()
    if p.dataset is None:
        return tr
    progress(f"verify {cls.name}:{variant}")
    target.confirm(e.graph, e.folder, p.data, e.result, tr.extra, tr.notes)
    base = verify_stage.base_tolerance(spec.atol, spec.rtol)
    ttol = verify_stage.target_tolerance(target, variant, spec.atol, spec.rtol, base, e.result.tolerance)
    tr.verification = verify_stage.verify_target(target, e.folder, p.dataset, p.reference, ttol, p.source_name,
                                                 p.exact, p.ir32)
    tr.cross_checks = verify_stage.cross_check(target, e.folder, tr.extra, p.dataset, p.reference, ttol,
                                               p.source_name, p.exact, p.ir32)
    if spec.max_accuracy_drop is not None and cls.default_tolerance(variant) is not None:
        verify_stage.judge_accuracy(tr, spec.max_accuracy_drop)
    if spec.trace:  # --trace: per-layer error against the reference interpreter (compiler.trace)
        progress(f"trace {cls.name}:{variant}")
        with p.lock:  # one reference run per graph, shared by the targets emitted from it
            tr.extra["trace"] = verify_stage.trace_target(cls.name, e.graph, e.folder, p.dataset, p.traced,
                                                          _trace_reference(p, cls.quant_scheme(variant), e.graph))
    return tr


def _trace_reference(p: Prepared, scheme: str | None, emitted: Graph) -> Graph:
    """The float graph a trace compares an artifact's layers with: the model's own. An integer scheme's
    graph has its activations split off and its biases corrected (compiler.passes.bias_correction),
    so its float run is not the model's; the split float graph (made by the quantize stage) has
    the same value names and the trained biases."""
    from tapeout.compiler.schemes import CALIBRATED_SCHEMES

    if scheme not in CALIBRATED_SCHEMES:
        return emitted
    assert p.split is not None  # the quantize stage ran before this target's emit
    return p.split


def build_target(c: Checked, p: Prepared, i: int, staging: Path, progress: Progress) -> TargetReport:
    """Emit target ``i`` into its staged folder and verify it (the serial order)."""
    return verify_emitted(c, p, i, emit_target(c, p, i, staging, progress), progress)


def _blas_threads(jobs: int) -> Any:
    """OpenBLAS's threads shared out among the jobs (the cores over ``jobs``, at least one) while
    they run. OpenBLAS spins its idle threads: at -j 2 on two cores each job's two threads
    fought the other job's for 2 CPU-seconds more, and a slower build than -j 1 (benchmarks/build_cache.py)."""
    from threadpoolctl import threadpool_limits

    from tapeout.compiler.sweep.executors import default_jobs  # the cores this process may use

    return threadpool_limits(limits=max(1, default_jobs() // jobs), user_api="blas")


def _build_parallel(c: Checked, todo: list[int], data: BuildData, staging: Path, progress: Progress,
                    jobs: int) -> tuple[Prepared, dict[int, TargetReport]]:
    """-j: calibration, the source run, the emits and the verifications overlap, each task waiting
    for what it reads. Tasks are queued in dependency order (quantize, source run, emits, then
    verifications), so a waiting task never holds up one it waits for."""
    p = load(c, data, progress)
    with _blas_threads(jobs), ThreadPoolExecutor(max_workers=jobs) as pool:
        fq = pool.submit(quantize, c, p, progress)
        fs = pool.submit(source_run, c, p, todo, progress)
        emits = {i: pool.submit(emit_target, c, p, i, staging, progress, fq.result) for i in todo}
        checks = {i: pool.submit(lambda i=i: verify_emitted(c, p, i, emits[i].result(), progress, fs.result))
                  for i in todo}
        fq.result(), fs.result()  # their errors first, as in the serial order
        return p, {i: f.result() for i, f in checks.items()}


def compile_spec(spec: BuildSpec, progress: Progress = noop, *, jobs: int = 1, cache: Any = None) -> CompileReport:
    """Build ``spec``: every target into OUTDIR/<target>-<variant>, and OUTDIR/report.json.

    ``cache``: a ``compiler.cache.Cache`` to restore unchanged targets from and store built ones in.
    ``jobs``: how many targets emit and verify at once.
    """
    quiet_environment()
    check_jobs(jobs)
    return compile_checked(check(spec), progress, jobs=jobs, cache=cache)


def compile_checked(c: Checked, progress: Progress = noop, *, jobs: int = 1, cache: Any = None,
                    keys: Any = None) -> CompileReport:
    """``compile_spec`` of a build already checked; ``keys``: its cache keys when the caller has them."""
    from tapeout.compiler.stages import cached

    spec = c.spec
    if cache is not None and keys is None:
        keys = cached.keys(c)
    hits = cached.lookup(cache, keys) if cache is not None else cached.Lookup()
    todo = [i for i in range(len(c.chosen)) if i not in hits.targets]
    data = BuildData(spec.calibration, spec.eval_data, spec.train)
    staging: Path | None = None
    try:  # compiler.staging: a locked stage next to OUTDIR, stale ones cleaned, installed under a lock
        staging = open_stage(spec.outdir)
        if todo or hits.model is None:
            built: dict[int, TargetReport] = {}
            if jobs > 1 and len(todo) > 1:
                p, built = _build_parallel(c, todo, data, staging, progress, jobs)
            else:
                p = prepare(c, todo, data, progress)
                built = {i: build_target(c, p, i, staging, progress) for i in todo}
            report = p.report
        else:
            report, built = hits.model, {}
            report.outdir = str(spec.outdir)
        for i in range(len(c.chosen)):
            if i in built:
                report.targets.append(built[i])
            else:
                progress(f"cache {c.chosen[i][0].name}:{c.chosen[i][1]}")
                report.targets.append(hits.restore(i, staging, spec.outdir))
        if cache is not None:
            cached.store(cache, keys, report, built, staging)
        written = report_stage.write(report, staging, spec.timings)
        install(staging, spec.outdir, [t.folder for t in report.targets], written)
    except OSError as e:  # a full disk or a read-only OUTDIR: one line, OUTDIR as it was
        error = output_error(spec.outdir, e)
        if error is None:
            raise
        raise error from None
    finally:
        if staging is not None:
            close_stage(staging)
    return report
