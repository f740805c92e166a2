"""The ONNX import's Context: fresh names without rescanning the graph (issue 14, finding 5).

Every emitted node used to call ``Graph.unique_name``, which rebuilds the set of every name in
the graph: importing a chain of N nodes scanned the node list N times. The test counts whole
scans of ``graph.nodes`` (an operation count, not a timing) for chains of N and 2N nodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tapeout.compiler.frontends.onnx import load_onnx
from tests.compiler.frontends.onnx_builders import make_model, node, rand, save
from tests.compiler.node_scans import count_node_scans


def _chain(folder: Path, n: int) -> Path:
    """Gemm, Relu, Relu, ...: NCHW-free, so every ONNX node becomes one IR node."""
    rng = np.random.default_rng(0)
    nodes = [node("Gemm", ["x", "w", "b"], "y0")]
    nodes += [node("Relu", [f"y{i}"], f"y{i + 1}") for i in range(n - 1)]
    nodes.append(node("Relu", [f"y{n - 1}"], "out"))  # the graph output: renamed into place
    model = make_model(nodes, {"x": ["N", 8]}, {"out": ["N", 8]}, {"w": rand(rng, 8, 8), "b": rand(rng, 8)})
    return save(model, folder, f"chain{n}")


def test_import_scans_the_graph_a_fixed_number_of_times(tmp_path, monkeypatch):
    scans = count_node_scans(monkeypatch)
    counts, graphs = [], []
    for n in (150, 300):
        path = _chain(tmp_path, n)
        counts.append(scans(lambda: graphs.append(load_onnx(path))))
    for g, n in zip(graphs, (150, 300)):
        assert [x.op for x in g.nodes] == ["dense"] + ["relu"] * n and g.outputs == ["out"]
    assert counts[0] == counts[1], f"{counts[0]} scans of graph.nodes for 150 nodes, {counts[1]} for 300"


def test_minted_names_step_around_onnx_names_as_before(tmp_path):
    # ONNX values named like the constants and values the importer mints ("<node>/weights",
    # "<name>_1"): the Context's own name sets must give the names Graph.unique_name gave.
    rng = np.random.default_rng(1)
    nodes = [node("Relu", ["x"], "g/weights"), node("Gemm", ["g/weights", "w", "b"], "g"),
             node("Relu", ["g"], "g/bias"), node("Gemm", ["g/bias", "w2"], "g/weights_1"),
             node("Add", ["g/weights_1", "g/weights"], "out")]
    inits = {"w": rand(rng, 4, 4), "b": rand(rng, 4), "w2": rand(rng, 4, 4)}
    g = load_onnx(save(make_model(nodes, {"x": ["N", 4]}, {"out": ["N", 4]}, inits), tmp_path))
    assert [(n.name, n.inputs) for n in g.nodes] == [
        ("g/weights", ["x"]),
        ("g", ["g/weights", "g/weights_1", "g/bias"]),
        ("g/bias_1", ["g"]),
        ("g/weights_1_1", ["g/bias_1", "g/weights_1/weights"]),
        ("out", ["g/weights_1_1", "g/weights"]),
    ]
