"""Tensor names that are not identifiers (issue 13, failure 3).

PyTorch and Caffe2 exports name tensors 'gpu_0/data_0', 'input.1', '0', '495',
'output/Softmax:0'. Artifacts may rename them (TFLite's signature and hls4ml's C++ need
identifiers), but data files, reports and `tapeout verify` use the source's names: each
target folder's tapeout_io.json maps them, and the runtime runs artifacts through it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import run_cli

INPUTS = {"gpu_0/data_0": 8, "input.1": 4, "0": 3}
OUTPUTS = ("495", "output/Softmax:0")


def _weight(rng: np.random.Generator, name: str, *shape: int):
    from onnx import numpy_helper

    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)


def _names_model(path: Path) -> None:
    """Three inputs, two outputs, every name one an exporter writes and TFLite/C++ cannot take as is."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    inits = [_weight(rng, "onnx::Gemm_0", 8, 16), _weight(rng, "fc.bias", 16), _weight(rng, "w.1", 4, 16),
             _weight(rng, "w.2", 3, 16), _weight(rng, "head.weight", 16, 5), _weight(rng, "value.weight", 16, 1)]
    nodes = [
        helper.make_node("Gemm", ["gpu_0/data_0", "onnx::Gemm_0", "fc.bias"], ["/fc/Gemm_output_0"], name="/fc/Gemm"),
        helper.make_node("MatMul", ["input.1", "w.1"], ["/m1/MatMul_output_0"], name="/m1/MatMul"),
        helper.make_node("MatMul", ["0", "w.2"], ["/m2/MatMul_output_0"], name="/m2/MatMul"),
        helper.make_node("Sum", ["/fc/Gemm_output_0", "/m1/MatMul_output_0", "/m2/MatMul_output_0"], ["s"]),
        helper.make_node("Relu", ["s"], ["onnx::MatMul_9"], name="/act/Relu"),
        helper.make_node("MatMul", ["onnx::MatMul_9", "value.weight"], ["495"], name="/value/MatMul"),
        helper.make_node("MatMul", ["onnx::MatMul_9", "head.weight"], ["logits"], name="/head/MatMul"),
        helper.make_node("Softmax", ["logits"], ["output/Softmax:0"], axis=1, name="/head/Softmax"),
    ]
    graph = helper.make_graph(
        nodes, "names", [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["batch", n]) for k, n in INPUTS.items()],
        [helper.make_tensor_value_info("495", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("output/Softmax:0", TensorProto.FLOAT, ["batch", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def names_build(tmp_path_factory) -> tuple[Path, Path, Path, int, str]:
    """The model compiled to every ONNX-fed target, verified on data keyed by the source's names."""
    root = tmp_path_factory.mktemp("names")
    model, data = root / "model.onnx", root / "eval.npz"
    _names_model(model)
    rng = np.random.default_rng(1)
    np.savez(data, **{k: rng.standard_normal((24, n)).astype(np.float32) for k, n in INPUTS.items()},
             y=rng.integers(0, 5, 24))
    out = root / "out"
    code, _, err = run_cli("compile", model, "-t", "onnx", "-t", "tflite:fp32", "-t", "tflite:int8",
                           "-t", "tensorrt:fp16", "-o", out, "--eval", data, "--calibration", data)
    return model, data, out, code, err


def test_every_target_verifies_on_data_keyed_by_source_names(names_build) -> None:
    _, _, out, code, err = names_build
    assert code == 0, err  # was exit 2: "no data for input(s) gpu_0_data_0"
    report = json.loads((out / "report.json").read_text())
    assert [t["verification"]["passed"] for t in report["targets"]] == [True] * 4
    for t in report["targets"]:
        assert [o["name"] for o in t["verification"]["outputs"]] == list(OUTPUTS) or \
            sorted(o["name"] for o in t["verification"]["outputs"]) == sorted(OUTPUTS)
        assert [p["name"] for p in t["interface"]["inputs"]] == list(INPUTS)
        assert [p["name"] for p in t["interface"]["outputs"]] == list(OUTPUTS)


def test_tflite_records_its_identifier_names(names_build) -> None:
    from tapeout.runtime.io_map import IOMap
    from tapeout.runtime.runners.litert import LiteRTRunner

    _, _, out, code, err = names_build
    assert code == 0, err
    for variant in ("fp32", "int8"):
        folder = out / f"tflite-{variant}"
        io_map = IOMap.load(folder)
        assert io_map is not None
        assert {p.name: p.artifact for p in io_map.inputs} == {"gpu_0/data_0": "gpu_0_data_0", "input.1": "input.1",
                                                               "0": "0"}
        assert [p.artifact for p in io_map.outputs] == list(OUTPUTS)  # the signature keeps output names
        with LiteRTRunner(folder / "model.tflite") as raw:  # the artifact's own names are those recorded
            assert sorted(s.name for s in raw.input_specs()) == sorted(p.artifact for p in io_map.inputs)
            assert sorted(raw.output_names()) == sorted(OUTPUTS)
    report = json.loads((out / "report.json").read_text())
    tfl = next(t for t in report["targets"] if t["target"] == "tflite" and t["variant"] == "fp32")
    assert any("gpu_0_data_0" in n for n in tfl["notes"])


@pytest.mark.parametrize("artifact", ["tflite-fp32/model.tflite", "tflite-int8/model.tflite", "onnx-fp32/model.onnx",
                                      "tensorrt-fp16/model.onnx"])
def test_verify_takes_source_names(names_build, artifact) -> None:
    model, data, out, code, err = names_build
    assert code == 0, err
    code, text, err = run_cli("verify", model, out / artifact, "--data", data, "--json")
    assert code == 0, err
    assert json.loads(text)["passed"] is True


def test_an_artifact_without_its_map_says_what_is_missing(names_build, tmp_path) -> None:
    model, data, out, code, err = names_build
    assert code == 0, err
    shutil.copy(out / "tflite-fp32" / "model.tflite", tmp_path / "model.tflite")
    code, _, err = run_cli("verify", model, tmp_path / "model.tflite", "--data", data)
    assert code == 2
    assert "gpu_0_data_0" in err and "tapeout_io.json" in err and len(err.strip().splitlines()) == 1


def test_hls4ml_takes_a_pytorch_style_mlp_with_dotted_names(tmp_path) -> None:
    """hls4ml writes names into C++: 'input.1' would not compile. The manifest and the runner keep the source's."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Gemm", ["input.1", "fc1.weight", "fc1.bias"], ["onnx::Gemm_0"], transB=1,
                              name="/fc1/Gemm"),
             helper.make_node("Relu", ["onnx::Gemm_0"], ["495"], name="/act/Relu"),
             helper.make_node("Gemm", ["495", "fc2.weight", "fc2.bias"], ["logits"], transB=1, name="/fc2/Gemm"),
             helper.make_node("Relu", ["logits"], ["output/Relu:0"], name="/out/Relu")]
    inits = [_weight(rng, "fc1.weight", 16, 8), _weight(rng, "fc1.bias", 16), _weight(rng, "fc2.weight", 5, 16),
             _weight(rng, "fc2.bias", 5)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("output/Relu:0", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "mlp.onnx")
    np.savez(tmp_path / "eval.npz", **{"input.1": rng.standard_normal((32, 8)).astype(np.float32)})
    code, _, err = run_cli("compile", tmp_path / "mlp.onnx", "-t", "hls4ml", "-o", tmp_path / "out",
                           "--eval", tmp_path / "eval.npz")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    io_ = report["targets"][0]["interface"]
    assert [(p["name"], p["artifact"]) for p in io_["inputs"]] == [("input.1", "input_1")]
    assert io_["outputs"][0]["name"] == "output/Relu:0"
    code, _, err = run_cli("verify", tmp_path / "mlp.onnx", tmp_path / "out" / "hls4ml-vitis",
                           "--data", tmp_path / "eval.npz")
    assert code == 0, err


def test_keras_input_names_with_dash_and_dot(tmp_path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="input-1"), keras.Input((3,), name="in.put")
    y = keras.layers.Dense(5, name="out.dense")(keras.layers.Concatenate(name="cat")([a, b]))
    keras.Model([a, b], y).save(tmp_path / "m.keras")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "eval.npz", **{"input-1": rng.standard_normal((16, 4)).astype(np.float32),
                                       "in.put": rng.standard_normal((16, 3)).astype(np.float32)})
    code, _, err = run_cli("compile", tmp_path / "m.keras", "-t", "tflite", "-t", "onnx", "-o", tmp_path / "out",
                           "--eval", tmp_path / "eval.npz")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    tfl = report["targets"][0]["interface"]
    # TensorFlow keeps these names: the model's signature has the source's.
    assert [(p["name"], p["artifact"]) for p in tfl["inputs"]] == [("input-1", "input-1"), ("in.put", "in.put")]
    code, _, err = run_cli("verify", tmp_path / "m.keras", tmp_path / "out" / "tflite-fp32" / "model.tflite",
                           "--data", tmp_path / "eval.npz")
    assert code == 0, err


def test_tflite_input_names_are_the_ones_tensorflow_keeps() -> None:
    from tapeout.targets.tflite.convert import spec_names

    assert spec_names(["image", "input.1", "0", "in-put", "gpu_0/data_0", "input:0", "input_0", "_x", "é"]) == \
        ["image", "input.1", "0", "in-put", "gpu_0_data_0", "input_0", "input_0_1", "x_x", "x_"]


@pytest.mark.parametrize("text, words", [("{not json", "not a readable I/O map"),
                                         ('{"format": "other"}', "not a tapeout I/O map"),
                                         (None, "does not have")])
def test_a_bad_map_is_one_line_exit_2(names_build, tmp_path, text, words) -> None:
    model, data, out, code, err = names_build
    assert code == 0, err
    folder = tmp_path / "t"
    shutil.copytree(out / "tflite-fp32", folder)
    if text is None:  # a map naming an input the model does not have
        text = (folder / "tapeout_io.json").read_text().replace('"gpu_0_data_0"', '"gpu_0_data_9"')
    (folder / "tapeout_io.json").write_text(text)
    code, _, err = run_cli("verify", model, folder / "model.tflite", "--data", data)
    assert code == 2, err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
