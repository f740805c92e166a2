"""hls4ml target: automatic precision against uniform ap_fixed types on the bundled samples.

For each sample and each precision (auto, ap_fixed<16,6>, <12,6>, <10,4>): top-1 agreement of
the C simulation with the source model on the held-out eval data, mean weight bits, estimated
DSPs / LUT multipliers and latency, and the wall time of convert + search + C-sim compile (the
target's emit: IR -> Keras -> hls4ml project, the precision search, g++ of the bridge library
and one confirming C-sim run on the calibration data). Run: python benchmarks/hls4ml.py [--md]

``--build-speed`` (issue 18, build speed): the digits CNN's whole ``tapeout compile -t hls4ml``
(``python -m tapeout.compiler``, --no-cache), three ways in one run: "before", the tree of
``--before REV`` (default: the commit before issue 18's work, when the compile took 129 s), unpacked
with ``git archive`` and imported through a ``tapeout`` shim on PYTHONPATH; "legacy", this tree with
hls4ml's build script as written (TAPEOUT_HLS4ML_BUILD=legacy: -O3, one translation unit after the
other) and every search evaluation running every layer (TAPEOUT_SEARCH_CACHE=off); "now", this tree
as it is. Wall seconds, search evaluations and the ratios to "now".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder leads sys.path and this file would shadow the hls4ml package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
SAMPLES = ("jet_mlp", "conv1d_signals", "conv2d_shapes")
PRECISIONS = ("auto", "ap_fixed<16,6>", "ap_fixed<12,6>", "ap_fixed<10,4>")


def run(sample: str, precision: str, work: Path) -> dict:
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.fixedpoint.precision import PrecisionSearch
    from tapeout.compiler.stages.data import BuildData
    from tapeout.targets.base import EmitContext
    from tapeout.compiler.passes.registry import default_pipeline
    from tapeout.runtime.runners.keras import KerasRunner
    from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner
    from tapeout.targets.hls4ml.target import Hls4mlTarget

    d = ROOT / "samples" / sample
    t0 = time.perf_counter()
    graph = default_pipeline().run(load_model(d / "model.keras")[0]).graph
    target = Hls4mlTarget("vitis", precision=precision)
    out = work / f"{sample}-{precision.replace('<', '').replace('>', '').replace(',', '_')}"
    out.mkdir()
    data = BuildData(d / "calibration.npz", d / "eval.npz")
    graph = PrecisionSearch(target.precision_request(), data).run(graph).graph
    emitted = target.emit(graph, EmitContext(out, data))
    seconds = time.perf_counter() - t0
    x = np.load(d / "eval.npz")["x"]
    with KerasRunner(d / "model.keras") as src:
        ref = next(iter(src.infer({graph.inputs[0]: x}).values()))
    with Hls4mlCsimRunner(out) as r:
        got = r.infer({graph.inputs[0]: x})[graph.outputs[0]]
    h = emitted.extra["hls4ml"]
    tot = h["estimates"]["totals"]
    return {"sample": sample, "precision": precision,
            "agreement": float(np.mean(np.argmax(ref, -1) == np.argmax(got, -1))),
            "mean_weight_bits": h["totals"]["mean_weight_bits"], "weight_bits": h["totals"]["weight_memory_bits"],
            "dsp": tot["dsp"], "lut_mults": tot["lut_multipliers"], "latency": tot["latency_cycles"],
            "ii": tot["interval_cycles"], "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", nargs="*", default=list(SAMPLES))
    p.add_argument("--build-speed", action="store_true", help="digits CNN compile: hls4ml's build vs tapeout's")
    p.add_argument("--objective", default=None, help="with --build-speed: hls4ml.precision_objective (resources, ebops, bits)")
    p.add_argument("--before", default=BEFORE_ISSUE_18, help="with --build-speed: the git revision timed as 'before'")
    args = p.parse_args(argv)
    if args.build_speed:
        build_speed(args.objective, args.before)
        return
    from tapeout.compiler.quiet import captured_output, quiet_environment

    quiet_environment()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sample in args.samples:
            for prec in PRECISIONS:
                with captured_output():
                    rows.append(run(sample, prec, Path(tmp)))
                r = rows[-1]
                print(f"{sample} {prec}: agreement {r['agreement']:.4f}, {r['seconds']:.1f} s", file=sys.stderr)
    print("| sample | precision | top-1 agreement (C sim vs source, eval) | mean weight bits | weight bits "
          "| est. DSPs | est. LUT multipliers | est. latency (cycles) | II | convert+search+C-sim compile (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sample']} | `{r['precision']}` | {r['agreement']:.4f} | {r['mean_weight_bits']:.2f} | "
              f"{r['weight_bits']:,} | {r['dsp']:,} | {r['lut_mults']:,} | {r['latency']} | {r['ii']} | "
              f"{r['seconds']:.1f} |")


BEFORE_ISSUE_18 = "6e91dfc621670da433cfb98a54afd330055a6c5b"


def _unpack(rev: str, dest: Path) -> Path:
    """``rev``'s source folders under ``dest``/src and a ``tapeout`` shim importing them; the shim dir."""
    import subprocess
    import tarfile

    src = dest / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "compiler", "targets", "runtime"],
                             capture_output=True, check=True).stdout
    import io
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    shim = dest / "shim" / "tapeout"
    shim.mkdir(parents=True)
    for d in ("compiler", "targets", "runtime"):
        (shim / d).symlink_to(src / d)
    return shim.parent


def build_speed(objective: str | None, before: str) -> None:
    import json
    import os
    import subprocess

    from tapeout.compiler.fixedpoint.search import CACHE_ENV
    from tapeout.targets.hls4ml.project import LEGACY_BUILD_ENV

    d = ROOT / "samples" / "digits_cnn"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shim = _unpack(before, Path(tmp) / "before")
        modes = {"before": {"PYTHONPATH": str(shim)},
                 "legacy": {LEGACY_BUILD_ENV: "legacy", CACHE_ENV: "off"},
                 "now": {}}
        for mode, extra in modes.items():
            out = Path(tmp) / mode
            cmd = [sys.executable, "-m", "tapeout.compiler", "compile", str(d / "model.keras"), "-t", "hls4ml",
                   "--calibration", str(d / "calibration.npz"), "--eval", str(d / "eval.npz"), "-o", str(out),
                   "--no-cache", "--json"]
            if objective:
                cmd += ["--target-option", f"hls4ml.precision_objective={objective}"]
            env = {k: v for k, v in os.environ.items() if k not in (LEGACY_BUILD_ENV, CACHE_ENV, "PYTHONPATH")}
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, cwd=tmp)
            total = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"{mode}: compile failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            h = json.loads((out / "report.json").read_text())["targets"][0]["hls4ml"]
            csim = h.get("csim", {})
            rows.append({"mode": mode, "compile_s": total, "evaluations": h["precision"].get("evaluations"),
                         "bit_exact": f"{csim.get('bit_exact_layers')}/{csim.get('checked_layers')}"})
            print(f"{mode}: compile {total:.1f} s", file=sys.stderr)
    now = rows[-1]["compile_s"]
    print("| tree | digits CNN compile (s) | x faster now | search evaluations | C-sim bit-exact layers |")
    print("|---|---|---|---|---|")
    for r in rows:
        label = f"before ({before[:7]})" if r["mode"] == "before" else r["mode"]
        print(f"| {label} | {r['compile_s']:.1f} | {r['compile_s'] / now:.2f} | {r['evaluations']} | {r['bit_exact']} |")

if __name__ == "__main__":
    main()
