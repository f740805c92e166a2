"""keras.applications models (random weights) through .keras files, against Keras itself,
then compiled to ONNX and verified in onnxruntime against Keras (issue 2, acceptance 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras():
    import keras

    keras.utils.set_random_seed(0)
    return keras


def compile_to_onnx(path: Path, shape: tuple[int, ...], low: float, high: float, tmp_path: Path) -> None:
    """Compile the saved model to ONNX; Keras vs onnxruntime must agree within 1e-4 on every element."""
    from tapeout.compiler.api import compile_model

    data = tmp_path / "eval.npz"
    np.savez(data, x=np.random.default_rng(1).uniform(low, high, (4, *shape)).astype(np.float32))
    report = compile_model(path, ["onnx"], tmp_path / "out", eval_data=data, atol=1e-4, rtol=0.0)
    v = report.targets[0].verification
    assert v is not None and v.passed and v.data == "eval" and v.samples == 4, v
    assert v.max_abs_err is not None and v.max_abs_err <= 1e-4
    assert (tmp_path / "out" / "onnx-fp32" / "model.onnx").is_file()


def test_mobilenet_v2(keras, check_keras, tmp_path):
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
    graph = check_keras(model, low=-1.0, high=1.0)
    assert graph.outputs == ["predictions"] and graph.types["predictions"].shape == ("N", 10)
    assert sum(n.op == "conv" and n.attrs["groups"] > 1 for n in graph.nodes) == 17  # one depthwise per block
    compile_to_onnx(tmp_path / f"{model.name}.keras", (96, 96, 3), -1.0, 1.0, tmp_path)


def test_resnet50(keras, check_keras, tmp_path):
    model = keras.applications.ResNet50(input_shape=(64, 64, 3), weights=None, classes=10)
    graph = check_keras(model, low=-1.0, high=1.0)
    assert sum(n.op == "add" for n in graph.nodes) == 16  # one residual add per bottleneck
    compile_to_onnx(tmp_path / f"{model.name}.keras", (64, 64, 3), -1.0, 1.0, tmp_path)


def test_efficientnet_b0(keras, check_keras, tmp_path):
    model = keras.applications.EfficientNetB0(input_shape=(64, 64, 3), weights=None, classes=10)
    graph = check_keras(model, low=0.0, high=255.0)
    # Keras numbers auto-named layers per process ("rescaling_1" after another test made one).
    rescaling = model.get_layer(index=1).name
    normalization = model.get_layer(index=2).name
    assert rescaling.startswith("rescaling") and normalization.startswith("normalization")
    assert graph.node(rescaling).op == "affine" and graph.node(normalization).op == "affine"
    compile_to_onnx(tmp_path / f"{model.name}.keras", (64, 64, 3), 0.0, 255.0, tmp_path)


def test_backbone_inlined(keras, check_keras):
    """An application used as a layer inside a bigger model is inlined."""
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False,
                                              weights=None, pooling="avg")
    inp = keras.Input((32, 32, 3), name="photo")
    out = keras.layers.Dense(4, activation="softmax", name="head")(backbone(inp))
    graph = check_keras(keras.Model(inp, out, name="transfer"), low=-1.0, high=1.0)
    assert graph.inputs == ["photo"] and graph.outputs == ["head"]
    assert not any(n.op == "identity" and n.name.startswith("input") for n in graph.nodes)
    assert len(graph.nodes) > 100
