"""keras.applications models (random weights) through .keras files, against Keras itself."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras():
    import keras

    keras.utils.set_random_seed(0)
    return keras


def test_mobilenet_v2(keras, check_keras):
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
    graph = check_keras(model, low=-1.0, high=1.0)
    assert graph.outputs == ["predictions"] and graph.types["predictions"].shape == ("N", 10)
    assert sum(n.op == "conv" and n.attrs["groups"] > 1 for n in graph.nodes) == 17  # one depthwise per block


def test_resnet50(keras, check_keras):
    model = keras.applications.ResNet50(input_shape=(64, 64, 3), weights=None, classes=10)
    graph = check_keras(model, low=-1.0, high=1.0)
    assert sum(n.op == "add" for n in graph.nodes) == 16  # one residual add per bottleneck


def test_efficientnet_b0(keras, check_keras):
    model = keras.applications.EfficientNetB0(input_shape=(64, 64, 3), weights=None, classes=10)
    graph = check_keras(model, low=0.0, high=255.0)
    assert graph.node("rescaling").op == "affine" and graph.node("normalization").op == "affine"


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
