"""Opset 4-7 ONNX files as early PyTorch exporters wrote them: imported, compiled and verified.

onnxruntime has no kernels for Gemm-6, BatchNormalization-6..., so such a source used to be
refused as "not a loadable ONNX model"; now it is lifted to opset 7 first, for the import and
for the source run, and the report says so.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tapeout.compiler.cli import main
from tapeout.compiler.frontends.onnx import load_onnx
from tapeout.compiler.reference_runner import ReferenceRunner
from tapeout.runtime.runners.onnxrt import OnnxRuntimeRunner, lift_old_opset

from tests.compiler.frontends import old_opset_builders as ob

NOTE = "source runner: opset {} upgraded to opset 7 for onnxruntime"


def _x(model: onnx.ModelProto, batch: int = 1, seed: int = 1) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal((batch, *dims[1:])).astype(np.float32)


def _cli(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out, err)
    return code, out.getvalue(), err.getvalue()


def test_old_files_fail_todays_checker_and_onnxruntime() -> None:
    """The premise: these files are what the lift is for (a check on the builders, not on tapeout)."""
    import onnxruntime as ort

    with pytest.raises(onnx.checker.ValidationError, match="consumed_inputs"):
        onnx.checker.check_model(ob.cnn(6))
    with pytest.raises(Exception, match="Gemm"):
        ort.InferenceSession(ob.mlp(6).SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("opset", [4, 5, 6, 7])
def test_lift_matches_numpy(opset: int) -> None:
    """The lift computes what the old file meant, including Add-6's axis-aligned broadcast
    (onnx's own 6 -> 7 adapter unsqueezes a [C] bias at axis=1 the wrong way)."""
    model = ob.cnn(opset, seed=opset)
    lifted, old = lift_old_opset(model)
    assert old == (opset if opset < 7 else None)
    onnx.checker.check_model(lifted)
    x = _x(model)
    with OnnxRuntimeRunner(lifted.SerializeToString()) as r:
        got = r.infer({"input.1": x})["output"]
    np.testing.assert_allclose(got, ob.reference(model, x), atol=1e-4, rtol=1e-4)


def test_runner_upgrades_a_file_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "mlp6.onnx"
    onnx.save(ob.mlp(6), path)
    x = _x(ob.mlp(6), batch=3)
    with OnnxRuntimeRunner(path) as r:
        got = r.infer({"0": x})["output"]
        assert r.notes == [NOTE.format(6)]
    np.testing.assert_allclose(got, ob.reference(ob.mlp(6), x), atol=1e-5)
    onnx.save(ob.mlp(7), path)
    with OnnxRuntimeRunner(path) as r:
        assert r.notes == []


@pytest.mark.parametrize("name, build, opset", [
    ("mlp6", ob.mlp, 6),
    ("cnn6", ob.cnn, 6),
    ("cnn4", ob.cnn, 4),  # Reshape with a shape attribute, BatchNormalization-1
])
def test_import_matches_numpy(tmp_path: Path, name: str, build, opset: int) -> None:
    model = build(opset)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    graph = load_onnx(path)
    assert any(f"opset {opset}" in n for n in graph.metadata["notes"])
    x = _x(model, batch=2)
    got = ReferenceRunner(graph, source_layout=True).infer({graph.inputs[0]: x})[graph.outputs[0]]
    np.testing.assert_allclose(got, ob.reference(model, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name, build, opset, targets", [
    ("mlp6", ob.mlp, 6, "onnx,tflite:fp32"),
    ("cnn6", ob.cnn, 6, "onnx,tflite:fp32"),
    ("cnn7", ob.cnn, 7, "onnx"),
])
def test_compile_through_cli(tmp_path: Path, name: str, build, opset: int, targets: str) -> None:
    model = build(opset)
    src = tmp_path / f"{name}.onnx"
    onnx.save(model, src)
    out = tmp_path / "out"
    code, stdout, err = _cli("compile", src, *[a for t in targets.split(",") for a in ("-t", t)], "-o", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [t["verification"]["passed"] for t in report["targets"]] == [True] * len(targets.split(","))
    assert all(t["verification"]["runner"].endswith("vs onnxruntime") for t in report["targets"])
    if opset < 7:
        assert NOTE.format(opset) in report["notes"]
        assert NOTE.format(opset) in stdout
    else:
        assert not any("upgraded" in n for n in report["notes"])
    # The artifact computes what the old file meant, not only what the lifted copy computes.
    x = _x(model, batch=4, seed=5)
    with OnnxRuntimeRunner(out / "onnx-fp32" / "model.onnx") as r:
        got = next(iter(r.infer({r.input_specs()[0].name: x}).values()))
    np.testing.assert_allclose(got, ob.reference(model, x), atol=1e-4, rtol=1e-4)


def test_verify_command_runs_an_old_source(tmp_path: Path) -> None:
    src = tmp_path / "mlp6.onnx"
    onnx.save(ob.mlp(6), src)
    code, _, err = _cli("compile", src, "-t", "onnx", "-o", tmp_path / "out")
    assert code == 0, err
    code, stdout, err = _cli("verify", src, tmp_path / "out" / "onnx-fp32" / "model.onnx")
    assert code == 0, err
    assert NOTE.format(6) in stdout
