"""Running a sweep: every point not yet in the results file, one row each as it finishes, then the fronts.

Before any work every point is checked as `tapeout compile` checks its flags (a bad option value
is exit 2 here, not a row of errors), and its build cache key is computed: points that share a key
(settings spelled differently that build the same bytes) are built once, the others' rows copy it
("same_as" names the point that was built).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tapeout.compiler.errors import UsageError
from tapeout.compiler.sweep import pareto
from tapeout.compiler.sweep.points import PointFn
from tapeout.compiler.sweep.results import ResultsFile, columns
from tapeout.compiler.sweep.spec import Point, Sweep

RESULTS = "results.csv"
PAGE = "pareto.html"


@dataclass
class SweepResult:
    sweep: Sweep
    results: Path
    page: Path
    rows: list[dict[str, str]]
    fronts: list[pareto.Front]
    ran: int  # points run (built or restored) this time
    skipped: int  # points already in the results file (--resume)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return columns(self.sweep.axis_columns)


def cache_keys(sweep: Sweep, *, local_tools: bool = True) -> dict[str, str]:
    """Point id -> the build cache key of its target (checks every point's flags and options).

    ``local_tools=False`` (Ray): the synthesis tool is the worker nodes' business (those holding the
    synthesis resource), so a synthesis point is checked and keyed here as the same build without
    --synth, marked as a synthesis point."""
    from dataclasses import replace

    from tapeout.compiler.stages import cached
    from tapeout.compiler.stages.compile import check

    keys = {}
    for p in sweep.points:
        spec = replace(p.spec, outdir=sweep.output / "points" / p.id)
        synth = p.synthesis and not local_tools
        if synth:
            opts = {k: dict(v) for k, v in spec.target_options.items()}
            opts.setdefault(p.target, {})["synth"] = False
            spec = replace(spec, target_options=opts)
        keys[p.id] = cached.keys(check(spec)).targets[0] + (":synth" if synth else "")
    return keys


def base_digest(sweep: Sweep) -> str:
    """12 hex digits naming the base build: its settings, target options and input files' bytes."""
    import hashlib

    from tapeout.compiler.cache import file_sha256

    b = sweep.base
    doc = {"settings": b.shared_settings(), "options": b.target_options,
           "files": {str(i): file_sha256(p) for i, p in enumerate(b.input_files())},
           "synthetic": b.calibration == "synthetic"}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_sweep(sweep: Sweep, executor: Any, *, resume: bool = False, use_cache: bool = True,
              point_fn: PointFn | None = None, progress: Callable[[str], None] = lambda _: None) -> SweepResult:
    out = sweep.output
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    results = ResultsFile(out / RESULTS, columns(sweep.axis_columns))
    done_rows = results.read() if results.path.exists() else []  # a corrupt file: exit 2, left untouched
    if results.path.exists() and results.path.stat().st_size and not resume:
        raise UsageError(f"{results.path} exists ({len(done_rows)} points): pass --resume to finish that sweep, "
                         "or choose another --output")
    base = base_digest(sweep)
    other = next((r for r in done_rows if r["base"] != base), None)
    if other is not None:
        raise UsageError(f"{results.path}: its rows were built from another [base] (other settings or input "
                         f"files than {sweep.spelled} now names): choose another --output")
    keys = cache_keys(sweep, local_tools=getattr(executor, "name", "local") == "local")
    done = {r["id"]: r for r in done_rows}
    by_key: dict[str, list[Point]] = {}
    for p in sweep.points:
        by_key.setdefault(keys[p.id], []).append(p)
    out.mkdir(parents=True, exist_ok=True)
    (out / "points").mkdir(exist_ok=True)

    def write(p: Point, result: dict[str, Any], same_as: str | None = None) -> None:
        row = {"id": p.id, "index": p.index, "target": p.target, **{a: _cell(v) for a, v in p.settings.items()},
               **{k: v for k, v in result.items() if k not in ("id", "index", "target", "report", "base")},
               "base": base}
        if same_as is not None:
            row.update({"same_as": same_as, "build_s": 0.0, "from": "same build"})
        results.append(row)
        done[p.id] = {k: "" if v is None else str(v) for k, v in row.items()}
        if result.get("report") and same_as is None:
            folder = out / "points" / p.id
            if not (folder / "report.json").is_file():  # a Ray node's build: its report comes back
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "report.json").write_text(result["report"])
        progress(f"{len(done)}/{len(sweep.points)} {result.get('status')}  {p.id} {p.label()}")

    leaders: list[Point] = []
    followers: dict[str, list[Point]] = {}
    for group in by_key.values():
        todo = [p for p in group if p.id not in done]
        if not todo:
            continue
        built = next((done[p.id] for p in group if p.id in done and done[p.id]["status"] != "crashed"), None)
        if built is not None:  # the build ran before the sweep stopped: its row serves the rest
            for p in todo:
                write(p, _metrics_of(built), same_as=built["id"])
            continue
        leaders.append(todo[0])
        followers[todo[0].id] = todo[1:]
    leaders.sort(key=lambda p: p.index)
    skipped = len(sweep.points) - len(leaders) - sum(len(f) for f in followers.values())
    ran = 0
    try:
        for p, result in executor.run(leaders, out, use_cache, point_fn):
            write(p, result)
            ran += 1
            for q in followers.get(p.id, []):
                write(q, result, same_as=p.id)
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()
    rows = results.read()
    fs = pareto.fronts(rows, sweep.objectives)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    page = pareto.write_html(out / PAGE, rows, fs, columns(sweep.axis_columns), sweep.axis_columns,
                             f"tapeout sweep: {sweep.spelled}", counts)
    return SweepResult(sweep, results.path, page, rows, fs, ran, skipped, counts)


def _metrics_of(row: dict[str, str]) -> dict[str, Any]:
    keep = ("status", "accuracy", "source_accuracy", "agreement", "cosine", "size_bytes", "litert_ms", "dsp", "luts",
            "bram18", "latency_cycles", "latency_ns", "synth_dsp", "synth_luts", "synth_latency_cycles", "error",
            "host")
    return {k: row.get(k) or None for k in keep}


def _cell(v: Any) -> Any:
    return v if isinstance(v, (str, int, float)) and not isinstance(v, bool) else json.dumps(v)
