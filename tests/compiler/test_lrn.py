"""The lrn op: its NumPy kernel is ONNX LRN (checked against onnxruntime, and against the spec's
formula written as a loop for the even sizes onnxruntime refuses), its schema, and the quantize
pass keeping it float."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import BATCH, Graph, IRError, Node, TensorType
from tapeout.compiler.kernels import lrn, precision
from tapeout.compiler.ops import check_node_attrs, infer_node, lrn_window
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize

# (size, alpha, beta, bias): AlexNet's, the defaults, and others that move each term.
ODD = [(5, 1e-4, 0.75, 1.0), (1, 0.5, 0.5, 2.0), (3, 2.0, 1.3, 0.5), (7, 0.9, 0.25, 3.0), (11, 1.5, 0.75, 1.0)]
EVEN = [(2, 0.7, 0.75, 1.0), (4, 1.0, 0.6, 2.0), (6, 2.0, 1.0, 0.5)]


def _node(size: int, alpha: float, beta: float, bias: float) -> Node:
    return Node("lrn", "n", ["x"], ["y"], {"size": size, "alpha": alpha, "beta": beta, "bias": bias})


def _spec(x_nchw: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """https://onnx.ai/onnx/operators/onnx__LRN.html, literally, in float64."""
    x = x_nchw.astype(np.float64)
    c = x.shape[1]
    out = np.empty_like(x)
    for i in range(c):
        lo, hi = max(0, i - (size - 1) // 2), min(c - 1, i + int(np.ceil((size - 1) / 2)))
        square_sum = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        out[:, i] = x[:, i] / (bias + alpha / size * square_sum) ** beta
    return out


def _ort(x_nchw: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    xi = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_nchw.shape))
    yo = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x_nchw.shape))
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
    model = helper.make_model(helper.make_graph([node], "lrn", [xi], [yo]),
                              opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x_nchw})[0]


def _kernel(x_nchw: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """The kernel on the IR's channels-last layout, brought back to NCHW."""
    y = lrn(_node(size, alpha, beta, bias), [np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))])[0]
    return y.transpose(0, 3, 1, 2)


def _input(seed: int, channels: int = 9) -> np.ndarray:
    # Scaled so that the sum of squares, not the bias, dominates the denominator somewhere.
    return (np.random.default_rng(seed).standard_normal((3, channels, 5, 4)) * 3).astype(np.float32)


@pytest.mark.parametrize("size, alpha, beta, bias", ODD)
def test_kernel_matches_onnxruntime(size, alpha, beta, bias) -> None:
    x = _input(size)
    got = _kernel(x, size, alpha, beta, bias)
    assert got.dtype == np.float32
    # The kernel sits within 1e-6 of the float64 formula; onnxruntime's float32 pow strays up to 8e-6.
    np.testing.assert_allclose(got, _spec(x, size, alpha, beta, bias), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, _ort(x, size, alpha, beta, bias), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("size, alpha, beta, bias", EVEN)
def test_even_size_window_reaches_one_channel_further_after(size, alpha, beta, bias) -> None:
    """onnxruntime refuses even sizes, so the spec's formula is the reference; the window must not
    be the symmetric one (size + 1 channels) a radius-based LRN would take."""
    x = _input(size)
    got = _kernel(x, size, alpha, beta, bias)
    np.testing.assert_allclose(got, _spec(x, size, alpha, beta, bias), rtol=1e-6, atol=1e-7)
    symmetric = _spec(x, size + 1, alpha * (size + 1) / size, beta, bias)  # same alpha per element
    assert np.max(np.abs(got - symmetric)) > 1e-3
    assert lrn_window(size) == (size // 2 - 1, size // 2)
    # docs/onnx-frontend.md says onnxruntime refuses them; should that change, compare against it here.
    with pytest.raises(Exception, match=r"size_ % 2 == 1"):
        _ort(x, size, alpha, beta, bias)


def test_window_wider_than_the_channels_and_float64() -> None:
    x = _input(0, channels=3)
    np.testing.assert_allclose(_kernel(x, 9, 1.0, 0.75, 1.0), _spec(x, 9, 1.0, 0.75, 1.0), rtol=2e-6)
    with precision("float64"):
        y64 = _kernel(x, 5, 1.0, 0.75, 1.0)
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, _spec(x, 5, 1.0, 0.75, 1.0), rtol=1e-12)


def test_schema_needs_size_and_keeps_the_shape() -> None:
    t = TensorType((BATCH, 5, 4, 9), "float32")
    assert infer_node(_node(5, 1e-4, 0.75, 1.0), [t]) == [t]
    with pytest.raises(IRError, match="lacks required attribute 'size'"):
        check_node_attrs(Node("lrn", "n", ["x"], ["y"], {}))
    with pytest.raises(IRError, match="size 0 must be at least 1"):
        infer_node(_node(0, 1e-4, 0.75, 1.0), [t])


def _graph() -> Graph:
    g = Graph("g", ["x"], ["y"])
    g.types["x"] = TensorType((BATCH, 4, 4, 6), "float32")
    g.constants["w"] = np.random.default_rng(1).standard_normal((1, 1, 6, 6)).astype(np.float32)
    g.nodes = [Node("conv", "conv", ["x", "w"], ["c"], {}), Node("lrn", "norm", ["c"], ["n"], {"size": 3}),
               Node("relu", "relu", ["n"], ["y"], {})]
    g.infer_shapes()
    return g


@pytest.mark.parametrize("scheme", ["int8", "int16x8", "fp16"])
def test_quantize_keeps_lrn_float_in_every_scheme(scheme) -> None:
    g = _graph()
    if scheme != "fp16":
        feeds = {"x": np.random.default_rng(2).standard_normal((16, 4, 4, 6)).astype(np.float32)}
        g = calibrate(g, feeds, method="minmax")
    q = Pipeline([Quantize(scheme)]).run(g).graph.quant
    assert q.float_nodes == ("norm",)
    if scheme != "fp16":  # its input and output are quantized for the integer neighbours, as a kept node's are
        assert q.tensors["c"].is_integer and q.tensors["n"].is_integer


def test_interpreter_runs_it() -> None:
    g = _graph()
    x = np.random.default_rng(3).standard_normal((2, 4, 4, 6)).astype(np.float32)
    c = run(g, {"x": x}, keep_intermediates=True)["c"]
    np.testing.assert_allclose(run(g, {"x": x})["y"], np.maximum(_kernel(c.transpose(0, 3, 1, 2), 3, 1e-4, 0.75,
                                                                         1.0).transpose(0, 2, 3, 1), 0), rtol=1e-6)
