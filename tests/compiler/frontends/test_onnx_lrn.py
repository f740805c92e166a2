"""ONNX LRN into the IR's lrn: over the channels, stored channels-last like the other per-channel
ops (no transpose around it), matching onnxruntime; refused in one line without a size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tapeout.compiler.errors import FrontendError
from tapeout.compiler.frontends.onnx import load_onnx
from tapeout.compiler.reference_runner import ReferenceRunner
from tests.compiler.frontends import onnx_builders as B

LRN = {"size": 5, "alpha": 0.5, "beta": 0.75, "bias": 2.0}


def _conv_lrn_pool(input_lrn: bool = False) -> object:
    rng = np.random.default_rng(0)
    inits = {"w": B.rand(rng, 6, 3, 3, 3), "b": B.rand(rng, 6)}
    nodes = [B.node("LRN", ["x"], "x_lrn", **LRN)] if input_lrn else []
    nodes += [B.node("Conv", ["x_lrn" if input_lrn else "x", "w", "b"], "conv", kernel_shape=[3, 3], pads=[1] * 4),
              B.node("Relu", ["conv"], "relu"),
              B.node("LRN", ["relu"], "lrn", **LRN),
              B.node("MaxPool", ["lrn"], "y", kernel_shape=[2, 2], strides=[2, 2])]
    return B.make_model(nodes, {"x": ["N", 3, 8, 8]}, {"y": ["N", 6, 4, 4]}, inits, opset=13)


@pytest.mark.parametrize("input_lrn", [False, True])
def test_lrn_runs_channels_last_and_matches_onnxruntime(tmp_path: Path, input_lrn: bool) -> None:
    path = B.save(_conv_lrn_pool(input_lrn), tmp_path)
    graph = load_onnx(path)
    lrns = [n for n in graph.nodes if n.op == "lrn"]
    assert len(lrns) == 1 + input_lrn
    assert lrns[-1].attrs == LRN
    assert not [n for n in graph.nodes if n.op == "transpose"]  # moved like batch_norm: no data moves
    assert graph.types["x"].shape[1:] == (8, 8, 3)  # an input read by LRN is stored channels-last too
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32) * 4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    got = ReferenceRunner(graph, source_layout=True).infer({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("attrs, why", [({}, "Required attribute 'size' is missing"),  # the ONNX checker's
                                        ({"size": 0}, "node 'norm' (LRN): size 0 must be a positive integer"),
                                        ({"size": -3}, "node 'norm' (LRN): size -3 must be a positive integer")])
def test_lrn_without_a_size_is_refused_in_one_line(tmp_path: Path, attrs: dict, why: str) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, 3])
    graph = helper.make_graph([helper.make_node("LRN", ["x"], ["y"], name="norm", **attrs)], "g", [x], [y])
    path = tmp_path / "bad.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    with pytest.raises(FrontendError) as info:
        load_onnx(path)
    assert why in str(info.value)
    assert "\n" not in str(info.value)
