"""Keras front end: every supported layer against Keras itself, legacy formats, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.errors import FrontendError
from tapeout.compiler.frontends.keras import load_keras
from tapeout.compiler.ir import BATCH
from tapeout.compiler.interpreter import run

LAMBDA_RAN = []  # the Lambda test's function appends here if it is ever executed


@pytest.fixture(scope="module")
def keras():
    import keras

    keras.utils.set_random_seed(0)
    return keras


def _layer_names(model) -> set[str]:
    return {l.name for l in model.layers if type(l).__name__ != "InputLayer"}


def _randomize_bn(model, rng) -> None:
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            # non-trivial gamma, beta, moving mean and (positive) moving variance
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])


def test_conv2d_family(keras, check_keras):
    L = keras.layers
    inp = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c_stride")(inp)
    x = L.Conv2D(4, 3, dilation_rate=2, padding="same", groups=2, activation="elu", name="c_group")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="hard_sigmoid", name="dw")(x)
    x = L.SeparableConv2D(6, 3, padding="valid", depth_multiplier=2, activation="swish", name="sep")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(max_value=1.5, negative_slope=0.1, name="relu_cap")(x)
    x = L.ZeroPadding2D(((1, 2), (0, 1)), name="zpad")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same", name="maxp")(x)
    x = L.UpSampling2D((2, 1), name="up")(x)
    x = L.AveragePooling2D(2, strides=1, padding="same", name="avgp")(x)
    x = L.LeakyReLU(negative_slope=0.2, name="leaky")(x)
    x = L.ELU(alpha=0.7, name="elu")(x)
    x = L.Conv2D(5, 1, use_bias=False, activation="relu6", name="pw")(x)
    g = L.GlobalMaxPooling2D(keepdims=True, name="gmax")(x)
    x = L.Multiply(name="gate")([x, g])
    x = L.Flatten(name="flat")(x)
    x = L.Dense(8, activation="gelu", name="d_gelu")(x)
    x = L.Dense(6, activation="tanh", name="d_tanh")(x)
    out = L.Softmax(name="predictions")(x)
    model = keras.Model(inp, out, name="conv2d_family")
    _randomize_bn(model, np.random.default_rng(1))
    graph = check_keras(model)
    assert graph.inputs == ["image"] and graph.outputs == ["predictions"]
    assert graph.types["image"].shape[0] == BATCH and graph.types["predictions"].shape == (BATCH, 6)
    assert _layer_names(model) <= {n.name for n in graph.nodes}
    assert graph.io_layouts == {"image": "NHWC", "predictions": "NC"}
    assert graph.metadata["source_format"] == "keras"
    dw = graph.node("dw")
    assert dw.attrs["groups"] == 4 and graph.constants[dw.inputs[1]].shape == (3, 3, 1, 8)


def test_conv1d_family(keras, check_keras):
    L = keras.layers
    inp = keras.Input((16, 3), name="signal")
    x = L.Conv1D(4, 3, padding="causal", dilation_rate=2, name="causal")(inp)
    x = L.DepthwiseConv1D(3, depth_multiplier=3, strides=2, padding="same", name="dw1")(x)
    x = L.SeparableConv1D(5, 3, padding="same", activation="sigmoid", name="sep1")(x)
    x = L.ZeroPadding1D((2, 1), name="zpad1")(x)
    x = L.MaxPooling1D(2, name="maxp1")(x)
    x = L.UpSampling1D(3, name="up1")(x)
    x = L.AveragePooling1D(3, strides=2, padding="same", name="avgp1")(x)
    x = L.Conv1D(4, 2, padding="valid", activation="leaky_relu", name="c1")(x)
    seq = L.Activation("hard_silu", name="hsilu")(x)
    pooled = L.GlobalAveragePooling1D(name="gap1")(seq)
    out = L.Dense(3, name="logits")(pooled)
    model = keras.Model(inp, [out, seq], name="conv1d_family")
    graph = check_keras(model)
    assert graph.outputs == ["logits", "hsilu"]
    assert graph.io_layouts["signal"] == "NWC" and graph.io_layouts["hsilu"] == "NWC"
    # causal: all padding before the sequence, (k-1)*dilation of it
    assert graph.node("causal").attrs["pads"] == ((4, 0),)


def test_cropping(keras, check_keras):
    """Cropping1D/2D (NASNetMobile crops after its stem's padding): a slice of the spatial axes."""
    L = keras.layers
    img = keras.Input((9, 10, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", name="c")(img)
    x = L.Cropping2D(((1, 2), (0, 3)), name="crop2")(x)
    x = L.Cropping2D(1, name="crop_sym")(x)
    sig = keras.Input((12, 2), name="signal")
    y = L.Cropping1D((3, 1), name="crop1")(sig)
    model = keras.Model([img, sig], [L.Flatten(name="flat")(x), y], name="cropping")
    graph = check_keras(model)
    assert graph.node("crop2").op == "slice" and graph.types["crop2"].shape[1:] == (6, 7, 4)
    assert graph.types["crop_sym"].shape[1:] == (4, 5, 4)
    assert graph.types["crop1"].shape[1:] == (8, 2)


def test_merges_reshapes_and_nesting(keras, check_keras):
    L = keras.layers
    a = keras.Input((4, 4, 2), name="left")
    b = keras.Input((4, 4, 2), name="right")
    inner_in = keras.Input((4, 4, 2))
    inner = keras.Model(inner_in, L.Conv2D(2, 1, activation="relu", name="inner_conv")(inner_in), name="block")
    shared = L.Dense(2, name="shared")  # applied to both inputs: two nodes from one layer
    sa, sb = shared(a), shared(b)
    xs = [L.Add(name="add")([sa, sb, a]), L.Subtract(name="sub")([sa, sb]), L.Multiply(name="mul")([sa, b]),
          L.Maximum(name="max")([sa, sb]), L.Minimum(name="min")([a, sb]), L.Average(name="avg")([sa, sb, b]),
          inner(a)]
    x = L.Concatenate(axis=-1, name="cat")(xs)
    x = L.Rescaling(0.5, offset=0.25, name="rescale")(x)
    x = L.Normalization(mean=np.linspace(-1, 1, 14), variance=np.linspace(0.5, 2, 14), name="norm")(x)
    x = L.Normalization(mean=0.5, variance=4.0, invert=True, name="denorm")(x)
    x = L.Permute((2, 1, 3), name="perm")(x)
    x = L.Dropout(0.5, name="drop")(x)
    x = L.SpatialDropout2D(0.3, name="sdrop")(x)
    x = L.GaussianNoise(0.1, name="noise")(x)
    x = L.ActivityRegularization(name="actreg")(x)
    x = L.Identity(name="ident")(x)
    x = L.Activation("silu", name="silu")(x)
    x = L.Reshape((16, 14), name="reshape")(x)
    x = L.Concatenate(axis=1, name="cat_seq")([x, x])
    out1 = L.Activation("linear", name="lin")(x)
    out2 = L.Dense(3, activation="softmax", name="probs")(L.GlobalAveragePooling1D(name="gap")(x))
    model = keras.Model([a, b], [out1, out2], name="merges")
    graph = check_keras(model)
    assert graph.inputs == ["left", "right"] and graph.outputs == ["lin", "probs"]
    names = {n.name for n in graph.nodes}
    assert "inner_conv" in names and "shared" in names and "shared_1" in names
    assert graph.node("perm").attrs["perm"] == (0, 2, 1, 3)


def test_sequential_model(keras, check_keras):
    L = keras.layers
    model = keras.Sequential([keras.Input((6, 6, 1)), L.Conv2D(3, 3, activation="relu", name="conv"),
                              L.Flatten(name="flat"), L.Dense(4, activation="softmax", name="out")], name="seq")
    graph = check_keras(model)
    assert [n.name for n in graph.nodes] == ["conv", "flat", "out"]
    assert graph.outputs == ["out"] and graph.types[graph.inputs[0]].shape == (BATCH, 6, 6, 1)


# ------------------------------------------------------------------ legacy
@pytest.fixture(scope="module")
def tf_keras_model():
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    L = tf_keras.layers
    inp = tf_keras.Input((8, 8, 2), name="pixels")
    x = L.Conv2D(4, 3, padding="same", activation="hard_sigmoid", name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = L.Concatenate(name="cat")([x, x])
    x = L.Add(name="res")([x, y])
    x = L.LeakyReLU(alpha=0.15, name="leaky")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(3, activation="softmax", name="scores")(x)
    model = tf_keras.Model(inp, out, name="legacy")
    rng = np.random.default_rng(2)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 1.5, 4) for _ in range(4)])
    return model


def _compare_legacy(model, graph) -> None:
    x = np.random.default_rng(3).uniform(-3, 3, (2, 8, 8, 2)).astype(np.float32)
    got = run(graph, {graph.inputs[0]: x})[graph.outputs[0]]
    np.testing.assert_allclose(got, model(x, training=False).numpy(), atol=1e-4, rtol=0)
    assert graph.inputs == ["pixels"] and graph.outputs == ["scores"]
    # tf_keras 2.x hard_sigmoid is 0.2x + 0.5, not Keras 3's x/6 + 0.5
    assert graph.node("conv").attrs["activation"].attr_dict()["alpha"] == pytest.approx(0.2)


def test_legacy_full_h5(tf_keras_model, tmp_path):
    path = tmp_path / "legacy.h5"
    tf_keras_model.save(path, save_format="h5")
    graph = load_keras(path)
    assert graph.metadata["source_format"] == "keras2-h5"
    _compare_legacy(tf_keras_model, graph)


def test_legacy_json_and_weights(tf_keras_model, tmp_path):
    arch, weights = tmp_path / "legacy.json", tmp_path / "legacy.weights.h5"
    arch.write_text(tf_keras_model.to_json())
    tf_keras_model.save_weights(weights)
    graph = load_keras(arch, weights)
    assert graph.metadata["source_format"] == "keras2-json"
    _compare_legacy(tf_keras_model, graph)
    with pytest.raises(FrontendError, match="weights"):
        load_keras(arch)


# ------------------------------------------------------------------ refusals
def _mark_lambda_ran(x):
    LAMBDA_RAN.append(True)
    return x * 2.0


def test_lambda_refused_without_running_it(keras, tmp_path):
    inp = keras.Input((3,))
    out = keras.layers.Lambda(_mark_lambda_ran, name="sneaky")(keras.layers.Dense(2, name="d")(inp))
    model = keras.Model(inp, out)
    path = tmp_path / "lambda.keras"
    model.save(path)
    LAMBDA_RAN.clear()
    with pytest.raises(FrontendError, match=r"'sneaky' \(Lambda\).*does not execute code") as err:
        load_keras(path)
    assert "\n" not in str(err.value) and "Dense" in str(err.value)  # one line, lists what is supported
    assert LAMBDA_RAN == []


def test_tf_keras_lambda_refused_in_h5(tmp_path):
    import tf_keras

    inp = tf_keras.Input((3,))
    out = tf_keras.layers.Lambda(_mark_lambda_ran, name="sneaky")(inp)
    path = tmp_path / "lambda.h5"
    tf_keras.Model(inp, out).save(path, save_format="h5")
    LAMBDA_RAN.clear()
    with pytest.raises(FrontendError, match=r"'sneaky' \(Lambda\)"):
        load_keras(path)
    assert LAMBDA_RAN == []


def test_custom_class_refused(keras, tmp_path):
    @keras.saving.register_keras_serializable(package="tapeout_test")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            LAMBDA_RAN.append(True)
            return x * 2.0

    inp = keras.Input((3,))
    path = tmp_path / "custom.keras"
    keras.Model(inp, Doubler(name="twice")(inp)).save(path)
    LAMBDA_RAN.clear()
    with pytest.raises(FrontendError, match=r"'twice' \(Doubler\).*does not execute code"):
        load_keras(path)
    assert LAMBDA_RAN == []


def test_unsupported_layer_named(keras, tmp_path):
    inp = keras.Input((5, 3))
    model = keras.Model(inp, keras.layers.LSTM(4, name="memory")(inp))
    path = tmp_path / "lstm.keras"
    model.save(path)
    with pytest.raises(FrontendError, match=r"'memory' \(LSTM\) is not supported; supported layers: .*Conv2D"):
        load_keras(path)


@pytest.mark.parametrize("layer, match", [
    ("bilinear", r"'up' \(UpSampling2D\).*nearest only"),
    ("threshold", r"'thr' \(ReLU\).*threshold"),
])
def test_unsupported_settings(keras, tmp_path, layer, match):
    inp = keras.Input((4, 4, 2))
    if layer == "bilinear":
        out = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up")(inp)
    else:
        out = keras.layers.ReLU(threshold=0.5, name="thr")(inp)
    path = tmp_path / f"{layer}.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(FrontendError, match=match):
        load_keras(path)


def test_dynamic_dims_refused(keras, tmp_path):
    inp = keras.Input((None, 3), name="seq")
    path = tmp_path / "dyn.keras"
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(path)
    with pytest.raises(FrontendError, match="'seq'.*static"):
        load_keras(path)


def test_bad_files(tf_keras_model, tmp_path):
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    with pytest.raises(FrontendError, match="not a zip"):
        load_keras(text)
    good = tmp_path / "full.h5"
    tf_keras_model.save(good, save_format="h5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FrontendError, match="truncated.h5") as err:
        load_keras(truncated)
    assert "\n" not in str(err.value)
    with pytest.raises(FrontendError, match="no such model file"):
        load_keras(tmp_path / "missing.keras")
    arch = tmp_path / "arch.json"
    arch.write_text("{ not json")
    with pytest.raises(FrontendError, match="JSON"):
        load_keras(arch, good)
