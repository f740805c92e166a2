"""ir: graph helpers that must hold on long graphs (issue 14, finding 5)."""

from __future__ import annotations

import pytest

from tapeout.compiler.ir import BATCH, Graph, IRError, Node, TensorType


def _chain(n: int) -> Graph:
    g = Graph("chain", ["x"], [f"r{n - 1}"], types={"x": TensorType((BATCH, 4))})
    g.nodes = [Node("relu", f"r{i}", [f"r{i - 1}" if i else "x"], [f"r{i}"]) for i in range(n)]
    return g


def test_topo_sort_orders_a_chain_deeper_than_the_recursion_limit():
    g = _chain(20_000)  # a recursive depth-first sort raised RecursionError here
    g.nodes.reverse()
    g.topo_sort()
    assert [n.name for n in g.nodes] == [f"r{i}" for i in range(20_000)]
    g.infer_shapes()
    g.check()


def test_topo_sort_keeps_a_sorted_graph_and_visits_inputs_in_order():
    g = Graph("g", ["x"], ["s"], types={"x": TensorType((BATCH, 4))})
    g.nodes = [Node("relu", "b", ["x"], ["b"]), Node("sigmoid", "a", ["x"], ["a"]),
               Node("add", "s", ["a", "b"], ["s"])]
    g.topo_sort()
    assert [n.name for n in g.nodes] == ["b", "a", "s"]
    g.nodes = [g.nodes[2], g.nodes[0], g.nodes[1]]  # the add first: its inputs come in input order
    g.topo_sort()
    assert [n.name for n in g.nodes] == ["a", "b", "s"]


def test_topo_sort_names_a_node_on_a_cycle():
    g = Graph("g", ["x"], ["b"], types={"x": TensorType((BATCH, 4))})
    g.nodes = [Node("add", "a", ["x", "b"], ["a"]), Node("relu", "b", ["a"], ["b"])]
    with pytest.raises(IRError, match="cycle through node 'a'"):
        g.topo_sort()


def test_unique_name_counts_every_kind_of_name():
    g = _chain(3)
    g.constants["w"] = None  # type: ignore[assignment]  # only the key matters here
    g.nodes[1].name = "second"
    assert g.unique_name("fresh") == "fresh"
    for taken in ("x", "w", "r0", "second", "r1"):  # input, constant, node and value names
        assert g.unique_name(taken) == f"{taken}_1"
    g.constants["w_1"] = None  # type: ignore[assignment]
    assert g.unique_name("w") == "w_2"
    assert g.names() >= {"x", "w", "w_1", "r0", "r1", "r2", "second"}


def test_check_compares_stored_types_with_inference_and_needs_none_of_them():
    g = _chain(3)
    g.check()  # untyped node outputs: checked from the inferred types
    g.types["r1"] = TensorType((BATCH, 5))
    with pytest.raises(IRError, match="'r1' is typed float32\\[N, 5\\] but infers to float32\\[N, 4\\]"):
        g.check()
    g.infer_shapes()  # inference overwrites the wrong type: why the pipeline checks first
    g.check()
