"""Keras -> ONNX compile time: tapeout against Keras's own exporter, in the same run.

    python benchmarks/compile_speed.py [--size 160] [--repeat 3]

Model: keras.applications.MobileNetV2 (weights=None) at SIZE x SIZE. Prints one table:
- tapeout compile (import + passes + ONNX emit, no verification),
- Keras `model.export(format="onnx")` (traces the model in TensorFlow, converts with tf2onnx),
- the reference interpreter's batch-1 inference, and onnxruntime's on each exported file,
with the ratio against the Keras exporter. Times are medians of --repeat runs; quote ratios,
these machines are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tapeout.compiler.quiet import captured_output, quiet_environment


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    quiet_environment()

    with captured_output():
        import keras
        import onnxruntime as ort

        from tapeout.compiler.api import compile_model
        from tapeout.compiler.frontends.loader import load_model
        from tapeout.compiler.interpreter import run
        from tapeout.compiler.passes.registry import default_pipeline

        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV2(weights=None, input_shape=(args.size, args.size, 3))
    work = Path(tempfile.mkdtemp(prefix="tapeout-bench-"))
    src = work / "mobilenetv2.keras"
    model.save(src)
    x = np.random.default_rng(0).standard_normal((1, args.size, args.size, 3)).astype(np.float32)
    model(x)  # Keras's exporter refuses a model that has never been called

    def tapeout_compile() -> None:
        compile_model(src, ["onnx"], work / "tapeout", verify_artifacts=False)

    def keras_export() -> None:
        with captured_output():
            model.export(str(work / "keras.onnx"), format="onnx", verbose=False)

    rows = []
    with captured_output():
        keras_export()  # warm-up: the first export also imports tf2onnx
        tapeout_compile()
    t_keras = _median_time(keras_export, args.repeat)
    t_tapeout = _median_time(tapeout_compile, args.repeat)
    graph = default_pipeline().run(load_model(src)[0]).graph
    t_interp = _median_time(lambda: run(graph, {graph.inputs[0]: x}), args.repeat)

    def ort_time(path: Path) -> float:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        sess.run(None, feed)
        return _median_time(lambda: sess.run(None, feed), max(args.repeat, 10))

    t_ort_tapeout = ort_time(work / "tapeout" / "onnx-fp32" / "model.onnx")
    t_ort_keras = ort_time(work / "keras.onnx")
    rows.append(("keras model.export(format='onnx')", t_keras, 1.0))
    rows.append(("tapeout compile -t onnx (no verify)", t_tapeout, t_tapeout / t_keras))
    rows.append(("reference interpreter, batch 1", t_interp, t_interp / t_keras))
    rows.append(("onnxruntime batch 1, keras export", t_ort_keras, t_ort_keras / t_keras))
    rows.append(("onnxruntime batch 1, tapeout export", t_ort_tapeout, t_ort_tapeout / t_keras))

    print(f"MobileNetV2 {args.size}x{args.size}, weights=None; median of {args.repeat} runs")
    print(f"{'step':<40} {'seconds':>10} {'x keras export':>15}")
    for name, t, ratio in rows:
        print(f"{name:<40} {t:>10.3f} {ratio:>15.3f}")
    print(f"tapeout compile is {t_keras / t_tapeout:.1f}x faster than Keras's exporter; "
          f"onnxruntime latency ratio tapeout/keras artifact: {t_ort_tapeout / t_ort_keras:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
