"""Every IR op through the Keras emitter matches the reference interpreter (batch 1 and 5)."""

from __future__ import annotations

import pytest

from tapeout.compiler.ops import ACTIVATION_OPS, SCHEMAS

GROUP_NAMES = ("conv", "pool", "elementwise", "shaping", "activation", "layout", "quant")


@pytest.mark.parametrize("group", GROUP_NAMES)
def test_group_matches_reference(group: str, cases, check) -> None:
    for name, graph in cases.GROUPS[group]().items():
        try:
            emitted = check(graph)
        except AssertionError as e:
            raise AssertionError(f"case {name}: {e}") from None
        # Every node's name survives as the name of the layer that computes it.
        layers = {layer.name for layer in emitted.model.layers}
        assert {n.name for n in graph.nodes} <= layers, f"case {name}"


def test_fixed_quant_is_bit_exact(cases, check) -> None:
    for name, graph in cases.quant_cases().items():
        try:
            check(graph, batches=(1, 300), tol=0.0)
        except AssertionError as e:
            raise AssertionError(f"case {name}: {e}") from None


def test_every_op_has_a_builder_and_a_case(cases) -> None:
    from tapeout.targets.keras.emit import BUILDERS

    assert set(SCHEMAS) <= set(BUILDERS), sorted(set(SCHEMAS) - set(BUILDERS))
    graphs = cases.all_graphs().values()
    exercised = {n.op for g in graphs for n in g.nodes}
    exercised |= {n.attr("activation").op for g in graphs for n in g.nodes if n.op in ("dense", "conv")}
    assert set(SCHEMAS) - exercised == set()
    assert set(ACTIVATION_OPS) <= {a.op for a in cases.ACTIVATIONS}


@pytest.mark.parametrize("rounding, overflow, runtime_f, why", [
    ("AP_BOGUS", "AP_WRAP", False, "unknown mode AP_BOGUS/AP_WRAP"),
    ("AP_RND", "AP_NOPE", False, "unknown mode AP_RND/AP_NOPE"),
    ("AP_RND", "AP_SAT", True, "the Keras emitter needs constant k, i and f")])
def test_fixed_quant_checks_come_from_the_op(cases, rounding, overflow, runtime_f, why) -> None:
    """The op's own check (compiler.ops.fixed_quant_modes), as the ONNX lowering calls it too."""
    from tapeout.compiler.ir import IRError
    from tapeout.targets.keras.emit import graph_to_keras

    m = cases.GraphMaker(x=((4,), "NC"))
    k, i, f = cases._kif(m, 1, 2, 3)
    if runtime_f:
        f = m.node("relu", "x")  # a runtime value, not a constant
    y = m.node("fixed_quant", "x", k, i, f, rounding=rounding, overflow=overflow)
    with pytest.raises(IRError, match=rf"^node 'fixed_quant' \(fixed_quant\): {why}$"):
        graph_to_keras(m.done(y))
