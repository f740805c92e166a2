"""fuse-batch-norm, fuse-activation, fuse-reshape-transpose and the fuse composite."""

import pytest

from tapeout.compiler.ir import Activation
from tapeout.compiler.passes.fuse import (Fuse, FuseActivation, FuseBatchNorm, FuseConstantShift, FuseNormShift,
                                          FuseReshapeTranspose)

BN_RTOL = 1e-4


def _conv(b, x, c_in, c_out, name="conv", groups=1, bias=True, **attrs):
    ins = [x, b.rand(f"{name}_w", 3, 3, c_in // groups, c_out)] + ([b.rand(f"{name}_b", c_out)] if bias else [])
    return b.node("conv", ins, name, groups=groups, **attrs)


# ------------------------------------------------------------ fuse-batch-norm
@pytest.mark.parametrize("groups, bias", [(1, True), (1, False), (4, True)])
def test_bn_folded_into_preceding_conv(builder, apply, equivalent, op_list, groups, bias):
    b = builder()
    x = b.input("x", 6, 6, 4)
    c = _conv(b, x, 4, 8, groups=groups, bias=bias, pads=((1, 1), (1, 1)))
    g = b.build(b.node("batch_norm", [c, *b.bn_params("bn", 8)], "bn", epsilon=1e-3))
    res = apply(FuseBatchNorm(), g)
    assert op_list(res.graph) == ["conv"] and res.graph.outputs == ["bn_out"]
    assert len(res.graph.node("conv").inputs) == 3
    assert res.details == ["folded batch_norm 'bn' into conv 'conv'"]
    equivalent(g, res.graph, rtol=BN_RTOL, atol=1e-5)


def test_bn_folded_into_preceding_dense(builder, apply, equivalent, op_list):
    b = builder()
    d = b.node("dense", [b.input("x", 5), b.rand("w", 5, 3), b.rand("b", 3)], "d")
    h = b.node("batch_norm", [d, *b.bn_params("bn", 3)], "bn")
    g = b.build(b.node("relu", [h], "r"))
    res = apply(FuseBatchNorm(), g)
    assert op_list(res.graph) == ["dense", "relu"]
    equivalent(g, res.graph, rtol=BN_RTOL, atol=1e-5)


def test_bn_not_folded_back_into_conv_with_activation_or_shared_output(builder, apply):
    b = builder()
    c = _conv(b, b.input("x", 6, 6, 2), 2, 3, activation=Activation.of("relu"))
    g = b.build(b.node("batch_norm", [c, *b.bn_params("bn", 3)], "bn"))
    assert not apply(FuseBatchNorm(), g).changed
    b = builder()
    c = _conv(b, b.input("x", 6, 6, 2), 2, 3)
    g = b.build(b.node("batch_norm", [c, *b.bn_params("bn", 3)], "bn"), b.node("relu", [c], "other"))
    assert not apply(FuseBatchNorm(), g).changed


@pytest.mark.parametrize("groups, c_out", [(1, 5), (2, 6), (4, 8)])  # (4, 8): depthwise, multiplier 2
def test_bn_folded_into_following_unpadded_conv(builder, apply, equivalent, op_list, groups, c_out):
    b = builder()
    h = b.node("batch_norm", [b.input("x", 6, 6, 4), *b.bn_params("bn", 4)], "bn")
    g = b.build(_conv(b, h, 4, c_out, groups=groups, strides=(2, 1)))
    res = apply(FuseBatchNorm(), g)
    assert op_list(res.graph) == ["conv"] and res.graph.node("conv").inputs[0] == "x"
    equivalent(g, res.graph, rtol=BN_RTOL, atol=1e-5)


def test_bn_folded_into_following_dense(builder, apply, equivalent, op_list):
    b = builder()
    h = b.node("batch_norm", [b.input("x", 2, 5), *b.bn_params("bn", 5)], "bn")
    g = b.build(b.node("dense", [h, b.rand("w", 5, 3)], "d"))
    res = apply(FuseBatchNorm(), g)
    assert op_list(res.graph) == ["dense"]
    equivalent(g, res.graph, rtol=BN_RTOL, atol=1e-5)


def test_bn_not_folded_into_following_padded_conv(builder, apply):
    b = builder()
    h = b.node("batch_norm", [b.input("x", 6, 6, 4), *b.bn_params("bn", 4)], "bn")
    g = b.build(_conv(b, h, 4, 4, pads=((1, 1), (1, 1))))
    res = apply(FuseBatchNorm(), g)
    assert not res.changed and [n.op for n in res.graph.nodes] == ["batch_norm", "conv"]


# ------------------------------------------------------------ fuse-activation
@pytest.mark.parametrize("op, attrs", [("relu", {}), ("clip", {"min": 0.0, "max": 6.0}),
                                       ("leaky_relu", {"alpha": 0.1}), ("hard_sigmoid", {}),
                                       ("gelu", {"approximate": True}), ("swish", {})])
def test_activation_fused_into_conv(builder, apply, equivalent, op_list, op, attrs):
    b = builder()
    c = _conv(b, b.input("x", 5, 5, 2), 2, 3)
    g = b.build(b.node(op, [c], "act", **attrs))
    res = apply(FuseActivation(), g)
    assert op_list(res.graph) == ["conv"] and res.graph.outputs == ["act_out"]
    act = res.graph.node("conv").attrs["activation"]
    assert act.op == op and all(act.attr_dict()[k] == v for k, v in attrs.items())
    equivalent(g, res.graph)


def test_softmax_fused_into_dense_over_last_axis_only(builder, apply, equivalent, op_list):
    b = builder()
    d = b.node("dense", [b.input("x", 4), b.rand("w", 4, 3)], "d")
    g = b.build(b.node("softmax", [d], "sm", axis=1))
    res = apply(FuseActivation(), g)
    assert op_list(res.graph) == ["dense"]
    assert res.graph.node("d").attrs["activation"] == Activation.of("softmax", axis=-1)
    equivalent(g, res.graph)
    b = builder()
    d = b.node("dense", [b.input("x", 2, 4), b.rand("w", 4, 3)], "d")
    g = b.build(b.node("softmax", [d], "sm", axis=1))
    assert not apply(FuseActivation(), g).changed


def test_softmax_after_conv_not_fused(builder, apply):
    b = builder()
    g = b.build(b.node("softmax", [_conv(b, b.input("x", 5, 5, 2), 2, 3)], "sm"))
    assert not apply(FuseActivation(), g).changed


def test_activation_not_fused_when_producer_has_one_or_output_is_shared(builder, apply):
    b = builder()
    c = _conv(b, b.input("x", 5, 5, 2), 2, 3, activation=Activation.of("relu"))
    g = b.build(b.node("sigmoid", [c], "act"))
    assert not apply(FuseActivation(), g).changed
    b = builder()
    d = b.node("dense", [b.input("x", 4), b.rand("w", 4, 3)], "d")
    g = b.build(b.node("relu", [d], "act"), d)
    assert not apply(FuseActivation(), g).changed


# ---------------------------------------------------- fuse-reshape-transpose
def test_reshape_flatten_chains_collapse(builder, apply, equivalent, op_list):
    b = builder()
    x = b.input("x", 2, 3, 4)
    h = b.node("reshape", [x], "r1", shape=(6, 4))
    h = b.node("reshape", [h], "r2", shape=(4, -1))
    h = b.node("flatten", [h], "f")
    y = b.node("reshape", [h], "r3", shape=(3, 8))
    g = b.build(y)
    res = apply(FuseReshapeTranspose(), g)
    assert op_list(res.graph) == ["reshape"] and res.graph.node("r3").inputs == ["x"]
    equivalent(g, res.graph)


def test_reshape_into_flatten(builder, apply, equivalent, op_list):
    b = builder()
    h = b.node("reshape", [b.input("x", 2, 6)], "r", shape=(3, 4))
    g = b.build(b.node("flatten", [h], "f"))
    res = apply(FuseReshapeTranspose(), g)
    assert op_list(res.graph) == ["flatten"]
    equivalent(g, res.graph)


def test_transposes_compose_and_identity_perm_vanishes(builder, apply, equivalent, op_list):
    b = builder()
    x = b.input("x", 2, 3, 4)
    h = b.node("transpose", [x], "t1", perm=(0, 2, 3, 1))
    y = b.node("transpose", [h], "t2", perm=(0, 2, 1, 3))
    g = b.build(y)
    res = apply(FuseReshapeTranspose(), g)
    assert op_list(res.graph) == ["transpose"]
    equivalent(g, res.graph)
    b = builder()
    h = b.node("transpose", [b.input("x", 2, 3, 4)], "t1", perm=(0, 2, 3, 1))
    h = b.node("transpose", [h], "t2", perm=(0, 3, 1, 2))
    g = b.build(b.node("relu", [h], "r"))
    res = apply(FuseReshapeTranspose(), g)
    assert op_list(res.graph) == ["relu"] and res.graph.node("r").inputs == ["x"]
    equivalent(g, res.graph)


def test_shape_chain_with_shared_intermediate_is_kept(builder, apply):
    b = builder()
    h = b.node("reshape", [b.input("x", 2, 6)], "r1", shape=(3, 4))
    g = b.build(b.node("flatten", [h], "f"), b.node("relu", [h], "other"))
    assert not apply(FuseReshapeTranspose(), g).changed
    b = builder()
    h = b.node("transpose", [b.input("x", 2, 3)], "t1", perm=(0, 2, 1))
    g = b.build(b.node("transpose", [h], "t2", perm=(0, 2, 1)), h)
    assert not apply(FuseReshapeTranspose(), g).changed


# ------------------------------------------------------- fuse-constant-shift
@pytest.mark.parametrize("op, shape, first", [("add", (), False), ("add", (1, 1, 4), True), ("sub", (4,), False),
                                              ("mul", (1, 4), False), ("mul", (), True)])
def test_constant_shift_folded_into_conv(builder, apply, equivalent, op_list, op, shape, first):
    b = builder()
    c = _conv(b, b.input("x", 6, 6, 2), 2, 4, pads=((1, 1), (1, 1)))
    k = b.rand("k", *shape, low=0.5, high=3.0)
    g = b.build(b.node(op, [k, c] if first else [c, k], "shift"))
    res = apply(FuseConstantShift(), g)
    assert op_list(res.graph) == ["conv"] and res.graph.outputs == ["shift_out"]
    assert res.details == [f"folded constant {op} 'shift' into conv 'conv'"]
    equivalent(g, res.graph, rtol=1e-5, atol=1e-5)


def test_constant_shift_left_alone(builder, apply):
    """c - y, a constant that is not per channel (or widens the output), a conv with an activation
    or another reader: not a shift of the conv's own output."""
    cases = []
    b = builder()
    c = _conv(b, b.input("x", 6, 6, 2), 2, 4)
    cases.append(b.build(b.node("sub", [b.rand("k", 4), c], "s")))
    b = builder()
    c = _conv(b, b.input("x", 6, 6, 2), 2, 4)
    cases.append(b.build(b.node("add", [c, b.rand("k", 4, 4, 1)], "s")))  # per position, not per channel
    b = builder()
    c = _conv(b, b.input("x", 6, 6, 2), 2, 4, activation=Activation.of("relu"))
    cases.append(b.build(b.node("add", [c, b.rand("k", 4)], "s")))
    b = builder()
    c = _conv(b, b.input("x", 6, 6, 2), 2, 4)
    cases.append(b.build(b.node("add", [c, b.rand("k", 4)], "s"), c))
    for g in cases:
        assert not apply(FuseConstantShift(), g).changed


# ------------------------------------------------------------ fuse-norm-shift
def test_caffe2_norm_chain_becomes_one_batch_norm(builder, apply, equivalent, op_list):
    """The light zoo's BatchNormalization -> Mul -> Add (per-channel constants) after a concat,
    before relu: one batch norm (one int8 rounding, not three)."""
    b = builder()
    x = b.node("concat", [b.input("a", 5, 5, 2), b.input("c", 5, 5, 3)], "cat", axis=-1)
    h = b.node("batch_norm", [x, *b.bn_params("bn", 5)], "bn", epsilon=1e-3)
    h = b.node("mul", [h, b.rand("sc", 5, low=0.5, high=2.0)], "scale")
    h = b.node("add", [h, b.rand("sh", 1, 1, 5)], "shift")
    g = b.build(b.node("relu", [h], "relu"))
    res = apply(FuseNormShift(), g)
    assert op_list(res.graph) == ["concat", "batch_norm", "relu"]
    assert res.details == ["folded constant mul 'scale' into batch_norm 'bn'",
                           "folded constant add 'shift' into batch_norm 'bn'"]
    equivalent(g, res.graph, rtol=1e-5, atol=1e-5)
    b = builder()
    h = b.node("affine", [b.input("x", 4, 3), b.rand("s", 3), b.rand("t", 1, 3)], "aff")
    g = b.build(b.node("sub", [b.node("mul", [h, b.const("two", 2.0)], "m"), b.rand("k", 3)], "d"))
    res = apply(FuseNormShift(), g)
    assert op_list(res.graph) == ["affine"]
    equivalent(g, res.graph, rtol=1e-5, atol=1e-5)


def test_norm_shift_left_alone(builder, apply):
    """c - y, a per-position constant, or a batch norm with another reader: not its own shift."""
    cases = []
    for op, k, other in (("sub", (5,), False), ("add", (5, 5, 1), False), ("add", (5,), True)):
        b = builder()
        h = b.node("batch_norm", [b.input("x", 5, 5, 5), *b.bn_params("bn", 5)], "bn")
        operands = [b.rand("k", *k), h] if op == "sub" else [h, b.rand("k", *k)]
        out = b.node(op, operands, "s")
        cases.append(b.build(out, h) if other else b.build(out))
    for g in cases:
        assert not apply(FuseNormShift(), g).changed


def test_se_gate_becomes_one_conv_with_relu6(builder, apply, equivalent, op_list):
    """MobileNetV3's relu6(conv + 3) / 6: the + 3 folds, then the clip fuses into the conv."""
    b = builder()
    c = _conv(b, b.input("x", 6, 6, 2), 2, 4, pads=((1, 1), (1, 1)))
    h = b.node("clip", [b.node("add", [c, b.const("three", 3.0)], "plus3")], "relu6", min=0.0, max=6.0)
    g = b.build(b.node("mul", [h, b.const("sixth", 1 / 6)], "gate"))
    res = apply(Fuse(), g)
    assert op_list(res.graph) == ["conv", "mul"]
    assert res.graph.node("conv").attrs["activation"] == Activation.of("clip", min=0.0, max=6.0)
    equivalent(g, res.graph, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- fuse
def test_fuse_composite_conv_bn_relu(builder, apply, equivalent, op_list):
    b = builder()
    c = _conv(b, b.input("x", 6, 6, 2), 2, 4, pads=((1, 1), (1, 1)))
    h = b.node("batch_norm", [c, *b.bn_params("bn", 4)], "bn")
    g = b.build(b.node("relu", [h], "relu"))
    res = apply(Fuse(), g)
    assert op_list(res.graph) == ["conv"] and res.graph.node("conv").attrs["activation"] == Activation.of("relu")
    assert len(res.graph.constants) == 2  # the fused weights and bias; the originals are gone
    equivalent(g, res.graph, rtol=BN_RTOL, atol=1e-5)
