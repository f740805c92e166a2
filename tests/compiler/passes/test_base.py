"""passes.base: the Editor's queries and edits (the index that keeps rewrites linear)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tapeout.compiler.ir import Node
from tapeout.compiler.passes.base import Editor


# ------------------------------------------------------------------ editor
def _three_readers(b: Any) -> Any:
    x = b.input("x", 4)
    r = b.node("relu", [x], "r")
    b.node("add", [r, r], "twice")  # reads r in two slots
    s = b.node("sigmoid", [x], "s")
    t = b.node("tanh", [s], "t")
    return b.build("twice_out", t)


def test_sole_consumer_counts_slots_nodes_and_graph_outputs(builder):
    g = _three_readers(builder())
    ed = Editor(g)
    assert ed.sole_consumer("r_out") is None  # one node, two slots
    assert ed.sole_consumer("x") is None  # two nodes
    assert ed.sole_consumer("t_out") is None  # a graph output
    assert ed.sole_consumer("s_out") is g.node("t")
    ed.remove(g.node("twice"))
    assert ed.sole_consumer("r_out") is None  # nothing reads it any more
    ed.close()
    assert [n.name for n in g.nodes] == ["r", "s", "t"]


def test_bypass_renames_the_producer_of_a_graph_output(builder):
    b = builder()
    y = b.node("relu", [b.input("x", 4)], "r")
    g = b.build(b.node("identity", [y], "id"))
    with Editor(g) as ed:
        assert ed.bypass(g.node("id"))
        assert ed.producer["id_out"] is g.node("r")
    assert [(n.name, n.outputs) for n in g.nodes] == [("r", ["id_out"])]
    assert g.outputs == ["id_out"] and "r_out" not in g.types


def test_bypass_refuses_an_output_fed_by_a_graph_input(builder):
    b = builder()
    g = b.build(b.node("identity", [b.input("x", 4)], "id"))
    with Editor(g) as ed:
        assert not ed.bypass(g.node("id"))
    assert [n.name for n in g.nodes] == ["id"]


def test_names_follow_the_edits_like_graph_unique_name(builder):
    b = builder()
    x = b.input("x", 4)
    d = b.node("dense", [x, b.rand("d_w", 4, 4), b.rand("d_b", 4)], "d")
    g = b.build(b.node("relu", [d], "act"))
    with Editor(g) as ed:
        assert ed.unique_name("d_w") == g.unique_name("d_w") == "d_w_1"
        name = ed.add_constant("d_w", np.zeros((4, 4), np.float32))
        assert name == "d_w_1" and ed.unique_name("d_w") == "d_w_2"
        act = g.node("act")
        ed.absorb_into_producer(g.node("d"), act)  # frees the name "act" and the value "d_out"
        assert not ed.taken("act") and not ed.taken("d_out") and ed.taken("act_out")
    for base in ("act", "d_out", "act_out", "d", "x", "d_w"):
        assert Editor(g).unique_name(base) == g.unique_name(base), base


def test_insert_after_keeps_order_and_indexes_the_new_node(builder):
    b = builder()
    y = b.node("dense", [b.input("x", 4), b.rand("w", 4, 4)], "d")
    g = b.build(b.node("relu", [y], "r"))
    with Editor(g) as ed:
        d = g.node("d")
        ed.set_output(d, 0, "d_lin")
        ed.insert_after(d, Node("sigmoid", "d/sigmoid", ["d_lin"], ["d_out"]))
        assert ed.producer["d_out"].name == "d/sigmoid" and ed.sole_consumer("d_lin") is not None
        assert ed.taken("d/sigmoid") and ed.taken("d_lin")
    assert [n.name for n in g.nodes] == ["d", "d/sigmoid", "r"]
