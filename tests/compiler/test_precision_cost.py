"""The cost-driven precision search: its Clopper-Pearson guard, its objectives (EBOPs, DSP/LUT
resources) and its descent against the first (fewest-bits) search, on the NumPy model only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tapeout.compiler.errors import UsageError
from tapeout.compiler.fixedpoint import fixed, predict_fixed
from tapeout.compiler.fixedpoint.cost import (DSP_LUTS, clopper_pearson_upper, ebops, lut_multiplier_luts,
                                              max_disagreements, objective, resource_cost)
from tapeout.compiler.fixedpoint.descent import split_feeds, search_cost
from tapeout.compiler.fixedpoint.search import Budget, search, uniform_plan
from tapeout.compiler.ir import Activation, Graph, Node, TensorType


def _mlp(seed: int = 0, n: int = 2500) -> tuple[Graph, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [16, 32, 16, 5]
    g = Graph("mlp", ["x"], ["y"], types={"x": TensorType(("N", 16))})
    prev = "x"
    for i in range(3):
        w = g.add_constant(f"w{i}", (rng.normal(0, 1, (sizes[i], sizes[i + 1])) / np.sqrt(sizes[i])).astype(np.float32))
        b = g.add_constant(f"b{i}", rng.normal(0, 0.1, sizes[i + 1]).astype(np.float32))
        out = "y" if i == 2 else f"h{i}"
        g.nodes.append(Node("dense", f"fc{i}", [prev, w, b], [out],
                            {"activation": Activation() if i == 2 else Activation("relu")}))
        prev = out
    g.infer_shapes()
    return g, rng.normal(0, 1.5, (n, 16)).astype(np.float32)


def _toy_resources(graph: Graph):
    """A stand-in for the hls4ml estimate: every product on a DSP when both operands have >= 10 bits."""
    from tapeout.compiler.fixedpoint.model import hls_layers
    from tapeout.compiler.fixedpoint.search import _resolve_input_types

    layers = hls_layers(graph)

    def resources(plan) -> dict:
        src = _resolve_input_types(graph, plan, layers)
        dsp = luts = 0
        for layer in layers:
            lp = plan.layers[layer.name]
            if layer.kind == "dense":
                a, w = src[layer.inputs[0]].width, lp.weight.width
                mults = int(graph.constants[layer.node.inputs[1]].size)
                if min(a, w) >= 10:
                    dsp += mults
                else:
                    luts += mults * lut_multiplier_luts(a, w)
        return {"dsp": dsp, "luts": luts}

    return resources


def test_clopper_pearson_bound_and_the_disagreements_it_allows():
    # k = 0 has a closed form: (1 - p)^n = 1 - confidence.
    assert clopper_pearson_upper(0, 1000, 0.95) == pytest.approx(1 - 0.05 ** (1 / 1000), rel=1e-9)
    assert clopper_pearson_upper(3, 1000) > clopper_pearson_upper(2, 1000) > clopper_pearson_upper(2, 2000)
    # 0.995 at 95%: 4 of 2,000 and 3 of 1,600 (the old 10x margin allowed 1 of 2,000), none of 500.
    assert max_disagreements(2000, 0.995) == 4 and max_disagreements(1600, 0.995) == 3
    assert max_disagreements(700, 0.995) == 0 and max_disagreements(500, 0.995) == -1
    assert clopper_pearson_upper(4, 2000) <= 0.005 < clopper_pearson_upper(5, 2000)


def test_ebops_and_resource_cost():
    g, _ = _mlp()
    plan = uniform_plan(g, fixed(8, 3))
    nonzero = sum(int(np.count_nonzero(np.round(g.constants[f"w{i}"] * 32))) for i in range(3))
    assert ebops(g, plan) == nonzero * 8 * 8  # every operand 8 bits wide
    assert ebops(g, uniform_plan(g, fixed(12, 3))) > ebops(g, plan)
    assert resource_cost(2, 10) == 10 + 2 * DSP_LUTS and lut_multiplier_luts(9, 7) == 32
    cost = objective(g, "resources", _toy_resources)
    wide, narrow = cost(uniform_plan(g, fixed(16, 6))), cost(plan)
    assert wide["dsp"] == 16 * 32 + 32 * 16 + 16 * 5 and wide["luts"] == 0 and narrow["dsp"] == 0
    assert narrow["cost"] < wide["cost"]
    with pytest.raises(ValueError):
        objective(g, "area", None)


def test_split_holds_out_every_fifth_sample():
    x = np.arange(20.0).reshape(10, 2)
    s, h = split_feeds({"x": x})
    assert len(s["x"]) == 8 and h["x"][:, 0].tolist() == [8.0, 18.0]


def test_cost_search_is_cheaper_than_the_bits_search_and_keeps_its_guard():
    g, x = _mlp()
    search_x, held_x = x[:2000], x[2000:]
    budget = Budget(0.995)
    cost = objective(g, "resources", _toy_resources)
    new = search_cost(g, {"x": search_x}, budget, cost)
    old = search(g, {"x": search_x}, budget)
    assert new.met and new.extra["method"] == "cost"
    # The guard: at most the Clopper-Pearson count of disagreements on the 1,600 search samples.
    k = new.extra["max_disagreements"]
    assert k == 3 and new.agreement >= 1 - k / 1600 - 1e-9
    assert new.extra["held_out_samples"] == 400 and new.extra["held_out"]["agreement"] >= 0.995
    assert cost(new.plan)["cost"] < cost(old.plan)["cost"]
    # The curve: the chosen point among cheaper ones past the budget, costs falling along the descent.
    curve = new.extra["curve"]
    chosen = [i for i, c in enumerate(curve) if c["chosen"]]
    assert len(chosen) == 1 and curve[chosen[0]]["within_budget"]
    assert curve[-1]["cost"] <= curve[chosen[0]]["cost"] < curve[0]["cost"]
    assert set(new.extra["sensitivity"]) >= {"x", "fc0.weight", "fc1.result", "fc2.bias"}
    # Unseen data keeps the budget.
    ref = np.argmax(predict_fixed(g, uniform_plan(g, fixed(32, 10)), {"x": held_x})["y"], -1)
    got = np.argmax(predict_fixed(g, new.plan, {"x": held_x})["y"], -1)
    assert np.mean(ref == got) >= 0.99


def test_held_out_check_backs_off_along_the_path(monkeypatch):
    """A held-out set that disagrees everywhere but the widest plan: the search returns that plan."""
    import tapeout.compiler.fixedpoint.descent as descent

    g, x = _mlp(1, 1500)
    cost = objective(g, "ebops", None)
    calls = {"n": 0}
    real = descent._Judge.score

    def score(self, plan):
        s = real(self, plan)
        if self.n == 300 and s is not None:  # the held-out judge: only the first path point passes
            calls["n"] += 1
            if calls["n"] > 1:
                s = {**s, "agreement": 0.5, "disagreements": 150}
        return s

    monkeypatch.setattr(descent._Judge, "score", score)
    res = search_cost(g, {"x": x}, Budget(0.995), cost)
    assert [c["chosen"] for c in res.extra["curve"]].index(True) == 0
    assert any("held-out check" in n for n in res.notes)


def test_precision_request_objectives():
    from tapeout.compiler.fixedpoint.precision import PrecisionRequest, PrecisionSearch

    g, x = _mlp(2, 600)

    class Data:
        calibration_file, eval_file = "cal", None

        def calibration(self, specs):
            from types import SimpleNamespace

            return SimpleNamespace(feeds={"x": x}, kind="calibration", num_samples=len(x))

    base = fixed(16, 6)
    bits = PrecisionSearch(PrecisionRequest(base, min_agreement=0.99, objective="bits"), Data()).run(g).graph
    assert bits.fixed.info["search"] == {"method": "bits"}
    ebo = PrecisionSearch(PrecisionRequest(base, min_agreement=0.99, objective="ebops"), Data()).run(g).graph
    assert ebo.fixed.info["search"]["objective"] == "ebops" and ebo.fixed.info["search"]["curve"]
    # "resources" without a back-end estimate falls back to EBOPs, and says so.
    res = PrecisionSearch(PrecisionRequest(base, min_agreement=0.99), Data()).run(g).graph
    assert res.fixed.info["search"]["objective"] == "ebops"
    with pytest.raises(UsageError, match="precision objective 'area'"):
        PrecisionSearch(PrecisionRequest(base, min_agreement=0.99, objective="area"), Data()).run(g)
    assert math.isfinite(ebops(g, ebo.fixed.plan))


def test_the_cost_search_runs_the_model_once_per_distinct_plan(monkeypatch):
    """The search asks again for the start and for each descent's first plan: the judge answers those
    from its memo, so the evaluations reported are distinct plans run."""
    from tapeout.compiler.fixedpoint.cost import plan_key
    from tapeout.compiler.fixedpoint.search import _Evaluator

    g, x = _mlp(1, 1500)
    runs: list[tuple[int, tuple]] = []
    real = _Evaluator.score

    def score(self, plan):
        runs.append((id(self), plan_key(plan)))
        return real(self, plan)

    monkeypatch.setattr(_Evaluator, "score", score)
    res = search_cost(g, {"x": x}, Budget(0.995), objective(g, "ebops", None))
    assert len(runs) == res.evaluations > 0
    assert len(set(runs)) == len(runs)  # no plan scored twice on the same data
    assert len({judge for judge, _ in runs}) == 2  # the search data's judge and the held-out one


def test_the_objective_finds_the_layers_once_per_search(monkeypatch):
    """hls_layers (and the target's reuse factors) do not change with the plan: found when the objective is made."""
    import tapeout.compiler.fixedpoint.model as model

    g, _ = _mlp()
    plans = [uniform_plan(g, fixed(bits, 4)) for bits in (8, 10, 12, 14)]
    calls = {"n": 0}
    real = model.hls_layers

    def counted(graph):
        calls["n"] += 1
        return real(graph)

    monkeypatch.setattr(model, "hls_layers", counted)
    cost = objective(g, "resources", _toy_resources)
    made = calls["n"]
    assert made >= 1
    costs = [cost(p)["cost"] for p in plans]
    assert costs == sorted(costs) and calls["n"] == made  # four plans priced, no layers found again
