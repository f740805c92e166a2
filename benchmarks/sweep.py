"""`tapeout sweep`: the jet MLP hls4ml grid serial against -j 2, and Ray's per-task overhead, in one run.

    python benchmarks/sweep.py [--small] [--skip-grid] [--ray-overhead N]

1. The grid of issue 19: 3 precisions x 3 reuse factors x 2 strategies x 2 prune levels (36
   points, each a full hls4ml compile with C-simulation verification), run by `tapeout sweep
   --no-cache` with -j 1 and then -j 2, each a separate process with its own output folder and
   its own empty hls4ml compile caches (precompiled header, objects): the wall time of each and
   the ratio. --small: 2 x 2 x 2 x 1 (8 points).
2. --ray-overhead N: a local Ray cluster started here (a head and one worker node, one CPU each,
   80 MB object stores, as the tests start it; stopped at the end), N points whose point function
   returns at once, through the same executor and results file as real points: wall time per
   point, against the same N points on the local pool with -j 2. What is left is the sweep's
   own cost per point: task submission, the object store, result rows.
Quote ratios: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JET = ROOT / "samples" / "jet_mlp"
BIN = Path(sys.executable).parent


def sweep_file(folder: Path, small: bool) -> Path:
    precisions = '["auto", "ap_fixed<16,6>"]' if small else '["auto", "ap_fixed<16,6>", "ap_fixed<12,4>"]'
    reuse = "[1, 2]" if small else "[1, 2, 4]"
    prune = "[0]" if small else "[0, 0.5]"
    p = folder / "jet.toml"
    p.write_text(f'[base]\npath = "{JET / "model.keras"}"\ntargets = ["hls4ml"]\n'
                 f'calibration = "{JET / "calibration.npz"}"\neval = "{JET / "eval.npz"}"\n\n[axes]\n'
                 f'"hls4ml.precision" = {precisions}\n"hls4ml.reuse_factor" = {reuse}\n'
                 f'"hls4ml.strategy" = ["latency", "resource"]\nprune = {prune}\n')
    return p


def grid(work: Path, small: bool) -> None:
    path = sweep_file(work, small)
    times = {}
    for jobs in (1, 2):
        out = work / f"j{jobs}"
        t0 = time.perf_counter()
        # Each run starts with an empty hls4ml PCH and object cache of its own (the build cache is
        # off): neither inherits the other's compiles.
        env = {**os.environ, "TAPEOUT_HLS4ML_PCH_DIR": str(work / f"pch-j{jobs}")}
        r = subprocess.run([str(BIN / "tapeout"), "sweep", str(path), "-o", str(out), "-j", str(jobs), "--no-cache",
                            "--quiet"], capture_output=True, text=True, env=env)
        times[jobs] = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"tapeout sweep -j {jobs} exited {r.returncode}: {r.stderr.strip()}")
        with open(out / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        statuses = sorted({r["status"] for r in rows})
        print(f"-j {jobs}: {len(rows)} points in {times[jobs]:.1f} s (statuses: {', '.join(statuses)})", flush=True)
    print(f"| jet MLP hls4ml grid, {len(rows)} points | -j 1 | -j 2 | ratio |")
    print("|---|---|---|---|")
    print(f"| tapeout sweep --no-cache | {times[1]:.1f} s | {times[2]:.1f} s | {times[2] / times[1]:.2f}x |")


DRIVER = textwrap.dedent('''
    import sys, time
    from tapeout.compiler.sweep.executors import LocalPool, RayExecutor
    from tapeout.compiler.sweep.run import cache_keys, run_sweep
    from tapeout.compiler.sweep.spec import load_sweep

    def nothing(spec, cache):
        return {"status": "ok"}

    sweep = load_sweep(sys.argv[1], output=sys.argv[2])
    ex = RayExecutor(sys.argv[3]) if sys.argv[3] != "local" else LocalPool(2)
    if sys.argv[3] != "local":
        ex.connect()
        warm = load_sweep(sys.argv[1], output=sys.argv[2] + "-warm")
        run_sweep(warm, ex, use_cache=False, point_fn=nothing)  # workers started and tapeout imported
        ex = RayExecutor(sys.argv[3])
    t0 = time.perf_counter()
    cache_keys(sweep)  # the driver's own check of each point, part of run_sweep
    checks = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = run_sweep(sweep, ex, use_cache=False, point_fn=nothing)
    print(f"{time.perf_counter() - t0:.3f} {len(result.rows)} {checks:.3f}")
''')


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_overhead(work: Path, n: int) -> None:
    path = work / "noop.toml"
    path.write_text(f'[base]\npath = "{JET / "model.keras"}"\ntargets = ["onnx"]\n[axes]\n'
                    f'"onnx.opset" = {list(range(17, 23))}\nprune = {[round(i / n, 6) for i in range((n + 5) // 6)]}\n')
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="tsb", dir="/tmp")
    port = _port()
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", "80000000",
              "--disable-usage-stats"]
    procs = [subprocess.Popen([str(BIN / "ray"), "start", "--head", "--port", str(port), "--include-dashboard=false",
                               "--ray-client-server-port", str(_port()), "--temp-dir", temp, *common], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the Ray head never listened")
                time.sleep(0.2)
        procs.append(subprocess.Popen([str(BIN / "ray"), "start", "--address", f"127.0.0.1:{port}", *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        time.sleep(5)  # the worker node joins
        results = {}
        for name, where in (("ray", f"127.0.0.1:{port}"), ("local -j 2", "local")):
            r = subprocess.run([sys.executable, "-c", DRIVER, str(path), str(work / name.replace(" ", "")), where],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"{name}: {r.stderr.strip()[-2000:]}")
            seconds, count, checks = r.stdout.split()[-3:]
            results[name] = (float(seconds), int(count), float(checks))
        print("| no-op points, 2 CPUs | points | seconds | ms per point | of which the driver's check |")
        print("|---|---|---|---|---|")
        for name, (seconds, count, checks) in results.items():
            print(f"| {name} | {count} | {seconds:.2f} | {seconds / count * 1000:.1f} | {checks / count * 1000:.1f} |")
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        time.sleep(3)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        subprocess.run(["rm", "-rf", temp])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="an 8-point grid instead of 36")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--ray-overhead", type=int, metavar="N", help="also time N no-op points on a local Ray cluster")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_grid:
            grid(Path(tmp), args.small)
        if args.ray_overhead:
            ray_overhead(Path(tmp), args.ray_overhead)


if __name__ == "__main__":
    main()
