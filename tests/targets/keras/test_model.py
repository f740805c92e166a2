"""Whole-model properties of the Keras emitter: fusion, names, layout, save/load, front-end round trip."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.ir import Activation, IRError


def _mlp_cnn(cases):
    m = cases.GraphMaker(image=((8, 8, 3), "NHWC"))
    y = m.conv("image", 4, (3, 3), pads=((1, 1), (1, 1)), activation=Activation.of("relu"))
    y = m.conv(y, 4, (3, 3), groups=4, strides=(2, 2), pads=((0, 1), (0, 1)),
               activation=Activation.of("clip", min=0.0, max=6.0))
    y = m.node("max_pool", y, kernel=(2, 2), strides=(2, 2))
    y = m.dense(m.node("flatten", y), 5, activation=Activation.of("softmax", axis=-1))
    return m.done(y)


def test_fused_activations_stay_in_the_layer(cases, check) -> None:
    emitted = check(_mlp_cnn(cases))
    layers = {layer.name: layer for layer in emitted.model.layers}
    assert [type(layer).__name__ for layer in emitted.model.layers] == [
        "InputLayer", "Conv2D", "DepthwiseConv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert layers["conv"].activation.__name__ == "relu"
    assert layers["conv_1"].activation.__name__ == "relu6"
    assert layers["conv_1"].padding == "same" and layers["conv"].padding == "same"
    assert layers["dense"].activation.__name__ == "softmax"


def test_activation_without_a_keras_string_gets_its_own_layer(cases, check) -> None:
    m = cases.GraphMaker(x=((5,), "NC"))
    graph = m.done(m.dense("x", 4, activation=Activation.of("leaky_relu", alpha=0.1)))
    layers = check(graph).model.layers
    assert [(type(la).__name__, la.name) for la in layers[1:]] == [("Dense", "dense"), ("LeakyReLU", "dense_leaky_relu")]
    assert layers[1].activation.__name__ == "linear"


def test_names_keras_refuses_are_replaced_and_mapped(cases, check) -> None:
    m = cases.GraphMaker(**{"in/put": ((4,), "NC")})
    d = m.dense("in/put", 3)
    graph = m.g
    graph.nodes[0].name = "block/dense"
    graph = m.done(d)
    emitted = check(graph)
    assert emitted.layer_names == {"block/dense": "block_dense"}
    assert emitted.input_names == ["in_put"]
    assert any("changed for Keras" in n for n in emitted.notes)


def test_batch_is_dynamic_and_channels_first_io_is_kept(cases, check) -> None:
    graph = cases.layout_cases()["channels_first_io"]
    model = check(graph).model
    assert tuple(model.inputs[0].shape) == (None, 3, 8, 8)
    assert tuple(model.outputs[0].shape) == (None, 4, 3, 3)
    from tapeout.targets.keras.emit import graph_to_keras

    plain = graph_to_keras(graph, keep_io_layout=False).model
    assert tuple(plain.inputs[0].shape) == (None, 8, 8, 3)


def test_saved_and_loaded_model_computes_the_same(cases, tmp_path) -> None:
    import keras

    from tapeout.targets.keras.emit import graph_to_keras

    graph = cases.merge({k: cases.elementwise_cases()[k] for k in ("binaries_with_constants", "affine_after_conv")}
                        | {"pad": cases.shaping_cases()["pad_spatial_and_channels"]}
                        | {"pool": cases.pool_cases()["avg_pool2d_pad_False"]})
    model = graph_to_keras(graph).model
    path = tmp_path / "emitted.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # custom layers are registered under "tapeout>"
    feeds = [cases.feeds_for(graph, 2)[i] for i in graph.inputs]
    for a, b in zip(model(feeds), loaded(feeds)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keras_front_end_reads_the_emitted_model_back(cases) -> None:
    """IR -> Keras -> IR: the front end's graph computes what the original computes."""
    from tapeout.compiler.frontends.keras import model_to_graph
    from tapeout.compiler.interpreter import run
    from tapeout.targets.keras.emit import graph_to_keras

    graph = _mlp_cnn(cases)
    back = model_to_graph(graph_to_keras(graph).model)
    assert [n.op for n in back.nodes] == [n.op for n in graph.nodes]
    assert [n.name for n in back.nodes] == [n.name for n in graph.nodes]
    x = cases.feeds_for(graph, 3)["image"]
    np.testing.assert_allclose(run(back, {"image": x})[back.outputs[0]], run(graph, {"image": x})[graph.outputs[0]],
                               rtol=1e-6, atol=1e-6)


def test_constant_weights_are_required_for_conv(cases) -> None:
    from tapeout.targets.keras.emit import graph_to_keras

    m = cases.GraphMaker(x=((6, 6, 2), "NHWC"), w=((3, 2, 4), "NHWC"))
    graph = m.g
    from tapeout.compiler.ir import Node

    graph.nodes.append(Node("conv", "conv", ["x", "w"], ["conv"], {}))
    graph.outputs = ["conv"]
    with pytest.raises(IRError, match="constant weights"):
        graph_to_keras(graph)


def test_emitter_is_independent_of_tflite() -> None:
    """The FPGA back end and fine-tuning reuse the emitter: it must not import TFLite pieces."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[3] / "targets" / "keras"
    for py in folder.glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if "tflite" in n or "ai_edge_litert" in n or n == "tensorflow"], py
