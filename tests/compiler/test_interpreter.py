"""The reference interpreter against independent references: TensorFlow ops, NumPy, hand-worked examples."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tapeout.compiler.errors import DataError
from tapeout.compiler.interpreter import eval_node, run
from tapeout.compiler.ir import BATCH, Activation, Graph, Node, TensorType
from tapeout.compiler.kernels import KERNELS, apply_activation
from tapeout.compiler.ops import SCHEMAS, same_pads
from tapeout.compiler.reference_runner import ReferenceRunner

TOL = dict(rtol=1e-5, atol=1e-5)
RNG = np.random.default_rng(1234)


@pytest.fixture(scope="module")
def tf():
    import tensorflow as tf

    return tf


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def op_graph(op: str, xs: list[np.ndarray], consts: list[np.ndarray | None] = (), **attrs) -> Graph:
    """A one-node graph: ``xs`` become graph inputs x0, x1.. (batch symbolic), ``consts`` constants."""
    g = Graph(op, [f"x{i}" for i in range(len(xs))], ["y"])
    for i, x in enumerate(xs):
        g.types[f"x{i}"] = TensorType((BATCH, *x.shape[1:]))
    names = list(g.inputs)
    for i, c in enumerate(consts):
        names.append(g.add_constant(f"c{i}", c) if c is not None else "")
    g.nodes.append(Node(op, op, names, ["y"], attrs))
    g.infer_shapes()
    g.check()
    return g


def run_op(op: str, xs: list[np.ndarray], consts: list[np.ndarray | None] = (), **attrs) -> np.ndarray:
    g = op_graph(op, xs, consts, **attrs)
    y = run(g, {f"x{i}": x for i, x in enumerate(xs)})["y"]
    # The kernel and the schema's shape inference must agree.
    assert y.shape[1:] == g.types["y"].shape[1:] and y.shape[0] == xs[0].shape[0]
    return y


def test_kernels_cover_every_op():
    assert set(SCHEMAS) <= set(KERNELS)


# ------------------------------------------------------------------------ conv
def tf_pads(pads) -> list[list[int]]:
    return [[0, 0], *[list(p) for p in pads], [0, 0]]


@pytest.mark.parametrize("strides,dil,pad_kind", [
    ((1, 1), (1, 1), "same"),
    ((2, 2), (1, 1), "same"),
    ((2, 1), (1, 1), "valid"),
    ((1, 1), (2, 2), "same"),
    ((1, 1), (2, 1), "valid"),
    ((2, 2), (1, 1), "explicit"),
])
def test_conv2d_matches_tf(tf, strides, dil, pad_kind):
    x, w = rand(2, 9, 8, 3), rand(3, 3, 3, 5)
    if pad_kind == "same":
        pads = tuple(same_pads(x.shape[1 + i], 3, strides[i], dil[i]) for i in range(2))
        want = tf.nn.conv2d(x, w, strides, "SAME", dilations=dil)
    elif pad_kind == "valid":
        pads = ((0, 0), (0, 0))
        want = tf.nn.conv2d(x, w, strides, "VALID", dilations=dil)
    else:
        pads = ((0, 2), (1, 0))  # asymmetric
        want = tf.nn.conv2d(x, w, strides, tf_pads(pads), dilations=dil)
    got = run_op("conv", [x], [w], strides=strides, dilations=dil, pads=pads)
    np.testing.assert_allclose(got, want.numpy(), **TOL)


def test_grouped_conv_matches_per_group_tf(tf):
    x, w = rand(1, 7, 7, 6), rand(3, 3, 2, 9)  # 3 groups of 2 channels -> 3 filters each
    pads = ((1, 1), (1, 1))
    got = run_op("conv", [x], [w], groups=3, pads=pads)
    parts = [tf.nn.conv2d(x[..., 2 * g:2 * g + 2], w[..., 3 * g:3 * g + 3], 1, tf_pads(pads)) for g in range(3)]
    np.testing.assert_allclose(got, np.concatenate([p.numpy() for p in parts], -1), **TOL)


@pytest.mark.parametrize("strides,pad_kind", [((1, 1), "same"), ((2, 2), "valid")])
def test_depthwise_multiplier_2_matches_tf(tf, strides, pad_kind):
    x, dw = rand(2, 8, 8, 4), rand(3, 3, 4, 2)  # TF depthwise filter [kh, kw, C, multiplier]
    pads = tuple(same_pads(8, 3, s) for s in strides) if pad_kind == "same" else ((0, 0), (0, 0))
    want = tf.nn.depthwise_conv2d(x, dw, (1, *strides, 1), pad_kind.upper())
    got = run_op("conv", [x], [dw.reshape(3, 3, 1, 8)], groups=4, strides=strides, pads=pads)
    np.testing.assert_allclose(got, want.numpy(), **TOL)


def test_conv1d_matches_tf(tf):
    x, w = rand(2, 11, 3), rand(3, 3, 4)
    pads = (same_pads(11, 3, 2),)
    got = run_op("conv", [x], [w], strides=(2,), pads=pads)
    np.testing.assert_allclose(got, tf.nn.conv1d(x, w, 2, "SAME").numpy(), **TOL)
    got = run_op("conv", [x], [w], dilations=(2,))
    np.testing.assert_allclose(got, tf.nn.conv1d(x, w, 1, "VALID", dilations=2).numpy(), **TOL)


def test_conv3d_matches_tf(tf):
    x, w = rand(1, 5, 6, 4, 2), rand(2, 3, 2, 2, 3)
    got = run_op("conv", [x], [w], strides=(1, 2, 1))
    np.testing.assert_allclose(got, tf.nn.conv3d(x, w, (1, 1, 2, 1, 1), "VALID").numpy(), **TOL)


def test_conv_bias_and_fused_relu6(tf):
    x, w, b = rand(1, 6, 6, 2), rand(3, 3, 2, 4) * 3, rand(4) * 3  # scaled so some values pass 6
    got = run_op("conv", [x], [w, b], activation=Activation.of("clip", min=0.0, max=6.0))
    np.testing.assert_allclose(got, tf.nn.relu6(tf.nn.conv2d(x, w, 1, "VALID") + b).numpy(), **TOL)
    assert got.max() == pytest.approx(6.0) and got.min() == 0.0


def test_conv_speed_64x64x32():
    x, w = rand(1, 64, 64, 32), rand(3, 3, 32, 64)
    node = Node("conv", "c", ["x", "w"], ["y"], {"pads": ((1, 1), (1, 1))})
    t0 = time.perf_counter()
    (y,) = eval_node(node, [x, w])
    print(f"conv [1,64,64,32] * 3x3x32x64: {time.perf_counter() - t0:.4f} s")
    assert y.shape == (1, 64, 64, 64) and y.dtype == np.float32


# --------------------------------------------------------------------- pooling
@pytest.mark.parametrize("op,tf_type", [("max_pool", "MAX"), ("avg_pool", "AVG")])
@pytest.mark.parametrize("kernel,strides,padding", [
    ((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), "SAME"), ((3, 2), (1, 1), "SAME"), ((3, 3), (2, 1), "VALID"),
])
def test_pool2d_matches_tf(tf, op, tf_type, kernel, strides, padding):
    x = rand(2, 7, 6, 3)
    pads = (tuple(same_pads(x.shape[1 + i], kernel[i], strides[i]) for i in range(2)) if padding == "SAME"
            else ((0, 0), (0, 0)))
    want = tf.nn.pool(x, kernel, tf_type, strides=strides, padding=padding)  # TF SAME avg excludes pads
    got = run_op(op, [x], kernel=kernel, strides=strides, pads=pads, **({"count_include_pad": False}
                                                                        if op == "avg_pool" else {}))
    np.testing.assert_allclose(got, want.numpy(), **TOL)


def test_pool1d_matches_tf(tf):
    x = rand(2, 9, 3)
    pads = (same_pads(9, 3, 2),)
    for op, kind in (("max_pool", "MAX"), ("avg_pool", "AVG")):
        got = run_op(op, [x], kernel=(3,), strides=(2,), pads=pads)
        np.testing.assert_allclose(got, tf.nn.pool(x, (3,), kind, strides=(2,), padding="SAME").numpy(), **TOL)


def test_pool_padding_by_hand():
    x = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1)
    kw = dict(kernel=(2,), strides=(2,), pads=((1, 0),))  # windows [pad, 1], [2, 3]
    assert run_op("avg_pool", [x], count_include_pad=True, **kw).ravel().tolist() == [0.5, 2.5]
    assert run_op("avg_pool", [x], count_include_pad=False, **kw).ravel().tolist() == [1.0, 2.5]
    assert run_op("max_pool", [-x], **kw).ravel().tolist() == [-1.0, -2.0]  # pads never win a max


def test_global_pools():
    x = rand(2, 4, 5, 3)
    np.testing.assert_allclose(run_op("global_avg_pool", [x]), x.mean(axis=(1, 2)), **TOL)
    np.testing.assert_allclose(run_op("global_max_pool", [x], keepdims=True), x.max(axis=(1, 2), keepdims=True))
    assert run_op("global_avg_pool", [rand(2, 6, 3)], keepdims=True).shape == (2, 1, 3)


# ----------------------------------------------------------------- activations
def _tf_activation_cases(tf):
    import keras

    a = keras.activations
    return [
        ("relu", {}, a.relu),
        ("clip", {"min": 0.0, "max": 6.0}, tf.nn.relu6),
        ("clip", {"min": -1.0, "max": None}, lambda v: tf.maximum(v, -1.0)),
        ("clip", {"min": None, "max": 0.5}, lambda v: tf.minimum(v, 0.5)),
        ("clip", {}, lambda v: v),
        ("leaky_relu", {"alpha": 0.2}, lambda v: tf.nn.leaky_relu(v, 0.2)),
        ("leaky_relu", {}, lambda v: tf.nn.leaky_relu(v, 0.3)),
        ("elu", {}, a.elu),
        ("elu", {"alpha": 0.5}, lambda v: a.elu(v, alpha=0.5)),
        ("sigmoid", {}, a.sigmoid),
        ("hard_sigmoid", {}, a.hard_sigmoid),
        ("hard_sigmoid", {"alpha": 0.2, "beta": 0.5}, lambda v: tf.clip_by_value(0.2 * v + 0.5, 0.0, 1.0)),
        ("tanh", {}, a.tanh),
        ("softmax", {}, a.softmax),
        ("softmax", {"axis": 1}, lambda v: tf.nn.softmax(v, axis=1)),
        ("swish", {}, a.silu),
        ("hard_swish", {}, a.hard_silu),
        ("gelu", {}, lambda v: tf.nn.gelu(v, approximate=False)),
        ("gelu", {"approximate": True}, lambda v: tf.nn.gelu(v, approximate=True)),
        ("identity", {}, lambda v: v),
        ("dropout", {"rate": 0.5}, lambda v: v),  # inference: identity
    ]


def test_activations_match_tf(tf):
    x = (rand(2, 5, 7) * 4).astype(np.float32)
    x[0, 0, :3] = [-3.0, 3.0, 0.0]  # hard_sigmoid/hard_swish corners
    for op, attrs, ref in _tf_activation_cases(tf):
        want = np.asarray(ref(tf.constant(x)))
        np.testing.assert_allclose(run_op(op, [x], **attrs), want, **TOL, err_msg=f"{op} {attrs}")
        if op != "dropout":  # the same function when fused
            np.testing.assert_allclose(apply_activation(x, Activation.of(op, **attrs)), want, **TOL)


def test_sigmoid_softmax_extremes_are_finite():
    x = np.array([[-1e4, 0.0, 1e4]], np.float32)
    assert run_op("sigmoid", [x]).tolist() == [[0.0, 0.5, 1.0]]
    np.testing.assert_allclose(run_op("softmax", [x]), [[0.0, 0.0, 1.0]])


# ------------------------------------------------------------- dense & friends
def test_dense_any_rank_with_bias_and_activation():
    x, w, b = rand(2, 3, 4), rand(4, 5), rand(5)
    got = run_op("dense", [x], [w, b], activation=Activation.of("relu"))
    np.testing.assert_allclose(got, np.maximum(np.einsum("nsk,km->nsm", x, w) + b, 0), **TOL)
    np.testing.assert_allclose(run_op("dense", [x[:, 0]], [w]), x[:, 0] @ w, **TOL)


def test_matmul_batched():
    a, b = rand(2, 3, 4), rand(2, 4, 6)
    np.testing.assert_allclose(run_op("matmul", [a, b]), np.einsum("nik,nkj->nij", a, b), **TOL)


def test_batch_norm_matches_tf(tf):
    x, scale, bias, mean = rand(2, 4, 4, 3), rand(3), rand(3), rand(3)
    var = np.abs(rand(3)) + 0.1
    got = run_op("batch_norm", [x], [scale, bias, mean, var], epsilon=1e-3)
    want = tf.nn.batch_normalization(x, mean, var, bias, scale, 1e-3)
    np.testing.assert_allclose(got, want.numpy(), **TOL)


def test_affine():
    x, s, t = rand(2, 3, 4), rand(4), rand(1, 3, 1)
    np.testing.assert_allclose(run_op("affine", [x], [s, t]), x * s + t, **TOL)


@pytest.mark.parametrize("op,ref", [
    ("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("div", np.divide),
    ("maximum", np.maximum), ("minimum", np.minimum),
])
def test_binaries_broadcast(op, ref):
    a, b = rand(2, 3, 4), rand(2, 1, 4)
    b[b == 0] = 1.0
    np.testing.assert_allclose(run_op(op, [a, b]), ref(a, b), **TOL)
    c = rand(4) + 3.0  # a constant operand broadcast from the right
    np.testing.assert_allclose(run_op(op, [a], [c]), ref(a, c), **TOL)


def test_concat():
    a, b = rand(2, 3, 2), rand(2, 3, 5)
    np.testing.assert_array_equal(run_op("concat", [a, b], axis=-1), np.concatenate([a, b], -1))
    np.testing.assert_array_equal(run_op("concat", [a, a], axis=1), np.concatenate([a, a], 1))


# ----------------------------------------------------------------------- shape
def test_flatten_is_channels_last_order():
    x = np.arange(2 * 2 * 3 * 2, dtype=np.float32).reshape(2, 2, 3, 2)
    y = run_op("flatten", [x])
    assert y.shape == (2, 12)
    assert y[1].tolist() == list(range(12, 24))  # [h, w, c] walked with c fastest
    assert y[0, 1] == x[0, 0, 0, 1] and y[0, 2] == x[0, 0, 1, 0]


def test_reshape_keeps_batch():
    x = rand(3, 4, 6)
    y = run_op("reshape", [x], shape=(2, -1, 3))
    assert y.shape == (3, 2, 4, 3)
    np.testing.assert_array_equal(y.reshape(3, -1), x.reshape(3, -1))


def test_transpose():
    x = rand(2, 3, 4, 5)
    np.testing.assert_array_equal(run_op("transpose", [x], perm=(0, 3, 1, 2)), x.transpose(0, 3, 1, 2))


def test_pad_by_hand():
    x = np.array([[1.0, 2.0]], np.float32)
    y = run_op("pad", [x], pads=((0, 0), (1, 2)), value=-1.0)
    assert y.tolist() == [[-1.0, 1.0, 2.0, -1.0, -1.0]]


def test_resize_nearest_by_hand_and_tf(tf):
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32).reshape(1, 2, 2, 1)
    y = run_op("resize", [x], scales=(2, 3))
    assert y[0, :, :, 0].tolist() == [[1, 1, 1, 2, 2, 2]] * 2 + [[3, 3, 3, 4, 4, 4]] * 2
    z = rand(2, 3, 4, 2)
    want = tf.keras.layers.UpSampling2D((2, 2), interpolation="nearest")(z).numpy()
    np.testing.assert_array_equal(run_op("resize", [z], scales=(2, 2)), want)


# --------------------------------------------------------------- the run loop
def chain_graph() -> Graph:
    """x -> dense(w) -> h; relu(h) -> r; add(r, h) -> y  (h is read twice, so it must outlive relu)."""
    g = Graph("chain", ["x"], ["y"])
    g.types["x"] = TensorType((BATCH, 3))
    g.constants["w"] = np.eye(3, dtype=np.float32) * 2
    g.nodes = [
        Node("dense", "d", ["x", "w"], ["h"]),
        Node("relu", "r", ["h"], ["r"]),
        Node("add", "a", ["r", "h"], ["y"]),
    ]
    g.infer_shapes()
    return g


def test_run_and_intermediates():
    g = chain_graph()
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    out = run(g, {"x": x})
    assert list(out) == ["y"] and out["y"].tolist() == [[4.0, -4.0, 12.0]]
    every = run(g, {"x": x}, keep_intermediates=True)
    assert list(every) == ["x", "h", "r", "y"]  # execution order, no constants
    assert every["h"].tolist() == [[2.0, -4.0, 6.0]] and every["r"].tolist() == [[2.0, 0.0, 6.0]]


def test_run_casts_float_inputs():
    out = run(chain_graph(), {"x": np.ones((2, 3), np.float64)})
    assert out["y"].dtype == np.float32 and out["y"].shape == (2, 3)


@pytest.mark.parametrize("feeds,needle", [
    ({}, "missing"),
    ({"x": np.ones((1, 3), np.float32), "z": np.ones(1)}, "unknown"),
    ({"x": np.ones((3,), np.float32)}, "rank"),
    ({"x": np.ones((1, 4), np.float32)}, "shape"),
])
def test_bad_feeds_raise_data_error(feeds, needle):
    with pytest.raises(DataError, match=needle) as e:
        run(chain_graph(), feeds)
    assert "\n" not in str(e.value)


def test_reference_runner():
    g = chain_graph()
    r = ReferenceRunner(g)
    assert r.name == "reference"
    (spec,) = r.input_specs()
    assert spec.name == "x" and spec.shape == (BATCH, 3) and spec.dtype == "float32"
    assert r.output_names() == ["y"]
    with r:
        y = r.infer({"x": np.array([[1.0, 0.0, -1.0]], np.float32)})["y"]
    assert y.tolist() == [[4.0, 0.0, -2.0]]  # h = [2, 0, -2], relu(h) + h


def test_batch_is_free():
    g = op_graph("dense", [rand(1, 4)], [rand(4, 2)])
    for n in (1, 5):
        assert run(g, {"x0": rand(n, 4)})["y"].shape == (n, 2)
