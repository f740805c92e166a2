"""`tapeout sweep` (issue 19) on the local process pool: the sweep file, results, resume, fronts, bad input.

Sweeps that build run `tapeout sweep` in a subprocess (the driver forks its pool: never fork pytest,
which may hold TensorFlow's threads). The Ray executor: tests/compiler/test_sweep_ray.py.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_run import run_cli

ROOT = Path(__file__).resolve().parents[2]
JET = ROOT / "samples" / "jet_mlp"
TAPEOUT = [str(Path(sys.executable).parent / "tapeout")]


def sweep_file(tmp: Path, axes: str, base_extra: str = "", sweep: str = "", targets: str | None = '["onnx"]') -> Path:
    p = tmp / "sweep.toml"
    lines = ["[base]", f'path = "{JET / "model.keras"}"', f'calibration = "{JET / "calibration.npz"}"',
             f'eval = "{JET / "eval.npz"}"']
    if targets is not None:
        lines.append(f"targets = {targets}")
    p.write_text("\n".join(lines) + "\n" + base_extra + "\n[axes]\n" + axes + "\n" + sweep)
    return p


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ the sweep file
def test_grid_skips_axes_that_do_not_apply_and_merges_equal_points(tmp_path):
    from tapeout.compiler.sweep.spec import load_sweep

    s = load_sweep(sweep_file(tmp_path, 'targets = ["onnx", "tflite:int8"]\nprune = [0, 0.5]\n'
                                        'calibration_method = ["minmax", "percentile"]\n'
                                        '"hls4ml.reuse_factor" = [1, 2]\n', targets=None))
    # onnx: 2 prune levels (calibration and hls4ml axes skipped); tflite:int8: 2 x 2.
    assert len(s.points) == 6
    onnx = [p for p in s.points if p.target == "onnx:fp32"]
    assert [p.settings for p in onnx] == [{"prune": 0}, {"prune": 0.5}]
    assert {p.spec.prune for p in onnx} == {None, "magnitude:0.5"}
    tfl = [p for p in s.points if p.target == "tflite:int8"]
    assert {p.spec.calibration_method for p in tfl} == {"minmax", "percentile"}
    assert len({p.id for p in s.points}) == 6 and [p.index for p in s.points] == list(range(6))
    assert s.axis_columns == ["prune", "calibration_method", "hls4ml.reuse_factor"]


def test_bias_correction_axis_applies_to_integer_targets_only(tmp_path):
    from tapeout.compiler.sweep.spec import load_sweep

    s = load_sweep(sweep_file(tmp_path, 'targets = ["onnx", "tflite:int8"]\nbias_correction = [true, false]\n',
                              targets=None))
    assert [(p.target, p.settings) for p in s.points] == [
        ("onnx:fp32", {}), ("tflite:int8", {"bias_correction": True}), ("tflite:int8", {"bias_correction": False})]
    assert [p.spec.bias_correction for p in s.points] == [True, True, False]


def test_target_option_axis_sets_the_variant_options(tmp_path):
    from tapeout.compiler.sweep.spec import load_sweep

    s = load_sweep(sweep_file(tmp_path, '"hls4ml.reuse_factor" = [1, 4]\n"hls4ml.strategy" = ["latency", "resource"]\n',
                              base_extra='[base.options.hls4ml]\nio_type = "parallel"\n[base.options.onnx]\nopset = 17\n',
                              targets='["hls4ml"]'))
    assert len(s.points) == 4
    p = s.points[-1]
    # The variant key wins over the target's in a build: the axis writes there; onnx's options are dropped.
    assert p.spec.target_options == {"hls4ml": {"io_type": "parallel"},
                                     "hls4ml:vitis": {"reuse_factor": 4, "strategy": "resource"}}


def test_random_sample_is_seeded_and_list_mode_takes_explicit_points(tmp_path):
    from tapeout.compiler.sweep.spec import load_sweep

    axes = 'prune = [0, 0.25, 0.5, 0.75]\n"onnx.opset" = [13, 15, 17]\n'
    a = load_sweep(sweep_file(tmp_path, axes, sweep='[sweep]\nmode = "random"\nsamples = 5\nseed = 3\n'))
    b = load_sweep(sweep_file(tmp_path, axes, sweep='[sweep]\nmode = "random"\nsamples = 5\nseed = 3\n'))
    c = load_sweep(sweep_file(tmp_path, axes, sweep='[sweep]\nmode = "random"\nsamples = 5\nseed = 4\n'))
    assert [p.id for p in a.points] == [p.id for p in b.points] and len(a.points) == 5
    assert [p.id for p in a.points] != [p.id for p in c.points]
    p = tmp_path / "list.toml"
    p.write_text(f'[base]\npath = "{JET / "model.keras"}"\ntargets = ["onnx"]\n'
                 '[[points]]\nprune = 0.5\n[[points]]\n"onnx.opset" = 15\n')
    s = load_sweep(p)
    assert s.mode == "list" and [q.settings for q in s.points] == [{"prune": 0.5}, {"onnx.opset": 15}]


def test_list_point_without_a_target_needs_a_single_base_target(tmp_path):
    """_combo_point's one error: a [[points]] table naming no target while [base] lists several."""
    from tapeout.compiler.errors import UsageError
    from tapeout.compiler.sweep.spec import load_sweep

    p = tmp_path / "list.toml"
    base = f'[base]\npath = "{JET / "model.keras"}"\n'
    p.write_text(base + 'targets = ["onnx", "tflite"]\n[[points]]\nprune = 0.5\n')
    with pytest.raises(UsageError) as e:
        load_sweep(p)
    assert str(e.value) == (f"{p}:4: a point names no target and [base] lists several: set targets = "
                            '"TARGET" in each [[points]]')
    # One target among the points' own: a point naming none builds that one.
    p.write_text(base + '[[points]]\ntargets = "onnx"\n[[points]]\nprune = 0.5\n')
    assert [(q.target, q.settings) for q in load_sweep(p).points] == [("onnx:fp32", {}),
                                                                       ("onnx:fp32", {"prune": 0.5})]


@pytest.mark.parametrize("axes, message", [
    ('"hls4ml.reuse" = [1, 2]\n', "unknown axis 'hls4ml.reuse': target hls4ml has no option 'reuse' "
                                  "(did you mean 'reuse_factor'?)"),
    ('prunning = [0.5]\n', "unknown axis 'prunning' (did you mean 'prune'?)"),
    ('prune = []\n', "axis 'prune' has no values: the grid is empty"),
    ('targets = ["onnx"]\n', "targets are given in [base] and as an axis"),
    ('prune = [1.5]\n', "axis prune: 1.5: give a fraction"),
    ('bias_correction = ["no"]\n', "axis bias_correction: 'no' is not true or false"),
])
def test_bad_sweep_files_are_one_line_and_exit_2(tmp_path, axes, message):
    path = sweep_file(tmp_path, axes)
    code, out, err = run_cli("sweep", path, "-o", tmp_path / "out")
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert f"{path}:" in err  # FILE:LINE
    assert not (tmp_path / "out").exists()


def test_bad_option_value_is_exit_2_before_any_point(tmp_path):
    code, _, err = run_cli("sweep", sweep_file(tmp_path, '"onnx.opset" = [17, 3]\n'), "-o", tmp_path / "out")
    assert code == 2 and "opset" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "results.csv").exists()


def test_base_errors_name_the_base_table(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[base]\npath = "nowhere.keras"\ntargets = ["onnx"]\n[axes]\nprune = [0]\n')
    code, _, err = run_cli("sweep", p)
    assert code == 2 and err.startswith(f"tapeout: error: {p}:2: base.path: nowhere.keras does not exist"), err


def test_corrupt_results_file_on_resume_is_exit_2_and_left_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_bytes(b"id,index,target,prune\nnot,a,results\n")
    before = (out / "results.csv").stat()
    code, _, err = run_cli("sweep", sweep_file(tmp_path, "prune = [0, 0.5]\n"), "-o", out, "--resume")
    assert code == 2 and "corrupt results file" in err and err.count("\n") == 1
    after = (out / "results.csv").stat()
    assert (out / "results.csv").read_bytes() == b"id,index,target,prune\nnot,a,results\n"
    assert (before.st_mtime_ns, before.st_size, before.st_ino) == (after.st_mtime_ns, after.st_size, after.st_ino)
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]


def test_results_file_refuses_a_row_cut_short(tmp_path):
    from tapeout.compiler.errors import UsageError
    from tapeout.compiler.sweep.results import ResultsFile, columns

    f = ResultsFile(tmp_path / "r.csv", columns(["prune"]))
    f.append({"id": "0123456789ab", "index": 0, "target": "onnx:fp32", "prune": 0, "status": "ok", "accuracy": 0.5})
    assert f.read()[0]["accuracy"] == "0.5"
    with open(f.path, "a") as fh:
        fh.write("0123456789ac,1,onnx")
    with pytest.raises(UsageError, match=r"r.csv:3: corrupt results file \(the last line is cut short\)"):
        f.read()


def test_ray_without_ray_installed_is_one_line_exit_3(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, _, err = run_cli("sweep", sweep_file(tmp_path, "prune = [0]\n"), "-o", tmp_path / "out", "--ray")
    assert code == 3 and err == "tapeout: error: --ray needs Ray: pip install 'tapeout[ray]'\n"


def test_unreachable_ray_address_is_exit_3_within_30_s(tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nothing listens at
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code, _, err = run_cli("sweep", sweep_file(tmp_path, "prune = [0]\n"), "-o", tmp_path / "out",
                           "--ray", f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 30
    assert code == 3 and err.startswith(f"tapeout: error: no Ray cluster reachable at 127.0.0.1:{port}")
    assert err.count("\n") == 1


# ------------------------------------------------------------------ fronts
def test_pareto_front_keeps_the_non_dominated_points():
    from tapeout.compiler.sweep.pareto import fronts

    rows = [{"id": f"{i:012x}", "index": str(i), "target": "hls4ml:vitis", "status": s, "accuracy": a, "dsp": d}
            for i, (s, a, d) in enumerate([("ok", "0.78", "100"), ("ok", "0.70", "50"), ("ok", "0.69", "60"),
                                           ("failed", "0.60", "10"), ("error", "0.99", "1"), ("ok", "0.78", "120")])]
    (f,) = fronts(rows, ["accuracy", "dsp"])
    # (0.69, 60) is beaten by (0.70, 50), (0.78, 120) by (0.78, 100); error rows have no measurement.
    assert [r["index"] for r in f.front] == ["3", "1", "0"]
    assert len(f.points) == 5


# ------------------------------------------------------------------ running sweeps
def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "TAPEOUT_CACHE_DIR": str(tmp / "cache"), "TAPEOUT_NO_CACHE": "0"}


def test_local_sweep_with_two_processes_writes_results_and_pareto_page(tmp_path):
    # onnx.opset 17 and "17" are one build (one cache key): built once, the other row copies it.
    path = sweep_file(tmp_path, 'targets = ["onnx", "tflite:int8"]\nprune = [0, 0.5]\n"onnx.opset" = [17, "17"]\n',
                      targets=None)
    out = tmp_path / "out"
    run = subprocess.run([*TAPEOUT, "sweep", str(path), "-o", str(out), "-j", "2"], capture_output=True, text=True,
                         env=_env(tmp_path), timeout=300)
    assert run.returncode == 0, run.stderr
    rows = read_rows(out / "results.csv")
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    assert all(r["status"] == "ok" for r in rows), rows
    for prune in ("0", "0.5"):
        first, twin = sorted((r for r in rows if r["target"] == "onnx:fp32" and r["prune"] == prune),
                             key=lambda r: int(r["index"]))
        assert (first["same_as"], first["from"]) == ("", "built")
        assert (twin["same_as"], twin["from"], twin["build_s"]) == (first["id"], "same build", "0")
        assert twin["accuracy"] == first["accuracy"]
    for r in rows:
        assert 0.6 < float(r["accuracy"]) < 0.9 and float(r["agreement"]) > 0.95 and int(r["size_bytes"]) > 0
        assert (r["litert_ms"] != "") == (r["target"] == "tflite:int8")
    built = [r for r in rows if r["same_as"] == ""]
    assert {(out / "points" / r["id"] / "report.json").is_file() for r in built} == {True}
    page = (out / "pareto.html").read_text()
    assert "accuracy (max) &times; size_bytes (min)" in page and "Plotly" in page
    assert "<p>6 ok of 6 points. " in page  # the page's counts are the run's (counted once, in run_sweep)
    assert not re.search(r"<script[^>]+src=", page)  # plotly inlined: opens offline
    assert "pareto  accuracy (max) x size_bytes (min):" in run.stdout
    assert "done    6 points (6 ok); 4 run now" in run.stdout


def test_killed_sweep_resumes_with_every_point_exactly_once(tmp_path):
    path = sweep_file(tmp_path, "prune = [0, 0.25, 0.5, 0.75]\n")
    out = tmp_path / "out"
    cmd = [*TAPEOUT, "sweep", str(path), "-o", str(out), "-j", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(tmp_path),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "results.csv").is_file() and len(read_rows(out / "results.csv")) >= 1:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; its pool workers notice and leave
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first = read_rows(out / "results.csv")
    assert 1 <= len(first) < 4
    # Without --resume an existing results file is refused, not overwritten.
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=60)
    assert r.returncode == 2 and "pass --resume" in r.stderr
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr
    rows = read_rows(out / "results.csv")
    assert sorted(r["prune"] for r in rows) == ["0", "0.25", "0.5", "0.75"]
    assert len({r["id"] for r in rows}) == 4 and all(r["status"] == "ok" for r in rows)
    assert rows[:len(first)] == first  # appended, never rewritten
    assert f"{4 - len(first)} run now, {len(first)} from before" in r.stdout


LOCAL_DRIVER = '''
import json, os, sys
from tapeout.compiler.sweep.executors import LocalPool
from tapeout.compiler.sweep.run import run_sweep
from tapeout.compiler.sweep.spec import load_sweep

def fake(spec, cache):
    if spec.prune == "magnitude:0.5":
        os._exit(1)  # kills its pool process on every attempt
    return {"status": "ok", "accuracy": 0.5, "size_bytes": 100 if spec.prune is None else 60}

result = run_sweep(load_sweep(sys.argv[1], output=sys.argv[2]), LocalPool(2, max_retries=1), use_cache=False,
                   point_fn=fake)
print(json.dumps(result.counts))
'''


def test_local_pool_retries_a_dead_worker_then_records_the_point_as_crashed(tmp_path):
    path = sweep_file(tmp_path, "prune = [0, 0.25, 0.5, 0.75]\n")
    r = subprocess.run([sys.executable, "-c", LOCAL_DRIVER, str(path), str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # The points that shared a pool with the dying one are run again and complete.
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"ok": 3, "crashed": 1}
    rows = read_rows(tmp_path / "out" / "results.csv")
    assert len({row["id"] for row in rows}) == 4
    (crashed,) = [row for row in rows if row["status"] == "crashed"]
    assert crashed["prune"] == "0.5" and crashed["error"] == "its worker process died 2 times"


def test_resume_refuses_rows_built_from_another_base(tmp_path):
    from tapeout.compiler.sweep.results import ResultsFile, columns

    path = sweep_file(tmp_path, "prune = [0, 0.5]\n")
    out = tmp_path / "out"
    out.mkdir()
    f = ResultsFile(out / "results.csv", columns(["prune"]))
    f.append({"id": "0123456789ab", "index": 0, "target": "onnx:fp32", "prune": 0, "status": "ok",
              "base": "000000000000"})
    before = f.path.read_bytes()
    code, _, err = run_cli("sweep", path, "-o", out, "--resume")
    assert code == 2 and "its rows were built from another [base]" in err and err.count("\n") == 1
    assert f.path.read_bytes() == before
