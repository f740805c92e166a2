"""Helpers for pass tests: a tiny IR graph builder and checks every pass test shares."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import BATCH, Graph, Node, TensorType
from tapeout.compiler.passes.base import Pass, PassResult


class Builder:
    """Builds a small, checked IR graph node by node; random weights from a fixed seed."""

    def __init__(self, name: str = "g", seed: int = 0) -> None:
        self.g = Graph(name, [], [])
        self.rng = np.random.default_rng(seed)

    def input(self, name: str, *shape: int) -> str:
        self.g.inputs.append(name)
        self.g.types[name] = TensorType((BATCH, *shape))
        return name

    def const(self, name: str, array: Any) -> str:
        self.g.constants[name] = np.asarray(array, dtype=np.float32)
        return name

    def rand(self, name: str, *shape: int, low: float = -1.0, high: float = 1.0) -> str:
        return self.const(name, self.rng.uniform(low, high, shape))

    def bn_params(self, prefix: str, c: int) -> list[str]:
        return [self.rand(f"{prefix}_scale", c, low=0.5, high=1.5), self.rand(f"{prefix}_bias", c),
                self.rand(f"{prefix}_mean", c), self.rand(f"{prefix}_var", c, low=0.5, high=2.0)]

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self.g.nodes.append(Node(op, name, list(inputs), [f"{name}_out"], attrs))
        return f"{name}_out"

    def build(self, *outputs: str) -> Graph:
        self.g.outputs = list(outputs)
        self.g.infer_shapes()
        self.g.check()
        return self.g


def _snapshot(g: Graph) -> tuple[str, dict[str, np.ndarray], list[str], list[str]]:
    return g.dump(), {k: v.copy() for k, v in g.constants.items()}, list(g.inputs), list(g.outputs)


def _apply(p: Pass, g: Graph) -> PassResult:
    """Run the pass, asserting it left its input untouched and returned a valid graph."""
    dump, consts, ins, outs = _snapshot(g)
    res = p.run(g)
    assert g.dump() == dump and g.inputs == ins and g.outputs == outs
    assert g.constants.keys() == consts.keys()
    assert all(np.array_equal(g.constants[k], v) for k, v in consts.items())
    assert res.changed == bool(res.details)
    res.graph.infer_shapes()
    res.graph.check()
    assert res.graph.outputs == g.outputs, "graph output names must stay stable"
    return res


def _assert_equivalent(a: Graph, b: Graph, rtol: float = 1e-5, atol: float = 1e-5, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    feeds = {i: rng.normal(size=(3, *a.types[i].shape[1:])).astype(np.float32) for i in a.inputs}
    ra, rb = run(a, feeds), run(b, feeds)
    assert ra.keys() == rb.keys()
    for k in ra:
        np.testing.assert_allclose(rb[k], ra[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.fixture
def builder() -> Callable[..., Builder]:
    return Builder


@pytest.fixture
def apply() -> Callable[[Pass, Graph], PassResult]:
    return _apply


@pytest.fixture
def equivalent() -> Callable[..., None]:
    return _assert_equivalent


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


@pytest.fixture
def op_list() -> Callable[[Graph], list[str]]:
    return ops
