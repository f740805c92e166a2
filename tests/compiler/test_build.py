"""`tapeout build` and the cache through the CLI: no-op rebuilds, one option changed, -j, bad
input, a damaged cache entry, two builds at once, and flags <-> project file equivalence."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_run import run_cli as run

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "digits_cnn"


@pytest.fixture()
def cache_env(tmp_path, monkeypatch):
    monkeypatch.delenv("TAPEOUT_NO_CACHE", raising=False)
    monkeypatch.setenv("TAPEOUT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def project(folder: Path, targets=('"onnx"', '"tflite:int8"'), extra: str = "") -> Path:
    path = folder / "tapeout.toml"
    path.write_text(f"""[defaults]
calibration = "{SAMPLE / 'calibration.npz'}"

[models.digits]
path = "{SAMPLE / 'model.keras'}"
targets = [{", ".join(targets)}]
{extra}""")
    return path


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_second_build_restores_everything_from_the_cache_byte_identical(cache_env):
    project(cache_env)
    code, out, err = run("build", "--no-timings")
    assert code == 0, err
    assert "2 built, 0 from the cache" in out
    before = digest(cache_env / "build" / "digits")
    # Artifacts only: report.json is the build's stamp and is renewed every run (Make needs that).
    mtimes = {p: p.stat().st_mtime_ns for p in (cache_env / "build").rglob("*")
              if p.is_file() and not p.name.startswith("report.")}
    code, out, _ = run("build", "--no-timings")
    assert code == 0 and "0 built, 2 from the cache" in out
    assert digest(cache_env / "build" / "digits") == before
    # Nothing rewritten: a build tool's restat sees no change.
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    # With timings the report says where each target came from.
    code, out, _ = run("build", "--json")
    report = json.loads(out)["digits"]
    assert [t["from"] for t in report["targets"]] == ["cache", "cache"]


def test_one_option_changed_rebuilds_that_target_alone(cache_env):
    project(cache_env)
    assert run("build")[0] == 0
    project(cache_env, extra='[models.digits.options."tflite:int8"]\nio = "int8"\n')
    code, out, _ = run("build", "--dry-run")
    assert code == 0
    lines = {line.split()[2].rstrip(":"): line for line in out.splitlines()}
    assert lines["onnx:fp32"].startswith("cached") and lines["tflite:int8"].startswith("rebuild")
    code, out, _ = run("build", "--json")
    targets = {f"{t['target']}:{t['variant']}": t for t in json.loads(out)["digits"]["targets"]}
    assert targets["onnx:fp32"]["from"] == "cache" and targets["tflite:int8"]["from"] == "built"
    assert targets["tflite:int8"]["io"] == "int8"


def test_a_calibration_setting_rebuilds_the_calibrated_target_alone(cache_env):
    """--no-bias-correction and --calibration-method change int8 bytes only: the float target and the
    report's shared part come from the cache."""
    args = ["compile", SAMPLE / "model.keras", "-t", "onnx", "-t", "tflite:int8", "--calibration",
            SAMPLE / "calibration.npz", "-o", cache_env / "out", "--json"]
    assert run(*args)[0] == 0
    for extra in (["--no-bias-correction"], ["--calibration-method", "percentile"]):
        code, out, err = run(*args, *extra)
        assert code == 0, err
        got = {f"{t['target']}:{t['variant']}": t["from"] for t in json.loads(out)["targets"]}
        assert got == {"onnx:fp32": "cache", "tflite:int8": "built"}, (extra, got)


def test_with_eval_data_new_calibration_data_rebuilds_the_calibrated_target_alone(cache_env):
    """With --eval the calibration file is not the float target's verification data: new calibration
    bytes rebuild tflite:int8, and the onnx entry restored is what a fresh build writes."""
    import numpy as np

    cal = cache_env / "cal.npz"
    arrays = dict(np.load(SAMPLE / "calibration.npz"))
    np.savez(cal, **arrays)
    args = ["compile", SAMPLE / "model.keras", "-t", "onnx", "-t", "tflite:int8", "--calibration", cal,
            "--eval", SAMPLE / "eval.npz"]
    assert run(*args, "-o", cache_env / "out")[0] == 0
    np.savez(cal, x=arrays["x"][: len(arrays["x"]) // 2])
    code, out, err = run(*args, "-o", cache_env / "out", "--json")
    assert code == 0, err
    assert {f"{t['target']}:{t['variant']}": t["from"] for t in json.loads(out)["targets"]} == \
        {"onnx:fp32": "cache", "tflite:int8": "built"}
    assert run(*args, "-o", cache_env / "out", "--no-timings")[0] == 0
    assert run(*args, "-o", cache_env / "fresh", "--no-cache", "--no-timings")[0] == 0
    assert digest(cache_env / "out") == digest(cache_env / "fresh")


def test_changed_data_is_named_by_dry_run(cache_env):
    data = cache_env / "cal.npz"
    data.write_bytes((SAMPLE / "calibration.npz").read_bytes())
    path = project(cache_env)
    path.write_text(path.read_text().replace(str(SAMPLE / "calibration.npz"), str(data)))
    assert run("build")[0] == 0
    import numpy as np

    arrays = dict(np.load(data))
    arrays["x"] = arrays["x"][:100]
    np.savez(data, **arrays)
    code, out, _ = run("build", "--dry-run")
    assert "rebuild" in out and "cal.npz" in out


def test_flags_and_project_file_are_the_same_build(cache_env):
    """`tapeout compile` with flags and `tapeout build` with the equivalent table share cache entries
    and write the same bytes."""
    code, _, err = run("compile", SAMPLE / "model.keras", "-t", "onnx", "-t", "tflite:int8", "--calibration",
                       SAMPLE / "calibration.npz", "-o", cache_env / "by-flags", "--no-timings")
    assert code == 0, err
    project(cache_env, extra=f'outdir = "{cache_env / "by-project"}"\n')
    code, out, _ = run("build", "--no-timings")
    assert code == 0 and "0 built, 2 from the cache" in out
    assert digest(cache_env / "by-flags") == digest(cache_env / "by-project")


def test_a_truncated_cache_entry_is_rebuilt(cache_env):
    project(cache_env)
    assert run("build", "--no-timings")[0] == 0
    before = digest(cache_env / "build" / "digits")
    tflite = sorted((cache_env / "cache").rglob("files/model.tflite"))
    assert tflite
    tflite[0].write_bytes(tflite[0].read_bytes()[:100])
    code, out, _ = run("build", "--no-timings")
    assert code == 0 and "1 built, 1 from the cache" in out
    assert digest(cache_env / "build" / "digits") == before


@pytest.mark.parametrize("case, expect", [
    ("unknown-key", "unknown key 'calibraton'"),
    ("missing-model", "does not exist"),
    ("cycle", "cycle"),
    ("bad-j", "-j must be at least 1"),
    ("unknown-name", "nosuch"),
])
def test_bad_input_is_one_line_and_exit_2(cache_env, case, expect):
    path = project(cache_env)
    text = path.read_text()
    args = ["build"]
    if case == "unknown-key":
        path.write_text(text + 'calibraton = "x.npz"\n')
    elif case == "missing-model":
        path.write_text(text.replace("model.keras", "missing.keras"))
    elif case == "cycle":
        path.write_text(text + '\n[models.a]\nextends = "b"\n\n[models.b]\nextends = "a"\n')
    elif case == "bad-j":
        args += ["-j", "0"]
    else:
        args += ["nosuch"]
    code, out, err = run(*args)
    assert code == 2 and err.count("\n") == 1 and expect in err and "Traceback" not in err
    assert not (cache_env / "build").exists()


def test_cache_info_prune_and_clear(cache_env, monkeypatch):
    # The PCH folder under this cache's root (tests/conftest.py names a shared one the hls4ml tests use).
    monkeypatch.delenv("TAPEOUT_HLS4ML_PCH_DIR", raising=False)
    project(cache_env)
    assert run("build")[0] == 0
    code, out, _ = run("cache", "info", "--json")
    info = json.loads(out)
    assert code == 0 and info["entries"] == 3 and info["bytes"] > 0  # two targets and the model's entry
    assert run("cache", "prune")[0] == 2  # --max-size is required
    assert run("cache", "prune", "--max-size", "lots")[0] == 2
    code, out, _ = run("cache", "prune", "--max-size", "0", "--json")
    assert code == 0 and json.loads(out)["entries"] == 0
    assert run("build")[0] == 0
    pch = cache_env / "cache" / "hls4ml-pch" / ("k" * 32) / "objects"  # as targets/hls4ml/project.py writes it
    pch.mkdir(parents=True)
    (pch / "a.o").write_bytes(b"x" * 1000)
    code, out, _ = run("cache", "info", "--json")
    assert json.loads(out)["tool_bytes"] == 0  # not a key folder's name: not tapeout's
    pch.parent.rename(pch.parent.with_name("0" * 32))
    code, out, _ = run("cache", "info", "--json")
    assert json.loads(out)["tool_bytes"] == 1000
    code, out, _ = run("cache", "prune", "--max-size", "0", "--json")
    assert json.loads(out)["tool_bytes"] == 0  # evicted with the entries
    assert run("build")[0] == 0
    (cache_env / "cache" / "hls4ml-pch" / ("0" * 32)).mkdir(parents=True)
    code, out, _ = run("cache", "clear", "--json")
    assert json.loads(out)["removed"] == 3
    assert not (cache_env / "cache" / "hls4ml-pch").exists()


def test_no_cache_writes_no_cache(cache_env):
    project(cache_env)
    assert run("build", "--no-cache")[0] == 0
    assert not (cache_env / "cache").exists()


def test_jobs_give_the_same_bytes(cache_env):
    args = [SAMPLE / "model.keras", "-t", "onnx", "-t", "tflite:int8", "-t", "tflite:fp32", "--calibration",
            SAMPLE / "calibration.npz", "--no-timings", "--no-cache"]
    assert run("compile", *args, "-o", cache_env / "j1")[0] == 0
    assert run("compile", *args, "-o", cache_env / "j3", "-j", "3")[0] == 0
    assert digest(cache_env / "j1") == digest(cache_env / "j3")


def test_two_builds_at_once_both_succeed_with_one_consistent_output(cache_env):
    project(cache_env)
    env = {**os.environ, "TAPEOUT_CACHE_DIR": str(cache_env / "cache")}
    env.pop("TAPEOUT_NO_CACHE", None)
    cmd = [sys.executable, "-m", "tapeout.compiler", "build", "--no-timings", "--quiet"]
    procs = [subprocess.Popen(cmd, cwd=cache_env, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    got = digest(cache_env / "build" / "digits")
    # One consistent output: what a fresh build without the cache writes.
    assert run("compile", SAMPLE / "model.keras", "-t", "onnx", "-t", "tflite:int8", "--calibration",
               SAMPLE / "calibration.npz", "-o", cache_env / "fresh", "--no-timings", "--no-cache")[0] == 0
    assert got == digest(cache_env / "fresh")
    assert run("build", "--no-timings")[1].count("from the cache") == 1


def test_build_depfile_names_the_stamp_and_every_input(cache_env):
    project(cache_env)
    assert run("build", "--depfile", "build.d")[0] == 0
    text = (cache_env / "build.d").read_text()
    first = text.split(":")[0]
    assert first == ".tapeout/stamp.json"
    for dep in ("tapeout.toml", "model.keras", "calibration.npz"):
        assert dep in text
    stamp = cache_env / ".tapeout" / "stamp.json"
    mtime = stamp.stat().st_mtime_ns
    time.sleep(0.01)
    assert run("build", "--depfile", "build.d")[0] == 0
    # Renewed every run, as report.json is: Make compares it with the inputs' times.
    assert stamp.stat().st_mtime_ns > mtime
