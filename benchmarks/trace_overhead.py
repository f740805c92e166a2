"""What `--trace` adds to verification: the digits CNN's onnx:int8, tflite:int8 and hls4ml artifacts.

    python benchmarks/trace_overhead.py [--repeat 3]

Compiles samples/digits_cnn once (no verification), then times `tapeout verify SOURCE ARTIFACT
--data eval.npz` in this process, with and without --trace, for each artifact: the median of
--repeat runs each. "verify" covers the source run, the artifact run and the comparison; "trace"
adds the reference interpreter with every intermediate kept and a second artifact run with its
intermediates exposed (docs/report.md "trace"). Issue 15 asks for a ratio of at most 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tapeout.compiler.quiet import captured_output, quiet_environment

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "digits_cnn"
ARTIFACTS = {"onnx:int8": "onnx-int8/model.onnx", "tflite:int8": "tflite-int8/model.tflite",
             "hls4ml": "hls4ml-vitis"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    quiet_environment()
    with captured_output():
        from tapeout.compiler.api import compile_model, verify_artifact

    out = Path(tempfile.mkdtemp(prefix="tapeout-bench-trace-")) / "out"
    model, data = SAMPLE / "model.keras", SAMPLE / "eval.npz"
    with captured_output():
        compile_model(model, list(ARTIFACTS), out, calibration=SAMPLE / "calibration.npz", eval_data=data,
                      verify_artifacts=False)

    def timed(artifact: Path, trace: bool) -> float:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            with captured_output():
                verify_artifact(model, artifact, data=data, trace=trace)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    for path in ARTIFACTS.values():  # first-call imports (TensorFlow, onnxruntime) out of the timings
        with captured_output():
            verify_artifact(model, out / path, data=data, trace=True)
    print(f"digits CNN, {data.name} (360 samples): tapeout verify with and without --trace, "
          f"median of {args.repeat} run(s)")
    print(f"{'artifact':<13} {'verify s':>9} {'--trace s':>10} {'ratio':>6}")
    total = [0.0, 0.0]
    worst = 0.0
    for name, path in ARTIFACTS.items():
        plain, traced = timed(out / path, False), timed(out / path, True)
        total[0] += plain
        total[1] += traced
        worst = max(worst, traced / plain)
        print(f"{name:<13} {plain:>9.3f} {traced:>10.3f} {traced / plain:>6.2f}")
    print(f"{'all three':<13} {total[0]:>9.3f} {total[1]:>10.3f} {total[1] / total[0]:>6.2f}")
    print(f"largest ratio {worst:.2f} (issue 15: at most 2)")
    return 0 if worst <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
