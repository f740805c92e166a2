"""remove-identity, fold-constants, remove-dead, merge-pad, fuse-hard-swish and the canonicalize composite."""

import math

import numpy as np
import pytest

from tapeout.compiler.passes.canonicalize import (Canonicalize, FoldConstants, FuseHardSwish, MergePad, RemoveDead,
                                                  RemoveIdentity)


# ------------------------------------------------------------ remove-identity
def test_identity_and_dropout_removed(builder, apply, equivalent, op_list):
    b = builder()
    x = b.input("x", 4)
    h = b.node("dense", [x, b.rand("w", 4, 3)], "d")
    h = b.node("dropout", [h], "drop", rate=0.5)
    h = b.node("identity", [h], "id")
    y = b.node("relu", [h], "act")
    g = b.build(y)
    res = apply(RemoveIdentity(), g)
    assert res.changed and op_list(res.graph) == ["dense", "relu"]
    assert res.graph.node("act").inputs == ["d_out"]
    equivalent(g, res.graph)


def test_identity_producing_graph_output_keeps_the_output_name(builder, apply, equivalent):
    b = builder()
    x = b.input("x", 4)
    h = b.node("dense", [x, b.rand("w", 4, 3)], "d")
    y = b.node("identity", [h], "id")
    g = b.build(y)
    res = apply(RemoveIdentity(), g)
    assert [n.op for n in res.graph.nodes] == ["dense"]
    assert res.graph.node("d").outputs == ["id_out"] and res.graph.outputs == ["id_out"]
    equivalent(g, res.graph)


def test_identity_between_graph_input_and_output_is_kept(builder, apply):
    b = builder()
    x = b.input("x", 4)
    g = b.build(b.node("identity", [x], "id"))
    res = apply(RemoveIdentity(), g)
    assert not res.changed and [n.op for n in res.graph.nodes] == ["identity"]


def test_identity_whose_input_is_also_a_graph_output_is_kept(builder, apply):
    b = builder()
    h = b.node("relu", [b.input("x", 4)], "r")
    g = b.build(h, b.node("dropout", [h], "drop"))
    res = apply(RemoveIdentity(), g)
    assert not res.changed and res.graph.outputs == ["r_out", "drop_out"]


# ------------------------------------------------------------- fold-constants
def test_constant_subgraph_is_folded(builder, apply, equivalent, op_list):
    b = builder()
    x = b.input("x", 4)
    w = b.node("mul", [b.rand("w0", 4, 3), b.const("two", 2.0)], "scale")
    w = b.node("sub", [w, b.rand("shift", 3)], "shift")
    y = b.node("dense", [x, w], "d")
    g = b.build(y)
    res = apply(FoldConstants(), g)
    assert op_list(res.graph) == ["dense"]
    want = g.constants["w0"] * 2 - g.constants["shift"]
    np.testing.assert_allclose(res.graph.constants[res.graph.node("d").inputs[1]], want, rtol=1e-6)
    assert len(res.details) == 2
    equivalent(g, res.graph)


def test_fold_skips_nodes_reading_activations_or_producing_graph_outputs(builder, apply):
    b = builder()
    x = b.input("x", 3)
    h = b.node("add", [x, b.rand("c", 3)], "a")
    k = b.node("relu", [b.rand("k", 3)], "const_out")
    g = b.build(h, k)
    res = apply(FoldConstants(), g)
    assert not res.changed and len(res.graph.nodes) == 2


# ---------------------------------------------------------------- remove-dead
def test_dead_nodes_and_their_constants_removed(builder, apply, equivalent, op_list):
    b = builder()
    x = b.input("x", 4)
    y = b.node("relu", [x], "live")
    dead = b.node("dense", [x, b.rand("dead_w", 4, 2)], "dead1")
    b.node("sigmoid", [dead], "dead2")
    g = b.build(y)
    res = apply(RemoveDead(), g)
    assert op_list(res.graph) == ["relu"] and "dead_w" not in res.graph.constants
    assert any("dead2" in d for d in res.details)
    equivalent(g, res.graph)


def test_remove_dead_keeps_every_live_node(builder, apply):
    b = builder()
    x = b.input("x", 4)
    h = b.node("relu", [x], "r")
    g = b.build(h, b.node("tanh", [h], "t"))
    res = apply(RemoveDead(), g)
    assert not res.changed and len(res.graph.nodes) == 2


# ------------------------------------------------------------------ merge-pad
def _pad_then(b, op, value=0.0, pad_pads=((0, 0), (1, 2), (2, 1), (0, 0)), **attrs):
    x = b.input("x", 5, 6, 2)
    p = b.node("pad", [x], "pad", pads=pad_pads, value=value)
    if op == "conv":
        return b.node("conv", [p, b.rand("w", 3, 3, 2, 4), b.rand("bias", 4)], "conv", **attrs)
    return b.node(op, [p], "pool", kernel=(2, 2), **attrs)


def test_zero_pad_merged_into_conv_adding_its_own_pads(builder, apply, equivalent, op_list):
    b = builder()
    g = b.build(_pad_then(b, "conv", strides=(2, 1), pads=((1, 1), (0, 1))))
    res = apply(MergePad(), g)
    assert op_list(res.graph) == ["conv"]
    assert tuple(map(tuple, res.graph.node("conv").attrs["pads"])) == ((2, 3), (2, 2))  # pad (1,2),(2,1) plus own (1,1),(0,1)
    equivalent(g, res.graph)


def test_pad_merged_into_max_pool_only_with_minus_inf(builder, apply, equivalent, op_list):
    b = builder()
    g = b.build(_pad_then(b, "max_pool", value=-math.inf))
    res = apply(MergePad(), g)
    assert op_list(res.graph) == ["max_pool"]
    equivalent(g, res.graph)
    b = builder()
    g0 = b.build(_pad_then(b, "max_pool", value=0.0))
    assert not apply(MergePad(), g0).changed


def test_pad_merged_into_avg_pool_counts_the_padding(builder, apply, equivalent, op_list):
    b = builder()
    g = b.build(_pad_then(b, "avg_pool"))
    res = apply(MergePad(), g)
    assert op_list(res.graph) == ["avg_pool"] and res.graph.node("pool").attrs["count_include_pad"] is True
    equivalent(g, res.graph)


def test_avg_pool_with_own_uncounted_pads_is_not_merged(builder, apply):
    b = builder()
    g = b.build(_pad_then(b, "avg_pool", pads=((1, 1), (1, 1)), count_include_pad=False))
    assert not apply(MergePad(), g).changed


def test_pad_not_merged_when_value_nonzero_channels_padded_or_shared(builder, apply):
    b = builder()
    g = b.build(_pad_then(b, "conv", value=1.0))
    assert not apply(MergePad(), g).changed
    b = builder()
    x = b.input("x", 5, 6, 2)
    p = b.node("pad", [x], "pad", pads=((0, 0), (1, 1), (1, 1), (0, 2)))
    g = b.build(b.node("conv", [p, b.rand("w", 3, 3, 4, 4)], "conv"))
    assert not apply(MergePad(), g).changed
    b = builder()
    x = b.input("x", 5, 6, 2)
    p = b.node("pad", [x], "pad", pads=((0, 0), (1, 1), (1, 1), (0, 0)))
    c = b.node("conv", [p, b.rand("w", 3, 3, 2, 4)], "conv")
    g = b.build(c, b.node("relu", [p], "other"))
    assert not apply(MergePad(), g).changed


# --------------------------------------------------------------- canonicalize
def test_canonicalize_runs_sub_passes_to_a_fixed_point(builder, apply, equivalent, op_list):
    b = builder()
    x = b.input("x", 5, 6, 2)
    w = b.node("mul", [b.rand("w", 3, 3, 2, 4), b.const("half", 0.5)], "wscale")
    h = b.node("identity", [x], "id")
    p = b.node("pad", [h], "pad", pads=((0, 0), (1, 1), (1, 1), (0, 0)))
    c = b.node("conv", [p, w], "conv")
    b.node("relu", [c], "unused")
    g = b.build(b.node("dropout", [c], "drop"))
    res = apply(Canonicalize(), g)
    assert op_list(res.graph) == ["conv"] and res.graph.outputs == ["drop_out"]
    assert set(res.graph.constants) == {res.graph.node("conv").inputs[1]}
    equivalent(g, res.graph)
    again = apply(Canonicalize(), res.graph)
    assert not again.changed


# ----------------------------------------------------------------- fuse-hard-swish
@pytest.mark.parametrize("swap", [False, True])
def test_mul_by_own_hard_sigmoid_is_hard_swish(builder, apply, equivalent, op_list, swap):
    """PyTorch's opset-13 export of hardswish: Mul(x, HardSigmoid(x; 1/6, 1/2))."""
    b = builder()
    x = b.node("conv", [b.input("x", 6, 6, 2), b.rand("w", 3, 3, 2, 4), b.rand("b", 4)], "conv")
    h = b.node("hard_sigmoid", [x], "hs", alpha=1 / 6, beta=0.5)
    g = b.build(b.node("mul", [h, x] if swap else [x, h], "m"))
    res = apply(FuseHardSwish(), g)
    assert op_list(res.graph) == ["conv", "hard_swish"] and res.graph.outputs == ["m_out"]
    assert res.graph.node("m").inputs == [x]
    equivalent(g, res.graph, rtol=1e-6, atol=1e-6)


def test_other_hard_sigmoid_products_are_left(builder, apply):
    """A gate on another tensor (squeeze-excite), Keras 2's 0.2x + 0.5, a shared gate: not hard_swish."""
    b = builder()
    x = b.input("x", 4, 4, 3)
    y = b.input("y", 4, 4, 3)
    g1 = b.build(b.node("mul", [y, b.node("hard_sigmoid", [x], "hs", alpha=1 / 6, beta=0.5)], "m"))
    b = builder()
    x = b.input("x", 4, 4, 3)
    g2 = b.build(b.node("mul", [x, b.node("hard_sigmoid", [x], "hs", alpha=0.2, beta=0.5)], "m"))
    b = builder()
    x = b.input("x", 4, 4, 3)
    h = b.node("hard_sigmoid", [x], "hs", alpha=1 / 6, beta=0.5)
    g3 = b.build(b.node("mul", [x, h], "m"), h)
    for g in (g1, g2, g3):
        assert not apply(FuseHardSwish(), g).changed
