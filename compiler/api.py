"""The Python API behind the CLI: compile, inspect, verify.

Each call returns an object (the CLI only prints it), raises the errors of
``tapeout.compiler.errors`` for user mistakes, and never prints.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from tapeout.compiler.errors import MissingToolError, UsageError
from tapeout.compiler.frontends.loader import SourceInfo, load_model
from tapeout.compiler.ir import Graph
from tapeout.compiler.ops import graph_macs, graph_params, node_macs
from tapeout.compiler.quiet import quiet_environment
from tapeout.compiler.report import CompileReport, TargetReport, Verification
from tapeout.runtime.compare import ComparisonResult, Tolerance, compare
from tapeout.runtime.data import Dataset, load_data, synthesize
from tapeout.runtime.protocol import IOSpec, Runner
from tapeout.runtime.runners.select import runner_for
from tapeout.runtime.verify import run_batches, verify
from tapeout.targets.base import Target
from tapeout.targets.registry import parse_target

Progress = Callable[[str], None]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
SYNTHETIC_SAMPLES = 8


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
    if calibration is not None and str(calibration) != "synthetic":
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


def _install(staging: Path, outdir: Path, folders: Sequence[str]) -> None:
    """Move finished target folders into place, replacing older ones, each in one rename."""
    outdir.mkdir(parents=True, exist_ok=True)
    for name in folders:
        dst = outdir / name
        if dst.exists():
            old = staging / f".old-{name}"
            os.replace(dst, old)
        os.replace(staging / name, dst)


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
    verify_artifacts: bool = True,
    timings: bool = True,
    progress: Progress = _noop,
) -> CompileReport:
    """Compile ``model`` for each target, verify every artifact against the source, write OUTDIR/report.json."""
    quiet_environment()
    if not targets:
        raise UsageError("no target given: pass -t TARGET (see `tapeout targets`)")
    chosen: list[tuple[type[Target], str]] = []
    for spec in targets:
        pair = parse_target(spec)
        if pair not in chosen:
            chosen.append(pair)
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

    tol = Tolerance(atol if atol is not None else DEFAULT_ATOL, rtol if rtol is not None else DEFAULT_RTOL)
    dataset: Dataset | None = None
    reference: dict[str, np.ndarray] = {}
    if verify_artifacts:
        progress("source run")
        with runner_for(model, weights) as source:
            dataset = choose_data(source.input_specs(), eval_data, calibration)
            reference = run_batches(source, dataset)
            source_name = source.name
    data_info = {"kind": dataset.kind if dataset else None,
                 "samples": dataset.num_samples if dataset else 0,
                 "labels": dataset is not None and dataset.labels is not None}

    summary = graph_summary(graph)
    summary["source_nodes"] = nodes_in
    report = CompileReport(source=info.to_json(), graph=summary, passes=piped.to_json(), data=data_info,
                           outdir=str(outdir), notes=list(graph.metadata.get("notes", [])))

    parent = outdir.parent if outdir.parent != Path("") else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}-tapeout-", dir=parent))
    try:
        for cls, variant in chosen:
            target = cls(variant)
            folder = f"{cls.name}-{variant}"
            tdir = staging / folder
            tdir.mkdir()
            progress(f"emit {cls.name}:{variant}")
            t0 = time.perf_counter()
            emitted = target.emit(graph, tdir)
            seconds = time.perf_counter() - t0
            tr = TargetReport(cls.name, variant, [f"{folder}/{a}" for a in emitted.artifacts],
                              _dir_size(tdir, emitted.artifacts), seconds, list(emitted.notes),
                              extra=dict(emitted.extra))
            if verify_artifacts and dataset is not None:
                progress(f"verify {cls.name}:{variant}")
                tr.verification = _verify_target(target, tdir, dataset, reference, tol, source_name)
            report.targets.append(tr)
        _install(staging, outdir, [f"{t.target}-{t.variant}" for t in report.targets])
        tmp_report = staging / "report.json"
        report.write(tmp_report, timings)
        os.replace(tmp_report, outdir / "report.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _verify_target(target: Target, tdir: Path, dataset: Dataset, reference: dict[str, np.ndarray],
                   tol: Tolerance, source_name: str) -> Verification:
    runner = target.runner(tdir)
    with runner:
        candidate = run_batches(runner, dataset)
        name = runner.name
    result = compare(reference, candidate, tol, labels=dataset.labels, data_kind=dataset.kind)
    return _summarize(result, f"{name} vs {source_name}", tol)


# ---------------------------------------------------------------- verify
def verify_artifact(source: str | Path, artifact: str | Path, *, weights: str | Path | None = None,
                    data: str | Path | None = None, atol: float | None = None,
                    rtol: float | None = None) -> ComparisonResult:
    """Run ``source`` and ``artifact`` on the same inputs and compare every output."""
    quiet_environment()
    tol = Tolerance(atol if atol is not None else DEFAULT_ATOL, rtol if rtol is not None else DEFAULT_RTOL)
    with runner_for(source, weights) as ref, runner_for(artifact) as cand:
        dataset = load_data(data, ref.input_specs(), kind="eval") if data else synthesize(
            ref.input_specs(), num_samples=SYNTHETIC_SAMPLES, seed=0)
        return verify(ref, cand, dataset, tol)
