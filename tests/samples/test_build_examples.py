"""samples/build/ under real build tools: GNU Make, and CMake + Ninja (from PyPI, the test extra).

Each runs in a copy of the samples, through four scenarios: a build from clean; a rebuild with no
change, in which nothing runs; a touched data file, after which only what read it reruns; a
deleted output, which is rebuilt. The compiles verify their artifacts (verification is on).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # .venv/bin: tapeout, and cmake and ninja from the test extra
TAPEOUT = BIN / "tapeout"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TAPEOUT.exists(), reason=f"no tapeout script beside {sys.executable} (pip install -e .)"),
]


def _tool(name: str) -> str | None:
    here = BIN / name
    return str(here) if here.exists() else shutil.which(name)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    """tmp/samples/{build,digits_cnn}: the examples and the data they read, as in the repository."""
    monkeypatch.setenv("TAPEOUT_CACHE_DIR", str(tmp_path / "cache"))  # the build cache, if any: this test's own
    shutil.copytree(ROOT / "samples" / "build", tmp_path / "samples" / "build")
    digits = tmp_path / "samples" / "digits_cnn"
    digits.mkdir()
    for name in ("model.keras", "calibration.npz", "eval.npz"):
        shutil.copy2(ROOT / "samples" / "digits_cnn" / name, digits / name)
    return tmp_path


def _touch_after(path: Path, *outputs: Path) -> None:
    """Touch ``path`` with the clock (never the future), once it is past every output's mtime."""
    newest = max(p.stat().st_mtime_ns for p in outputs)
    while True:
        os.utime(path)
        if path.stat().st_mtime_ns > newest:
            return
        time.sleep(0.01)


def _run(cmd: list[str], cwd: Path) -> tuple[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr, seconds


def _passed(report: Path) -> bool:
    data = json.loads(report.read_text())
    return data["passed"] and all(t["verification"] and t["verification"]["passed"] for t in data["targets"])


# -------------------------------------------------------------------- Make
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU Make is not installed")
def test_make_example(tree):
    work = tree / "samples" / "build"
    out = work / "out"
    make = ["make", "--no-print-directory", f"TAPEOUT={TAPEOUT}"]

    def compiles(log: str) -> set[str]:  # the OUTDIRs of the compiles Make ran
        return {line.split(" -o ")[1].split()[0] for line in log.splitlines() if " compile " in line}

    log, _ = _run([*make, "-j2"], work)
    assert compiles(log) == {"out/onnx", "out/int8"}
    assert _passed(out / "onnx" / "report.json") and _passed(out / "int8" / "report.json")
    assert (out / "int8.d").read_text().startswith(
        "out/int8/report.json: ../digits_cnn/model.keras \\\n ../digits_cnn/calibration.npz\n")

    log, seconds = _run(make, work)
    assert "Nothing to be done" in log and not compiles(log), log
    assert subprocess.run([*make, "-q"], cwd=work).returncode == 0
    print(f"make no-op rebuild: {seconds:.3f} s")

    # The calibration data reaches the graph through the depfile alone: only the int8 compile read it.
    onnx_stamp = (out / "onnx" / "report.json").stat().st_mtime_ns
    _touch_after(tree / "samples" / "digits_cnn" / "calibration.npz", out / "int8" / "report.json")
    log, _ = _run(make, work)
    assert compiles(log) == {"out/int8"}, log
    assert (out / "onnx" / "report.json").stat().st_mtime_ns == onnx_stamp
    assert subprocess.run([*make, "-q"], cwd=work).returncode == 0  # and then it is up to date

    (out / "onnx" / "onnx-fp32" / "model.onnx").unlink()
    log, _ = _run(make, work)
    assert compiles(log) == {"out/onnx"}, log
    assert (out / "onnx" / "onnx-fp32" / "model.onnx").stat().st_size > 0
    assert subprocess.run([*make, "-q"], cwd=work).returncode == 0


# ----------------------------------------------------------- CMake + Ninja
@pytest.mark.skipif(_tool("cmake") is None or _tool("ninja") is None,
                    reason="cmake and ninja are not installed (pip install 'tapeout[test]' brings both)")
@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) for the example program")
def test_cmake_ninja_example(tree):
    build = tree / "build"
    ninja = [_tool("ninja"), "-C", str(build)]
    gen = build / "digits" / "tflite-fp32"
    _run([_tool("cmake"), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}", f"-DTAPEOUT={TAPEOUT}",
          "-S", str(tree / "samples" / "build"), "-B", str(build)], tree)

    def ran(log: str) -> set[str]:
        steps = {"tapeout": "tapeout: digits CNN", "compile": "Building CXX", "link": "Linking CXX"}
        return {k for k, v in steps.items() if v in log}

    log, _ = _run(ninja, tree)
    assert ran(log) == {"tapeout", "compile", "link"}, log
    assert _passed(build / "digits" / "report.json")
    size = (gen / "model.tflite").stat().st_size
    program, _ = _run([str(build / "check_model")], tree)
    assert program.strip() == f"g_digits_model: {size} bytes, identifier TFL3"

    log, seconds = _run(ninja, tree)
    assert "no work to do" in log and not ran(log), log
    explain, _ = _run([*ninja, "-n", "-d", "explain"], tree)
    assert "explain:" not in explain, explain
    print(f"ninja no-op rebuild: {seconds:.3f} s")

    # eval.npz is known to Ninja through the depfile only. The compile reruns, gives the same
    # model.cc, keeps its mtime, and restat spares the C++ compile and link.
    cc_mtime = (gen / "model.cc").stat().st_mtime_ns
    _touch_after(tree / "samples" / "digits_cnn" / "eval.npz", build / "digits" / "report.json")
    log, _ = _run(ninja, tree)
    assert ran(log) == {"tapeout"}, log
    assert (gen / "model.cc").stat().st_mtime_ns == cc_mtime
    assert "no work to do" in _run(ninja, tree)[0]

    (gen / "model.h").unlink()
    log, _ = _run(ninja, tree)
    assert "tapeout" in ran(log) and (gen / "model.h").exists(), log
    assert _run([str(build / "check_model")], tree)[0].strip() == f"g_digits_model: {size} bytes, identifier TFL3"
    assert "no work to do" in _run(ninja, tree)[0]


@pytest.mark.skipif(_tool("cmake") is None or shutil.which("make") is None,
                    reason="cmake (pip install 'tapeout[test]') or GNU Make is not installed")
@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) for the example program")
def test_cmake_makefile_generator_reads_the_depfile(tree):
    """CMake's Makefile generator takes the same depfile. Make has no restat: CMake touches the
    command's other outputs, so the program is rebuilt after a rerun, and then all is up to date."""
    build = tree / "build"
    _run([_tool("cmake"), "-G", "Unix Makefiles", f"-DTAPEOUT={TAPEOUT}", "-S", str(tree / "samples" / "build"),
          "-B", str(build)], tree)
    make = ["make", "--no-print-directory", "-C", str(build)]
    log, _ = _run(make, tree)
    assert "tapeout: digits CNN" in log and "Linking CXX" in log, log
    log, seconds = _run(make, tree)
    assert "tapeout: digits CNN" not in log and "Building CXX" not in log, log
    print(f"cmake makefile-generator no-op rebuild: {seconds:.3f} s")
    _touch_after(tree / "samples" / "digits_cnn" / "eval.npz", build / "digits" / "report.json")
    log, _ = _run(make, tree)
    assert "tapeout: digits CNN" in log, log  # eval.npz is known through the depfile alone
    log, _ = _run(make, tree)
    assert "tapeout: digits CNN" not in log and "Building CXX" not in log, log
