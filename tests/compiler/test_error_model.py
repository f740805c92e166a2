"""compile's error model for float32 targets (issue 15 section 1): false failures gone, real errors still caught.

The models are ONNX CNNs built here with onnx.helper: a sharp one (NCHW, logits ~1e5 with a
near one-hot softmax, so float32 reordering alone moves its probabilities by ~5e-4) and a
well-conditioned one, on which a 1e-3 error is far beyond float32 rounding.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tapeout.compiler import api  # noqa: E402
from tapeout.compiler.cli import main  # noqa: E402
from tapeout.targets.onnx.target import OnnxTarget  # noqa: E402


def build_cnn(path: Path, *, offset: float, spread: float, seed: int = 0, classes: int = 100) -> Path:
    """x [N,3,16,16] -> conv relu -> conv/2 relu -> global pool -> gemm -> softmax.

    The gemm's weights are ``offset`` plus noise of std ``spread``: offset 3000 makes logits ~1e5
    whose differences are O(10) (a sharp softmax over huge logits); offset 0 a plain classifier."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((16, 3, 3, 3)) * 0.5, "b1": rng.standard_normal(16) * 0.1,
        "w2": rng.standard_normal((32, 16, 3, 3)) * 0.2, "b2": rng.standard_normal(32) * 0.1,
        "w3": offset + rng.standard_normal((32, classes)) * spread, "b3": rng.standard_normal(classes),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def sharp(tmp_path_factory) -> Path:
    return build_cnn(tmp_path_factory.mktemp("sharp") / "sharp.onnx", offset=3000.0, spread=2.0)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return build_cnn(tmp_path_factory.mktemp("plain") / "plain.onnx", offset=0.0, spread=0.3, classes=10)


def run_cli(*argv: object) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out, err)
    return code, out.getvalue() + err.getvalue()


def outputs(outdir: Path) -> dict[str, dict]:
    report = json.loads((outdir / "report.json").read_text())
    return {f"{t['target']}:{t['variant']}": t["verification"]["outputs"][0] for t in report["targets"]}


# ----------------------------------------------------------- false failures
def test_sharp_softmax_passes_with_the_error_model_and_failed_before(sharp, tmp_path):
    code, text = run_cli("compile", sharp, "-t", "onnx", "-t", "tflite:fp32", "-o", tmp_path / "em", "--json")
    assert code == 0, text
    got = outputs(tmp_path / "em")
    tfl = got["tflite:fp32"]
    assert tfl["passed"] and tfl["rule"] == "error-model"
    em = tfl["error_model"]
    assert em["e_art"] <= em["bound"] and em["e_src"] <= em["sanity_bound"] and em["e_ir32"] is not None
    # Float32 rounding of 1e5 logits moves these probabilities past the old elementwise 1e-4.
    assert tfl["max_abs_err"] > 1e-4 and em["e_src"] > 1e-5 * em["scale"]
    # The rule before the error model: atol 1e-4 (scaled by max(1, RMS) = 1 for probabilities), rtol 1e-4.
    code, _ = run_cli("compile", sharp, "-t", "onnx", "-t", "tflite:fp32", "-o", tmp_path / "old",
                      "--atol", "1e-4", "--rtol", "1e-4", "--json")
    assert code == 1 and not outputs(tmp_path / "old")["tflite:fp32"]["passed"]


def test_default_rule_before_the_error_model_failed_the_sharp_softmax(sharp, tmp_path, monkeypatch):
    from tapeout.compiler.stages import verify as verify_stage

    monkeypatch.setattr(verify_stage, "error_model_applies", lambda *a: False)  # today's default tolerance
    report = api.compile_model(sharp, ["tflite:fp32"], tmp_path / "o")
    out = report.targets[0].verification.outputs[0]
    assert not report.targets[0].verification.passed and out["rule"] == "elementwise"


def test_atol_rtol_force_elementwise(sharp, tmp_path):
    code, _ = run_cli("compile", sharp, "-t", "onnx", "-t", "tflite:fp32", "-o", tmp_path / "o",
                      "--atol", "1e-5", "--rtol", "1e-5", "--json")
    assert code == 1
    got = outputs(tmp_path / "o")
    assert {o["rule"] for o in got.values()} == {"elementwise"}
    assert all(o["error_model"] is None and o["tolerance"]["error_model"] is False for o in got.values())
    assert not got["tflite:fp32"]["passed"]


# ------------------------------------------------------------ real errors
def tamper(monkeypatch, change) -> None:
    """The onnx target writes its model, then ``change(name, array)`` edits its initializers (one must change)."""
    emit = OnnxTarget.emit

    def wrong(self, graph, ctx):
        res = emit(self, graph, ctx)
        outdir = ctx.outdir
        model = onnx.load(str(outdir / "model.onnx"))
        changed = 0
        for t in model.graph.initializer:
            a = numpy_helper.to_array(t).copy()
            if change(t.name, a):
                t.CopyFrom(numpy_helper.from_array(a, t.name))
                changed += 1
        assert changed == 1
        onnx.save(model, str(outdir / "model.onnx"))
        return res

    monkeypatch.setattr(OnnxTarget, "emit", wrong)


# The second conv's weight and bias, found by shape (the emitter names them itself).
def _one_weight_up_1pct(name: str, a: np.ndarray) -> bool:
    if a.shape != (32, 16, 3, 3):
        return False
    flat = a.reshape(-1)
    flat[int(np.argmax(np.abs(flat)))] *= 1.01
    return True


def _dropped_bias(name: str, a: np.ndarray) -> bool:
    if a.shape != (32,):
        return False
    a[...] = 0
    return True


@pytest.mark.parametrize("change", [_one_weight_up_1pct, _dropped_bias], ids=["weight+1%", "dropped-bias"])
def test_a_wrong_artifact_still_fails(plain, tmp_path, monkeypatch, change):
    report = api.compile_model(plain, ["onnx"], tmp_path / "ok")
    ok = report.targets[0].verification
    assert ok.passed and ok.outputs[0]["rule"] == "error-model"
    tamper(monkeypatch, change)
    report = api.compile_model(plain, ["onnx"], tmp_path / "bad")
    v = report.targets[0].verification
    out = v.outputs[0]
    assert not v.passed and out["rule"] == "error-model" and "exceeds" in out["reason"]
    assert out["error_model"]["e_art"] > out["error_model"]["bound"]


def test_artifact_off_by_1e_3_relative_fails(plain, tmp_path, monkeypatch):
    """A lowering error of 1e-3 (relative): the artifact's outputs all scaled by 1.001."""
    make = OnnxTarget.runner

    def runner(self, outdir):
        r = make(self, outdir)
        infer = r._infer
        r._infer = lambda feeds: {k: v * np.float32(1.001) for k, v in infer(feeds).items()}
        return r

    monkeypatch.setattr(OnnxTarget, "runner", runner)
    report = api.compile_model(plain, ["onnx"], tmp_path / "o")
    out = report.targets[0].verification.outputs[0]
    em = out["error_model"]
    assert not out["passed"] and out["rule"] == "error-model"
    assert em["e_art"] == pytest.approx(1e-3 * em["scale"], rel=0.05) and em["e_art"] > 100 * em["bound"]


def test_source_far_from_the_ir_fails_the_sanity_guard(plain, tmp_path, monkeypatch):
    """A wrong import (one bias lost) gives an IR and an artifact that agree with each other, not with
    the source; e_art is tiny, so only the sanity guard stands between it and a pass."""
    from tapeout.compiler.stages import compile as compile_stage

    load = compile_stage.load_model

    def wrong_import(*args, **kwargs):
        graph, info = load(*args, **kwargs)
        name = next(n for n in graph.constants if graph.constants[n].ndim == 1 and graph.constants[n].size == 32)
        graph.constants[name] = np.zeros_like(graph.constants[name])
        return graph, info

    monkeypatch.setattr(compile_stage, "load_model", wrong_import)
    report = api.compile_model(plain, ["onnx"], tmp_path / "o")
    out = report.targets[0].verification.outputs[0]
    em = out["error_model"]
    assert not out["passed"] and "import is wrong" in out["reason"]
    assert em["e_art"] <= em["floor"] * em["scale"] * 10 and em["e_src"] > em["sanity_bound"]


# ------------------------------------------------------------ tapeout verify
def test_verify_judges_a_float_artifact_by_the_error_model(sharp, tmp_path):
    assert run_cli("compile", sharp, "-t", "tflite:fp32", "-o", tmp_path / "o", "--json")[0] == 0
    tflite = tmp_path / "o" / "tflite-fp32" / "model.tflite"
    out, err = io.StringIO(), io.StringIO()
    assert main(["verify", str(sharp), str(tflite), "--json"], out, err) == 0, err.getvalue()
    (o,) = json.loads(out.getvalue())["outputs"]
    assert o["passed"] and o["rule"] == "error-model" and o["max_abs_err"] > 1e-4
    code, text = run_cli("verify", sharp, tflite)
    assert code == 0 and "error model: RMSE vs float64 IR" in text
    code, text = run_cli("verify", sharp, tflite, "--atol", "1e-4", "--rtol", "1e-4", "--json")
    assert code == 1 and json.loads(text)["outputs"][0]["rule"] == "elementwise"


def test_verify_falls_back_to_elementwise_when_the_source_does_not_import(sharp, tmp_path, monkeypatch):
    from tapeout.compiler.errors import FrontendError

    assert run_cli("compile", sharp, "-t", "onnx", "-o", tmp_path / "o", "--json")[0] == 0

    def refuse(*a, **k):
        raise FrontendError("op Foo is not supported")

    from tapeout.compiler.stages import verify as verify_stage

    monkeypatch.setattr(verify_stage, "load_model", refuse)
    result = api.verify_artifact(sharp, tmp_path / "o" / "onnx-fp32" / "model.onnx")
    assert result.passed and result.outputs[0].rule == "elementwise"  # onnxruntime twice: identical outputs
    assert any("does not import" in n and "op Foo" in n for n in result.notes)


# ------------------------------------------------------- which targets, pruning
def test_tensorrt_fp32_uses_the_error_model_and_quantized_variants_do_not(plain, tmp_path):
    report = api.compile_model(plain, ["tensorrt:fp32", "tensorrt:fp16", "onnx:int8"], tmp_path / "o",
                               calibration="synthetic")
    rules = {f"{t.target}:{t.variant}": t.verification.outputs[0]["rule"] for t in report.targets}
    assert rules == {"tensorrt:fp32": "error-model", "tensorrt:fp16": "cosine/top-1", "onnx:int8": "cosine/top-1"}
    assert report.targets[0].verification.passed


def test_pruned_compile_is_judged_against_the_pruned_ir_in_float64(plain, tmp_path, monkeypatch):
    seen = []
    from tapeout.compiler.stages import verify as verify_stage

    ir_outputs = verify_stage.ir_outputs

    def spy(graph, dataset, precision):
        seen.append((precision, sum(int((graph.constants[n] == 0).sum()) for n in graph.constants)))
        return ir_outputs(graph, dataset, precision)

    monkeypatch.setattr(verify_stage, "ir_outputs", spy)
    report = api.compile_model(plain, ["onnx"], tmp_path / "o", prune="magnitude:0.5")
    v = report.targets[0].verification
    assert v.passed and v.outputs[0]["rule"] == "error-model" and v.runner.endswith("pruned IR (reference interpreter)")
    # One float64 run, on the pruned graph (half its weights zero); the float32 IR is the pruned reference itself.
    assert [p for p, _ in seen] == ["float64"] and seen[0][1] > 1000
    em = v.outputs[0]["error_model"]
    assert em["e_src"] == em["e_ir32"]
