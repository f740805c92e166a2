"""Pre-synthesis estimates: the DSP/LUT rule and the counts (no C++)."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_the_search_objective_binds_layers_and_reuse_once(monkeypatch):
    """precision_request().resources(graph) finds the reuse factors once; each plan is then priced
    from the estimate alone (LUT multipliers at ceil(a x w / 2) LUTs)."""
    from tapeout.compiler.errors import UsageError
    from tapeout.targets.hls4ml.target import Hls4mlTarget

    g = _graph(zeros=8)
    target = Hls4mlTarget("vitis", precision_objective="resources", reuse_factor="2")
    calls = {"n": 0}
    real = Hls4mlTarget._reuse

    def counted(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(Hls4mlTarget, "_reuse", counted)
    price = target.precision_request().resources(g)
    narrow, wide = price(uniform_plan(g, fixed(8, 3))), price(uniform_plan(g, fixed(16, 6)))
    assert calls["n"] == 1
    assert narrow == {"dsp": 0, "luts": 20 * 32} and wide == {"dsp": 20, "luts": 0}  # 40 products, reuse 2
    assert target._resources(g, uniform_plan(g, fixed(8, 3))) == narrow
    bad = Hls4mlTarget("vitis", reuse_factor="nope=2")
    with pytest.raises(UsageError, match="no dense/conv layer named 'nope'"):
        bad.precision_request().resources(g)
