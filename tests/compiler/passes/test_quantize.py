"""split-activations and quantize: which tensors get annotated and how, the simulated
quantized run against the float one, and the cases where nothing may be annotated."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.errors import PassFailed
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import Activation, Graph
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import (Quantize, SplitActivations, asymmetric, dequantize_array,
                                              fake_quantize, per_channel_weights, quantize_array,
                                              round_half_away, simulate, symmetric)
from tapeout.compiler.passes.registry import PASSES


def cnn(builder) -> Graph:
    """conv(relu) -> max_pool -> flatten -> dense(swish) -> dense(softmax)."""
    b = builder(seed=3)
    x = b.input("x", 6, 6, 3)
    c = b.node("conv", [x, b.rand("cw", 3, 3, 3, 8), b.rand("cb", 8)], "conv",
               pads=((1, 1), (1, 1)), activation=Activation.of("relu"))
    p = b.node("max_pool", [c], "pool", kernel=(2, 2), strides=(2, 2))
    f = b.node("flatten", [p], "flat")
    d = b.node("dense", [f, b.rand("dw", 72, 16, low=-0.3, high=0.3), b.rand("db", 16)], "fc",
               activation=Activation.of("swish"))
    return b.build(b.node("dense", [d, b.rand("ow", 16, 5), b.rand("ob", 5)], "out",
                          activation=Activation.of("softmax", axis=-1)))


def feeds(n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(n, 6, 6, 3)).astype(np.float32)}


def prepared(builder, apply, method: str = "minmax") -> Graph:
    res = apply(SplitActivations(), cnn(builder))
    return calibrate(res.graph, feeds(), method=method)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))


# ---------------------------------------------------------- split-activations
def test_split_moves_non_clamp_activations_out_and_keeps_output_names(builder, apply, equivalent, op_list):
    g = cnn(builder)
    res = apply(SplitActivations(), g)
    assert op_list(res.graph) == ["conv", "max_pool", "flatten", "dense", "swish", "dense", "softmax"]
    assert res.details == ["split swish out of dense 'fc'", "split softmax out of dense 'out'"]
    assert res.graph.node("conv").attr("activation") == Activation.of("relu")  # a clamp stays fused
    assert res.graph.node("fc").outputs == ["fc_out/linear"] and res.graph.node("fc/swish").outputs == ["fc_out"]
    assert res.graph.node("out/softmax").attrs == {"axis": -1}
    equivalent(g, res.graph)


def test_split_does_not_fire_on_clamps_only(builder, apply):
    b = builder()
    d = b.node("dense", [b.input("x", 4), b.rand("w", 4, 4)], "d", activation=Activation.of("clip", min=0.0, max=6.0))
    res = apply(SplitActivations(), b.build(d))
    assert not res.changed


@pytest.mark.parametrize("bias", [True, False])
def test_fused_hard_sigmoid_becomes_a_clamp_on_rescaled_weights(builder, apply, equivalent, op_list, bias):
    """hard_sigmoid(Wx + b) = clip(alpha (Wx + b) + beta, 0, 1): no float hard sigmoid is left
    for an integer artifact (a squeeze-excite gate), and the values are the same."""
    b = builder()
    ins = [b.input("x", 4, 4, 6), b.rand("w", 1, 1, 6, 6)] + ([b.rand("b", 6)] if bias else [])
    g = b.build(b.node("conv", ins, "fc2", activation=Activation.of("hard_sigmoid", alpha=1 / 6, beta=0.5)))
    res = apply(SplitActivations(), g)
    assert op_list(res.graph) == ["conv"]
    assert res.graph.node("fc2").attr("activation") == Activation.of("clip", min=0.0, max=1.0)
    assert res.details == ["folded hard_sigmoid of conv 'fc2' into its weights as clip(0, 1)"]
    equivalent(g, res.graph, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- int8
def test_int8_annotates_exactly_the_expected_tensors(builder, apply):
    g = prepared(builder, apply)
    res = apply(Quantize("int8"), g)
    q = res.graph.quant
    assert q is not None and q.scheme == "int8" and q.float_nodes == ()
    acts = ["x", "conv_out", "pool_out", "flat_out", "fc_out/linear", "fc_out", "out_out/linear", "out_out"]
    assert {k for k, t in q.tensors.items() if t.role == "activation"} == set(acts)
    assert {k for k, t in q.tensors.items() if t.role == "weight"} == {"cw", "dw", "ow"}
    assert {k for k, t in q.tensors.items() if t.role == "bias"} == {"cb", "db", "ob"}
    assert res.details[0].startswith("int8: 8 activations, 3 weights, 3 biases (calibration: minmax on 64")
    ranges = g.calibration.ranges
    for v in acts:
        t = q.tensors[v]
        assert t.dtype == "int8" and (t.qmin, t.qmax) == (-128, 127) and t.axis is None
    # Calibrated activations: asymmetric from the range, zero exactly representable.
    t = q.tensors["fc_out/linear"]
    lo, hi = ranges["fc_out/linear"]
    assert t.rmin == (lo,) and t.rmax == (hi,)
    assert t.scale[0] == pytest.approx((hi - lo) / 255) and t.zero_point[0] == round(-128 - lo / t.scale[0])
    assert q.tensors["conv_out"].zero_point == (-128,)  # relu output: [0, max]
    # Same-scale ops inherit their input's params; softmax has TFLite's fixed output params.
    assert q.tensors["pool_out"] == q.tensors["conv_out"] == q.tensors["flat_out"]
    assert (q.tensors["out_out"].scale, q.tensors["out_out"].zero_point) == ((1 / 256,), (-128,))
    # Weights: symmetric per output channel; biases int32 at input_scale * weight_scale.
    w, cw = q.tensors["cw"], g.constants["cw"]
    assert (w.dtype, w.axis, w.zero_point, w.qmin, w.qmax) == ("int8", 3, (0,) * 8, -127, 127)
    np.testing.assert_allclose(w.scale, np.abs(cw).max(axis=(0, 1, 2)) / 127)
    assert q.tensors["dw"].axis == 1 and len(q.tensors["dw"].scale) == 16
    bias = q.tensors["db"]
    assert bias.dtype == "int32" and bias.axis == 0 and bias.zero_point == (0,) * 16
    np.testing.assert_allclose(bias.scale, q.tensors["flat_out"].scale[0] * np.array(q.tensors["dw"].scale))
    assert "quant int8 {" in res.graph.dump() and "cw: weight int8[-127, 127] per-channel axis=3" in res.graph.dump()


def test_int8_simulation_is_close_to_float_and_really_rounds(builder, apply):
    g = apply(Quantize("int8"), prepared(builder, apply)).graph
    test = feeds(200, seed=9)
    ref = run(g, test)
    sim = simulate(g, test, keep_intermediates=True)
    assert cosine(ref["out_out"], sim["out_out"]) > 0.99
    assert np.mean(ref["out_out"].argmax(1) == sim["out_out"].argmax(1)) >= 0.95
    assert not np.array_equal(ref["out_out"], sim["out_out"])
    # Every annotated activation sits on its integer grid.
    for v, t in g.quant.tensors.items():
        if t.role == "activation":
            steps = sim[v].astype(np.float64) / t.scale[0] + t.zero_point[0]
            np.testing.assert_allclose(steps, np.round(steps), atol=1e-3, err_msg=v)


def test_int8_dense_simulation_equals_integer_arithmetic(builder, apply):
    """One dense layer: the fake-quantized run equals int32 accumulation of the int8 operands."""
    b = builder(seed=5)
    d = b.node("dense", [b.input("x", 6), b.rand("w", 6, 4), b.rand("b", 4)], "d")
    g = b.build(d)
    x = np.random.default_rng(2).uniform(-2, 3, size=(50, 6)).astype(np.float32)
    q = apply(Quantize("int8"), calibrate(g, {"x": x}, method="minmax")).graph
    tx, tw, tb, ty = (q.quant.tensors[k] for k in ("x", "w", "b", "d_out"))
    qx, qw, qb = quantize_array(x, tx).astype(np.int64), quantize_array(g.constants["w"], tw).astype(np.int64), \
        quantize_array(g.constants["b"], tb).astype(np.int64)
    acc = (qx - tx.zero_point[0]) @ qw + qb  # int32 accumulator
    real = acc * (tx.scale[0] * np.array(tw.scale))
    expected = dequantize_array(quantize_array(real, ty), ty)
    np.testing.assert_allclose(simulate(q, {"x": x})["d_out"], expected, atol=1e-6)


def test_excluded_layers_stay_float(builder, apply):
    g = prepared(builder, apply)
    q = apply(Quantize("int8", exclude=["fc"]), g).graph.quant
    assert q.float_nodes == ("fc", "fc/swish")  # the layer and the activation split off it
    assert "dw" not in q.tensors and "db" not in q.tensors
    assert "fc_out/linear" not in q.tensors  # read and written by float nodes only
    assert "flat_out" in q.tensors and "fc_out" in q.tensors  # written / read by quantized nodes
    with pytest.raises(PassFailed, match="no node named 'nope' to keep in float"):
        Pipeline([Quantize("int8", exclude=["nope"])]).run(g)


def test_int16x8_is_symmetric_with_int64_biases(builder, apply):
    q = apply(Quantize("int16x8"), prepared(builder, apply)).graph.quant
    acts = [t for t in q.tensors.values() if t.role == "activation"]
    assert {t.dtype for t in acts} == {"int16"} and {t.zero_point for t in acts} == {(0,)}
    assert {t.dtype for t in q.tensors.values() if t.role == "weight"} == {"int8"}
    assert {t.dtype for t in q.tensors.values() if t.role == "bias"} == {"int64"}
    assert q.tensors["out_out"].scale == (1 / 32768,)
    lo, hi = q.tensors["fc_out/linear"].rmin[0], q.tensors["fc_out/linear"].rmax[0]
    assert q.tensors["fc_out/linear"].scale[0] == pytest.approx(max(-lo, hi) / 32767)


def test_int16x8_simulation_is_closer_than_int8(builder, apply):
    g = prepared(builder, apply)
    test = feeds(100, seed=4)
    ref = run(g, test)["out_out"]
    quant = {s: apply(Quantize(s), g).graph for s in ("int8", "int16x8")}
    err = {s: np.abs(simulate(q, test)["out_out"] - ref).max() for s, q in quant.items()}
    assert err["int16x8"] < err["int8"]  # both share int8 weights; only the activation grid differs
    for v in ("conv_out", "fc_out/linear", "fc_out"):
        assert quant["int16x8"].quant.tensors[v].scale[0] < quant["int8"].quant.tensors[v].scale[0] / 100


# --------------------------------------------------------------------- fp16
def test_fp16_annotates_constants_only_and_needs_no_calibration(builder, apply):
    g = cnn(builder)  # neither split nor calibrated
    res = apply(Quantize("fp16"), g)
    q = res.graph.quant
    assert set(q.tensors) == set(g.constants) and {t.dtype for t in q.tensors.values()} == {"float16"}
    sim = simulate(res.graph, feeds(8))["out_out"]
    ref = run(g, feeds(8))["out_out"]
    assert not np.array_equal(sim, ref) and np.abs(sim - ref).max() < 1e-2


# ------------------------------------------------------------ must not fire
def test_int8_refuses_an_uncalibrated_or_unsplit_graph(builder, apply):
    with pytest.raises(PassFailed, match="not calibrated"):
        Pipeline([Quantize("int8")]).run(cnn(builder))
    unsplit = calibrate(cnn(builder), feeds(), method="minmax")
    with pytest.raises(PassFailed, match="'fc', 'out' have a fused activation .* run split-activations"):
        Pipeline([Quantize("int8")]).run(unsplit)
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        Quantize("int4")


def test_integer_inputs_and_constants_are_left_alone(builder):
    b = builder()
    x = b.input("x", 4)
    b.g.constants["idx"] = np.arange(4, dtype=np.int64)
    g = b.build(b.node("relu", [x], "r"))
    g.types["x"] = g.types["x"].__class__(g.types["x"].shape, "int32")
    g.infer_shapes()
    g.calibration = calibrate(g, {"x": np.ones((2, 4), np.int32)}).calibration
    assert "x" not in g.calibration.ranges
    q = Quantize("int8").run(g).graph.quant
    assert "x" not in q.tensors and "idx" not in q.tensors


# ------------------------------------------------------------------ helpers
def test_param_helpers():
    t = asymmetric(-1.0, 3.0)
    assert t.scale == (4 / 255,) and t.zero_point == (round_half_away(-128 + 1 / (4 / 255)),)
    assert asymmetric(0.5, 2.0).zero_point == (-128,)  # widened to hold 0
    assert asymmetric(-2.0, -0.5).zero_point == (127,)
    assert asymmetric(0.0, 0.0).scale == (1.0,)
    assert symmetric(-3.0, 1.0, "int16").scale == (3 / 32767,)
    assert list(round_half_away(np.array([0.5, -0.5, 1.5, -2.5]))) == [1, -1, 2, -3]
    w = np.array([[1.0, -0.5], [-2.0, 0.0]], np.float32)
    t = per_channel_weights(w, 1)
    assert t.scale == (2 / 127, 0.5 / 127) and t.rmin == (-2.0, -0.5) and t.rmax == (1.0, 0.0)
    assert quantize_array(w, t).tolist() == [[64, -127], [-127, 0]]
    np.testing.assert_allclose(fake_quantize(w, t), [[64 * 2 / 127, -0.5], [-2.0, 0.0]], rtol=1e-6)
    assert quantize_array(np.array([100.0]), asymmetric(-1, 1)).tolist() == [127]  # saturates


def test_quantize_is_registered():
    assert PASSES["quantize"] is Quantize and PASSES["split-activations"] is SplitActivations


def test_a_fixed_output_scale_too_coarse_for_the_observed_values_is_warned_about(builder, apply):
    b = builder(seed=1)
    d = b.node("dense", [b.input("x", 8), b.rand("w", 8, 400, low=-0.01, high=0.01)], "d")
    g = b.build(b.node("softmax", [d], "sm", axis=-1))  # 400 nearly equal classes: every p ~ 1/400
    g = calibrate(g, {"x": np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)}, method="minmax")
    res = apply(Quantize("int8"), g)
    # A field of its own, not a detail line prefixed "warning: " that readers parse back.
    assert len(res.warnings) == 1 and not any("warning" in d for d in res.details)
    assert res.warnings[0].startswith("softmax 'sm' output reaches only 0.00") and "1/256" not in res.warnings[0]
    rec = Pipeline([Quantize("int8")]).run(g).to_json()[0]
    assert rec["warnings"] == res.warnings and rec["details"] == res.details
    assert not apply(Quantize("int8", exclude=["sm"]), g).warnings
    # A trained-looking classifier (peaky outputs) is not warned about.
    assert not apply(Quantize("int8"), prepared(builder, apply)).warnings
