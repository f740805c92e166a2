"""TensorRT engines against onnxruntime's CUDA provider on the same ONNX, same run (GPU machines only).

    python benchmarks/tensorrt.py [--models resnet50,mobilenetv2] [--seconds 3] [--out DIR]

Models: keras.applications ResNet50 and MobileNetV2 (weights=None, 224x224, seed 0),
calibrated on 32 synthetic standard-normal samples for int8. For each model and variant
(fp32, fp16, int8) tapeout compiles ``tensorrt:<variant>`` with --require-engine and a
profile of batch 1..32 (opt 32), then:

- build time: the cold build (empty timing cache) and the rebuild with the warm cache,
  both timed around ``engine.build`` alone (TensorRT's builder, not import or ONNX export);
- throughput (samples/s) at batch 1 and 32, inputs and outputs kept on the GPU, for the
  engine (TensorRTRunner.throughput) and for onnxruntime's CUDA provider on the variant's
  model.onnx (I/O bound to CUDA memory; the int8 ONNX runs as its Q/DQ graph there);
- fp16 accuracy: max abs error against Keras on 8 inputs, the acceptance's 1e-3.

Then the acceptance ratios: fp16/fp32 throughput at batch 32 (>= 2) and warm/cold build
time (<= 1/3). Without tensorrt or a CUDA GPU it says so and exits 2: nothing is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder is sys.path[0] and "import tensorrt" would find this file:
# keep the folder off the path so the real package (or its absence) is what is found.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

from tapeout.compiler.quiet import captured_output, quiet_environment  # noqa: E402

VARIANTS = ("fp32", "fp16", "int8")
BATCHES = (1, 32)


def _keras_model(name: str, folder: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    ctor = {"resnet50": keras.applications.ResNet50, "mobilenetv2": keras.applications.MobileNetV2}[name]
    model = ctor(weights=None, input_shape=(224, 224, 3))
    path = folder / f"{name}.keras"
    model.save(path)
    return path


def _ort_cuda_throughput(onnx_path: Path, batch: int, seconds: float) -> float | None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    sess = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [batch, *[int(d) for d in inp.shape[1:]]]
    x = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32),
                                         "cuda", 0)
    binding = sess.io_binding()
    binding.bind_ortvalue_input(inp.name, x)
    for o in sess.get_outputs():
        binding.bind_output(o.name, "cuda", 0)
    for _ in range(10):
        sess.run_with_iobinding(binding)
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run_with_iobinding(binding)  # synchronous: returns when the GPU is done
        runs += 1
    return runs * batch / (time.perf_counter() - t0)


def _bench(name: str, folder: Path, seconds: float) -> list[dict[str, Any]]:
    from tapeout.compiler.api import compile_model
    from tapeout.runtime.runners.tensorrt import TensorRTRunner
    from tapeout.targets.tensorrt import engine

    src = _keras_model(name, folder)
    rows = []
    for variant in VARIANTS:
        out = folder / f"{name}-out"
        opts = {"tensorrt": {"min_batch": 1, "opt_batch": 32, "max_batch": 32, "require_engine": True,
                             "cache_dir": str(folder / f"{name}-{variant}-cache")}}
        with captured_output():
            report = compile_model(src, [f"tensorrt:{variant}"], out, calibration="synthetic", target_options=opts)
        vdir = out / f"tensorrt-{variant}"
        plan = json.loads((vdir / "plan.json").read_text())
        cache = Path(plan["builder"]["timing_cache"])
        cache.unlink()  # cold: an empty timing cache
        cold = engine.build(vdir / "model.onnx", plan, vdir / "cold.plan", cache)["seconds"]
        warm = engine.build(vdir / "model.onnx", plan, vdir / "warm.plan", cache)["seconds"]
        v = report.targets[0].verification
        row = {"model": name, "variant": variant, "build_cold_s": cold, "build_warm_s": warm,
               "verified": v.passed if v else None, "max_abs_err": v.max_abs_err if v else None,
               "runner": v.runner if v else None, "gpu": plan["build"]["gpu"],
               "tensorrt": plan["build"]["tensorrt_version"]}
        with TensorRTRunner(vdir / "model.plan") as r:
            for b in BATCHES:
                row[f"trt_b{b}"] = r.throughput(b, seconds)
        for b in BATCHES:
            row[f"ort_cuda_b{b}"] = _ort_cuda_throughput(vdir / "model.onnx", b, seconds)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:,.1f}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,mobilenetv2")
    p.add_argument("--seconds", type=float, default=3.0, help="timing window per throughput figure")
    p.add_argument("--out", type=Path, help="keep the builds here (default: a temporary folder)")
    args = p.parse_args(argv)
    quiet_environment()
    from tapeout.runtime.runners.tensorrt import tensorrt_status

    reason = tensorrt_status()
    if reason is not None:
        print(f"benchmarks/tensorrt.py needs TensorRT and a CUDA GPU; nothing measured here: {reason}",
              file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            rows += _bench(name.strip(), folder, args.seconds)
    cols = ["model", "variant", "build_cold_s", "build_warm_s", "trt_b1", "trt_b32", "ort_cuda_b1", "ort_cuda_b32",
            "verified", "max_abs_err"]
    print(f"\nGPU: {rows[0]['gpu']}, TensorRT {rows[0]['tensorrt']}; throughput in samples/s")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r[c]) if c != "max_abs_err" or r[c] is None else f"{r[c]:.2e}"
                                for c in cols) + " |")
    print()
    for name in dict.fromkeys(r["model"] for r in rows):
        by = {r["variant"]: r for r in rows if r["model"] == name}
        speed = by["fp16"]["trt_b32"] / by["fp32"]["trt_b32"]
        cache = max(r["build_warm_s"] / r["build_cold_s"] for r in by.values())
        print(f"{name}: fp16/fp32 throughput at batch 32 = {speed:.2f} (acceptance >= 2); worst warm/cold build "
              f"time = {cache:.2f} (acceptance <= 0.33); fp16 max abs err {by['fp16']['max_abs_err']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
