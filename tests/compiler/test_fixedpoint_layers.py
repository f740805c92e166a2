"""The fixed-point model's layers added for FPGA coverage (depthwise conv, batch norm / affine,
relu6, zero padding, nearest upsampling, concatenation): arithmetic against hand-computed values
and against the float interpreter with wide types, and the one-line refusals of what hls4ml 1.3
cannot compute. (Bit-exactness against hls4ml's C simulation: tests/targets/hls4ml/test_layer_coverage.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler import interpreter
from tapeout.compiler.fixedpoint import fixed, hls_layers, predict_fixed
from tapeout.compiler.fixedpoint import layers as L
from tapeout.compiler.fixedpoint.layers import Fx
from tapeout.compiler.fixedpoint.search import uniform_plan
from tapeout.compiler.fixedpoint.types import FixedTypeError
from tapeout.compiler.ir import Activation, Graph, Node, TensorType


def _graph(x_shape, nodes, constants, outputs) -> Graph:
    g = Graph("t", ["x"], outputs, nodes, {k: np.asarray(v, np.float32) for k, v in constants.items()})
    g.types["x"] = TensorType((None, *x_shape), "float32")
    g.infer_shapes()
    return g


def test_relu6_clamps_at_six_and_casts_to_the_result_type():
    t = fixed(12, 5)
    x = Fx.of(np.array([-3.0, 0.0, 2.5, 5.9375, 6.0, 6.0625, 14.0]), t)
    y = L.relu_max(x, fixed(8, 4), 6)
    np.testing.assert_array_equal(y.to_float(), [0, 0, 2.5, 5.9375, 6, 6, 6])
    # A result type that cannot hold 6 wraps it (AP_WRAP), as ap_fixed's assignment from int does.
    np.testing.assert_array_equal(L.relu_max(x, fixed(6, 3), 6).to_float()[-1], -2.0)
    np.testing.assert_array_equal(L.relu_max(x, fixed(6, 3, "AP_TRN", "AP_SAT"), 6).to_float()[-1], 3.875)


def test_normalize_is_one_exact_multiply_add_then_one_cast():
    x = Fx.of(np.array([[1.5, -0.75]]), fixed(8, 3))
    s = Fx.of(np.array([0.3125, 1.0]), fixed(8, 2))
    b = Fx.of(np.array([0.0625, -0.5]), fixed(6, 1))
    exact = np.array([[1.5 * 0.3125 + 0.0625, -0.75 - 0.5]])
    np.testing.assert_array_equal(L.normalize(x, s, b, fixed(24, 8)).to_float(), exact)
    # Truncation happens once, on the sum (0.53125 -> 0.5 with 1 fractional bit, not 0.46875 + 0.0625).
    np.testing.assert_array_equal(L.normalize(x, s, b, fixed(6, 5)).to_float(), [[0.5, -1.5]])


def test_resize_nearest_uses_hls4mls_index_formula():
    x = Fx.of(np.arange(6, dtype=np.float64).reshape(1, 3, 2, 1), fixed(8, 4))
    y = L.resize_nearest(x, (2, 3), fixed(8, 4)).to_float()
    np.testing.assert_array_equal(y[0, :, :, 0], np.repeat(np.repeat(np.arange(6).reshape(3, 2), 2, 0), 3, 1))


def test_depthwise_conv_reads_its_own_channel_and_truncates_each_product():
    rng = np.random.default_rng(0)
    x = Fx.of(rng.normal(0, 1, (2, 5, 5, 3)), fixed(10, 3))
    w = Fx.of(rng.normal(0, 1, (3, 3, 1, 3)), fixed(8, 2))
    b = Fx.of(rng.normal(0, 1, (3,)), fixed(8, 2))
    wide = L.depthwise_conv(x, w, b, fixed(40, 12), fixed(40, 12), strides=(1, 1), pads=((1, 1), (1, 1)))
    xf, wf = x.to_float(), w.to_float()[:, :, 0, :]
    xp = np.pad(xf, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((2, 5, 5, 3))
    for i in range(5):
        for j in range(5):
            want[:, i, j, :] = np.einsum("nhwc,hwc->nc", xp[:, i:i + 3, j:j + 3, :], wf) + b.to_float()
    np.testing.assert_array_equal(wide.to_float(), want)
    # An accumulator with fewer fractional bits than the products truncates each product.
    acc = fixed(16, 6)
    narrow = L.depthwise_conv(x, w, b, acc, fixed(40, 12), strides=(1, 1), pads=((1, 1), (1, 1)))
    assert not np.array_equal(narrow.to_float(), wide.to_float())
    assert np.max(np.abs(narrow.to_float() - want)) <= 9 * acc.lsb + acc.lsb


def _block_graph(groups: int = 4, clip_max: float | None = 6.0, pad_value: float = 0.0) -> Graph:
    rng = np.random.default_rng(1)
    c = 4
    cg = c // groups
    nodes = [
        Node("batch_norm", "bn", ["x", "g", "be", "mu", "var"], ["bn"], {"epsilon": 1e-3}),
        Node("affine", "aff", ["bn", "s", "t"], ["aff"], {}),
        Node("pad", "zp", ["aff"], ["zp"], {"pads": ((0, 0), (1, 0), (0, 1), (0, 0)), "value": pad_value}),
        Node("conv", "dw", ["zp", "w", "b"], ["dw"], {"groups": groups, "pads": ((0, 1), (1, 0)),
                                                      "activation": Activation.of("clip", min=0.0, max=clip_max)}),
        Node("max_pool", "mp", ["dw"], ["mp"], {"kernel": (2, 2), "strides": (2, 2)}),
        Node("resize", "up", ["mp"], ["up"], {"scales": (2, 2)}),
        Node("concat", "cat", ["up", "aff"], ["cat"], {"axis": -1}),
    ]
    consts = {"g": rng.uniform(0.5, 2, c), "be": rng.normal(0, 1, c), "mu": rng.normal(0, 1, c),
              "var": rng.uniform(0.5, 2, c), "s": rng.uniform(0.5, 2, (1, 1, c)), "t": [0.25],
              "w": rng.normal(0, 1, (3, 3, cg, c)), "b": rng.normal(0, 0.1, c)}
    return _graph((6, 6, c), nodes, consts, ["cat"])


def test_new_layers_follow_the_float_model_with_wide_types():
    g = _block_graph()
    kinds = [(layer.name, layer.kind) for layer in hls_layers(g)]
    assert kinds == [("bn", "batch_norm"), ("aff", "batch_norm"), ("zp", "zero_pad"), ("dw_pad", "zero_pad"),
                     ("dw", "conv"), ("dw_relu6", "relu6"), ("mp", "max_pool"), ("up", "resize"), ("cat", "concat")]
    x = np.random.default_rng(2).normal(0, 3, (16, 6, 6, 4)).astype(np.float32)
    want = interpreter.run(g, {"x": x})["cat"]
    got = predict_fixed(g, uniform_plan(g, fixed(30, 10)), {"x": x})["cat"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.max(got[..., :4]) == 6.0  # the relu6 clamps


def test_a_uniform_plan_gives_copies_their_input_type_and_batch_norm_no_accumulator():
    g = _block_graph()
    plan = uniform_plan(g, fixed(16, 6))
    assert plan.of("zp").result == plan.of("aff").result == plan.of("dw_pad").result
    assert plan.of("up").result == plan.of("mp").result
    assert plan.of("bn").weight == fixed(16, 6) and plan.of("bn").accum is None


@pytest.mark.parametrize("variant, message", [
    (dict(groups=2), "1 < groups < channels"),
    (dict(clip_max=4.0), r"fused activation clip\(0.0, 4.0\) has no hls4ml"),
    (dict(pad_value=1.0), "other than zero padding"),
])
def test_what_hls4ml_cannot_compute_is_refused_in_one_line_naming_node_and_op(variant, message):
    g = _block_graph(**variant)
    with pytest.raises(FixedTypeError, match=message) as e:
        hls_layers(g)
    assert "\n" not in str(e.value) and str(e.value).startswith("node '")


def test_depth_multiplier_dilation_and_per_position_affine_are_refused():
    rng = np.random.default_rng(0)
    x_nodes = [Node("conv", "dw", ["x", "w"], ["dw"], {"groups": 2})]
    g = _graph((5, 5, 2), x_nodes, {"w": rng.normal(0, 1, (3, 3, 1, 4))}, ["dw"])
    with pytest.raises(FixedTypeError, match="node 'dw': op 'conv' .*depth multiplier"):
        hls_layers(g)
    g = _graph((7, 7, 2), [Node("conv", "c", ["x", "w"], ["c"], {"dilations": (2, 2)})],
               {"w": rng.normal(0, 1, (3, 3, 2, 2))}, ["c"])
    with pytest.raises(FixedTypeError, match="node 'c': op 'conv' with dilation"):
        hls_layers(g)
    g = _graph((3, 3, 2), [Node("affine", "a", ["x", "s", "t"], ["a"], {})],
               {"s": rng.normal(0, 1, (3, 3, 2)), "t": [0.0]}, ["a"])
    with pytest.raises(FixedTypeError, match="node 'a': op 'affine' .*not one value per channel"):
        hls_layers(g)
    g = _graph((3, 3, 2), [Node("concat", "cat", ["x", "x", "x"], ["cat"], {"axis": -1})], {}, ["cat"])
    with pytest.raises(FixedTypeError, match="node 'cat': op 'concat' of 3 inputs"):
        hls_layers(g)


def test_weights_are_quantized_from_the_text_hls4ml_writes():
    """hls4ml prints each weight with F decimals (F = fractional bits) and the C++ reads the text back:
    a float32 weight exactly on a rounding tie (here -11857.5 steps of 2^-16) is printed just past it
    and rounds away from the tie. Found as a 1-LSB C-simulation mismatch in the U-Net block."""
    from tapeout.compiler.fixedpoint.model import written_weights

    t = fixed(17, 1, "AP_RND")
    w = np.array([-0.18093109130859375, 0.25, -0.1], np.float32)
    assert w[0] * 2**16 == -11857.5
    assert Fx.of(w.astype(np.float64), t).raw[0] == -11857  # AP_RND on the exact tie: toward +inf
    assert written_weights(w, t).raw[0] == -11858  # "-0.1809310913085938" is below the tie
    np.testing.assert_array_equal(written_weights(w, t).raw[1:], Fx.of(w[1:].astype(np.float64), t).raw)
