"""Issue 18, acceptance 2: Brevitas-style QONNX models (tests/compiler/frontends/qonnx_models.py)
compile to hls4ml and match QONNX's reference execution (qonnx.core.onnx_exec.execute_onnx, the
source runner for QONNX files) exactly on 2,000 inputs; the 8-bit MLP also compiles to
tflite:int8."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qonnx")
pytest.importorskip("hls4ml")
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH: no hls4ml C simulation")

sys.path.insert(0, str(Path(__file__).parent))
import qonnx_models as qm  # noqa: E402

from tests.cli_run import run_cli  # noqa: E402

SAMPLES = 2000


def _data(path: Path, shape: tuple[int, ...], seed: int) -> Path:
    """Normal inputs, exact ties of the input quantizer's grid, and values that saturate it."""
    rng = np.random.default_rng(seed)
    n = SAMPLES
    x = np.concatenate([rng.normal(0, 2, (n // 2, *shape)),
                        (rng.integers(-250, 250, (n // 4, *shape)) + 0.5) * 2.0**-5,
                        rng.uniform(-20, 20, (n - n // 2 - n // 4, *shape))]).astype(np.float32)
    np.savez(path, global_in=x)
    return path


def _compile(tmp_path: Path, model, shape: tuple[int, ...], targets: list[str]) -> dict:
    src = qm.save(model, tmp_path)
    data = _data(tmp_path / "data.npz", shape, 0)
    args = ["compile", src, "-o", tmp_path / "out", "--eval", data, "--calibration", data]
    for t in targets:
        args += ["-t", t]
    code, out, err = run_cli(*args)
    assert code == 0, out + err
    return json.loads((tmp_path / "out" / "report.json").read_text())


def _exact(target: dict) -> None:
    v = target["verification"]
    assert v["passed"] and v["samples"] == SAMPLES
    assert "qonnx.core.onnx_exec.execute_onnx" in v["runner"]  # judged against QONNX's execution
    for out in v["outputs"]:
        assert out["mismatches"] == 0 and out["max_abs_err"] == 0.0, out


def test_mlp_8bit_to_hls4ml_exactly_and_to_tflite_int8(tmp_path: Path) -> None:
    report = _compile(tmp_path, qm.mlp(8), (16,), ["hls4ml", "tflite:int8"])
    by = {t["target"]: t for t in report["targets"]}
    _exact(by["hls4ml"])
    assert by["tflite"]["variant"] == "int8" and by["tflite"]["verification"]["passed"]
    # The trained quantizers set the int8 scales and run as float ops; no --keep-float was given.
    assert any("trained quantizer(s) (fixed_quant) run as float ops" in n for n in by["tflite"]["notes"])
    assert not any("kept float by request" in n for n in by["tflite"]["notes"])
    assert any("QONNX: 3 activation quantizer(s)" in n for n in report["notes"])


@pytest.mark.parametrize("bits", [4])
def test_cnn_to_hls4ml_exactly(tmp_path: Path, bits: int) -> None:
    report = _compile(tmp_path, qm.cnn(bits), (1, 8, 8), ["hls4ml"])
    _exact(report["targets"][0])


def test_mlp_4bit_to_hls4ml_exactly(tmp_path: Path) -> None:
    report = _compile(tmp_path, qm.mlp(4), (16,), ["hls4ml"])
    _exact(report["targets"][0])


def test_binary_mlp_to_hls4ml_exactly(tmp_path: Path) -> None:
    report = _compile(tmp_path, qm.binary_mlp(), (16,), ["hls4ml"])
    _exact(report["targets"][0])


def test_non_power_of_two_scale_is_refused_by_hls4ml_naming_the_quantizer(tmp_path: Path) -> None:
    """Read as divide, fixed_quant, multiply (exact on the ONNX target); hls4ml has no divide."""
    b = qm.Builder(4)
    h = b.quant("global_in", np.float32(0.1), 8)
    y = b.op("Gemm", [h, b.weight((3, 16), 8, 6)], transB=1)
    src = qm.save(b.model("global_in", [None, 16], y, [None, 3], "npo2"), tmp_path)
    data = _data(tmp_path / "data.npz", (16,), 1)
    code, out, err = run_cli("compile", src, "-t", "hls4ml", "-o", tmp_path / "out", "--eval", data)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'Quant_0/unscaled'" in err, err
    code, out, err = run_cli("compile", src, "-t", "onnx", "-o", tmp_path / "onnx", "--eval", data)
    assert code == 0, out + err
    report = json.loads((tmp_path / "onnx" / "report.json").read_text())
    _exact(report["targets"][0])
