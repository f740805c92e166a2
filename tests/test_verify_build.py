"""`tapeout verify SOURCE OUTDIR` (issue 15 s3): every artifact of a build verified as compile verifies it,
a tampered artifact named with exit 1, a folder without report.json exit 2 in one line; and the expected
error of quantized outputs (s1) in both reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import run_cli

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "digits_cnn"
TARGETS = ("tflite:int8", "onnx:int8", "onnx")


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    outdir = tmp_path_factory.mktemp("verify_build") / "out"
    args = ["compile", SAMPLE / "model.keras", "-o", outdir, "--calibration", SAMPLE / "calibration.npz",
            "--eval", SAMPLE / "eval.npz", "--no-timings"]
    for t in TARGETS:
        args += ["-t", t]
    code, out, err = run_cli(*args)
    assert code == 0, out + err
    return outdir


def _copy(build: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "out"
    shutil.copytree(build, dst)
    return dst


def test_verifies_every_artifact(build):
    code, out, err = run_cli("verify", SAMPLE / "model.keras", build, "--data", SAMPLE / "eval.npz", "--json")
    assert code == 0, out + err
    got = json.loads(out)
    compiled = json.loads((build / "report.json").read_text())
    assert [(t["target"], t["variant"]) for t in got["targets"]] == \
        [(t["target"], t["variant"]) for t in compiled["targets"]] == [("tflite", "int8"), ("onnx", "int8"),
                                                                      ("onnx", "fp32")]
    for new, old in zip(got["targets"], compiled["targets"]):
        v, w = new["verification"], old["verification"]
        assert v["passed"] and v["samples"] == 360 and v["data"] == "eval"
        # Same rules as compile: quantized by cosine/top-1, float by the error model, same numbers.
        assert [o["rule"] for o in v["outputs"]] == [o["rule"] for o in w["outputs"]]
        assert v["accuracy"] == w["accuracy"]
        assert v["cosine"] == pytest.approx(w["cosine"], abs=1e-6)
        assert new["artifacts"] == old["artifacts"]
    assert got["targets"][2]["verification"]["outputs"][0]["rule"] == "error-model"


def test_trace_every_artifact(build):
    code, out, err = run_cli("verify", SAMPLE / "model.keras", build, "--data", SAMPLE / "eval.npz", "--trace",
                             "--json")
    assert code == 0, out + err
    for t in json.loads(out)["targets"]:
        tr = t["trace"]
        assert tr["untraced"] is None and len(tr["layers"]) >= 7
        assert tr["layers"][-1]["name"] == "probabilities"


def test_text_output_says_passed(build):
    code, out, _ = run_cli("verify", SAMPLE / "model.keras", build)
    assert code == 0
    assert out.strip().splitlines()[-1] == f"PASSED: 3 artifact(s) of {build}"


def _tamper_onnx_weight(path: Path) -> None:
    """Scale the largest float initializer of the model by 1.5: a wrong artifact that still loads."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    big = max(inits, key=lambda i: int(np.prod(i.dims)))
    big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) * np.float32(1.5), big.name))
    onnx.save(model, str(path))


def test_tampered_artifact_fails_named(build, tmp_path):
    outdir = _copy(build, tmp_path)
    _tamper_onnx_weight(outdir / "onnx-fp32" / "model.onnx")
    code, out, err = run_cli("verify", SAMPLE / "model.keras", outdir, "--data", SAMPLE / "eval.npz")
    assert code == 1, out + err
    last = out.strip().splitlines()[-1]
    assert last == "FAILED: onnx:fp32 (onnx-fp32/model.onnx)"


def test_damaged_artifact_fails_named(build, tmp_path):
    outdir = _copy(build, tmp_path)
    model = outdir / "tflite-int8" / "model.tflite"
    model.write_bytes(model.read_bytes()[:100])  # truncated: no longer loads
    code, out, err = run_cli("verify", SAMPLE / "model.keras", outdir)
    assert code == 1, out + err
    assert "FAILED: tflite:int8 (tflite-int8/model.tflite, tflite-int8/model.cc, tflite-int8/model.h)" in out
    assert "error   tflite:int8: could not be run" in out
    assert "Traceback" not in out + err


def test_missing_artifact_fails_named(build, tmp_path):
    outdir = _copy(build, tmp_path)
    (outdir / "onnx-int8" / "model.onnx").unlink()
    code, out, _ = run_cli("verify", SAMPLE / "model.keras", outdir, "--json")
    assert code == 1
    t = json.loads(out)["targets"][1]
    assert t["verification"]["passed"] is False
    assert t["verification"]["error"] == "missing: onnx-int8/model.onnx"


def test_accuracy_gate_passes_within_budget(build):
    code, out, err = run_cli("verify", SAMPLE / "model.keras", build, "--data", SAMPLE / "eval.npz",
                             "--max-accuracy-drop", "1", "--json")
    assert code == 0, out + err
    got = json.loads(out)
    for t in got["targets"]:
        v = t["verification"]
        # The budget judges quantized artifacts, as in compile; float ones keep the error model.
        assert v.get("max_accuracy_drop") == (1 if t["variant"] == "int8" else None)


def _tamper_int8_weights(path: Path) -> None:
    """Negate the int8 weights of the last quantized matmul/conv: the artifact loads and runs, but guesses."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    ints = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    last = ints[-1]
    w = numpy_helper.to_array(last).astype(np.int16)
    last.CopyFrom(numpy_helper.from_array(np.clip(-w, -127, 127).astype(np.int8), last.name))
    onnx.save(model, str(path))


def test_accuracy_gate_fails_named(build, tmp_path):
    outdir = _copy(build, tmp_path)
    _tamper_int8_weights(outdir / "onnx-int8" / "model.onnx")
    code, out, err = run_cli("verify", SAMPLE / "model.keras", outdir, "--data", SAMPLE / "eval.npz",
                             "--max-accuracy-drop", "1")
    assert code == 1, out + err
    assert out.strip().splitlines()[-1] == "FAILED: onnx:int8 (onnx-int8/model.onnx)"


def test_accuracy_gate_needs_labels(build):
    code, _, err = run_cli("verify", SAMPLE / "model.keras", build, "--max-accuracy-drop", "1")
    assert code == 2 and "--data" in err


def test_folder_without_report_is_exit_2(tmp_path):
    (tmp_path / "stray.txt").write_text("x")
    code, out, err = run_cli("verify", SAMPLE / "model.keras", tmp_path)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "no report.json" in err and "Traceback" not in err


def test_damaged_report_is_exit_2(tmp_path):
    (tmp_path / "report.json").write_text("{not json")
    code, _, err = run_cli("verify", SAMPLE / "model.keras", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "not a tapeout compile report" in err


def test_accuracy_drop_needs_a_build(build):
    code, _, err = run_cli("verify", SAMPLE / "model.keras", build / "onnx-int8" / "model.onnx",
                           "--max-accuracy-drop", "1")
    assert code == 2 and "OUTDIR" in err


# ------------------------------------------------------------ expected error (s1)
def _output_scale_tflite(path: Path) -> float:
    """The int8 scale of the tensor the float output is dequantized from, read independently."""
    from tapeout.runtime.runners.litert import interpreter_class

    cls, _ = interpreter_class()
    interp = cls(model_path=str(path))
    details = interp.get_tensor_details()
    int8 = [d for d in details if np.dtype(d["dtype"]) == np.int8 and "softmax" in d["name"].lower()]
    return float(int8[-1]["quantization"][0])


def test_expected_error_recorded_for_quantized_outputs(build):
    report = json.loads((build / "report.json").read_text())
    by = {f"{t['target']}:{t['variant']}": t["verification"]["outputs"][0] for t in report["targets"]}
    scale = _output_scale_tflite(build / "tflite-int8" / "model.tflite")
    assert scale == pytest.approx(1 / 256)  # a softmax output: TFLite's fixed scale
    for name in ("tflite:int8", "onnx:int8"):
        ex = by[name]["expected_error"]
        assert ex["dtype"] == "int8" and ex["rounding"] == "nearest"
        assert ex["step"] == pytest.approx(scale)
        assert ex["bound"] == pytest.approx(0.5 * scale)
        assert ex["rms"] == pytest.approx(scale / np.sqrt(12))
        assert ex["max_abs_over_bound"] == pytest.approx(by[name]["max_abs_err"] / ex["bound"], rel=1e-5)
        # The measured error includes every rounding before the output's: never below half a step... on 360
        # samples some output is off by at least the output rounding.
        assert by[name]["max_abs_err"] >= ex["bound"] * 0.99
    assert by["onnx:fp32"]["expected_error"] is None


def test_expected_error_in_verify_of_one_artifact(build):
    code, out, _ = run_cli("verify", SAMPLE / "model.keras", build / "onnx-int8" / "model.onnx", "--data",
                           SAMPLE / "eval.npz", "--json")
    assert code == 0
    ex = json.loads(out)["outputs"][0]["expected_error"]
    assert ex["bound"] == pytest.approx(0.5 / 256)


def test_hls4ml_output_lsb(tmp_path):
    """The LSB of an hls4ml output's ap_fixed<W,I>: 2^-(W-I); half of it when the type rounds."""
    from tapeout.runtime.verify import expected_output_errors

    fw = tmp_path / "firmware"
    fw.mkdir()
    (tmp_path / "tapeout_csim.json").write_text(json.dumps(
        {"project": "myproject", "inputs": [{"name": "x", "shape": [4]}],
         "outputs": [{"name": "y", "shape": [3]}, {"name": "z", "shape": [2]}]}))
    (fw / "myproject.h").write_text("void myproject(\n    input_t x[4],\n    result_t layer5_out[3],\n"
                                    "    layer7_t layer7_out[2]\n);\n")
    (fw / "defines.h").write_text("typedef ap_fixed<16,6> input_t;\n"
                                  "typedef ap_fixed<17,1,AP_RND,AP_SAT,0> result_t;\n"
                                  "typedef ap_fixed<10,4> layer7_t;\n")
    (tmp_path / "tapeout_io.json").write_text(json.dumps(
        {"format": "tapeout-io/1", "inputs": [{"name": "x", "artifact": "x", "shape": ["N", 4]}],
         "outputs": [{"name": "y", "artifact": "layer5_out", "shape": ["N", 3]},
                     {"name": "z", "artifact": "layer7_out", "shape": ["N", 2]}]}))
    got = expected_output_errors(tmp_path)
    assert set(got) == {"y", "z"}
    assert got["y"]["step"] == 2.0 ** -16 and got["y"]["bound"] == 2.0 ** -17 and got["y"]["rounding"] == "nearest"
    assert got["z"]["step"] == 2.0 ** -6 and got["z"]["bound"] == 2.0 ** -6 and got["z"]["rounding"] == "truncate"
    assert got["y"]["dtype"] == "ap_fixed<17,1>"
