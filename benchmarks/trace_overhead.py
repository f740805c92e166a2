"""What `--trace` adds to verification: the digits CNN's onnx:int8, tflite:int8 and hls4ml artifacts.

    python benchmarks/trace_overhead.py [--repeat 5] [--build OUTDIR]

Compiles samples/digits_cnn once (no verification), then times `tapeout verify SOURCE ARTIFACT
--data eval.npz` in this process, with and without --trace, for each artifact: the best of
--repeat interleaved runs each (the machine's other load disturbs the rest). "verify" covers the
source run, the artifact run and the comparison; --trace adds the source's import, the reference
interpreter with every intermediate kept and a second artifact run with its intermediates exposed,
on the first 128 samples (--samples N to change; docs/report.md "trace"). Issue 15 asks for a ratio
of at most 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where hls4ml.py and tflite.py (the other
# benchmarks) would shadow the packages of those names.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from tapeout.compiler.quiet import captured_output, quiet_environment  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "digits_cnn"
ARTIFACTS = {"onnx:int8": "onnx-int8/model.onnx", "tflite:int8": "tflite-int8/model.tflite",
             "hls4ml": "hls4ml-vitis"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--build", type=Path,
                    help="an OUTDIR already compiled with these three targets (skips the compile)")
    ap.add_argument("--samples", type=int, help="trace this many samples at most instead of TRACE_SAMPLES (128)")
    args = ap.parse_args()
    quiet_environment()
    with captured_output():
        from tapeout.compiler import trace as compiler_trace
        from tapeout.compiler.api import compile_model, verify_artifact
    if args.samples:
        compiler_trace.TRACE_SAMPLES = args.samples

    out = args.build or Path(tempfile.mkdtemp(prefix="tapeout-bench-trace-")) / "out"
    model, data = SAMPLE / "model.keras", SAMPLE / "eval.npz"
    if args.build is None:
        with captured_output():
            compile_model(model, list(ARTIFACTS), out, calibration=SAMPLE / "calibration.npz", eval_data=data,
                          verify_artifacts=False)

    def once(artifact: Path, trace: bool) -> float:
        t0 = time.perf_counter()
        with captured_output():
            verify_artifact(model, artifact, data=data, trace=trace)
        return time.perf_counter() - t0

    def timed(artifact: Path) -> tuple[float, float]:
        # Interleaved, so that load from other processes hits both alike; the minimum is the run
        # least disturbed by it (as timeit reports).
        runs = [(once(artifact, False), once(artifact, True)) for _ in range(args.repeat)]
        return min(r[0] for r in runs), min(r[1] for r in runs)

    for path in ARTIFACTS.values():  # first-call imports (TensorFlow, onnxruntime) out of the timings
        with captured_output():
            verify_artifact(model, out / path, data=data, trace=True)
    print(f"digits CNN, {data.name} (360 samples, {compiler_trace.TRACE_SAMPLES} traced at most): tapeout verify "
          f"with and without --trace, best of {args.repeat} interleaved run(s)")
    print(f"{'artifact':<13} {'verify s':>9} {'--trace s':>10} {'ratio':>6}")
    total = [0.0, 0.0]
    worst = 0.0
    for name, path in ARTIFACTS.items():
        plain, traced = timed(out / path)
        total[0] += plain
        total[1] += traced
        worst = max(worst, traced / plain)
        print(f"{name:<13} {plain:>9.3f} {traced:>10.3f} {traced / plain:>6.2f}")
    print(f"{'all three':<13} {total[0]:>9.3f} {total[1]:>10.3f} {total[1] / total[0]:>6.2f}")
    print(f"largest ratio {worst:.2f} (issue 15: at most 2)")
    return 0 if worst <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
