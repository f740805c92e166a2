"""hls4ml target: automatic precision against uniform ap_fixed types on the bundled samples.

For each sample and each precision (auto, ap_fixed<16,6>, <12,6>, <10,4>): top-1 agreement of
the C simulation with the source model on the held-out eval data, mean weight bits, estimated
DSPs / LUT multipliers and latency, and the wall time of convert + search + C-sim compile (the
target's emit: IR -> Keras -> hls4ml project, the precision search, g++ of the bridge library
and one confirming C-sim run on the calibration data). Run: python benchmarks/hls4ml.py [--md]
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
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    main()
