"""Acceptance 3: the same network as a Keras 3 model, a legacy Keras 2 .h5 and an NCHW ONNX model
all compile to hls4ml and verify in C simulation (the ONNX artifact takes NCHW inputs)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("tf_keras")
pytest.importorskip("onnx")


def _weights(rng):
    return {"kernel": rng.normal(0, 0.5, (3, 3, 2, 3)).astype(np.float32),
            "cbias": rng.normal(0, 0.1, 3).astype(np.float32),
            "dense": rng.normal(0, 0.4, (48, 4)).astype(np.float32),
            "dbias": rng.normal(0, 0.1, 4).astype(np.float32)}


def _keras(mod, w):
    L = mod.layers
    x = mod.Input((6, 6, 2), name="x")
    h = L.Conv2D(3, 3, activation="relu", name="conv")(x)
    h = L.Flatten(name="flat")(h)
    model = mod.Model(x, L.Dense(4, activation="softmax", name="fc")(h))
    model.get_layer("conv").set_weights([w["kernel"], w["cbias"]])
    model.get_layer("fc").set_weights([w["dense"], w["dbias"]])
    return model


def _onnx(w, path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # Keras flattens (h, w, c); ONNX flattens (c, h, w): the dense rows follow the ONNX order.
    rows = np.arange(48).reshape(4, 4, 3).transpose(2, 0, 1).ravel()
    inits = [numpy_helper.from_array(w["kernel"].transpose(3, 2, 0, 1).copy(), "W"),
             numpy_helper.from_array(w["cbias"], "B"),
             numpy_helper.from_array(w["dense"][rows].copy(), "D"), numpy_helper.from_array(w["dbias"], "DB")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="conv_relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "D", "DB"], ["g"], name="fc"),
             helper.make_node("Softmax", ["g"], ["y"], name="fc_softmax", axis=-1)]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    import keras
    import tf_keras

    d = tmp_path_factory.mktemp("sources")
    w = _weights(np.random.default_rng(5))
    _keras(keras, w).save(d / "net.keras")
    _keras(tf_keras, w).save(d / "net.h5", save_format="h5")
    _onnx(w, d / "net.onnx")
    rng = np.random.default_rng(6)
    for split, n in (("calibration", 400), ("eval", 300)):
        x = rng.normal(0, 1, (n, 6, 6, 2)).astype(np.float32)
        np.savez(d / f"{split}_nhwc.npz", x=x)
        np.savez(d / f"{split}_nchw.npz", x=x.transpose(0, 3, 1, 2).copy())
    return d


@pytest.mark.parametrize("source", ["net.keras", "net.h5", "net.onnx"])
def test_keras3_keras2_and_nchw_onnx_compile_and_verify(three_sources, tmp_path, source):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    from tapeout.compiler.api import compile_model
    from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

    d = three_sources
    layout = "nchw" if source.endswith(".onnx") else "nhwc"
    rep = compile_model(d / source, ["hls4ml"], tmp_path / "o", calibration=d / f"calibration_{layout}.npz",
                        eval_data=d / f"eval_{layout}.npz")
    t = rep.targets[0]
    assert t.verification is not None and t.verification.passed, t.notes
    assert t.verification.samples == 300 and t.verification.top1_agreement >= 0.995
    h = t.extra["hls4ml"]
    assert h["csim"]["built"] and h["csim"]["mismatched"] == []
    assert [r["kind"] for r in h["layers"]] == ["conv", "relu", "dense", "softmax"]
    with Hls4mlCsimRunner(tmp_path / "o/hls4ml-vitis") as r:
        shape = r.input_specs()[0].shape
    assert shape == (("N", 2, 6, 6) if layout == "nchw" else ("N", 6, 6, 2))
