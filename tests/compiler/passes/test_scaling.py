"""Every pass stays linear in the node count (issue 14, finding 5).

A chain of 20,000 ReLUs took 94 s to compile: rewrites rescanned the graph once per node
(``Graph.producers``/``consumers``/``unique_name`` per candidate, ``list.remove``). These
tests count whole scans of ``graph.nodes`` (an operation count, not a timing: speed lives in
benchmarks/compile_scaling.py) on chains of N and 2N nodes: the counts must be equal.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from tapeout.compiler.ir import Activation
from tapeout.compiler.passes.canonicalize import Canonicalize
from tapeout.compiler.passes.fuse import Fuse
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.prune import PruneChannels, PruneMagnitude, PruneNM
from tapeout.compiler.passes.quantize import SplitActivations
from tapeout.compiler.passes.registry import default_pipeline
from tests.compiler.node_scans import count_node_scans


# ------------------------------------------------------------------ chains
def _relu(b: Any, n: int) -> Any:
    """The finding's model: ReLU after ReLU, nothing to fuse."""
    y = b.input("x", 8)
    for i in range(n):
        y = b.node("relu", [y], f"r{i}")
    return b.build(y)


def _dense_relu(b: Any, n: int) -> Any:
    """dense + relu pairs: every relu fuses."""
    y = b.input("x", 8)
    for i in range(n // 2):
        y = b.node("dense", [y, b.rand(f"w{i}", 8, 8), b.rand(f"b{i}", 8)], f"d{i}")
        y = b.node("relu", [y], f"r{i}")
    return b.build(y)


def _no_ops(b: Any, n: int) -> Any:
    """relu, identity, dropout, ...: every identity and dropout is bypassed, the last one renamed."""
    y = b.input("x", 8)
    for i in range(n):
        y = b.node(("relu", "identity", "dropout")[i % 3], [y], f"n{i}")
    return b.build(b.node("identity", [y], "out"))


def _shapes(b: Any, n: int) -> Any:
    """reshape, transpose, transpose back, reshape: all collapse into the last reshape."""
    y = b.input("x", 8)
    for i in range(n // 4):
        y = b.node("reshape", [y], f"a{i}", shape=(2, 4))
        y = b.node("transpose", [y], f"t{i}", perm=(0, 2, 1))
        y = b.node("transpose", [y], f"u{i}", perm=(0, 2, 1))
        y = b.node("reshape", [y], f"z{i}", shape=(8,))
    return b.build(y)


def _dense_bn(b: Any, n: int) -> Any:
    """dense + batch_norm pairs: every batch norm folds into its dense."""
    y = b.input("x", 8)
    for i in range(n // 2):
        y = b.node("dense", [y, b.rand(f"w{i}", 8, 8), b.rand(f"b{i}", 8)], f"d{i}")
        y = b.node("batch_norm", [y, *b.bn_params(f"bn{i}", 8)], f"bn{i}", epsilon=1e-3)
    return b.build(y)


def _pad_conv(b: Any, n: int) -> Any:
    """pad + conv pairs: every pad merges into its conv."""
    y = b.input("x", 4, 4, 2)
    for i in range(n // 2):
        y = b.node("pad", [y], f"p{i}", pads=((0, 0), (1, 1), (1, 1), (0, 0)))
        y = b.node("conv", [y, b.rand(f"k{i}", 3, 3, 2, 2), b.rand(f"c{i}", 2)], f"conv{i}")
    return b.build(y)


def _constant_adds(b: Any, n: int) -> Any:
    """add(x, const + const): every constant add folds."""
    y = b.input("x", 8)
    for i in range(n // 2):
        c = b.node("add", [b.rand(f"p{i}", 8), b.rand(f"q{i}", 8)], f"c{i}")
        y = b.node("add", [y, c], f"y{i}")
    return b.build(y)


def _dense_chain(b: Any, n: int, act: str) -> Any:
    y = b.input("x", 8)
    for i in range(n):
        y = b.node("dense", [y, b.rand(f"w{i}", 8, 8), b.rand(f"b{i}", 8)], f"d{i}", activation=Activation.of(act))
    return b.build(y)


def _dense_sigmoid(b: Any, n: int) -> Any:
    """dense with a fused sigmoid: split-activations splits every one."""
    return _dense_chain(b, n, "sigmoid")


def _dense(b: Any, n: int) -> Any:
    return _dense_chain(b, n, "relu")


def _ops_after(g: Any) -> list[str]:
    return sorted({n.op for n in g.nodes})


N = 120
CASES: dict[str, tuple[Callable[[Any, int], Any], Callable[[], list], Callable[[Any, int], bool]]] = {
    "relu": (_relu, lambda: default_pipeline().passes, lambda g, n: len(g.nodes) == n),
    "dense-relu": (_dense_relu, lambda: default_pipeline().passes,
                   lambda g, n: len(g.nodes) == n // 2 and all(x.attr("activation").op == "relu" for x in g.nodes)),
    "identity-dropout": (_no_ops, lambda: default_pipeline().passes,
                         lambda g, n: _ops_after(g) == ["relu"] and g.outputs == ["out_out"]),
    "reshape-transpose": (_shapes, lambda: default_pipeline().passes, lambda g, n: _ops_after(g) == ["reshape"]),
    "dense-batch-norm": (_dense_bn, lambda: default_pipeline().passes,
                         lambda g, n: _ops_after(g) == ["dense"] and len(g.nodes) == n // 2),
    "pad-conv": (_pad_conv, lambda: [Canonicalize()], lambda g, n: _ops_after(g) == ["conv"]),
    "fold-constants": (_constant_adds, lambda: [Canonicalize()], lambda g, n: len(g.nodes) == n // 2),
    "split-activations": (_dense_sigmoid, lambda: [Fuse(), SplitActivations()],
                          lambda g, n: len(g.nodes) == 2 * n),
    "prune": (_dense, lambda: [PruneMagnitude(0.5, keep_ends="never"), PruneNM(), PruneChannels(0.5)],
              lambda g, n: len(g.nodes) == n),
}


@pytest.mark.parametrize("case", list(CASES))
def test_passes_scan_the_graph_a_fixed_number_of_times(case, builder, monkeypatch):
    make, passes, check = CASES[case]
    scans = count_node_scans(monkeypatch)
    counts = []
    for n in (N, 2 * N):
        g = make(builder(), n)
        result: list = []
        counts.append(scans(lambda: result.append(Pipeline(passes()).run(g))))
        res = result[0]
        assert check(res.graph, n), res.graph.dump()[:2000]
        assert res.changed or case == "relu"
    # One scan per node would add N scans to the larger chain; a fixed number per pass adds none.
    assert counts[0] == counts[1], f"{case}: {counts[0]} scans of graph.nodes for {N} nodes, {counts[1]} for {2 * N}"
