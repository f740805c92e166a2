"""`tapeout build`: a no-op rebuild against the first build, and -j 2 against -j 1, in one run.

    python benchmarks/build_cache.py [--size 160] [--skip-parallel] [--skip-no-op]

1. The digits CNN project (onnx, tflite:int8, hls4ml) built twice with an empty cache: the wall
   time of each `tapeout build` process, and whether the second run's outputs are byte-identical.
2. keras.applications.MobileNetV2 (weights=None) at SIZE, three targets (onnx, tflite:int8,
   tensorrt:fp16), `--no-cache`, with -j 1 and then -j 2: the wall time of each and the ratio.
Every figure is a separate `tapeout` process, as a build tool runs it. Quote ratios: this
machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAPEOUT = [sys.executable, "-m", "tapeout.compiler"]


def _run(args: list[str], cwd: Path, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    t0 = time.perf_counter()
    code = subprocess.run(TAPEOUT + args, cwd=cwd, env=env, stdout=subprocess.DEVNULL).returncode
    if code not in ok:
        raise SystemExit(f"tapeout {' '.join(args[:2])} exited {code}")
    return time.perf_counter() - t0


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_op(work: Path, env: dict[str, str]) -> None:
    sample = ROOT / "samples" / "digits_cnn"
    (work / "tapeout.toml").write_text(
        f'[models.digits]\npath = "{sample / "model.keras"}"\ncalibration = "{sample / "calibration.npz"}"\n'
        'targets = ["onnx", "tflite:int8", "hls4ml"]\n')
    first = _run(["build", "--no-timings", "--quiet"], work, env)
    before = _digest(work / "build")
    second = _run(["build", "--no-timings", "--quiet"], work, env)
    same = _digest(work / "build") == before
    print("| digits CNN (onnx, tflite:int8, hls4ml) | seconds |")
    print("|---|---|")
    print(f"| first build (empty cache) | {first:.2f} |")
    print(f"| second build (no change) | {second:.2f} |")
    print(f"| ratio second/first | {second / first:.4f} |")
    print(f"| outputs byte-identical | {'yes' if same else 'NO'} |")


def parallel(work: Path, env: dict[str, str], size: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None)
    path = work / "mobilenetv2.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    np.savez(work / "cal.npz", x=rng.random((32, size, size, 3), dtype=np.float32))
    base = ["compile", str(path), "-t", "onnx", "-t", "tflite:int8", "-t", "tensorrt:fp16", "--calibration",
            str(work / "cal.npz"), "--no-cache", "--no-timings", "--quiet"]
    # Random weights: the int8 artifact may fail its cosine check (exit 1); the time is what counts.
    one = _run(base + ["-o", str(work / "j1"), "-j", "1"], work, env, ok=(0, 1))
    two = _run(base + ["-o", str(work / "j2"), "-j", "2"], work, env, ok=(0, 1))
    same = _digest(work / "j1") == _digest(work / "j2")
    print()
    print(f"| MobileNetV2 {size} (onnx, tflite:int8, tensorrt:fp16), no cache | seconds |")
    print("|---|---|")
    print(f"| -j 1 | {one:.1f} |")
    print(f"| -j 2 | {two:.1f} |")
    print(f"| ratio -j2/-j1 | {two / one:.3f} |")
    print(f"| outputs byte-identical | {'yes' if same else 'NO'} |")
    print(f"cores: {os.cpu_count()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--skip-parallel", action="store_true")
    ap.add_argument("--skip-no-op", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "TAPEOUT_CACHE_DIR": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_ENABLE_ONEDNN_OPTS": "0"}
        env.pop("TAPEOUT_NO_CACHE", None)
        if not args.skip_no_op:
            no_op(work, env)
        if not args.skip_parallel:
            parallel(work, env, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
