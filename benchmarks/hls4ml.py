"""hls4ml target: automatic precision against uniform ap_fixed types on the bundled samples.

For each sample and each precision (auto, ap_fixed<16,6>, <12,6>, <10,4>): top-1 agreement of
the C simulation with the source model on the held-out eval data, mean weight bits, estimated
DSPs / LUT multipliers and latency, and the wall time of convert + search + C-sim compile (the
target's emit: IR -> Keras -> hls4ml project, the precision search, g++ of the bridge library
and one confirming C-sim run on the calibration data). Run: python benchmarks/hls4ml.py [--md]

``--build-speed`` (issue 18, build speed): the digits CNN's whole ``tapeout compile -t hls4ml`` (CLI,
--no-cache), once as before (TAPEOUT_HLS4ML_BUILD=legacy: hls4ml's build script as written, -O3,
one translation unit after the other; TAPEOUT_SEARCH_CACHE=off: every search evaluation runs every
layer) and once as tapeout does it now (-O1, both at once; the search's layer cache), then each
project's build_lib.sh alone, rerun in the same folders: wall seconds and the ratio, one run.
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
    args = p.parse_args(argv)
    if args.build_speed:
        build_speed(args.objective)
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


def build_speed(objective: str | None) -> None:
    import json
    import os
    import subprocess

    from tapeout.compiler.fixedpoint.search import CACHE_ENV
    from tapeout.targets.hls4ml.project import LEGACY_BUILD_ENV

    d = ROOT / "samples" / "digits_cnn"
    exe = Path(sys.executable).parent / "tapeout"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("legacy", "tapeout"):
            out = Path(tmp) / mode
            cmd = [str(exe), "compile", str(d / "model.keras"), "-t", "hls4ml", "--calibration",
                   str(d / "calibration.npz"), "--eval", str(d / "eval.npz"), "-o", str(out), "--no-cache", "--json"]
            if objective:
                cmd += ["--target-option", f"hls4ml.precision_objective={objective}"]
            env = dict(os.environ, **{LEGACY_BUILD_ENV: "legacy" if mode == "legacy" else "",
                                      CACHE_ENV: "off" if mode == "legacy" else ""})
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            total = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"{mode}: compile failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            h = json.loads((out / "report.json").read_text())["targets"][0]["hls4ml"]
            project = out / "hls4ml-vitis"
            (project / "firmware" / "myproject-tapeout.so").unlink()
            t0 = time.perf_counter()
            subprocess.run(["bash", "build_lib.sh"], cwd=project, capture_output=True, check=True)
            build = time.perf_counter() - t0
            rows.append({"mode": mode, "compile_s": total, "build_s": build,
                         "bit_exact": f"{h['csim']['bit_exact_layers']}/{h['csim']['checked_layers']}",
                         "evaluations": h["precision"].get("evaluations")})
            print(f"{mode}: compile {total:.1f} s, build_lib.sh {build:.1f} s", file=sys.stderr)
    print("| build | digits CNN compile (s) | build_lib.sh alone (s) | C-sim bit-exact layers | search evaluations |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['compile_s']:.1f} | {r['build_s']:.1f} | {r['bit_exact']} | {r['evaluations']} |")
    a, b = rows
    print(f"\ncompile {a['compile_s'] / b['compile_s']:.2f}x faster, build_lib.sh {a['build_s'] / b['build_s']:.2f}x faster")


if __name__ == "__main__":
    main()
