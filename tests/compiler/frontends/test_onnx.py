"""ONNX front end: every supported op against onnxruntime, layouts, batch handling, refusals.

Each model is built with onnx.helper (tests/compiler/frontends/onnx_builders.py), run by
onnxruntime on NCHW inputs, imported with ``load_onnx`` and run by the reference
interpreter in the source layout (``ReferenceRunner(graph, source_layout=True)``); most
also go through the default passes and the ONNX target and run again in onnxruntime.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tapeout.compiler.errors import FrontendError
from tapeout.compiler.frontends.onnx import load_onnx
from tapeout.compiler.ir import Graph
from tapeout.compiler.passes.registry import default_pipeline
from tapeout.compiler.reference_runner import ReferenceRunner
from tapeout.targets.onnx.emit import graph_to_onnx

sys.path.insert(0, str(Path(__file__).parent))
import onnx_builders as B  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------ helpers
def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def feeds_for(sess: ort.InferenceSession, batch: int, seed: int = 0, low: float = -2.0,
              high: float = 2.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        out[i.name] = rng.uniform(low, high, shape).astype(np.float32)
    return out


def ort_run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def transposes(graph: Graph) -> int:
    return sum(n.op == "transpose" for n in graph.nodes)


def ops_of(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


def check(model: onnx.ModelProto, folder: Path, *, batch: int = 2, atol: float = 1e-5, roundtrip: bool = True,
          name: str = "model", **data: Any) -> Graph:
    """Import ``model``; the interpreter and (with ``roundtrip``) the ONNX artifact must match onnxruntime."""
    path = B.save(model, folder, name)
    graph = load_onnx(path)
    src = session(path)
    feeds = feeds_for(src, batch, **data)
    want = ort_run(src, feeds)
    got = ReferenceRunner(graph, source_layout=True).infer(feeds)
    assert list(got) == list(want), "output names must be the source's"
    for k in want:
        assert got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], atol=atol, rtol=1e-5, err_msg=f"interpreter, output {k}")
    if roundtrip:
        artifact = session(graph_to_onnx(default_pipeline().run(graph).graph))
        assert [i.name for i in artifact.get_inputs()] == [i.name for i in src.get_inputs()]
        again = ort_run(artifact, feeds)
        for k in want:
            np.testing.assert_allclose(again[k], want[k], atol=atol, rtol=1e-5, err_msg=f"artifact, output {k}")
    return graph


def refused(model: onnx.ModelProto | bytes, folder: Path, name: str = "bad") -> str:
    path = folder / f"{name}.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    with pytest.raises(FrontendError) as info:
        load_onnx(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


# ---------------------------------------------------------- acceptance 2..5
@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory) -> Path:
    return B.save(B.pytorch_cnn(batch=1), tmp_path_factory.mktemp("cnn"), "pytorch_cnn")


def test_pytorch_cnn_compiles_to_onnx_and_verifies(cnn_path: Path, tmp_path: Path) -> None:
    from tapeout.compiler.api import compile_model

    report = compile_model(cnn_path, ["onnx"], tmp_path / "out")
    target = report.targets[0]
    assert target.verification.passed and target.verification.max_abs_err < 1e-4
    assert target.extra["transposes"] == 0
    artifact = onnx.load(str(tmp_path / "out" / "onnx-fp32" / "model.onnx"))
    (inp,), (out,) = artifact.graph.input, artifact.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 16, 16]  # NCHW kept, batch dynamic
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("fixed batch of 1" in n for n in saved["notes"])
    props = {p.key: p.value for p in artifact.metadata_props}
    assert props["notes"].startswith("the source model has a fixed batch of 1")


def test_pytorch_cnn_ir_has_no_transposes(cnn_path: Path) -> None:
    graph = load_onnx(cnn_path)
    assert transposes(graph) == 0
    assert ops_of(graph) == ["conv", "batch_norm", "relu", "max_pool", "conv", "batch_norm", "relu", "max_pool",
                             "flatten", "dense"]
    assert graph.io_layouts == {"input": "NCHW", "logits": "NC"}
    assert graph.types["input"].shape == ("N", 16, 16, 3)


@pytest.mark.parametrize("opset", [7, 9, 11, 13, onnx.defs.onnx_opset_version()])
def test_pytorch_cnn_at_every_opset(opset: int, tmp_path: Path) -> None:
    model = B.pytorch_cnn(batch="N")
    model.opset_import[0].version = opset
    model.ir_version = max(4, helper.find_min_ir_version_for(list(model.opset_import)))
    graph = check(model, tmp_path)
    assert graph.metadata["source_opset"] == str(opset)


def test_resnet_style_model_has_no_transposes(tmp_path: Path) -> None:
    graph = check(B.resnet_style(batch="N", blocks=3), tmp_path, batch=3)
    assert transposes(graph) == 0
    assert ops_of(graph).count("add") == 3
    optimized = default_pipeline().run(graph).graph
    assert transposes(optimized) == 0
    assert sum(n.op_type == "Transpose" for n in graph_to_onnx(optimized).graph.node) == 0


def _constant_of_shape_model(batch: int | str) -> onnx.ModelProto:
    """Conv weights from ConstantOfShape (+ Mul, so they are not all equal); the reshape target
    before the Gemm from Shape -> Gather(0) -> Unsqueeze -> Concat(-1)."""
    rng = np.random.default_rng(1)
    inits = {"wshape": np.array([4, 3, 3, 3], np.int64), "wscale": B.rand(rng, 4, 3, 3, 3),
             "zero": np.array(0, np.int64), "axis0": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
             "fc.w": B.rand(rng, 4 * 6 * 6, 5, scale=0.1)}
    nodes = [
        B.node("ConstantOfShape", ["wshape"], "ones", value=numpy_helper.from_array(np.array([1.0], np.float32))),
        B.node("Mul", ["ones", "wscale"], "w"),
        B.node("Conv", ["x", "w"], "conv"),
        B.node("Relu", ["conv"], "relu"),
        B.node("Shape", ["relu"], "shape"),
        B.node("Gather", ["shape", "zero"], "n", axis=0),
        B.node("Unsqueeze", ["n", "axis0"], "n1"),
        B.node("Concat", ["n1", "minus1"], "target", axis=0),
        B.node("Reshape", ["relu", "target"], "flat"),
        B.node("MatMul", ["flat", "fc.w"], "y"),
    ]
    return B.make_model(nodes, {"x": [batch, 3, 8, 8]}, {"y": [batch, 5]}, inits, opset=13)


@pytest.mark.parametrize("batch", ["N", 1])
def test_constant_of_shape_weights_and_shape_chain_fold(batch: int | str, tmp_path: Path) -> None:
    graph = check(_constant_of_shape_model(batch), tmp_path, batch=2 if batch == "N" else 1)
    assert ops_of(graph) == ["conv", "relu", "flatten", "dense"]
    conv = graph.nodes[0]
    assert conv.inputs[1] in graph.constants and graph.constants[conv.inputs[1]].shape == (3, 3, 3, 4)
    assert transposes(graph) == 0


def _legacy_bn_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    params = {"s": rng.uniform(0.5, 1.5, 3), "b": rng.normal(0, 0.2, 3), "m": rng.normal(0, 0.2, 3),
              "v": rng.uniform(0.5, 2.0, 3)}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    nodes = [B.node("BatchNormalization", ["x", "s", "b", "m", "v"], "bn", is_test=1, spatial=1, epsilon=1e-3,
                    momentum=0.9),
             B.node("Relu", ["bn"], "y")]
    model = B.make_model(nodes, {"x": [1, 3, 4, 4]}, {"y": [1, 3, 4, 4]}, params, opset=6, ir_version=3,
                         inits_as_inputs=True)
    return model, params


def test_opset6_legacy_batch_norm_imports_and_matches(tmp_path: Path) -> None:
    model, p = _legacy_bn_model()
    path = B.save(model, tmp_path, "legacy_bn")
    graph = load_onnx(path)
    assert ops_of(graph) == ["batch_norm", "relu"]
    assert any("opset 6" in n for n in graph.metadata["notes"])
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    got = ReferenceRunner(graph, source_layout=True).infer({"x": x})["y"]
    c = (1, 3, 1, 1)
    want = np.maximum((x - p["m"].reshape(c)) / np.sqrt(p["v"].reshape(c) + 1e-3) * p["s"].reshape(c)
                      + p["b"].reshape(c), 0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # onnxruntime no longer runs opset 6; the converted model is what it runs.
    lifted = onnx.version_converter.convert_version(model, 7)
    np.testing.assert_allclose(ort_run(session(lifted), {"x": x})["y"], got, atol=1e-5)


def _batch_baked_model(batch: int) -> onnx.ModelProto:
    """Conv -> Relu -> Reshape to a target with the batch baked in -> Gemm -> Softmax."""
    rng = np.random.default_rng(3)
    inits = {"w": B.rand(rng, 4, 2, 3, 3), "target": np.array([batch, -1], np.int64),
             "fc.w": B.rand(rng, 6, 4 * 4 * 4, scale=0.2), "fc.b": B.rand(rng, 6)}
    nodes = [B.node("Conv", ["x", "w"], "conv", pads=[0, 0, 0, 0]), B.node("Relu", ["conv"], "relu"),
             B.node("Reshape", ["relu", "target"], "flat"),
             B.node("Gemm", ["flat", "fc.w", "fc.b"], "logits", transB=1),
             B.node("Softmax", ["logits"], "probs", axis=1)]
    return B.make_model(nodes, {"x": [batch, 2, 6, 6]}, {"probs": [batch, 6]}, inits, opset=13)


def test_fixed_batch_1000_becomes_dynamic(tmp_path: Path) -> None:
    from tapeout.compiler.api import compile_model

    path = B.save(_batch_baked_model(1000), tmp_path, "batch1000")
    report = compile_model(path, ["onnx"], tmp_path / "out")
    assert report.targets[0].verification.passed
    assert any("fixed batch of 1000" in n for n in report.notes)
    artifact = session(tmp_path / "out" / "onnx-fp32" / "model.onnx")
    assert not isinstance(artifact.get_inputs()[0].shape[0], int)
    x = np.random.default_rng(5).standard_normal((8, 2, 6, 6)).astype(np.float32)
    got = ort_run(artifact, {"x": x})["probs"]
    # The same network exported at batch 1, run one sample at a time.
    single = session(_batch_baked_model(1))
    want = np.concatenate([ort_run(single, {"x": x[i:i + 1]})["probs"] for i in range(8)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # And the batch-1000 source itself, on those samples.
    full = np.concatenate([x, np.zeros((992, 2, 6, 6), np.float32)])
    np.testing.assert_allclose(got, ort_run(session(path), {"x": full})["probs"][:8], atol=1e-5)


# ----------------------------------------------------------- every op vs ORT
_R = np.random.default_rng(7)
X4 = ["N", 4, 6, 6]  # NCHW
X3 = ["N", 4, 10]  # NCW


def _f(*shape: int, scale: float = 0.5) -> np.ndarray:
    return B.rand(_R, *shape, scale=scale)


def _i(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def _s(value: float) -> np.ndarray:
    return np.array(value, np.float32)


# id -> (op, input shape, further inputs, attrs, initializers, opset, conv before the op)
OP_CASES: dict[str, tuple] = {
    "relu": ("Relu", X4, [], {}, {}, 17, True),
    "sigmoid": ("Sigmoid", X4, [], {}, {}, 17, True),
    "tanh": ("Tanh", X3, [], {}, {}, 17, True),
    "hard_swish": ("HardSwish", X4, [], {}, {}, 17, True),
    "leaky_relu": ("LeakyRelu", X4, [], {"alpha": 0.1}, {}, 17, True),
    "leaky_relu_default": ("LeakyRelu", ["N", 6], [], {}, {}, 17, False),
    "elu": ("Elu", X4, [], {"alpha": 0.7}, {}, 17, True),
    "hard_sigmoid": ("HardSigmoid", X4, [], {"alpha": 0.3, "beta": 0.4}, {}, 17, True),
    "gelu": ("Gelu", X4, [], {}, {}, 20, True),
    "gelu_tanh": ("Gelu", X4, [], {"approximate": "tanh"}, {}, 20, True),
    "swish": ("Swish", ["N", 5], [], {}, {}, 24, False),
    "swish_alpha": ("Swish", X4, [], {"alpha": 0.5}, {}, 24, True),
    "clip_attrs": ("Clip", X4, [], {"min": -0.5, "max": 0.7}, {}, 10, True),
    "clip_attr_max_only": ("Clip", X4, [], {"max": 0.7}, {}, 9, True),
    "clip_inputs": ("Clip", X4, ["lo", "hi"], {}, {"lo": _s(-0.5), "hi": _s(0.7)}, 13, True),
    "clip_input_max_only": ("Clip", X4, ["", "hi"], {}, {"hi": _s(0.7)}, 13, True),
    "relu6_via_clip": ("Clip", X4, ["lo", "hi"], {}, {"lo": _s(0.0), "hi": _s(6.0)}, 13, True),
    "identity": ("Identity", X4, [], {}, {}, 17, True),
    "dropout": ("Dropout", X4, [], {}, {}, 13, True),
    "dropout_opset7": ("Dropout", X4, [], {"ratio": 0.3}, {}, 7, True),
    "cast_float": ("Cast", X4, [], {"to": TensorProto.FLOAT}, {}, 13, True),
    "add_per_channel": ("Add", X4, ["c"], {}, {"c": _f(4, 1, 1)}, 17, True),
    "add_full_constant": ("Add", X4, ["c"], {}, {"c": _f(1, 4, 6, 6)}, 17, True),
    "sub_scalar_first": ("Sub", X4, ["c", "$x"], {}, {"c": _s(0.25)}, 17, True),
    "mul_last_axis": ("Mul", X4, ["c"], {}, {"c": _f(6)}, 17, True),
    "mul_self": ("Mul", X4, ["$x", "$x"], {}, {}, 17, True),
    "div_constant": ("Div", X4, ["c"], {}, {"c": _R.uniform(1, 2, (4, 1, 1)).astype(np.float32)}, 17, True),
    "add_rank2": ("Add", ["N", 5], ["c"], {}, {"c": _f(5)}, 17, False),
    "add_ncw": ("Add", X3, ["c"], {}, {"c": _f(4, 1)}, 17, True),
    "sum3": ("Sum", X4, ["$x", "$x", "c"], {}, {"c": _f(4, 1, 1)}, 17, True),
    "max3": ("Max", X4, ["$x", "c", "$x"], {}, {"c": _f(4, 1, 1)}, 17, True),
    "min2": ("Min", X4, ["c"], {}, {"c": _f(6)}, 17, True),
    "mean3": ("Mean", X4, ["$x", "$x", "c"], {}, {"c": _f(4, 6, 1)}, 17, True),
    "softmax13_axis1": ("Softmax", X4, [], {"axis": 1}, {}, 13, True),
    "softmax13_default": ("Softmax", X4, [], {}, {}, 13, True),
    "softmax11_axis1_coerced": ("Softmax", X4, [], {"axis": 1}, {}, 11, True),
    "softmax11_axis2_coerced": ("Softmax", X4, [], {"axis": 2}, {}, 11, True),
    "softmax11_default_rank2": ("Softmax", ["N", 7], [], {}, {}, 11, False),
    "conv1d": ("Conv", X3, ["w", "b"], {"pads": [1, 2]}, {"w": _f(6, 4, 3), "b": _f(6)}, 17, False),
    "conv_strided_dilated": ("Conv", X4, ["w"], {"strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 1, 2]},
                             {"w": _f(5, 4, 3, 3)}, 17, False),
    "conv_groups": ("Conv", X4, ["w", "b"], {"group": 2, "pads": [1, 1, 1, 1]}, {"w": _f(6, 2, 3, 3), "b": _f(6)},
                    17, True),
    "conv_depthwise": ("Conv", X4, ["w"], {"group": 4}, {"w": _f(8, 1, 3, 3)}, 17, True),
    "conv_same_upper": ("Conv", X4, ["w"], {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
                        {"w": _f(3, 4, 4, 4)}, 17, False),
    "conv_same_lower": ("Conv", X4, ["w"], {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
                        {"w": _f(3, 4, 4, 4)}, 17, False),
    "conv_valid": ("Conv", X4, ["w"], {"auto_pad": "VALID", "kernel_shape": [2, 3]}, {"w": _f(3, 4, 2, 3)}, 11,
                   False),
    "batch_norm": ("BatchNormalization", X4, ["s", "b", "m", "v"], {"epsilon": 1e-3},
                   {"s": _f(4), "b": _f(4), "m": _f(4), "v": _R.uniform(0.5, 2, 4).astype(np.float32)}, 15, True),
    "batch_norm_rank2": ("BatchNormalization", ["N", 5], ["s", "b", "m", "v"], {},
                         {"s": _f(5), "b": _f(5), "m": _f(5), "v": _R.uniform(0.5, 2, 5).astype(np.float32)}, 9,
                         False),
    "lrn": ("LRN", X4, [], {"size": 3, "alpha": 0.5, "beta": 0.6, "bias": 2.0}, {}, 13, True),
    "lrn_defaults_input": ("LRN", X4, [], {"size": 5}, {}, 13, False),
    "gemm_plain": ("Gemm", ["N", 6], ["w", "c"], {}, {"w": _f(6, 3), "c": _f(3)}, 13, False),
    "gemm_transB_alpha_beta": ("Gemm", ["N", 6], ["w", "c"], {"transB": 1, "alpha": 0.5, "beta": 2.0},
                               {"w": _f(3, 6), "c": _f(1, 3)}, 13, False),
    "gemm_scalar_c": ("Gemm", ["N", 6], ["w", "c"], {"beta": 0.5}, {"w": _f(6, 3), "c": _s(0.3)}, 13, False),
    "gemm_no_c": ("Gemm", ["N", 6], ["w"], {"transB": 1}, {"w": _f(3, 6)}, 13, False),
    "gemm_runtime_c": ("Gemm", ["N", 6], ["$x", "w", "$x"], {"beta": 0.5}, {"w": _f(6, 6)}, 13, False),
    "gemm_opset7": ("Gemm", ["N", 6], ["w", "c"], {"transB": 1}, {"w": _f(3, 6), "c": _f(3)}, 7, False),
    "matmul_rank3": ("MatMul", X3, ["w"], {}, {"w": _f(10, 3)}, 13, False),
    "matmul_after_conv": ("MatMul", X4, ["w"], {}, {"w": _f(6, 2)}, 13, True),
    "matmul_vector": ("MatMul", X3, ["v"], {}, {"v": _f(10)}, 13, False),
    "matmul_runtime": ("MatMul", ["N", 3, 4, 4], ["$x", "$x"], {}, {}, 13, False),
    "maxpool": ("MaxPool", X4, [], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, {}, 17,
                True),
    "maxpool_ceil": ("MaxPool", ["N", 4, 7, 7], [], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
                     {}, 17, True),
    "maxpool_ceil_pads": ("MaxPool", ["N", 4, 8, 8], [], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                          "pads": [1, 1, 1, 1], "ceil_mode": 1}, {}, 17, True),
    "maxpool_same": ("MaxPool", ["N", 4, 7, 7], [], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                     "auto_pad": "SAME_UPPER"}, {}, 17, True),
    "maxpool1d": ("MaxPool", X3, [], {"kernel_shape": [3], "strides": [2]}, {}, 17, True),
    "avgpool_pads_excluded": ("AveragePool", X4, [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, {}, 17,
                              True),
    "avgpool_pads_included": ("AveragePool", X4, [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                      "count_include_pad": 1}, {}, 17, True),
    "avgpool_ceil": ("AveragePool", ["N", 4, 7, 7], [], {"kernel_shape": [2, 2], "strides": [2, 2],
                                                         "ceil_mode": 1}, {}, 17, True),
    "avgpool_ceil_included": ("AveragePool", ["N", 4, 8, 8], [], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                  "pads": [1, 1, 1, 1], "ceil_mode": 1,
                                                                  "count_include_pad": 1}, {}, 17, True),
    "avgpool_same_lower": ("AveragePool", ["N", 4, 7, 7], [], {"kernel_shape": [2, 2], "strides": [2, 2],
                                                               "auto_pad": "SAME_LOWER"}, {}, 17, True),
    "global_avg_pool": ("GlobalAveragePool", X4, [], {}, {}, 17, True),
    "global_max_pool": ("GlobalMaxPool", X3, [], {}, {}, 17, True),
    "reduce_mean_keepdims": ("ReduceMean", X4, [], {"axes": [2, 3]}, {}, 13, True),
    "reduce_mean_flat": ("ReduceMean", X4, [], {"axes": [-2, -1], "keepdims": 0}, {}, 13, True),
    "reduce_mean_opset18": ("ReduceMean", X4, ["axes"], {"keepdims": 0}, {"axes": _i(2, 3)}, 18, True),
    "reduce_max": ("ReduceMax", X4, [], {"axes": [2, 3]}, {}, 13, True),
    "reduce_mean_channels": ("ReduceMean", X4, [], {"axes": [1]}, {}, 13, True),
    "reduce_max_interleaved": ("ReduceMax", X4, [], {"axes": [1, 3], "keepdims": 0}, {}, 13, True),
    "reduce_mean_all_features": ("ReduceMean", X4, [], {"axes": [1, 2, 3], "keepdims": 0}, {}, 13, True),
    "reduce_mean_last_axis": ("ReduceMean", X3, [], {"axes": [-1]}, {}, 13, False),
    # A max over an empty axis is -inf (the ONNX spec), not an error.
    "reduce_max_empty_axis": ("ReduceMax", ["N", 0, 4], [], {"axes": [1]}, {}, 13, False),
    "reduce_max_empty_axis_flat": ("ReduceMax", ["N", 3, 0, 5], [], {"axes": [2], "keepdims": 0}, {}, 13, False),
    "concat_self": ("Concat", X4, ["$x", "$x"], {"axis": 1}, {}, 17, True),
    "concat_negative_axis": ("Concat", X4, ["$x", "$x", "$x"], {"axis": -1}, {}, 17, True),
    "flatten_after_conv": ("Flatten", X4, [], {}, {}, 17, True),
    "flatten_rank2": ("Flatten", ["N", 5], [], {"axis": 1}, {}, 17, False),
    "flatten_axis2_unit": ("Flatten", ["N", 1, 3, 4], [], {"axis": 2}, {}, 17, False),
    "reshape_rank3": ("Reshape", X4, ["shape"], {}, {"shape": _i(0, 4, 36)}, 17, True),
    "reshape_minus1": ("Reshape", X4, ["shape"], {}, {"shape": _i(0, -1)}, 17, True),
    "reshape_split_channels": ("Reshape", X4, ["shape"], {}, {"shape": _i(0, 2, 2, 6, 6)}, 17, True),
    "transpose_spatial": ("Transpose", X4, [], {"perm": [0, 1, 3, 2]}, {}, 17, True),
    "transpose_to_nhwc": ("Transpose", X4, [], {"perm": [0, 2, 3, 1]}, {}, 17, True),
    "squeeze13": ("Squeeze", ["N", 4, 1, 6], ["axes"], {}, {"axes": _i(2)}, 13, False),
    "squeeze11": ("Squeeze", ["N", 4, 1, 1], [], {"axes": [2, 3]}, {}, 11, False),
    "unsqueeze13": ("Unsqueeze", ["N", 6], ["axes"], {}, {"axes": _i(2, -1)}, 13, False),
    "unsqueeze11": ("Unsqueeze", X3, [], {"axes": [2]}, {}, 11, True),
    "pad_attr": ("Pad", X4, [], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "value": 0.5}, {}, 10, True),
    "pad_input": ("Pad", X4, ["pads", "v"], {}, {"pads": _i(0, 1, 0, 1, 0, 0, 2, 0), "v": _s(-1.0)}, 13, True),
    "pad_axes": ("Pad", X4, ["pads", "", "axes"], {}, {"pads": _i(1, 2, 0, 3), "axes": _i(2, 3)}, 18, True),
    "resize_scales": ("Resize", X4, ["", "scales"], {"mode": "nearest"},
                      {"scales": np.array([1, 1, 2, 3], np.float32)}, 13, True),
    "resize_sizes_axes": ("Resize", X4, ["", "", "sizes"], {"coordinate_transformation_mode": "asymmetric",
                                                            "nearest_mode": "floor", "axes": [2, 3]},
                          {"sizes": _i(12, 18)}, 18, True),
    "resize_sizes_fixed_batch": ("Resize", [1, 4, 6, 6], ["", "", "sizes"], {}, {"sizes": _i(1, 4, 12, 6)}, 13,
                                 True),
    "resize_not_smaller": ("Resize", X4, ["", "", "sizes"], {"keep_aspect_ratio_policy": "not_smaller",
                                                              "axes": [2, 3]}, {"sizes": _i(10, 12)}, 18, True),
    "resize_opset10": ("Resize", X4, ["scales"], {}, {"scales": np.array([1, 1, 2, 2], np.float32)}, 10, True),
    "resize_opset11_roi": ("Resize", X3, ["roi", "scales"], {"coordinate_transformation_mode": "half_pixel"},
                           {"roi": np.array([], np.float32), "scales": np.array([1, 1, 3], np.float32)}, 11, True),
    "tile_unit_and_full_axes": ("Tile", ["N", 4, 1, 3], ["r"], {}, {"r": _i(1, 2, 3, 2)}, 13, False),
    "expand_unit_axis": ("Expand", ["N", 4, 1, 6], ["s"], {}, {"s": _i(1, 1, 5, 1)}, 13, True),
    "upsample_opset7": ("Upsample", X4, [], {"scales": [1.0, 1.0, 2.0, 2.0]}, {}, 7, True),
    "upsample_opset9": ("Upsample", X4, ["scales"], {}, {"scales": np.array([1, 1, 2, 1], np.float32)}, 9, True),
    # Every form of Slice and Split: test_onnx_slice_split.py.
    "slice_channels": ("Slice", X4, ["s", "e", "a"], {}, {"s": _i(1), "e": _i(3), "a": _i(1)}, 13, True),
    "split_one_part": ("Split", X4, [], {"axis": 1}, {}, 13, True),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_matches_onnxruntime(case: str, tmp_path: Path) -> None:
    op, shape, inputs, attrs, inits, opset, conv = OP_CASES[case]
    model = B.single(op, shape, inputs=inputs, attrs=attrs, inits=inits, opset=opset, conv=conv)
    graph = check(model, tmp_path)
    assert graph.outputs == ["y"]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no 0/0 on the way to a refusal either
def test_empty_inputs_import_or_are_refused_cleanly(tmp_path: Path) -> None:
    """Each op case with a zero-size non-batch axis: imported, or refused with one FrontendError line."""
    crashes = []
    for case, (op, shape, inputs, attrs, inits, opset, conv) in sorted(OP_CASES.items()):
        for axis in range(1, len(shape)):
            empty = [0 if i == axis else d for i, d in enumerate(shape)]
            try:
                model = B.single(op, empty, inputs=inputs, attrs=attrs, inits=inits, opset=opset, conv=conv)
            except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
                continue  # not a valid model (a broadcast constant no longer fits): nothing to import
            path = B.save(model, tmp_path, f"{case}_{axis}")
            try:
                load_onnx(path)
            except FrontendError as e:
                assert "\n" not in str(e)
            except Exception as e:  # anything else is an importer crash
                crashes.append(f"{case} (axis {axis} empty): {type(e).__name__}: {e}")
    assert not crashes, "\n".join(crashes)


def test_every_supported_op_has_a_case() -> None:
    from tapeout.compiler.frontends.onnx import supported_ops

    covered = {c[0] for c in OP_CASES.values()} | {"Constant"}  # Constant: folded, see the next test
    assert set(supported_ops()) <= covered, sorted(set(supported_ops()) - covered)


def test_constant_node_weights(tmp_path: Path) -> None:
    w = _f(3, 4, 1, 1)
    nodes = [B.node("Constant", [], "w", value=numpy_helper.from_array(w)), B.node("Conv", ["x", "w"], "y")]
    graph = check(B.make_model(nodes, {"x": X4}, {"y": None}), tmp_path)
    assert ops_of(graph) == ["conv"]


# ------------------------------------------------------------------ layouts
def _conv_w(rng: np.random.Generator, cout: int, cin: int, k: int = 3) -> np.ndarray:
    return B.rand(rng, cout, cin, k, k)


def test_channel_shuffle_moves_data_once(tmp_path: Path) -> None:
    """conv -> Reshape [N, g, C/g, H, W] -> Transpose(0, 2, 1, 3, 4) -> Reshape [N, C, H, W] -> conv."""
    rng = np.random.default_rng(11)
    inits = {"w1": _conv_w(rng, 6, 3), "w2": _conv_w(rng, 4, 6), "split": np.array([0, 2, 3, 5, 5], np.int64),
             "merge": np.array([0, 6, 5, 5], np.int64)}
    nodes = [B.node("Conv", ["x", "w1"], "c1", pads=[1, 1, 1, 1]),
             B.node("Reshape", ["c1", "split"], "groups"),
             B.node("Transpose", ["groups"], "shuffled", perm=[0, 2, 1, 3, 4]),
             B.node("Reshape", ["shuffled", "merge"], "merged"),
             B.node("Conv", ["merged", "w2"], "y", pads=[1, 1, 1, 1])]
    graph = check(B.make_model(nodes, {"x": ["N", 3, 5, 5]}, {"y": None}, inits), tmp_path)
    assert transposes(graph) == 1
    (t,) = [n for n in graph.nodes if n.op == "transpose"]
    # The one transpose swaps the (group, channel-in-group) axes, channels-last: [N, H, W, C/g, g].
    assert graph.type_of(t.outputs[0]).shape == ("N", 5, 5, 3, 2)


def test_transpose_pairs_around_convs_cancel(tmp_path: Path) -> None:
    """What old Keras-to-ONNX exporters emit: NHWC input, Transpose to NCHW, convs, Transpose back."""
    rng = np.random.default_rng(12)
    inits = {"w1": _conv_w(rng, 4, 3), "w2": _conv_w(rng, 5, 4)}
    nodes = [B.node("Transpose", ["x"], "nchw", perm=[0, 3, 1, 2]),
             B.node("Conv", ["nchw", "w1"], "c1", pads=[1, 1, 1, 1]), B.node("Relu", ["c1"], "r1"),
             B.node("Transpose", ["r1"], "back1", perm=[0, 2, 3, 1]),
             B.node("Transpose", ["back1"], "again", perm=[0, 3, 1, 2]),  # a pair between two convs
             B.node("Conv", ["again", "w2"], "c2"),
             B.node("Transpose", ["c2"], "y", perm=[0, 2, 3, 1])]
    graph = check(B.make_model(nodes, {"x": ["N", 6, 6, 3]}, {"y": None}, inits), tmp_path)
    assert transposes(graph) == 0
    assert ops_of(graph) == ["conv", "relu", "conv"]
    assert graph.io_layouts == {"x": "NHWC", "y": "NHWC"}


def test_flatten_into_gemm_permutes_weight_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    inits = {"w": _conv_w(rng, 4, 3), "fc": B.rand(rng, 4 * 5 * 5, 3)}
    nodes = [B.node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]), B.node("Flatten", ["c"], "f"),
             B.node("Relu", ["f"], "r"), B.node("MatMul", ["r", "fc"], "y")]
    graph = check(B.make_model(nodes, {"x": ["N", 3, 5, 5]}, {"y": None}, inits), tmp_path)
    assert transposes(graph) == 0
    dense = graph.nodes[-1]
    assert dense.op == "dense" and not np.array_equal(graph.constants[dense.inputs[1]], inits["fc"])


def test_flatten_trick_does_not_fire_when_the_flatten_is_also_an_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    inits = {"w": _conv_w(rng, 4, 3), "fc": B.rand(rng, 3, 4 * 5 * 5), "b": B.rand(rng, 3)}
    nodes = [B.node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]), B.node("Flatten", ["c"], "features"),
             B.node("Gemm", ["features", "fc", "b"], "y", transB=1)]
    graph = check(B.make_model(nodes, {"x": ["N", 3, 5, 5]}, {"y": None, "features": None}, inits), tmp_path)
    # The Gemm still reads the channels-last flatten; the output gets ONNX element order.
    assert transposes(graph) == 1
    assert graph.outputs == ["y", "features"]


def test_flatten_trick_does_not_fire_for_an_elementwise_runtime_consumer(tmp_path: Path) -> None:
    """Flatten of a conv added to a flatten in ONNX order (from a reshape of the input) must align them."""
    rng = np.random.default_rng(15)
    inits = {"w": _conv_w(rng, 3, 3), "shape": np.array([0, -1], np.int64)}
    nodes = [B.node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]), B.node("Flatten", ["c"], "f"),
             B.node("Reshape", ["x", "shape"], "xf"), B.node("Add", ["f", "xf"], "y")]
    graph = check(B.make_model(nodes, {"x": ["N", 3, 4, 4]}, {"y": None}, inits), tmp_path)
    assert transposes(graph) == 1


def test_matmul_then_add_becomes_dense_with_bias(tmp_path: Path) -> None:
    rng = np.random.default_rng(16)
    inits = {"w": B.rand(rng, 6, 4), "b": B.rand(rng, 4)}
    nodes = [B.node("MatMul", ["x", "w"], "mm"), B.node("Add", ["b", "mm"], "y")]
    graph = check(B.make_model(nodes, {"x": ["N", 6]}, {"y": None}, inits), tmp_path)
    assert ops_of(graph) == ["dense"] and len(graph.nodes[0].inputs) == 3


def test_matmul_used_twice_keeps_its_add(tmp_path: Path) -> None:
    rng = np.random.default_rng(17)
    inits = {"w": B.rand(rng, 6, 4), "b": B.rand(rng, 4)}
    nodes = [B.node("MatMul", ["x", "w"], "mm"), B.node("Add", ["mm", "b"], "y"), B.node("Relu", ["mm"], "z")]
    graph = check(B.make_model(nodes, {"x": ["N", 6]}, {"y": None, "z": None}, inits), tmp_path)
    assert ops_of(graph) == ["dense", "add", "relu"]


def test_squeeze_after_global_pool_into_gemm(tmp_path: Path) -> None:
    rng = np.random.default_rng(18)
    inits = {"w": _conv_w(rng, 4, 3), "axes": np.array([2, 3], np.int64), "fc": B.rand(rng, 4, 2)}
    nodes = [B.node("Conv", ["x", "w"], "c"), B.node("GlobalAveragePool", ["c"], "g"),
             B.node("Squeeze", ["g", "axes"], "s"), B.node("MatMul", ["s", "fc"], "y")]
    graph = check(B.make_model(nodes, {"x": ["N", 3, 6, 6]}, {"y": None}, inits), tmp_path)
    assert transposes(graph) == 0


def test_se_block_multiplies_in_channels_last(tmp_path: Path) -> None:
    """Squeeze-and-excitation: pool -> 1x1 convs -> sigmoid -> Mul with the feature map."""
    rng = np.random.default_rng(19)
    inits = {"w": _conv_w(rng, 8, 3), "r": B.rand(rng, 2, 8, 1, 1), "e": B.rand(rng, 8, 2, 1, 1)}
    nodes = [B.node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]), B.node("GlobalAveragePool", ["c"], "p"),
             B.node("Conv", ["p", "r"], "p1"), B.node("Relu", ["p1"], "p2"), B.node("Conv", ["p2", "e"], "p3"),
             B.node("Sigmoid", ["p3"], "gate"), B.node("Mul", ["c", "gate"], "y")]
    graph = check(B.make_model(nodes, {"x": ["N", 3, 6, 6]}, {"y": None}, inits), tmp_path)
    assert transposes(graph) == 0
    assert graph.io_layouts["y"] == "NCHW"


def test_input_feeding_only_dense_layers_stays_in_onnx_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(20)
    nodes = [B.node("MatMul", ["x", "w"], "y")]
    graph = check(B.make_model(nodes, {"x": ["N", 5, 7]}, {"y": None}, {"w": B.rand(rng, 7, 3)}), tmp_path)
    assert graph.io_layouts == {"x": "NWC", "y": "NWC"} and transposes(graph) == 0


def test_output_transposed_in_onnx_kept_channels_last(tmp_path: Path) -> None:
    """A model whose output is NHWC (Transpose after the last conv) needs no IR transpose."""
    rng = np.random.default_rng(21)
    nodes = [B.node("Conv", ["x", "w"], "c"), B.node("Transpose", ["c"], "y", perm=[0, 2, 3, 1])]
    graph = check(B.make_model(nodes, {"x": ["N", 3, 5, 5]}, {"y": None}, {"w": _conv_w(rng, 4, 3)}), tmp_path)
    assert transposes(graph) == 0 and graph.io_layouts == {"x": "NCHW", "y": "NHWC"}


def test_reference_runner_layouts(cnn_path: Path) -> None:
    graph = load_onnx(cnn_path)
    assert ReferenceRunner(graph).input_specs()[0].shape == ("N", 16, 16, 3)
    assert ReferenceRunner(graph, source_layout=True).input_specs()[0].shape == ("N", 3, 16, 16)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    a = ReferenceRunner(graph).infer({"input": x.transpose(0, 2, 3, 1)})["logits"]
    b = ReferenceRunner(graph, source_layout=True).infer({"input": x})["logits"]
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------- batch
def test_dynamic_batch_model_has_no_batch_note(tmp_path: Path) -> None:
    graph = check(B.pytorch_cnn(batch="N"), tmp_path, batch=3)
    assert "notes" not in graph.metadata
    assert graph.types["input"].shape[0] == "N"


def test_flatten_axis0_on_a_batch1_model_is_kept_and_noted(tmp_path: Path) -> None:
    rng = np.random.default_rng(22)
    nodes = [B.node("Conv", ["x", "w"], "c"), B.node("Flatten", ["c"], "f", axis=0),
             B.node("Gemm", ["f", "fc"], "y")]
    inits = {"w": _conv_w(rng, 2, 3), "fc": B.rand(rng, 2 * 3 * 3, 4)}
    graph = check(B.make_model(nodes, {"x": [1, 3, 5, 5]}, {"y": [1, 4]}, inits), tmp_path, batch=1)
    notes = graph.metadata["notes"]
    assert any("axis 0" in n and "batch 1" in n for n in notes)
    assert not any("takes any batch" in n for n in notes)


BATCH_REFUSALS = {
    "softmax_over_batch": (B.node("Softmax", ["x"], "y", axis=0), {}, "batch axis"),
    "concat_on_batch": (B.node("Concat", ["x", "x"], "y", axis=0), {}, "batch axis"),
    "transpose_moves_batch": (B.node("Transpose", ["x"], "y", perm=[1, 0, 2]), {}, "moves the batch"),
    "reshape_changes_batch": (B.node("Reshape", ["x", "s"], "y"), {"s": np.array([-1, 4], np.int64)},
                              "changes the batch"),
    "flatten_axis0_dynamic": (B.node("Flatten", ["x"], "y", axis=0), {}, "fixed batch of 1"),
    "flatten_axis2_merges_batch": (B.node("Flatten", ["x"], "y", axis=2), {}, "merges the batch"),
    "squeeze_batch": (B.node("Squeeze", ["x", "a"], "y"), {"a": np.array([0], np.int64)}, "batch axis"),
    "reduce_over_batch": (B.node("ReduceMean", ["x"], "y", axes=[0]), {}, "batch axis"),
    "gemm_transA": (B.node("Gemm", ["x", "w"], "y", transA=1), {"w": np.ones((3, 2), np.float32)}, "transA"),
}


@pytest.mark.parametrize("case", sorted(BATCH_REFUSALS))
def test_ops_across_the_batch_are_refused(case: str, tmp_path: Path) -> None:
    node, inits, words = BATCH_REFUSALS[case]
    shape = ["N", 3] if case == "gemm_transA" else ["N", 2, 4]
    msg = refused(B.make_model([node], {"x": shape}, {"y": None}, inits, opset=13), tmp_path)
    assert words in msg and node.name in msg and node.op_type in msg


# ----------------------------------------------------------------- refusals
def _with(node: onnx.NodeProto, x: list, inits: dict | None = None, opset: int = 17) -> onnx.ModelProto:
    return B.make_model([node], {"x": x}, {"y": None}, inits or {}, opset=opset)


def test_unsupported_ops_name_node_op_and_the_supported_list(tmp_path: Path) -> None:
    msg = refused(_with(B.node("Softplus", ["x"], "y", name="soft1"), X4), tmp_path)
    assert "'soft1' (Softplus) is not supported" in msg and "supported ONNX ops: Add, AveragePool" in msg


def test_unnamed_node_is_named_by_its_output(tmp_path: Path) -> None:
    """Folding touches the graph (the Constant); the refusal still names what is in the file."""
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(6, np.float32))),
             helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Softplus", ["a"], ["y"])]
    msg = refused(B.make_model(nodes, {"x": X4}, {"y": None}), tmp_path)
    assert "node 'y' (Softplus) is not supported" in msg


def test_lstm_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(23)
    inits = {"W": B.rand(rng, 1, 16, 5), "R": B.rand(rng, 1, 16, 4)}
    model = B.make_model([B.node("LSTM", ["x", "W", "R"], ["y"], name="rnn", hidden_size=4)],
                         {"x": [7, 1, 5]}, {"y": None}, inits)
    msg = refused(model, tmp_path)
    assert "'rnn' (LSTM) is not supported" in msg


def test_reduction_over_empty_and_non_empty_axes_is_refused(tmp_path: Path) -> None:
    model = _with(B.node("ReduceMax", ["x"], "y", name="rmax", axes=[1, 2]), ["N", 0, 4], opset=13)
    assert "'rmax' (ReduceMax): reduces the empty tensor" in refused(model, tmp_path)
    mean = _with(B.node("ReduceMean", ["x"], "y", name="rmean", axes=[1]), ["N", 0, 4], opset=13)
    assert "ONNX leaves that undefined" in refused(mean, tmp_path)


def test_conv_transpose_is_refused(tmp_path: Path) -> None:
    model = _with(B.node("ConvTranspose", ["x", "w"], "y", name="up"), X4, {"w": np.ones((4, 2, 2, 2), np.float32)})
    assert "'up' (ConvTranspose) is not supported" in refused(model, tmp_path)


def test_custom_domain_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("FancyOp", ["x"], ["y"], name="mine", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    msg = refused(model, tmp_path)
    assert "'mine' (com.example::FancyOp)" in msg and "custom domain" in msg


def test_non_repeating_nearest_resize_is_refused(tmp_path: Path) -> None:
    model = _with(B.node("Resize", ["x", "", "s"], "y", name="rs", coordinate_transformation_mode="asymmetric",
                         nearest_mode="round_prefer_ceil"), X4, {"s": np.array([1, 1, 3, 3], np.float32)})
    assert "not a plain repetition" in refused(model, tmp_path)


def test_reflect_pad_is_refused(tmp_path: Path) -> None:
    model = _with(B.node("Pad", ["x", "p"], "y", mode="reflect"), X4, {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1])})
    assert "mode='reflect'" in refused(model, tmp_path)


def test_runtime_weights_are_refused(tmp_path: Path) -> None:
    model = B.make_model([B.node("Conv", ["x", "w"], "y", name="c")], {"x": X4, "w": [3, 4, 1, 1]}, {"y": None})
    assert "W (the weights) (input 1) must be a constant" in refused(model, tmp_path)


def test_used_second_output_is_refused(tmp_path: Path) -> None:
    node = B.node("MaxPool", ["x"], ["y", "idx"], name="mp", kernel_shape=[2, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, X4)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("idx", TensorProto.INT64, None)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert "output 1 ('idx') is not supported" in refused(model, tmp_path)


def test_only_the_batch_may_be_dynamic(tmp_path: Path) -> None:
    model = _with(B.node("Relu", ["x"], "y"), ["N", 3, "H", "W"])
    assert "dynamic dimension at axis 2" in refused(model, tmp_path)


def test_integer_inputs_are_refused(tmp_path: Path) -> None:
    graph = helper.make_graph([B.node("Relu", ["x"], "y")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert "only float inputs" in refused(model, tmp_path)


def test_opset_newer_than_onnx_knows_is_refused(tmp_path: Path) -> None:
    model = _with(B.node("Relu", ["x"], "y"), ["N", 3])
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    assert "is newer than the installed onnx" in refused(model, tmp_path)


# ------------------------------------------------------------- safe loading
def test_corrupt_file_is_one_line(cnn_path: Path, tmp_path: Path) -> None:
    data = cnn_path.read_bytes()
    msg = refused(data[: len(data) // 3], tmp_path, "truncated")
    assert "ONNX model" in msg


def test_non_onnx_file_is_one_line(tmp_path: Path) -> None:
    msg = refused(b"this is not a model\n" * 20, tmp_path, "text")
    assert "ONNX model" in msg


def test_empty_file_is_one_line(tmp_path: Path) -> None:
    assert "not an ONNX model" in refused(b"", tmp_path, "empty")


def _external_model(folder: Path, location: str) -> Path:
    """A Conv whose weights live in external data at ``location`` (relative to the model)."""
    rng = np.random.default_rng(24)
    w = B.rand(rng, 4, 3, 1, 1)
    model = B.make_model([B.node("Conv", ["x", "w"], "y")], {"x": ["N", 3, 4, 4]}, {"y": None}, {"w": w})
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_in_the_model_folder_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(24)
    w = B.rand(rng, 4, 3, 1, 1)
    (tmp_path / "weights.bin").write_bytes(w.tobytes())
    graph = load_onnx(_external_model(tmp_path, "weights.bin"))
    np.testing.assert_array_equal(graph.constants[graph.nodes[0].inputs[1]], w.transpose(2, 3, 1, 0))


@pytest.mark.parametrize("location", ["../outside.bin", "sub/../../outside.bin", "/etc/passwd"])
def test_external_data_outside_the_folder_is_refused(location: str, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 48)
    with pytest.raises(FrontendError) as info:
        load_onnx(_external_model(folder, location))
    assert "outside the model's folder" in str(info.value) and "\n" not in str(info.value)


def test_external_data_symlink_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 48)
    (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
    with pytest.raises(FrontendError, match="outside the model's folder"):
        load_onnx(_external_model(folder, "link.bin"))


def test_missing_external_data_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(FrontendError, match="needs external data file 'gone.bin'"):
        load_onnx(_external_model(tmp_path, "gone.bin"))


# ------------------------------------------------------------- CLI / process
def test_cli_refusal_exits_2_without_traceback(tmp_path: Path) -> None:
    path = B.save(_with(B.node("Softplus", ["x"], "y", name="soft1"), X4), tmp_path, "softplus")
    proc = subprocess.run([sys.executable, "-m", "tapeout.compiler", "compile", str(path), "-t", "onnx", "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "'soft1' (Softplus) is not supported" in proc.stderr + proc.stdout


def test_compiling_onnx_never_imports_tensorflow(cnn_path: Path, tmp_path: Path) -> None:
    """`tapeout compile model.onnx -t onnx -o out` end to end, in a fresh process."""
    out = tmp_path / "out"
    code = (
        "import io, sys\n"
        "from tapeout.compiler.cli import main\n"
        f"rc = main(['compile', {str(cnn_path)!r}, '-t', 'onnx', '-o', {str(out)!r}], io.StringIO(), sys.stderr)\n"
        "print(rc, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "False", "False"]
    report = json.loads((out / "report.json").read_text())
    assert report["targets"][0]["verification"]["passed"]


def test_output_names_win_over_importer_made_names(tmp_path: Path) -> None:
    """The importer names the conv's weights "c/kernel"; an output of that name still gets it."""
    rng = np.random.default_rng(25)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["c/kernel"])]
    graph = check(B.make_model(nodes, {"x": X4}, {"c/kernel": None}, {"w": _conv_w(rng, 2, 4, 1)}), tmp_path)
    assert graph.outputs == ["c/kernel"] and graph.nodes[-1].outputs == ["c/kernel"]


def test_keras_model_exported_by_tf2onnx(tmp_path: Path) -> None:
    """A real exporter's NHWC graph: Transposes around convs, UpSampling as Unsqueeze/Tile/Reshape,
    shape computations for Flatten. It imports without a single IR transpose."""
    pytest.importorskip("tf2onnx")
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = keras.layers.Conv2D(8, 1, activation="sigmoid")(s)
    x = keras.layers.Multiply()([x, s])
    x = keras.layers.UpSampling2D(2)(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(5, activation="softmax")(x)
    model = keras.Model(inp, out)
    spec = (tf.TensorSpec((None, 12, 12, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
    assert sum(n.op_type == "Transpose" for n in proto.graph.node) >= 3
    graph = check(proto, tmp_path, batch=3)
    assert transposes(graph) == 0
    assert graph.io_layouts[graph.inputs[0]] == "NHWC"
    assert ops_of(graph).count("resize") == 2  # UpSampling2D: rows, then columns


def test_a_value_is_moved_once_for_all_its_readers(tmp_path: Path) -> None:
    """A value in ONNX order (after reshapes) read by two convs: one channels-last copy serves both."""
    rng = np.random.default_rng(26)
    inits = {"w1": _conv_w(rng, 2, 3), "w2": _conv_w(rng, 2, 3), "s1": np.array([0, 3, 25], np.int64),
             "s2": np.array([0, 3, 5, 5], np.int64)}
    nodes = [B.node("Reshape", ["x", "s1"], "r1"), B.node("Reshape", ["r1", "s2"], "r2"),
             B.node("Conv", ["r2", "w1"], "a"), B.node("Conv", ["r2", "w2"], "b")]
    graph = check(B.make_model(nodes, {"x": ["N", 3, 5, 5]}, {"a": None, "b": None}, inits), tmp_path)
    assert transposes(graph) == 1


def test_matmul_read_through_an_alias_keeps_its_add(tmp_path: Path) -> None:
    rng = np.random.default_rng(27)
    inits = {"w": B.rand(rng, 6, 4), "b": B.rand(rng, 4)}
    nodes = [B.node("MatMul", ["x", "w"], "mm"), B.node("Identity", ["mm"], "alias"),
             B.node("Add", ["alias", "b"], "y"), B.node("Relu", ["mm"], "z")]
    graph = check(B.make_model(nodes, {"x": ["N", 6]}, {"y": None, "z": None}, inits), tmp_path)
    assert ops_of(graph) == ["dense", "add", "relu"]


def _random_factors(rng: np.random.Generator, total: int, rank: int) -> list[int]:
    dims = [1] * rank
    for p in [p for p in (2, 3, 5) for _ in range(10) if total % p ** (_ + 1) == 0]:
        dims[int(rng.integers(rank))] *= p
    return dims


@pytest.mark.parametrize("seed", range(24))
def test_random_transpose_reshape_chains_match(seed: int, tmp_path: Path) -> None:
    """Layout tracking on random Transpose/Reshape chains after a conv (channels-last storage)."""
    rng = np.random.default_rng(100 + seed)
    c, h, w = (int(d) for d in rng.choice([1, 2, 3, 4], 3))
    inits = {"w": _conv_w(rng, c, 2, 1)}
    nodes = [B.node("Conv", ["x", "w"], "t0")]
    cur, rank, total = "t0", 4, c * h * w
    for k in range(3):
        perm = [0, *(rng.permutation(rank - 1) + 1).tolist()]
        nodes.append(B.node("Transpose", [cur], f"t{k}p", perm=perm))
        rank = int(rng.integers(2, 6))
        inits[f"s{k}"] = np.array([0, *_random_factors(rng, total, rank - 1)], np.int64)
        nodes.append(B.node("Reshape", [f"t{k}p", f"s{k}"], f"t{k + 1}"))
        cur = f"t{k + 1}"
    nodes.append(B.node("Relu", [cur], "y"))
    check(B.make_model(nodes, {"x": ["N", 2, h, w]}, {"y": None}, inits), tmp_path)


def test_truncated_external_data_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)  # the tensor needs 48 bytes
    with pytest.raises(FrontendError) as info:
        load_onnx(_external_model(tmp_path, "weights.bin"))
    assert "\n" not in str(info.value) and "has 10 bytes, 48 expected" in str(info.value)


def test_se_block_with_squeeze_unsqueeze_has_no_artifact_transposes(tmp_path: Path) -> None:
    """Pool -> Squeeze -> dense -> Unsqueeze -> gate: the unit-axis reshapes need no Transpose in ONNX."""
    rng = np.random.default_rng(28)
    inits = {"w": _conv_w(rng, 6, 3), "fc": B.rand(rng, 6, 6), "axes": np.array([2, 3], np.int64)}
    nodes = [B.node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]), B.node("GlobalAveragePool", ["c"], "p"),
             B.node("Squeeze", ["p", "axes"], "s"), B.node("MatMul", ["s", "fc"], "d"),
             B.node("Unsqueeze", ["d", "axes"], "u"), B.node("Sigmoid", ["u"], "g"), B.node("Mul", ["c", "g"], "y")]
    graph = check(B.make_model(nodes, {"x": ["N", 3, 6, 6]}, {"y": None}, inits), tmp_path)
    assert transposes(graph) == 0
    artifact = graph_to_onnx(default_pipeline().run(graph).graph)
    assert sum(n.op_type == "Transpose" for n in artifact.graph.node) == 0


def test_two_outputs_of_one_flattened_value(tmp_path: Path) -> None:
    rng = np.random.default_rng(29)
    nodes = [B.node("Conv", ["x", "w"], "c"), B.node("Flatten", ["c"], "f"), B.node("Identity", ["f"], "g")]
    graph = check(B.make_model(nodes, {"x": X4}, {"f": None, "g": None}, {"w": _conv_w(rng, 2, 4)}), tmp_path)
    assert graph.outputs == ["f", "g"] and transposes(graph) == 1


@pytest.mark.parametrize("how", ["Tile", "Expand"])
def test_unsqueeze_repeat_reshape_becomes_resize(how: str, tmp_path: Path) -> None:
    """Nearest upsampling of the rows written as Unsqueeze -> Tile/Expand -> Reshape."""
    rng = np.random.default_rng(30)
    # Tile's repeats and Expand's target shape are the same array here.
    inits = {"w": _conv_w(rng, 2, 3, 1), "axes": np.array([3], np.int64), "grow": np.array([1, 1, 1, 3, 1]),
             "shape": np.array([0, 2, 12, 5], np.int64)}
    nodes = [B.node("Conv", ["x", "w"], "c"), B.node("Unsqueeze", ["c", "axes"], "u"),
             B.node(how, ["u", "grow"], "t"), B.node("Reshape", ["t", "shape"], "r"), B.node("Relu", ["r"], "y")]
    graph = check(B.make_model(nodes, {"x": ["N", 3, 4, 5]}, {"y": None}, inits), tmp_path)
    assert ops_of(graph) == ["conv", "resize", "relu"]


@pytest.mark.slow
@pytest.mark.parametrize("app", ["MobileNetV3Small", "EfficientNetB0"])
def test_keras_applications_exported_by_tf2onnx(app: str, tmp_path: Path) -> None:
    pytest.importorskip("tf2onnx")
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, app)(input_shape=(64, 64, 3), weights=None, classes=7)
    spec = (tf.TensorSpec((None, 64, 64, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
    graph = check(proto, tmp_path, batch=2, low=0.0, high=255.0, atol=1e-4)
    assert transposes(graph) == 0
