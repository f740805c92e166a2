"""Keras 3 operations with constant operands (``x + 3.0``, ``x * (1/6)``), as keras.applications
MobileNetV3 writes its hard sigmoid (issue 13).

Keras 3 stores ``tensor + 3.0`` in a functional model as the *operation* ``keras.src.ops.numpy.Add``
(class name "Add", like the layer) whose call arguments hold the constant; its node's input
tensors are only the tensor. Converted as the Add layer, the constant was dropped: the squeeze-excite
gate became relu6(x) instead of relu6(x + 3) / 6, and MobileNetV3 compiled to cosine 0.41.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

CORPUS = Path(__file__).resolve().parents[2] / "corpus"


@pytest.fixture(scope="module")
def keras():
    import keras

    keras.utils.set_random_seed(0)
    return keras


def _compile_onnx(path: Path, shape: tuple[int, ...], tmp_path: Path, targets=("onnx",), low: float = -1.0,
                  high: float = 1.0):
    from tapeout.compiler.api import compile_model

    data = tmp_path / "eval.npz"
    np.savez(data, x=np.random.default_rng(1).uniform(low, high, (4, *shape)).astype(np.float32))
    return compile_model(path, list(targets), tmp_path / "out", eval_data=data, atol=1e-4, rtol=0.0)


def test_squeeze_excite_hard_sigmoid(keras, check_keras, tmp_path):
    """MobileNetV3's squeeze-excite block, hard sigmoid written as relu6(x + 3) * (1/6)."""
    L = keras.layers
    inp = keras.Input((6, 6, 4), name="x")
    s = L.GlobalAveragePooling2D(keepdims=True, name="pool")(inp)
    s = L.Conv2D(2, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(4, 1, name="excite")(s)
    gate = L.ReLU(6.0, name="relu6")(s + 3.0) * (1.0 / 6.0)
    out = L.Multiply(name="gated")([inp, gate])
    model = keras.Model(inp, out, name="se_block")
    graph = check_keras(model, low=-3.0, high=3.0)
    assert [n.op for n in graph.nodes if n.op in ("add", "mul")] == ["add", "mul", "mul"]
    report = _compile_onnx(tmp_path / "se_block.keras", (6, 6, 4), tmp_path)
    v = report.targets[0].verification
    assert v is not None and v.passed and v.max_abs_err <= 1e-4, v


def test_ops_with_constants(keras, check_keras, tmp_path):
    """Add/Multiply/Subtract/Divide/Maximum operations with a scalar or array constant, either side."""
    L, ops = keras.layers, keras.ops
    inp = keras.Input((5, 5, 3), name="x")
    x = L.Conv2D(4, 1, name="conv")(inp)
    y = 2.0 - x
    y = ops.maximum(y, -0.5)
    y = y / 4.0
    y = ops.add(np.arange(4, dtype=np.float32), y)
    y = 1.5 * y
    model = keras.Model(inp, y, name="const_ops")
    graph = check_keras(model, low=-3.0, high=3.0)
    report = _compile_onnx(tmp_path / "const_ops.keras", (5, 5, 3), tmp_path)
    v = report.targets[0].verification
    assert v is not None and v.passed and v.max_abs_err <= 1e-4, v
    assert [n.op for n in graph.nodes if n.op != "conv"] == ["sub", "maximum", "div", "add", "mul"]


def test_unsupported_op_refused(keras, tmp_path):
    from tapeout.compiler.errors import FrontendError
    from tapeout.compiler.frontends.keras import load_keras

    inp = keras.Input((4,), name="x")
    d = keras.layers.Dense(3, name="d")(inp)
    out = keras.ops.concatenate([d, d + 1.0], axis=-1)  # an operation that shares a layer's class name
    model = keras.Model(inp, out, name="op_concat")
    model.save(tmp_path / "m.keras")
    with pytest.raises(FrontendError, match=r"Keras operation .* \(Concatenate\) is not supported"):
        load_keras(tmp_path / "m.keras")


@pytest.mark.slow
def test_mobilenet_v3_small(keras, check_keras, tmp_path):
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(64, 64, 3), classes=10)
    # Keras's own init makes the deep features input-independent (std ~1e-12): refill as the corpus does
    spec = importlib.util.spec_from_file_location("_tapeout_corpus_refill", CORPUS / "refill.py")
    refill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(refill)
    feeds = [np.random.default_rng(3).uniform(0.0, 255.0, (16, 64, 64, 3)).astype(np.float32)]
    refill.refill_keras_model(model, 0, feeds)
    assert np.ptp(np.asarray(model(feeds[0][:4])), axis=0).max() > 1e-3  # outputs depend on the input
    check_keras(model, low=0.0, high=255.0, atol=1e-4)
    report = _compile_onnx(tmp_path / f"{model.name}.keras", (64, 64, 3), tmp_path, ("onnx", "tflite:fp32"),
                           low=0.0, high=255.0)
    for t in report.targets:
        v = t.verification
        assert v is not None and v.passed, (t, v)
