"""`tapeout sweep --ray` on a real local Ray cluster this module starts (a head on 127.0.0.1 with
{"vivado": 1} and one worker node, one CPU each, small object stores) and always stops.

The drivers are subprocesses: Ray's threads never enter pytest's process.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
JET = ROOT / "samples" / "jet_mlp"
BIN = Path(sys.executable).parent
OBJECT_STORE = str(80 * 1000 * 1000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    """Each node runs `ray start --block` in its own process group: TERM it (ray shuts its processes
    down), then KILL whatever is left of the group."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 3
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


@pytest.fixture(scope="module")
def cluster():
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="tsr", dir="/tmp")  # short: Ray's socket paths live below it
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", OBJECT_STORE,
              "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--port", str(port), "--include-dashboard=false",
             "--ray-client-server-port", str(_free_port()), "--temp-dir", temp, "--resources", '{"vivado": 1}',
             *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        _wait_listening(port, procs[0])
        procs.append(subprocess.Popen([str(BIN / "ray"), "start", "--address", address, *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        yield address, {p.pid for p in procs}
    finally:
        _stop(procs)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the Ray head never listened")


def _sweep(tmp: Path, axes: str, options: str = "", targets: str = '["onnx"]') -> Path:
    p = tmp / "sweep.toml"
    p.write_text(f'[base]\npath = "{JET / "model.keras"}"\ntargets = {targets}\n'
                 f'calibration = "{JET / "calibration.npz"}"\neval = "{JET / "eval.npz"}"\n{options}\n[axes]\n{axes}')
    return p


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _point_workers(roots: set[int]) -> dict[int, str]:
    """pid -> title of this cluster's Ray worker processes running a sweep point (Ray titles a worker
    by its task's name, which the executor sets to tapeout-sweep-ID; they descend from ``roots``)."""
    parent, title = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                title[int(d)] = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid in roots:
                return True
            pid = parent.get(pid, 0)
        return False

    return {pid: t for pid, t in title.items() if t.startswith("ray::tapeout-sweep-") and ours(pid)}


def test_ray_sweep_survives_a_killed_worker_with_every_point_once(cluster, tmp_path):
    address, roots = cluster
    out = tmp_path / "out"
    env = {**os.environ, "TAPEOUT_NO_CACHE": "1"}
    proc = subprocess.Popen([str(BIN / "tapeout"), "sweep", str(_sweep(tmp_path, "prune = [0, 0.25, 0.5, 0.75]\n")),
                             "-o", str(out), "--ray", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    killed = None
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            workers = _point_workers(roots)
            if workers:
                killed = min(workers)
                os.kill(killed, signal.SIGKILL)  # the worker process running a point, mid-point
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed is not None, "no worker was ever seen running a point"
    assert proc.returncode == 0, stderr
    rows = _rows(out / "results.csv")
    assert sorted(r["prune"] for r in rows) == ["0", "0.25", "0.5", "0.75"]  # every point, no duplicate
    assert len({r["id"] for r in rows}) == 4 and all(r["status"] == "ok" for r in rows), rows
    assert all(0.5 < float(r["accuracy"]) < 0.9 for r in rows)
    # The reports come back from the nodes' temp folders (no shared file system assumed).
    assert all(json.loads((out / "points" / r["id"] / "report.json").read_text())["passed"] for r in rows)
    assert (out / "pareto.html").is_file() and "on Ray at" in stdout


DRIVER = textwrap.dedent('''
    import json, os, sys, time
    from tapeout.compiler.sweep.executors import RayExecutor
    from tapeout.compiler.sweep.run import run_sweep
    from tapeout.compiler.sweep.spec import load_sweep

    LOG = sys.argv[3]

    def fake_synthesis(spec, cache):
        # Stands in for the vendor tool: holds its license for a second, records when.
        if spec.target_options["hls4ml:vitis"]["reuse_factor"] == 8:
            os._exit(1)  # this point kills its worker on every attempt
        start = time.time()
        time.sleep(1.0)
        end = time.time()
        with open(LOG, "a") as f:
            f.write(json.dumps({"start": start, "end": end, "pid": os.getpid()}) + "\\n")
        return {"status": "ok", "dsp": 1, "latency_ns": 1.0}

    result = run_sweep(load_sweep(sys.argv[1], output=sys.argv[2]), RayExecutor(sys.argv[4], max_retries=1),
                       use_cache=False,
                       point_fn=fake_synthesis)
    print(json.dumps(result.counts))
''')


def test_synthesis_points_holding_the_vivado_resource_never_overlap_and_crashes_are_recorded(cluster, tmp_path):
    # Two CPUs in the cluster, so without {"vivado": 1} two of these would run at once.
    sweep = _sweep(tmp_path, '"hls4ml.reuse_factor" = [1, 2, 4, 8]\n', targets='["hls4ml"]',
                   options="[base.options.hls4ml]\nsynth = true\n")
    log = tmp_path / "synth.jsonl"
    r = subprocess.run([sys.executable, "-c", DRIVER, str(sweep), str(tmp_path / "out"), str(log), cluster[0]],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # A point whose worker dies on each of its 1 + max_retries attempts is recorded as crashed.
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"ok": 3, "crashed": 1}
    (crashed,) = [row for row in _rows(tmp_path / "out" / "results.csv") if row["status"] == "crashed"]
    assert crashed["hls4ml.reuse_factor"] == "8" and "after 1 retries" in crashed["error"]
    runs = sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda e: e["start"])
    assert len(runs) == 3
    for a, b in zip(runs, runs[1:]):
        assert b["start"] >= a["end"], f"synthesis runs overlap: {a} {b}"
