"""Every IR op lowered to ONNX matches the reference interpreter (batch 1 and 5)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from tapeout.compiler.fixedpoint.types import OVERFLOW, ROUNDING
from tapeout.compiler.ir import Activation, Graph
from tapeout.compiler.ops import ACTIVATION_OPS, SCHEMAS
from tapeout.targets.onnx.lowerings import LOWERINGS

IMG = ((6, 6, 4), "NHWC")
SEQ = ((9, 3), "NWC")

ACTIVATIONS = [
    Activation.of("relu"), Activation.of("clip", min=0.0, max=6.0), Activation.of("clip", min=-0.5, max=None),
    Activation.of("clip", min=None, max=0.25), Activation.of("clip", min=None, max=None),
    Activation.of("leaky_relu", alpha=0.2), Activation.of("elu", alpha=0.7), Activation.of("sigmoid"),
    Activation.of("hard_sigmoid", alpha=0.2, beta=0.5), Activation.of("tanh"), Activation.of("softmax", axis=-1),
    Activation.of("softmax", axis=1), Activation.of("swish"), Activation.of("hard_swish"),
    Activation.of("gelu", approximate=False), Activation.of("gelu", approximate=True), Activation.of("identity"),
]


def _conv_cases(M) -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    m = M(x=IMG)
    out["conv_bias_relu"] = m.done(m.conv("x", 5, (3, 3), activation=Activation.of("relu")))
    m = M(x=IMG)
    out["conv_stride_asym_pads_dilation"] = m.done(
        m.conv("x", 3, (3, 2), strides=(2, 1), pads=((0, 1), (1, 2)), dilations=(2, 1)))
    m = M(x=IMG)
    out["conv_groups_no_bias"] = m.done(m.conv("x", 6, (3, 3), groups=2, bias=False, pads=((1, 1), (1, 1))))
    m = M(x=IMG)
    out["depthwise_multiplier_2"] = m.done(m.conv("x", 8, (3, 3), groups=4, strides=(2, 2), pads=((1, 1), (0, 1))))
    m = M(x=SEQ)
    out["conv1d"] = m.done(m.conv("x", 4, (3,), strides=(2,), dilations=(2,), pads=((2, 1),),
                                  activation=Activation.of("elu", alpha=1.0)))
    m = M(x=SEQ)
    out["depthwise1d"] = m.done(m.conv("x", 3, (2,), groups=3, pads=((0, 1),)))
    return out


def _pool_cases(M) -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    for op in ("max_pool", "avg_pool"):
        for include in (False, True):
            if op == "max_pool" and include:
                continue
            extra = {"count_include_pad": include} if op == "avg_pool" else {}
            m = M(x=IMG)
            out[f"{op}2d_pad_{include}"] = m.done(
                m.node(op, "x", kernel=(3, 2), strides=(2, 2), pads=((1, 1), (0, 1)), **extra))
            m = M(x=SEQ)
            out[f"{op}1d_pad_{include}"] = m.done(m.node(op, "x", kernel=(3,), strides=(2,), pads=((1, 1),), **extra))
    for op in ("global_avg_pool", "global_max_pool"):
        for keep in (False, True):
            m = M(x=IMG)
            out[f"{op}_keep_{keep}"] = m.done(m.node(op, m.conv("x", 3, (1, 1)), keepdims=keep))
            m = M(x=SEQ)
            out[f"{op}1d_keep_{keep}"] = m.done(m.node(op, "x", keepdims=keep))
    return out


def _elementwise_cases(M) -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    m = M(x=IMG)
    c = m.conv("x", 4, (3, 3), pads=((1, 1), (1, 1)))
    gate = m.node("sigmoid", m.node("global_avg_pool", c, keepdims=True))
    out["mul_se_gate_broadcast"] = m.done(m.node("mul", c, gate))
    m = M(x=IMG)
    out["add_mixed_layouts"] = m.done(m.node("add", "x", m.conv("x", 4, (1, 1))))
    m = M(x=IMG)
    c = m.conv("x", 4, (1, 1))
    y = m.node("sub", c, m.const((4,)))
    y = m.node("div", y, m.const((6, 6, 4), scale=0.1, offset=2.0))
    y = m.node("maximum", y, m.const((1, 6, 1), scale=0.1))
    out["binaries_with_constants"] = m.done(m.node("minimum", y, m.const(())))
    m = M(a=((5,), "NC"), b=((5,), "NC"))
    out["binaries_rank2"] = m.done(m.node("maximum", m.node("add", "a", "b"), m.const((5,))))
    m = M(x=IMG)
    out["affine_after_conv"] = m.done(m.node("affine", m.conv("x", 3, (1, 1)), m.const((3,)), m.const((3,))))
    m = M(x=IMG)
    c = m.conv("x", 3, (1, 1))
    out["batch_norm_2d"] = m.done(m.node("batch_norm", c, m.const((3,)), m.const((3,)), m.const((3,)),
                                         m.const((3,), scale=0.1, offset=1.0), epsilon=1e-3))
    m = M(x=((5,), "NC"))
    out["batch_norm_rank2"] = m.done(m.node("batch_norm", "x", m.const((5,)), m.const((5,)), m.const((5,)),
                                            m.const((5,), scale=0.1, offset=1.0)))
    m = M(x=IMG)
    c = m.conv("x", 4, (1, 1))
    out["lrn_2d"] = m.done(m.node("lrn", c, size=3, alpha=0.5, beta=0.6, bias=2.0), m.node("lrn", c, size=5))
    m = M(x=SEQ)
    out["lrn_1d_and_rank2"] = m.done(m.node("lrn", "x", size=3, alpha=0.3),
                                     m.node("lrn", m.node("flatten", "x"), size=5, alpha=0.3))
    m = M(x=IMG)
    a, b = m.conv("x", 2, (1, 1)), m.conv("x", 3, (3, 3), pads=((1, 1), (1, 1)))
    out["concat_channels"] = m.done(m.node("concat", a, b, "x", axis=-1))
    m = M(x=IMG)
    a = m.conv("x", 2, (1, 1))
    out["concat_height"] = m.done(m.node("concat", a, m.node("relu", a), axis=1))
    m = M(x=IMG)
    out["identity_dropout"] = m.done(m.node("dropout", m.node("identity", m.conv("x", 2, (1, 1))), rate=0.5))
    return out


def _shaping_cases(M) -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    m = M(x=IMG)
    out["flatten_dense_trick"] = m.done(m.dense(m.node("flatten", m.conv("x", 3, (3, 3))), 4))
    m = M(x=IMG)
    out["flatten_output"] = m.done(m.node("flatten", m.conv("x", 3, (3, 3))))
    m = M(x=IMG)
    f = m.node("flatten", m.conv("x", 3, (3, 3)))
    out["flatten_two_denses"] = m.done(m.dense(f, 2), m.dense(f, 3))
    m = M(x=IMG)
    out["reshape_after_conv"] = m.done(m.node("reshape", m.conv("x", 2, (3, 3)), shape=(-1, 4)))
    m = M(x=IMG)
    c = m.conv("x", 3, (1, 1))
    out["transpose_after_conv"] = m.done(m.node("transpose", c, perm=(0, 2, 1, 3)),
                                         m.node("transpose", c, perm=(0, 3, 1, 2)))
    m = M(x=SEQ)
    out["transpose_input"] = m.done(m.node("transpose", "x", perm=(0, 2, 1)))
    m = M(x=IMG)
    c = m.conv("x", 3, (1, 1))
    out["pad_spatial_and_channels"] = m.done(m.node("pad", c, pads=((0, 0), (1, 2), (0, 1), (0, 0)), value=0.5),
                                             m.node("pad", c, pads=((0, 0), (0, 0), (0, 0), (1, 2))))
    m = M(x=IMG)
    c = m.conv("x", 4, (1, 1))
    out["slice_channels_spatial_flip"] = m.done(
        m.node("slice", c, axes=(3,), starts=(1,), ends=(3,)),
        m.node("slice", c, axes=(1, 2), starts=(5, 0), ends=(-7, 6), steps=(-2, 2)))
    m = M(x=SEQ)
    out["slice_input_open_end"] = m.done(m.node("slice", "x", axes=(-2,), starts=(-4,), ends=(2**63 - 1,)))
    m = M(x=IMG)
    out["resize_2d"] = m.done(m.node("resize", m.conv("x", 2, (1, 1)), scales=(2, 3)))
    m = M(x=SEQ)
    out["resize_1d"] = m.done(m.node("resize", "x", scales=(2,)))
    m = M(x=((3, 4), "NWC"))
    out["matmul_rank2_const"] = m.done(m.node("matmul", m.node("flatten", "x"), m.const((12, 5))))
    m = M(a=((4, 3), "NWC"), b=((3, 5), "NWC"))
    out["matmul_runtime_rank3"] = m.done(m.node("matmul", "a", "b"))
    m = M(x=SEQ)
    out["matmul_after_conv1d"] = m.done(m.node("matmul", m.conv("x", 4, (1,)), m.const((4, 2))))
    m = M(x=SEQ)
    out["dense_rank3"] = m.done(m.dense(m.conv("x", 4, (3,)), 3, activation=Activation.of("tanh")),
                                m.dense("x", 2, bias=False))
    m = M(x=((6,), "NC"))
    out["dense_rank2_no_bias"] = m.done(m.dense("x", 3, bias=False, activation=Activation.of("softmax", axis=-1)))
    return out


def _activation_cases(M) -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    for i, act in enumerate(ACTIVATIONS):
        m = M(x=IMG)
        fused = m.conv("x", 3, (3, 3), activation=act)
        m2 = M(x=((5,), "NC"))
        out[f"fused_conv_{i}_{act.op}"] = m.done(fused)
        out[f"fused_dense_{i}_{act.op}"] = m2.done(m2.dense("x", 4, activation=act))
        m = M(x=IMG)
        out[f"standalone_{i}_{act.op}"] = m.done(m.node(act.op, m.conv("x", 3, (1, 1)), **act.attr_dict()))
    return out


def _kif(m, k, i, f) -> list[str]:
    return [m.g.add_constant(n, np.asarray(v, np.int8)) for n, v in (("k", k), ("i", i), ("f", f))]


def _quant_cases(M) -> dict[str, Graph]:
    """fixed_quant in every rounding x overflow mode; the input first goes to a 1/16 grid, so half
    the values tie on the 1/8 grid after it. Per-element grids on a conv's (channels-first) output."""
    out: dict[str, Graph] = {}
    m = M(x=((16,), "NC"))
    fine = m.node("fixed_quant", "x", *_kif(m, 1, 3, 4))
    ys = [m.node("fixed_quant", fine, *_kif(m, j % 2, 1 + j % 3, 3 - j % 2), rounding=r, overflow=o)
          for j, (r, o) in enumerate((r, o) for r in ROUNDING for o in OVERFLOW)]
    out["fixed_quant_modes"] = m.done(*ys)
    m = M(x=IMG)
    c = m.conv("x", 4, (1, 1))
    k, i, f = [1, 1, 0, 0], np.array([0, 1, 2, 3, 1, 2]).reshape(6, 1, 1), [2, -1, 3, 0]  # a 0-bit element
    out["fixed_quant_per_element_conv"] = m.done(m.node("fixed_quant", c, *_kif(m, k, i, f), rounding="AP_RND",
                                                        overflow="AP_SAT"))
    m = M(x=((8,), "NC"))  # grids wider than float32's 24 bits: overflow compares and wraps stay exact
    ys = [m.node("fixed_quant", "x", *_kif(m, k, i, f), rounding=r, overflow=o)
          for o in OVERFLOW for (k, i, f, r) in ((1, 1, 38, "AP_RND_CONV"), (0, 2, 28, "AP_TRN"),
                                                  ([1, 0] * 4, [3, 10] * 4, [30, 20] * 4, "AP_RND"))]
    out["fixed_quant_wide"] = m.done(*ys)
    m = M(x=IMG)
    w = m.node("fixed_quant", m.const((6, 6, 4)), *_kif(m, 1, 0, 2))  # a quantizer on a constant
    out["fixed_quant_constant_operand"] = m.done(m.node("mul", "x", w))
    return out


def _all_graphs(M) -> dict[str, Graph]:
    graphs: dict[str, Graph] = {}
    for make in (_conv_cases, _pool_cases, _elementwise_cases, _shaping_cases, _activation_cases, _quant_cases):
        graphs.update(make(M))
    return graphs


GROUPS: dict[str, Callable] = {"conv": _conv_cases, "pool": _pool_cases, "elementwise": _elementwise_cases,
                               "shaping": _shaping_cases, "activation": _activation_cases, "quant": _quant_cases}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_matches_reference(group: str, maker, check) -> None:
    for name, graph in GROUPS[group](maker).items():
        try:
            check(graph)
        except AssertionError as e:
            raise AssertionError(f"case {name}: {e}") from None


def test_fixed_quant_is_bit_exact(maker, check) -> None:
    for name, graph in _quant_cases(maker).items():
        try:
            check(graph, tol=0.0, batches=(1, 300))
        except AssertionError as e:
            raise AssertionError(f"case {name}: {e}") from None


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_opset20_uses_gelu_op(approximate: bool, maker, check) -> None:
    m = maker(x=IMG)
    model = check(m.done(m.node("gelu", m.conv("x", 3, (1, 1)), approximate=approximate)), opset=20)
    gelus = [n for n in model.graph.node if n.op_type == "Gelu"]
    assert len(gelus) == 1
    assert gelus[0].attribute[0].s == (b"tanh" if approximate else b"none")


def test_every_op_has_a_lowering_and_a_case(maker) -> None:
    assert set(SCHEMAS) <= set(LOWERINGS), sorted(set(SCHEMAS) - set(LOWERINGS))
    exercised = {n.op for g in _all_graphs(maker).values() for n in g.nodes}
    exercised |= {n.attr("activation").op for g in _all_graphs(maker).values() for n in g.nodes
                  if n.op in ("dense", "conv")}
    assert set(SCHEMAS) - exercised == set()
    assert set(ACTIVATION_OPS) <= {a.op for a in ACTIVATIONS}


@pytest.mark.parametrize("rounding, overflow, runtime_f, why", [
    ("AP_BOGUS", "AP_WRAP", False, "unknown mode AP_BOGUS/AP_WRAP"),
    ("AP_RND", "AP_NOPE", False, "unknown mode AP_RND/AP_NOPE"),
    ("AP_RND", "AP_SAT", True, "the onnx target needs constant k, i and f")])
def test_fixed_quant_checks_come_from_the_op(maker, rounding, overflow, runtime_f, why) -> None:
    """The op's own check (compiler.ops.fixed_quant_modes), as the Keras emitter calls it too; here a
    bad input (exit 2)."""
    from tapeout.compiler.errors import UsageError
    from tapeout.targets.onnx.emit import graph_to_onnx

    m = maker(x=((4,), "NC"))
    k, i, f = _kif(m, 1, 2, 3)
    if runtime_f:
        f = m.node("relu", "x")  # a runtime value, not a constant
    y = m.node("fixed_quant", "x", k, i, f, rounding=rounding, overflow=overflow)
    with pytest.raises(UsageError, match=rf"^node 'fixed_quant' \(fixed_quant\): {why}$") as e:
        graph_to_onnx(m.done(y))
    assert e.value.exit_code == 2
