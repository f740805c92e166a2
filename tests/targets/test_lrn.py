"""ONNX LRN end to end: Conv -> Relu -> LRN -> MaxPool -> Gemm compiled with the CLI for onnx,
onnx:int8, tflite:fp32, tflite:int8 and tensorrt:fp16, each verified against onnxruntime on the
source; what each artifact holds for the LRN; and the one-line refusals (hls4ml, an even size in
TFLite, TFLite Micro with tflite.mcu, ethos-u)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.cli_run import run_cli
from tests.compiler.frontends import onnx_builders as B

TARGETS = ("onnx", "onnx:int8", "tflite:fp32", "tflite:int8", "tensorrt:fp16")
LRN = {"size": 5, "alpha": 0.5, "beta": 0.75, "bias": 2.0}


def _model(size: int = 5) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {"w": B.rand(rng, 8, 3, 3, 3), "b": B.rand(rng, 8), "fc": B.rand(rng, 10, 8 * 4 * 4, scale=0.2),
             "fcb": B.rand(rng, 10)}
    nodes = [B.node("Conv", ["x", "w", "b"], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             B.node("Relu", ["conv"], "relu"),
             B.node("LRN", ["relu"], "norm", **{**LRN, "size": size}),
             B.node("MaxPool", ["norm"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
             B.node("Flatten", ["pool"], "flat"),
             B.node("Gemm", ["flat", "fc", "fcb"], "y", transB=1)]
    return B.make_model(nodes, {"x": ["N", 3, 8, 8]}, {"y": ["N", 10]}, inits, opset=13)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("lrn")
    # Scaled up so that the sum of squares, not the bias, drives the LRN denominator.
    x = np.random.default_rng(1).standard_normal((64, 3, 8, 8)).astype(np.float32) * 3
    np.savez(folder / "cal.npz", x=x)
    return B.save(_model(), folder, "lrn_cnn"), folder / "cal.npz"


@pytest.fixture(scope="module")
def built(source, tmp_path_factory) -> dict:
    model, cal = source
    out = tmp_path_factory.mktemp("lrn_out")
    targets = [a for t in TARGETS for a in ("-t", t)]
    code, _, err = run_cli("compile", model, *targets, "--calibration", cal, "-o", out, "--no-cache",
                           "--no-timings", "--json")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    return {"out": out, **{f"{t['target']}:{t['variant']}": t for t in report["targets"]}}


@pytest.mark.parametrize("target", ["onnx:fp32", "onnx:int8", "tflite:fp32", "tflite:int8", "tensorrt:fp16"])
def test_every_target_verifies_against_the_source(built, target) -> None:
    v = built[target]["verification"]
    assert v["passed"], v
    exact = target.endswith(("fp32", "fp16"))
    assert v["cosine"] > (0.9999 if exact else 0.999)
    assert v["top1_agreement"] >= (1.0 if exact else 0.98)


def test_onnx_keeps_the_lrn_node_and_int8_keeps_it_float(built) -> None:
    fp32 = onnx.load(built["out"] / "onnx-fp32" / "model.onnx")
    (lrn,) = [n for n in fp32.graph.node if n.op_type == "LRN"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lrn.attribute}
    assert attrs["size"] == 5 and attrs["alpha"] == pytest.approx(0.5) and attrs["bias"] == pytest.approx(2.0)
    assert not [n for n in fp32.graph.node if n.op_type == "Transpose"]
    int8 = onnx.load(built["out"] / "onnx-int8" / "model.onnx")
    producer = {o: n for n in int8.graph.node for o in n.output}
    (lrn,) = [n for n in int8.graph.node if n.op_type == "LRN"]
    assert producer[lrn.input[0]].op_type == "DequantizeLinear"  # float in, between the integer layers
    readers = [n.op_type for n in int8.graph.node if lrn.output[0] in n.input]
    assert readers == ["QuantizeLinear"]
    assert built["onnx:int8"]["quantization"]["float_layers"] == ["norm"]
    assert "1 LRN node(s) run in float between DequantizeLinear and QuantizeLinear (onnxruntime has no integer " \
        "LRN): norm" in built["onnx:int8"]["notes"]


def _tflite(built, variant: str):
    from tapeout.targets.tflite.flatbuffer import read_model

    return read_model((built["out"] / f"tflite-{variant}" / "model.tflite").read_bytes())


def test_tflite_fp32_holds_local_response_normalization(built) -> None:
    info = _tflite(built, "fp32")
    assert info.op_names().count("LOCAL_RESPONSE_NORMALIZATION") == 1
    notes = built["tflite:fp32"]["notes"]
    # TFLite Micro has no LRN kernel: no arena in model.h, and the note says why.
    assert "arena_bytes" not in built["tflite:fp32"]["tflite_micro"]
    assert any(n.startswith("not run in TFLite Micro") and "LOCAL_RESPONSE_NORMALIZATION" in n for n in notes)


def test_tflite_int8_runs_lrn_in_float_between_integer_layers(built) -> None:
    info = _tflite(built, "int8")
    (lrn,) = [o for o in info.ops if o.op == "LOCAL_RESPONSE_NORMALIZATION"]
    assert info.tensors[lrn.inputs[0]].dtype == "FLOAT32" and info.tensors[lrn.outputs[0]].dtype == "FLOAT32"
    assert [o for o in info.ops if o.op == "CONV_2D" and info.tensors[o.outputs[0]].dtype == "INT8"]
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(info.op_names())
    notes = built["tflite:int8"]["notes"]
    assert any(n.startswith("1 LRN node(s) run in float between dequantize and quantize") and n.endswith(": norm")
               for n in notes)
    assert not any(n.startswith("kept float by request") for n in notes)


def test_tensorrt_fp16_pins_lrn_to_fp32(built) -> None:
    plan = json.loads((built["out"] / "tensorrt-fp16" / "plan.json").read_text())
    (row,) = [r for r in plan["precision"]["layers"] if r["op"] == "lrn"]
    assert row["precision"] == "fp32" and row["pinned"]
    assert "--layerPrecisions=norm:fp32" in plan["trtexec"]["command"]
    if not built["tensorrt:fp16"]["engine"]["built"]:  # verified on onnxruntime, fp16 emulated
        assert "fp16 emulated" in built["tensorrt:fp16"]["verification"]["runner"]


def _one_line_refusal(*argv) -> str:
    code, _, err = run_cli(*argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tapeout: error: "), err
    return lines[0]


def test_hls4ml_refuses_lrn_in_one_line(source, tmp_path) -> None:
    line = _one_line_refusal("compile", source[0], "-t", "hls4ml", "-o", tmp_path / "out", "--no-cache")
    assert "node 'norm': op 'lrn' has no hls4ml fixed-point model" in line
    assert not (tmp_path / "out" / "hls4ml-vitis").exists()


def test_tflite_refuses_an_even_size_in_one_line(tmp_path) -> None:
    # onnxruntime refuses an even size too, so the source cannot be run: --no-verify.
    path = B.save(_model(size=4), tmp_path, "even")
    line = _one_line_refusal("compile", path, "-t", "tflite:fp32", "-o", tmp_path / "out", "--no-cache",
                             "--no-verify")
    assert "target tflite:fp32 cannot express node(s) 'norm' (lrn, size 4)" in line


def test_tflite_mcu_names_the_missing_lrn_kernel(source, tmp_path) -> None:
    line = _one_line_refusal("compile", source[0], "-t", "tflite:fp32", "--target-option", "tflite.mcu=true",
                             "-o", tmp_path / "out", "--no-cache", "--no-verify")
    assert "has no kernel for LOCAL_RESPONSE_NORMALIZATION" in line


def test_ethos_u_refuses_lrn_in_one_line(source, tmp_path) -> None:
    pytest.importorskip("ethosu.vela")
    line = _one_line_refusal("compile", source[0], "-t", "ethos-u", "--calibration", source[1], "-o", tmp_path / "out",
                             "--no-cache")
    assert "target ethos-u cannot run node(s) 'norm' (lrn): neither the NPU nor TFLite Micro has an LRN kernel" in line
