"""One sweep point, run in a worker: a full compile with verification, reduced to one results row.

``execute`` is what every executor runs (a pool process or a Ray task). It never raises for the
point's own failure: a build error becomes a row with status "error" and the one-line message.
``compile_point`` is the default point function; tests pass their own (same signature).
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from tapeout.compiler.errors import TapeoutError
from tapeout.compiler.stages.spec import BuildSpec

PointFn = Callable[[BuildSpec, Any], dict[str, Any]]
LATENCY_RUNS = 50  # timed LiteRT invocations per point (after warm-up); the median is reported


def execute(spec: BuildSpec, outdir: str | Path, use_cache: bool, point_fn: PointFn | None = None) -> dict[str, Any]:
    """Run one point into ``outdir``: its metrics (results.METRICS keys), build seconds, host, and
    ``report`` (report.json's text, for executors whose workers share no file system)."""
    t0 = time.perf_counter()
    spec = replace(spec, outdir=Path(outdir))
    cache = None
    if use_cache:
        from tapeout.compiler.cache import Cache

        cache = Cache()
    try:
        row = dict((point_fn or compile_point)(spec, cache))
        row.setdefault("status", "ok")
    except TapeoutError as e:
        row = {"status": "error", "error": _one_line(str(e))}
    except Exception as e:  # noqa: BLE001 - a bug in one point is that point's row, not the sweep's end
        row = {"status": "error", "error": _one_line(f"internal error: {type(e).__name__}: {e}")}
    row["build_s"] = round(time.perf_counter() - t0, 3)
    row["host"] = socket.gethostname()
    report = Path(outdir) / "report.json"
    row["report"] = report.read_text() if report.is_file() else None
    return row


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def compile_point(spec: BuildSpec, cache: Any) -> dict[str, Any]:
    """Compile and verify ``spec`` (one target) through the build cache; its row's metrics."""
    from tapeout.compiler.quiet import quiet_environment
    from tapeout.compiler.stages.compile import compile_spec

    quiet_environment()
    report = compile_spec(spec, cache=cache)
    return metrics(report, spec.outdir)


def metrics(report: Any, outdir: Path) -> dict[str, Any]:
    """The row of a CompileReport with one target."""
    (t,) = report.targets
    v = t.verification
    row: dict[str, Any] = {"status": "ok" if report.passed else "failed", "size_bytes": t.size_bytes,
                           "from": t.source}
    if v is not None:
        row.update(agreement=v.top1_agreement, cosine=v.cosine)
        if v.accuracy:
            row.update(accuracy=v.accuracy.get("artifact"), source_accuracy=v.accuracy.get("source"))
        if v.error:
            row["error"] = _one_line(v.error)
    h = t.extra.get("hls4ml")
    if h:
        row.update(hls4ml_row(h))
    if t.target == "tflite":
        from tapeout.compiler.stages.verify import primary_artifact

        artifact = primary_artifact(Path(outdir) / t.folder)
        if artifact.suffix == ".tflite":
            row["litert_ms"] = litert_latency_ms(artifact)
    return row


def hls4ml_row(h: dict[str, Any]) -> dict[str, Any]:
    """Estimated DSPs, LUTs, BRAMs and latency from the hls4ml report entry (and synthesis, when it ran)."""
    from tapeout.compiler.fixedpoint.cost import lut_multiplier_luts

    totals = (h.get("estimates") or {}).get("totals") or {}
    # LUTs the estimate spends: multipliers built in fabric (a x w bits, two partial-product bits per
    # LUT6, compiler.fixedpoint.cost) plus distributed arithmetic's adder graphs.
    luts = sum(e["lut_multipliers"] * lut_multiplier_luts(*e["operand_bits"])
               for lay in h.get("layers", []) if (e := lay.get("estimate")) and e.get("lut_multipliers")
               and len(e.get("operand_bits") or []) == 2) + int(totals.get("da_luts") or 0)
    row = {"dsp": totals.get("dsp"), "luts": luts, "bram18": totals.get("bram18"),
           "latency_cycles": totals.get("latency_cycles"), "latency_ns": totals.get("latency_ns")}
    syn = h.get("synthesis") or {}
    res = syn.get("resources") or {}
    if res:
        row.update(synth_dsp=res.get("DSP"), synth_luts=res.get("LUT"),
                   synth_latency_cycles=(syn.get("latency_cycles") or {}).get("worst"))
    return row


def litert_latency_ms(path: Path, runs: int = LATENCY_RUNS) -> float | None:
    """Median wall time of one batch-1 inference in LiteRT on one thread, in ms (zeros as input:
    the kernels' time does not depend on the values)."""
    import numpy as np

    from tapeout.runtime.runners.litert import LiteRTRunner, median_latency_ms

    try:
        with LiteRTRunner(path, num_threads=1) as r:
            feeds = {s.name: np.zeros([1 if not isinstance(d, int) else d for d in s.shape], np.float32)
                     for s in r.input_specs()}
            ms = median_latency_ms(r, feeds, runs, warmup=5)
    except Exception:  # noqa: BLE001 - a latency we cannot measure is an empty cell, not a failed point
        return None
    return round(ms, 4)

