"""Tiny ONNX models (Add + Relu) built with onnx.helper, for the runner and verify tests."""

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

BIAS = np.array([1.0, -2.0, 0.5], dtype=np.float32)


def add_relu_model(bias: np.ndarray, input_name: str = "x", output_name: str = "y") -> bytes:
    """y = relu(x + bias) for x: float32 [N, 3]."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", [input_name, "bias"], ["sum"]), helper.make_node("Relu", ["sum"], [output_name])],
        "add_relu",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(bias.astype(np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def onnx_file(tmp_path: Path) -> Callable[..., Path]:
    def make(bias: np.ndarray = BIAS, name: str = "model.onnx", **names: str) -> Path:
        path = tmp_path / name
        path.write_bytes(add_relu_model(bias, **names))
        return path

    return make
