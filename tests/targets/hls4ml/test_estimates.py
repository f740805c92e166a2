"""Pre-synthesis estimates: the DSP/LUT rule and the counts (no C++)."""

from __future__ import annotations

import numpy as np

from tapeout.compiler.fixedpoint import fixed
from tapeout.compiler.fixedpoint.search import uniform_plan
from tapeout.compiler.ir import Activation, Graph, Node, TensorType
from tapeout.targets.hls4ml.estimates import dsp_per_multiplier, estimate


def test_dsp_rule():
    assert dsp_per_multiplier(16, 16, (27, 18)) == 1
    assert dsp_per_multiplier(8, 16, (27, 18)) == 0  # narrow operand: LUTs
    assert dsp_per_multiplier(30, 16, (27, 18)) == 2
    assert dsp_per_multiplier(20, 20, (27, 18)) == 2 and dsp_per_multiplier(20, 20, (27, 27)) == 1


def _graph(zeros: int) -> Graph:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (8, 6)).astype(np.float32)
    w.flat[:zeros] = 0.0
    g = Graph("g", ["x"], ["y"], types={"x": TensorType(("N", 8))})
    g.add_constant("w", w)
    g.add_constant("b", np.zeros(6, np.float32))
    g.nodes.append(Node("dense", "fc", ["x", "w", "b"], ["y"], {"activation": Activation("relu")}))
    g.infer_shapes()
    return g


def test_counts_follow_nonzero_weights_reuse_and_widths():
    g = _graph(zeros=8)
    rows, tot = estimate(g, uniform_plan(g, fixed(16, 6)), {"fc": 1}, variant="vitis", io_type="parallel",
                         strategy="latency", clock_period=5.0)
    fc = rows[0]
    assert fc.multipliers == 40 and fc.dsp == 40 and fc.lut_multipliers == 0
    assert fc.weight_bits == 48 * 16 + 6 * 16 and fc.storage == "registers"
    rows, tot = estimate(g, uniform_plan(g, fixed(8, 3)), {"fc": 2}, variant="vitis", io_type="parallel",
                         strategy="latency", clock_period=5.0)
    assert rows[0].multipliers == 20 and rows[0].lut_multipliers == 20 and tot["dsp"] == 0
    assert rows[0].interval_cycles == 2 and tot["interval_cycles"] == 2
    assert tot["latency_cycles"] == sum(r.latency_cycles for r in rows)
    _, stream = estimate(g, uniform_plan(g, fixed(8, 3)), {"fc": 2}, variant="vitis", io_type="stream",
                         strategy="latency", clock_period=5.0)
    assert stream["bram18"] >= 1
