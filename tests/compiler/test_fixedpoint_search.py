"""Automatic precision on the NumPy model, and reuse-factor raising (no C++ here)."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.fixedpoint import fixed, predict_fixed
from tapeout.compiler.fixedpoint.reuse import auto_reuse, valid_reuse_factor
from tapeout.compiler.fixedpoint.search import MIN_COSINE, Budget, int_bits, search, uniform_plan, weight_bits
from tapeout.compiler.ir import Activation, Graph, Node, TensorType
from tapeout.runtime.compare import Tolerance


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
    assert int_bits(0.9, 1.0) == 1 and int_bits(1.5, 1.0) == 2 and int_bits(0.5, 1.0) == 1
    # [-2^(I-1), 2^(I-1)): 1.0 needs I = 2 (it wrapped to -1.0 in ap_fixed<W,1>), 2.0 needs 3.
    assert int_bits(1.0, 1.0) == 2 and int_bits(2.0, 1.0) == 3
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


# ------------------------------------------------ the cosine budget (what verification checks)
def _glorot(rng, shape, fan_in, fan_out):
    lim = np.sqrt(6 / (fan_in + fan_out))
    return rng.uniform(-lim, lim, shape).astype(np.float32)


def _gap_classifier(seed: int = 1) -> Graph:
    """conv-relu, conv-relu, global average pool, dense(5): Keras's default init, untrained. The pooled
    features barely vary, so one class wins on every input (seed 1: class 0 on all of them)."""
    rng = np.random.default_rng(seed)
    consts = {"w1": _glorot(rng, (3, 3, 3, 8), 27, 72), "b1": np.zeros(8, np.float32),
              "w2": _glorot(rng, (3, 3, 8, 8), 72, 72), "b2": np.zeros(8, np.float32),
              "w3": _glorot(rng, (8, 5), 8, 5), "b3": np.zeros(5, np.float32)}
    nodes = [Node("conv", "c1", ["x", "w1", "b1"], ["h1"], {"activation": Activation("relu")}),
             Node("conv", "c2", ["h1", "w2", "b2"], ["h2"], {"activation": Activation("relu")}),
             Node("global_avg_pool", "gap", ["h2"], ["p"], {}),
             Node("dense", "fc", ["p", "w3", "b3"], ["y"], {"activation": Activation()})]
    g = Graph("gap", ["x"], ["y"], nodes, consts, types={"x": TensorType(("N", 8, 8, 3))})
    g.infer_shapes()
    return g


def _regression(n_out: int, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    consts = {"w1": _glorot(rng, (16, 32), 16, 32), "b1": np.zeros(32, np.float32),
              "w2": _glorot(rng, (32, n_out), 32, n_out), "b2": np.zeros(n_out, np.float32)}
    nodes = [Node("dense", "fc1", ["x", "w1", "b1"], ["h"], {"activation": Activation("relu")}),
             Node("dense", "out", ["h", "w2", "b2"], ["y"], {"activation": Activation()})]
    g = Graph("reg", ["x"], ["y"], nodes, consts, types={"x": TensorType(("N", 16))})
    g.infer_shapes()
    return g


def _held_out(g: Graph, plan, x: np.ndarray) -> tuple[float, float | None]:
    """Cosine and top-1 agreement of the plan against the float model, as verification computes them."""
    from tapeout.compiler import interpreter
    from tapeout.runtime.compare import compare_output

    ref = interpreter.run(g, {"x": x})["y"]
    c = compare_output("y", ref, predict_fixed(g, plan, {"x": x})["y"], Tolerance(min_cosine=MIN_COSINE))
    return c.cosine, c.top1_agreement


def test_budget_guards_the_cosine_like_the_agreement():
    assert Budget().min_cosine == MIN_COSINE == 0.99
    g = Budget(0.995).guarded()
    assert g.min_agreement == pytest.approx(0.9995) and g.min_cosine == pytest.approx(0.995)
    assert Budget(None, 0.1).guarded() == Budget(None, 0.1, pytest.approx(0.995))
    assert Budget(0.995, None, None).guarded().min_cosine is None


def test_collapsed_classifier_is_held_to_the_cosine():
    """The bug: top-1 never changes on a global-pool head, so agreement stayed 1.0 with 1-4-bit types
    (here every logit rounded to 0: cosine 0.0) and verification rejected the plan the search chose."""
    g = _gap_classifier()
    x = np.random.default_rng(0).standard_normal((1024, 8, 8, 3)).astype(np.float32)
    res = search(g, {"x": x[:512]}, Budget(0.995))
    cos, agree = _held_out(g, res.plan, x[512:])
    assert cos >= MIN_COSINE and agree >= 0.995
    assert res.met and res.agreement == 1.0
    assert res.required_cosine == pytest.approx(0.995) and res.cosine >= 0.995
    # Still narrower than hls4ml's default everywhere it matters.
    assert weight_bits(g, res.plan)[0] < 0.75 * weight_bits(g, uniform_plan(g, fixed(16, 6)))[0]


def test_regression_output_is_searched_on_the_cosine():
    """[N, 1]: no top-1 to agree on; the cosine alone drives the search (before: held-out cosine 0.46)."""
    g = _regression(1)
    x = np.random.default_rng(1).standard_normal((1024, 16)).astype(np.float32)
    res = search(g, {"x": x[:512]}, Budget(0.995))
    cos, agree = _held_out(g, res.plan, x[512:])
    assert agree is None and cos >= MIN_COSINE
    assert res.agreement is None and res.met and res.cosine >= 0.995
    assert min(res.plan.layers[n].weight.width for n in ("fc1", "out")) >= 4


def test_max_abs_error_budget_alone_still_keeps_the_cosine():
    """--max-abs-error without --min-agreement: verification still checks the cosine."""
    g = _regression(3)
    x = np.random.default_rng(2).standard_normal((1024, 16)).astype(np.float32)
    res = search(g, {"x": x[:512]}, Budget(None, 100.0))  # an error budget that allows anything
    assert _held_out(g, res.plan, x[512:])[0] >= MIN_COSINE
    assert res.met and res.cosine >= 0.995
    loose = search(g, {"x": x[:512]}, Budget(None, 100.0, None))  # no cosine: nothing holds the widths
    assert loose.cosine < MIN_COSINE




def test_softmax_input_type_holds_the_logit_differences():
    """hls4ml's stable softmax keeps max(x) - x in a type one integer bit narrower than x's,
    unsigned: a logit type sized to |x| alone wraps differences beyond |x| (exp(-8.6) read as
    exp(-0.6); the corpus's refilled torch CNN: cosine 0.979). The search sizes it for 2|x|."""
    from tapeout.compiler import interpreter
    from tapeout.compiler.fixedpoint.search import initial_plan, observed_ranges

    g, x = _mlp(5, last="softmax")
    c, feeds = g.constants, {"x": x[:400]}
    h = np.maximum(x[:400] @ c["w0"] + c["b0"], 0)
    h = np.maximum(h @ c["w1"] + c["b1"], 0)
    z = h @ c["w2"] + c["b2"]
    k = 5.9 / np.abs(z).max()  # logits within +-5.9 (as the corpus CNN's): |x| * margin fits +-8
    c["w2"], c["b2"], z = (c["w2"] * k).astype(np.float32), (c["b2"] * k).astype(np.float32), z * k
    diffs = z.max(axis=1) - z.min(axis=1)
    assert diffs.max() > 8  # ... while some differences do not
    plan = initial_plan(g, observed_ranges(g, feeds), frac=16, table_size=65536)  # wide: only a wrap errs
    assert diffs.max() < 2 ** (plan.layers["fc2"].result.integer - 1)  # inp_norm_t holds them all
    got = predict_fixed(g, plan, feeds)["y"].astype(np.float64)
    ref = interpreter.run(g, feeds)["y"].astype(np.float64)
    assert np.abs(got - ref).max() < 0.01  # a wrapped difference moves a probability by ~0.1-0.5
