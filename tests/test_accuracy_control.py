"""Accuracy control (acceptance 4): --max-accuracy-drop fails a quantized artifact over budget,
--fallback keeps the most sensitive layers float until the budget (or cosine/agreement) holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.cli_run import run_cli


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A classifier whose 'outlier' layer has one unit with a range ~1000x the others: int8's one
    per-tensor scale for that output rounds the units the head reads to a few steps."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inp = keras.Input((16,), name="x")
    h = keras.layers.Dense(32, activation="relu", name="hidden")(inp)
    o = keras.layers.Dense(16, name="outlier")(h)
    out = keras.layers.Dense(4, activation="softmax", name="head")(o)
    model = keras.Model(inp, out, name="outlier_net")
    w, b = model.get_layer("outlier").get_weights()
    b[0] = 2000.0  # the outlier unit, constant and far from the others' range
    model.get_layer("outlier").set_weights([w, b])
    hw, hb = model.get_layer("head").get_weights()
    hw[0, :] = 0.0  # the head ignores it, so only the crushed units matter
    model.get_layer("head").set_weights([hw * 4.0, hb])
    folder = tmp_path_factory.mktemp("outlier")
    path = folder / "model.keras"
    model.save(path)
    x = rng.normal(size=(600, 16)).astype(np.float32)
    probs = model.predict(x, verbose=0)
    # Labels the float model gets right with a clear margin, so the budget is about quantization.
    top2 = np.sort(probs, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.2
    x, y = x[clear][:200], probs[clear][:200].argmax(1)
    cal, ev = folder / "cal.npz", folder / "eval.npz"
    np.savez(cal, x=rng.normal(size=(64, 16)).astype(np.float32))
    np.savez(ev, x=x, y=y)
    return path, cal, ev


def compile_outlier(outlier_model, out: Path, *extra: str) -> tuple[int, str, str, dict]:
    path, cal, ev = outlier_model
    code, stdout, err = run_cli("compile", path, "-t", "tflite:int8", "-o", out, "--calibration", cal,
                                "--eval", ev, "--max-accuracy-drop", "0.1", *extra)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return code, stdout, err, report


def test_over_budget_without_fallback_exits_1(outlier_model, tmp_path):
    code, stdout, err, report = compile_outlier(outlier_model, tmp_path)
    assert code == 1, err
    t = report["targets"][0]
    v = t["verification"]
    assert not v["passed"] and v["max_accuracy_drop"] == 0.1
    assert 100 * (v["accuracy"]["source"] - v["accuracy"]["artifact"]) > 0.1
    assert any("exceeds --max-accuracy-drop 0.1" in n for n in t["notes"])
    assert "accuracy_control" not in t["quantization"] and t["quantization"]["float_layers"] == []


def test_fallback_keeps_the_outlier_layer_float_and_meets_the_budget(outlier_model, tmp_path):
    code, stdout, err, report = compile_outlier(outlier_model, tmp_path, "--fallback")
    assert code == 0, err + stdout
    t = report["targets"][0]
    v, q = t["verification"], t["quantization"]
    # The real artifact (LiteRT), not only the simulation, is within budget.
    assert v["passed"] and 100 * (v["accuracy"]["source"] - v["accuracy"]["artifact"]) <= 0.1
    ac = q["accuracy_control"]
    assert ac["met"] and "outlier" in ac["kept_float"] and "outlier" in q["float_layers"]
    assert "hidden" not in q["float_layers"]  # the insensitive layer stays quantized
    first, last = ac["steps"][0], ac["steps"][-1]
    assert first["kept_float"] == [] and not first["passed"] and first["accuracy_drop_pt"] > 0.1
    assert last["passed"] and last["accuracy_drop_pt"] <= 0.1
    assert ac["most_sensitive"][0]["nodes"][0] == "outlier"
    assert "fallback tflite:int8 step 0: as calibrated" in stdout and "float outlier" in stdout


def test_a_layer_fallback_keeps_float_has_its_trained_bias(outlier_model, tmp_path):
    """Bias correction moves the biases of the layers it quantizes; the one --fallback keeps float
    computes in float with the bias it was trained with (float32, bit for bit in the artifact),
    and the steps are judged against the model's own float outputs."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    code, stdout, err, report = compile_outlier(outlier_model, tmp_path, "--fallback")
    assert code == 0, err + stdout
    q = report["targets"][0]["quantization"]
    assert "outlier" in q["float_layers"] and any("bias(es) corrected" in d for d in q["details"])
    # The details count what the fallback left quantized: the kept layers' biases are trained ones.
    kept = next(d for d in q["details"] if d.startswith("kept float:"))
    assert "outlier" in kept and any(d.startswith("1 conv/dense bias(es) corrected") for d in q["details"]), q
    trained = keras.models.load_model(outlier_model[0]).get_layer("outlier").get_weights()[1]
    it = Interpreter(model_path=str(tmp_path / "tflite-int8" / "model.tflite"))
    floats = [it.get_tensor(d["index"]) for d in it.get_tensor_details()
              if d["dtype"] == np.float32 and tuple(d["shape"]) == (16,)]
    assert any(np.array_equal(f, trained) for f in floats), floats


def test_fallback_without_labels_finds_a_softmax_that_quantizes_to_zero(tmp_path):
    """The untrained-MobileNetV2 problem in small: 1000 probabilities of ~0.001 are all below
    int8's fixed 1/256 softmax step, so the int8 output is all zeros (cosine 0)."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="features")(inp)
    out = keras.layers.Dense(1000, activation="softmax", name="predictions",
                             kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))(h)
    path = tmp_path / "wide.keras"
    keras.Model(inp, out).save(path)
    code, _, err = run_cli("compile", path, "-t", "onnx:int8", "-o", tmp_path / "plain", "--calibration", "synthetic")
    assert code == 1, err  # cosine 0 without the fallback
    code, _, err = run_cli("compile", path, "-t", "onnx:int8", "-o", tmp_path / "fb", "--calibration", "synthetic",
                           "--fallback")
    assert code == 0, err
    t = json.loads((tmp_path / "fb" / "report.json").read_text())["targets"][0]
    ac = t["quantization"]["accuracy_control"]
    # The softmax first; near-equal probabilities may then need more float for top-1 agreement.
    assert ac["kept_float"][0] == "predictions/softmax" and ac["met"]
    assert ac["steps"][0]["cosine"] < 0.5 and ac["steps"][1]["cosine"] >= 0.99
    assert ac["most_sensitive"][0] == {"nodes": ["predictions/softmax"], "noise_to_signal": 1.0}
    assert "cosine >= 0.99" in ac["criterion"] and t["verification"]["cosine"] >= 0.99


def test_flag_misuse_is_a_usage_error(outlier_model, tmp_path):
    path, cal, ev = outlier_model
    for argv, words in [
        (["-t", "tflite:int8", "--calibration", cal, "--max-accuracy-drop", "1"], "needs --eval DATA with labels"),
        (["-t", "tflite:fp32", "--fallback"], "--fallback applies to quantized targets"),
        (["-t", "onnx:int8", "--calibration", cal, "--eval", cal, "--max-accuracy-drop", "1"], "no array 'y'"),
        (["-t", "onnx:int8", "--calibration", cal, "--eval", ev, "--max-accuracy-drop", "-1"], "must be >= 0"),
    ]:
        code, _, err = run_cli("compile", path, "-o", tmp_path / "o", *argv)
        assert code == 2 and err.startswith("tapeout: error:") and words in err, (argv, err)


def test_sensitivity_ranks_the_unit_that_crushes_its_reader_first(outlier_model):
    from tapeout.compiler.accuracy_control import sensitivity, units
    from tapeout.compiler.calibration import calibrate
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.pipeline import Pipeline
    from tapeout.compiler.passes.quantize import Quantize, SplitActivations
    from tapeout.compiler.passes.registry import default_pipeline

    path, cal, ev = outlier_model
    g = default_pipeline().run(load_model(path)[0]).graph
    g = Pipeline([SplitActivations()]).run(g).graph
    g = Pipeline([Quantize("int8")]).run(calibrate(g, {"x": np.load(cal)["x"]})).graph
    ranked = sensitivity(g, {"x": np.load(ev)["x"]})
    assert {u for u, _ in ranked} == set(units(g))
    (top, worst), (_, second) = ranked[0], ranked[1]
    assert top == ("outlier", "head") and worst > 10 * second
