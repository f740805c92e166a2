"""distribute-norms: a per-channel norm over a channel concat becomes one norm per piece, so
per-tensor int8 quantizes normalized values instead of the concat's mixed ranges."""

from __future__ import annotations

import numpy as np

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import Graph
from tapeout.compiler.passes.distribute import DistributeNorms
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize, SplitActivations, integer_graph, simulate


def dense_block(builder, spread: float = 1.0) -> Graph:
    """Two DenseNet layers: each reads norm+relu of the concat of everything before it. The
    features' scales differ by ``spread`` per piece, as a random or trained DenseNet's do."""
    b = builder(seed=3)
    x = b.input("x", 6, 6, 4)
    f1 = b.node("conv", [x, b.const("w1", b.rng.uniform(-1, 1, (1, 1, 4, 4)) * spread)], "c1")
    cat1 = b.node("concat", [x, f1], "cat1", axis=-1)
    n1 = b.node("batch_norm", [cat1, *b.bn_params("bn1", 8)], "bn1")
    r1 = b.node("relu", [n1], "r1")
    f2 = b.node("conv", [r1, b.const("w2", b.rng.uniform(-1, 1, (1, 1, 8, 4)) * spread ** 2)], "c2")
    cat2 = b.node("concat", [cat1, f2], "cat2", axis=3)
    n2 = b.node("batch_norm", [cat2, *b.bn_params("bn2", 12)], "bn2")
    r2 = b.node("relu", [n2], "r2")
    return b.build(b.node("conv", [r2, b.rand("w3", 1, 1, 12, 5)], "head"))


def test_norms_become_one_per_piece_and_the_graph_computes_the_same(builder, apply, equivalent, op_list):
    g = dense_block(builder)
    res = apply(DistributeNorms(), g)
    assert [d.split(" over")[0] for d in res.details] == [
        "distributed batch_norm 'bn1' and relu 'r1'", "distributed batch_norm 'bn2' and relu 'r2'"]
    assert "over the 3 pieces of concat 'cat2'" in res.details[1]  # cat1 flattened into its pieces
    assert op_list(res.graph).count("batch_norm") == 0 and op_list(res.graph).count("affine") == 5
    assert op_list(res.graph).count("relu") == 5
    # The raw concats are read by no one any more: gone.
    assert {n.name for n in res.graph.nodes if n.op == "concat"} == {"bn1", "bn2"}
    producers = res.graph.producers()
    assert all(n.inputs[0] == "x" or producers[n.inputs[0]].op == "conv" for n in res.graph.nodes if n.op == "affine")
    equivalent(g, res.graph)


def test_a_concat_read_elsewhere_stays_and_other_axes_are_left_alone(builder, apply, equivalent):
    b = builder(seed=4)
    x = b.input("x", 6, 6, 4)
    cat = b.node("concat", [x, x], "cat", axis=-1)
    n = b.node("batch_norm", [cat, *b.bn_params("bn", 8)], "bn")
    wide = b.node("concat", [x, x], "wide", axis=1)  # along H: a per-channel norm cannot split it
    m = b.node("batch_norm", [wide, *b.bn_params("bm", 4)], "bm")
    g = b.build(n, cat, m)
    res = apply(DistributeNorms(), g)
    assert len(res.details) == 1 and "'bn'" in res.details[0]
    assert {"cat", "wide", "bm"} <= {n.name for n in res.graph.nodes}
    equivalent(g, res.graph)


def test_int8_error_falls_when_the_pieces_scales_differ(builder):
    """The reason for the pass: with the pieces 30x apart, the concat's one int8 scale leaves the
    small pieces a few steps, and the norm scales their rounding up with them."""
    g = dense_block(builder, spread=30.0)
    rng = np.random.default_rng(0)
    cal = {"x": rng.normal(size=(64, 6, 6, 4)).astype(np.float32)}
    test = {"x": rng.normal(size=(32, 6, 6, 4)).astype(np.float32)}
    for n in g.nodes:  # running statistics of the data, as a trained DenseNet's norms hold
        if n.op == "batch_norm":
            probe = g.copy()
            probe.outputs = [n.inputs[0]]
            v = run(probe, cal)[n.inputs[0]].astype(np.float64)
            g.constants[n.inputs[3]] = v.mean(axis=(0, 1, 2)).astype(np.float32)
            g.constants[n.inputs[4]] = v.var(axis=(0, 1, 2)).astype(np.float32)

    def cosine(split: Graph) -> float:
        q = Pipeline([Quantize("int8")]).run(calibrate(split, cal)).graph
        want = np.asarray(run(g, test)[g.outputs[0]], np.float64).ravel()
        got = np.asarray(simulate(q, test)[g.outputs[0]], np.float64).ravel()
        return float(want @ got / (np.linalg.norm(want) * np.linalg.norm(got)))

    before = cosine(Pipeline([SplitActivations()]).run(g).graph)
    after = cosine(integer_graph(g)[0])
    assert after > 0.999 and 1 - after < (1 - before) / 5, (before, after)


def test_wide_concats_nest_to_at_most_ten_inputs(builder, apply, equivalent):
    """TFLite Micro's CONCATENATION takes at most 10 inputs (DenseNet121's transitions read 25)."""
    b = builder(seed=6)
    x = b.input("x", 3, 3, 2)
    pieces = [b.node("conv", [x, b.rand(f"w{i}", 1, 1, 2, 1 + i % 3)], f"f{i}") for i in range(23)]
    cat = b.node("concat", pieces, "cat", axis=-1)
    channels = sum(1 + i % 3 for i in range(23))
    g = b.build(b.node("relu", [b.node("batch_norm", [cat, *b.bn_params("bn", channels)], "bn")], "r"))
    res = apply(DistributeNorms(), g)
    concats = [n for n in res.graph.nodes if n.op == "concat"]
    assert len(concats) == 4 and max(len(n.inputs) for n in concats) == 10
    assert concats[-1].outputs == ["r_out"]
    equivalent(g, res.graph)
