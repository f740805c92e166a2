"""Automatic precision on the NumPy model, and reuse-factor raising (no C++ here)."""

from __future__ import annotations

import numpy as np

from tapeout.compiler.fixedpoint import fixed, predict_fixed
from tapeout.compiler.fixedpoint.reuse import auto_reuse, valid_reuse_factor
from tapeout.compiler.fixedpoint.search import Budget, int_bits, search, uniform_plan, weight_bits
from tapeout.compiler.ir import Activation, Graph, Node, TensorType


def _mlp(seed: int = 0, last: str = "identity") -> tuple[Graph, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [16, 32, 16, 5]
    g = Graph("mlp", ["x"], ["y"], types={"x": TensorType(("N", 16))})
    prev = "x"
    for i in range(3):
        w = g.add_constant(f"w{i}", (rng.normal(0, 1, (sizes[i], sizes[i + 1])) / np.sqrt(sizes[i])).astype(np.float32))
        b = g.add_constant(f"b{i}", rng.normal(0, 0.1, sizes[i + 1]).astype(np.float32))
        out = "y" if i == 2 else f"h{i}"
        act = (Activation.of("softmax", axis=-1) if last == "softmax" else Activation()) if i == 2 else Activation("relu")
        g.nodes.append(Node("dense", f"fc{i}", [prev, w, b], [out], {"activation": act}))
        prev = out
    g.infer_shapes()
    return g, rng.normal(0, 1.5, (1500, 16)).astype(np.float32)


def test_int_bits():
    assert int_bits(0.9, 1.0) == 1 and int_bits(1.0, 1.0) == 1 and int_bits(1.5, 1.0) == 2
    assert int_bits(5.0) == 4  # 5 * 1.25 = 6.25 -> 3 magnitude bits + sign


def test_search_meets_the_budget_with_fewer_bits_than_uniform():
    g, x = _mlp()
    res = search(g, {"x": x[:1000]}, Budget(min_agreement=0.99))
    assert res.agreement is not None and res.agreement >= 0.99
    total_auto, mean_auto = weight_bits(g, res.plan)
    total_uni, _ = weight_bits(g, uniform_plan(g, fixed(16, 6)))
    assert total_auto < 0.9 * total_uni  # acceptance 1 (25% fewer) is tested on the jet sample
    # Held-out data: the guard keeps the budget on samples the search did not see.
    ref = np.argmax(predict_fixed(g, uniform_plan(g, fixed(32, 10)), {"x": x[1000:]})["y"], -1)
    got = np.argmax(predict_fixed(g, res.plan, {"x": x[1000:]})["y"], -1)
    assert np.mean(ref == got) >= 0.98
    assert res.met and {r["layer"] for r in res.per_layer} == {"fc0", "fc0_relu", "fc1", "fc1_relu", "fc2"}


def test_max_abs_error_budget():
    g, x = _mlp(1)
    res = search(g, {"x": x[:500]}, Budget(min_agreement=None, max_abs_error=0.02))
    assert res.met and res.max_abs_error <= 0.02
    # A tighter error budget needs more fractional bits somewhere.
    tight = search(g, {"x": x[:500]}, Budget(min_agreement=None, max_abs_error=0.002))
    assert tight.met and weight_bits(g, tight.plan)[0] + sum(
        lp.result.width for lp in tight.plan.layers.values()) > weight_bits(g, res.plan)[0] + sum(
        lp.result.width for lp in res.plan.layers.values())


def test_unreachable_budget_is_reported():
    g, x = _mlp(2, last="softmax")
    res = search(g, {"x": x[:300]}, Budget(min_agreement=None, max_abs_error=1e-6))
    assert not res.met


def test_reuse_factor_raised_for_128x128_dense():
    assert auto_reuse(16, 64) == 1  # 1,024 multipliers: fully parallel
    rf = auto_reuse(128, 128)
    assert rf > 1 and valid_reuse_factor(128, 128, rf) and 128 * 128 / rf <= 4096
    assert not valid_reuse_factor(128, 128, 3)
