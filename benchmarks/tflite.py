"""TFLite variants: tapeout against TensorFlow's own converter on the same Keras model, same run.

    python benchmarks/tflite.py [--skip-mobilenet] [--latency-runs 50]

Models: the digits CNN (samples/digits_cnn; calibration split, 360-image eval split with
labels) and keras.applications.MobileNetV2 (weights=None, 160x160, seed 0; synthetic
standard-normal inputs, no labels). For every variant, one table row per compiler:

- size of the .tflite,
- accuracy on the eval labels (digits) or cosine / top-1 agreement with the Keras model
  (MobileNetV2, 32 synthetic inputs),
- batch-1 latency with one thread in LiteRT (median of --latency-runs invocations),
- conversion time: tapeout's per-variant emit seconds from its report (the first variant
  pays for the Keras build and trace), TensorFlow's `TFLiteConverter.from_keras_model(...)
  .convert()` for the direct rows.

Direct conversions use the settings TensorFlow documents for each variant: fp16
(`Optimize.DEFAULT`, `supported_types=[float16]`), dynamic (`Optimize.DEFAULT`), int8
(`Optimize.DEFAULT`, representative dataset = the same calibration data,
`TFLITE_BUILTINS_INT8`, float I/O as tapeout's default), int16x8 (the 16x8 op set).
MobileNetV2's int8 is compiled with --fallback (the accuracy-control loop; it keeps layers
float only when cosine/agreement fail) and the table names what it kept float.
Then the ratios the acceptance asks for. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from litert_timing import latency_ms  # benchmarks/ (the script's folder is on sys.path)
from tapeout.compiler.quiet import captured_output, quiet_environment

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "digits_cnn"
DIGITS_VARIANTS = ("fp32", "fp16", "dynamic", "int8", "int16x8")
MOBILENET_VARIANTS = ("fp32", "int8", "dynamic")


def direct_convert(model: Any, variant: str, calibration: np.ndarray) -> tuple[bytes, float]:
    """TensorFlow's own converter on the Keras model: (bytes, seconds)."""
    import tensorflow as tf

    t0 = time.perf_counter()
    with captured_output():
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if variant != "fp32":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "fp16":
            conv.target_spec.supported_types = [tf.float16]
        if variant in ("int8", "int16x8"):
            conv.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
            conv.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if variant == "int8"
                else tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        data = bytes(conv.convert())
    return data, time.perf_counter() - t0


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    from tapeout.runtime.runners.litert import LiteRTRunner

    with LiteRTRunner(path) as r:
        name = r.input_specs()[0].name
        return next(iter(r.infer({name: x}).values()))


def quality(path: Path, x: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> dict[str, float]:
    y = outputs(path, x)
    a, b = y.ravel().astype(np.float64), reference.ravel().astype(np.float64)
    q = {"cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0)),
         "agreement": float(np.mean(y.argmax(1) == reference.argmax(1)))}
    if labels is not None:
        q["accuracy"] = float(np.mean(y.argmax(1) == labels))
    return q


def bench(name: str, model_path: Path, variants: tuple[str, ...], calibration: str, cal_x: np.ndarray,
          x: np.ndarray, labels: np.ndarray | None, runs: int, fallback: bool) -> tuple[list[dict], dict]:
    import keras

    from tapeout.compiler.api import compile_model

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        report = compile_model(model_path, [f"tflite:{v}" for v in variants], out, calibration=calibration,
                               fallback=fallback, verify_artifacts=False)
        command_s = time.perf_counter() - t0
        model = keras.saving.load_model(model_path)
        reference = model.predict(x, verbose=0)
        direct_total = 0.0
        for t in report.targets:
            path = out / t.folder / "model.tflite"
            q = t.extra.get("quantization") or {}
            kept = q.get("float_layers", [])
            note = ""
            if q.get("accuracy_control"):
                note = "--fallback: " + (f"kept float {', '.join(kept)}" if kept else "nothing kept float")
            rows.append({"model": name, "variant": t.variant, "by": "tapeout", "size": path.stat().st_size,
                         **quality(path, x, labels, reference), "latency_ms": latency_ms(path, runs, x),
                         "convert_s": t.seconds, "note": note})
            data, secs = direct_convert(model, t.variant, cal_x)
            direct_total += secs
            dpath = Path(tmp) / f"direct-{t.variant}.tflite"
            dpath.write_bytes(data)
            rows.append({"model": name, "variant": t.variant, "by": "TF direct", "size": len(data),
                         **quality(dpath, x, labels, reference), "latency_ms": latency_ms(dpath, runs, x),
                         "convert_s": secs, "note": ""})
    totals = {"command_s": command_s, "emit_s": sum(t.seconds for t in report.targets), "direct_s": direct_total}
    return rows, totals


def print_table(rows: list[dict]) -> None:
    head = "| model | variant | compiler | size (B) | accuracy | top-1 agreement | cosine | batch-1 ms (1 thread) " \
           "| convert s | note |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        acc = f"{r['accuracy']:.4f}" if "accuracy" in r else "-"
        print(f"| {r['model']} | {r['variant']} | {r['by']} | {r['size']:,} | {acc} | {r['agreement']:.4f} | "
              f"{r['cosine']:.6f} | {r['latency_ms']:.3f} | {r['convert_s']:.2f} | {r['note']} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-mobilenet", action="store_true")
    ap.add_argument("--latency-runs", type=int, default=50)
    args = ap.parse_args()
    quiet_environment()
    import keras

    get: Callable[[list[dict], str, str], dict] = lambda rows, v, by: next(
        r for r in rows if r["variant"] == v and r["by"] == by)
    ev = np.load(SAMPLE / "eval.npz")
    cal = np.load(SAMPLE / "calibration.npz")["x"]
    rows, _ = bench("digits CNN", SAMPLE / "model.keras", DIGITS_VARIANTS, str(SAMPLE / "calibration.npz"), cal,
                    ev["x"], ev["y"], args.latency_runs, fallback=False)
    all_rows = list(rows)
    ours, theirs = get(rows, "int8", "tapeout"), get(rows, "int8", "TF direct")
    ratios = [
        f"digits int8 size / TF full-integer size: {ours['size'] / theirs['size']:.3f} (acceptance <= 1.0)",
        f"digits int8 batch-1 latency tapeout / TF direct: {ours['latency_ms'] / theirs['latency_ms']:.3f} "
        f"(acceptance <= 1.0, 'no slower')",
        f"digits int8 accuracy drop vs fp32 source: "
        f"{100 * (get(rows, 'fp32', 'tapeout')['accuracy'] - ours['accuracy']):.2f} pt (acceptance <= 0.5)",
    ]
    if not args.skip_mobilenet:
        keras.utils.set_random_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "mobilenet_v2_160.keras"
            keras.applications.MobileNetV2(input_shape=(160, 160, 3), weights=None).save(path)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((32, 160, 160, 3)).astype(np.float32)
            # --calibration synthetic: 32 standard-normal samples (seed 0), the same as x.
            rows, mt = bench("MobileNetV2 160", path, MOBILENET_VARIANTS, "synthetic", x, x, None,
                             args.latency_runs, fallback=True)
        all_rows += rows
        i8, f32 = get(rows, "int8", "tapeout"), get(rows, "fp32", "tapeout")
        ratios += [
            f"MobileNetV2 int8 size / fp32 TFLite size: {i8['size'] / f32['size']:.3f} (acceptance <= 0.31)",
            f"MobileNetV2 int8 / fp32 batch-1 latency: {i8['latency_ms'] / f32['latency_ms']:.3f} (acceptance < 1)",
            f"MobileNetV2 int8 cosine to Keras on synthetic inputs: {i8['cosine']:.6f} (acceptance >= 0.99); "
            f"top-1 agreement {i8['agreement']:.4f}; {i8['note'] or 'no --fallback'}",
            f"MobileNetV2 fp32+int8+dynamic: one tapeout command {mt['command_s']:.1f} s (emitters {mt['emit_s']:.1f} s) "
            f"vs three direct converter runs {mt['direct_s']:.1f} s: ratio {mt['command_s'] / mt['direct_s']:.2f} "
            f"(acceptance < 1)",
        ]
    print_table(all_rows)
    print()
    for r in ratios:
        print(f"- {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
