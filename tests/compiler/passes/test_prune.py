"""prune:magnitude, prune:2:4 and prune:channels (structured, masked-equivalence checks)."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.errors import UsageError
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import Activation, Graph
from tapeout.compiler.passes.prune import (END_LAYER_SHARE, PruneChannels, PruneMagnitude, PruneNM, PruningOutcome,
                                           layer_stats, nm_violations, parse_prune, plan_channels)
from tapeout.compiler.passes.registry import PASSES, default_pipeline

RELU = Activation.of("relu")


def _conv(b, x, c_in, c_out, name, k=3, groups=1, pads=1, **attrs):
    w = b.rand(f"{name}_w", k, k, c_in // groups, c_out)
    return b.node("conv", [x, w, b.rand(f"{name}_b", c_out)], name, groups=groups,
                  pads=((pads, pads), (pads, pads)), **attrs)


def _dense(b, x, k, m, name, **attrs):
    return b.node("dense", [x, b.rand(f"{name}_w", k, m), b.rand(f"{name}_b", m)], name, **attrs)


def _weights(g: Graph, node: str) -> np.ndarray:
    return g.constants[g.node(node).inputs[1]]


# ------------------------------------------------------------------ magnitude
@pytest.fixture
def mlp(builder):
    b = builder(seed=3)
    h = _dense(b, b.input("x", 12), 12, 40, "fc1", activation=RELU)
    h = _dense(b, h, 40, 32, "fc2", activation=RELU)
    h = _dense(b, h, 32, 24, "fc3", activation=RELU)
    return b.build(_dense(b, h, 24, 5, "out"))


@pytest.mark.parametrize("sparsity", [0.3, 0.7, 0.9])
def test_magnitude_per_layer_hits_sparsity_and_keeps_the_largest(mlp, apply, sparsity):
    res = apply(PruneMagnitude(sparsity), mlp)
    assert res.changed
    for name in ("fc2", "fc3"):
        before, after = _weights(mlp, name), _weights(res.graph, name)
        assert np.count_nonzero(after == 0) == round(sparsity * before.size)
        kept = after != 0
        np.testing.assert_array_equal(after[kept], before[kept])  # survivors untouched
        assert np.abs(before[~kept]).max() <= np.abs(before[kept]).min()
    # The last layer (120 of 2,648 weights) is small, so it stays dense by default; the first
    # (480, 18%) holds more than END_LAYER_SHARE, so it is pruned like the rest.
    np.testing.assert_array_equal(_weights(res.graph, "out"), _weights(mlp, "out"))
    assert np.count_nonzero(_weights(res.graph, "fc1") == 0) == round(sparsity * 480)
    assert any("'fc2'" in d and f"{100 * round(sparsity * 1280) / 1280:.1f}% sparse" in d for d in res.details)
    assert any("'out'" in d and "unpruned (last weighted layer)" in d for d in res.details)
    assert any("'fc1'" in d and "holds 18% of the weights" in d for d in res.details)


def test_magnitude_end_layers(mlp, apply, builder):
    assert END_LAYER_SHARE == 0.10
    res = apply(PruneMagnitude(0.5, keep_ends="always"), mlp)
    for name in ("fc1", "out"):
        np.testing.assert_array_equal(_weights(res.graph, name), _weights(mlp, name))
    assert any("'fc1'" in d and "unpruned (first weighted layer)" in d for d in res.details)
    res = apply(PruneMagnitude(0.5, keep_ends="never"), mlp)
    assert all(np.count_nonzero(_weights(res.graph, n) == 0) == round(0.5 * _weights(mlp, n).size)
               for n in ("fc1", "fc2", "fc3", "out"))
    # A CNN stem and a classifier head are small: both stay dense by default.
    b = builder(seed=4)
    h = _conv(b, b.input("x", 8, 8, 3), 3, 8, "stem", activation=RELU)  # 216 of 2,384 weights
    h = _conv(b, h, 8, 16, "body", activation=RELU)  # 1,152
    h = _conv(b, h, 16, 8, "body2", k=1, pads=0, activation=RELU)  # 128
    h = _dense(b, b.node("global_avg_pool", [h], "gap"), 8, 111, "wide")  # 888
    g = b.build(h)
    res = apply(PruneMagnitude(0.5), g)
    assert np.array_equal(_weights(res.graph, "stem"), _weights(g, "stem"))
    assert np.count_nonzero(_weights(res.graph, "body") == 0) == 576
    assert np.count_nonzero(_weights(res.graph, "wide") == 0) == 444  # 37% of the weights: pruned
    with pytest.raises(ValueError, match="keep_ends"):
        PruneMagnitude(0.5, keep_ends="sometimes")


def test_magnitude_equals_zero_masked_original(mlp, apply, equivalent):
    res = apply(PruneMagnitude(0.6, keep_ends="never"), mlp)
    masked = mlp.copy()
    for n in masked.nodes:
        w = _weights(res.graph, n.name)
        masked.constants[n.inputs[1]] = np.where(w == 0, 0, masked.constants[n.inputs[1]]).astype(np.float32)
    equivalent(masked, res.graph, rtol=0, atol=0)
    stats = {r["name"]: r for r in layer_stats(res.graph)}
    assert all(abs(r["sparsity"] - 0.6) < 1e-3 for r in stats.values())
    assert stats["fc2"]["nonzero_macs"] == round(0.4 * stats["fc2"]["macs"])


def test_magnitude_global_and_exclusions(mlp, apply):
    res = apply(PruneMagnitude(0.5, scope="global", exclude=["fc3"], keep_ends="always"), mlp)
    assert np.array_equal(_weights(res.graph, "fc3"), _weights(mlp, "fc3"))
    zeros = np.count_nonzero(_weights(res.graph, "fc2") == 0)
    assert zeros == round(0.5 * 1280)  # only fc2 is eligible, so global equals per layer here
    res = apply(PruneMagnitude(0.5, scope="global", keep_ends="never"), mlp)
    ws = [_weights(res.graph, n) for n in ("fc1", "fc2", "fc3", "out")]
    total = sum(w.size for w in ws)
    assert sum(np.count_nonzero(w == 0) for w in ws) == round(0.5 * total)
    cut = max(np.abs(_weights(mlp, n))[w == 0].max() for n, w in zip(("fc1", "fc2", "fc3", "out"), ws))
    assert all(np.abs(_weights(mlp, n))[w != 0].min() >= cut for n, w in zip(("fc1", "fc2", "fc3", "out"), ws))


def test_magnitude_does_not_fire(mlp, apply, builder):
    assert not apply(PruneMagnitude(0.0), mlp).changed
    b = builder()
    h = _dense(b, b.input("x", 4), 4, 4, "first")
    g = b.build(_dense(b, h, 4, 2, "last"))
    assert not apply(PruneMagnitude(0.8, keep_ends="always"), g).changed  # only the first and last layers exist
    assert not apply(PruneMagnitude(0.8, exclude=["f*", "last"]), g).changed


# ---------------------------------------------------------------------- 2:4
def test_two_four_along_the_reduction_axis(builder, apply, equivalent):
    b = builder(seed=5)
    x = b.input("x", 6, 6, 8)
    h = _conv(b, x, 8, 12, "c1", activation=RELU)
    h = _conv(b, h, 12, 12, "dw", groups=12)  # depthwise: no reduction axis over channels
    h = _conv(b, h, 12, 6, "c2", k=1, pads=0)  # 12 input channels: 3 groups of 4
    h = b.node("global_avg_pool", [h], "gap")
    h = _dense(b, h, 6, 8, "fc1")  # 6 rows: not a multiple of 4, left dense
    g = b.build(_dense(b, h, 8, 3, "fc2"))
    res = apply(PruneNM(2, 4), g)
    assert res.graph.metadata["sparsity_pattern"] == "2:4"
    for name, axis in (("c1", 2), ("c2", 2), ("fc2", 0)):
        w, orig = _weights(res.graph, name), _weights(g, name)
        assert nm_violations(w, axis) == 0 and nm_violations(orig, axis) > 0
        assert np.count_nonzero(w == 0) == w.size // 2
        # The two kept weights of every group are the two largest of the original four.
        groups = np.moveaxis(orig, axis, -1).reshape(-1, 4)
        kept = np.moveaxis(w, axis, -1).reshape(-1, 4) != 0
        assert np.all(np.sort(np.abs(groups), axis=1)[:, 2:].sum(axis=1) == np.abs(groups * kept).sum(axis=1))
    for name in ("dw", "fc1"):
        np.testing.assert_array_equal(_weights(res.graph, name), _weights(g, name))
    assert any("'fc1' unpruned (reduction axis of 6" in d for d in res.details)
    # The pruned graph is the original with those weights zeroed.
    masked = g.copy()
    for n in ("c1", "c2", "fc2"):
        wn = g.node(n).inputs[1]
        masked.constants[wn] = np.where(_weights(res.graph, n) == 0, 0, g.constants[wn]).astype(np.float32)
    equivalent(masked, res.graph, rtol=0, atol=0)


def test_two_four_does_not_fire_without_a_fitting_layer(builder, apply):
    b = builder()
    h = _dense(b, b.input("x", 6), 6, 5, "a")
    g = b.build(_dense(b, h, 5, 3, "b"))
    res = apply(PruneNM(2, 4), g)
    assert not res.changed and "sparsity_pattern" not in res.graph.metadata


# ------------------------------------------------------------------ channels
def _zero(g: Graph, const: str, axis: int, idx) -> None:
    a = g.constants[const].copy()
    sl = [slice(None)] * a.ndim
    sl[axis] = list(idx)
    a[tuple(sl)] = 0
    g.constants[const] = a


def _check_masked(g: Graph, shrunk: Graph, masked: Graph) -> None:
    """The shrunk graph computes the zero-masked original (1e-5) on random inputs."""
    rng = np.random.default_rng(7)
    feeds = {i: rng.normal(size=(4, *g.types[i].shape[1:])).astype(np.float32) for i in g.inputs}
    want, have, orig = run(masked, feeds), run(shrunk, feeds), run(g, feeds)
    for k in want:
        np.testing.assert_allclose(have[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
        assert not np.allclose(orig[k], want[k], atol=1e-3), "the mask must change the output"


@pytest.fixture
def residual_graph(builder):
    """conv-bn-relu-depthwise and a 1x1 shortcut meeting in an add, then conv, pooling and dense."""
    b = builder(seed=11)
    x = b.input("x", 6, 6, 3)
    a = _conv(b, x, 3, 8, "a")
    a = b.node("batch_norm", [a, *b.bn_params("bn", 8)], "bn")
    a = b.node("relu", [a], "relu_a")
    a = _conv(b, a, 8, 8, "dw", groups=8, activation=RELU)
    s = _conv(b, x, 3, 8, "short", k=1, pads=0)
    h = b.node("add", [a, s], "add")
    h = b.node("relu", [h], "relu_add")
    h = _conv(b, h, 8, 6, "c", activation=RELU)
    h = b.node("mul", [h, b.rand("gain", 6)], "gain")  # a per-channel constant
    h = b.node("global_avg_pool", [h], "gap")
    return b.build(_dense(b, h, 6, 4, "fc"))


def test_channels_residual_depthwise_bn(residual_graph, apply):
    g = residual_graph
    res = apply(PruneChannels(0.5), g)
    plan = plan_channels(g, 0.5)
    r_ab, r_c = plan.removed["a"], plan.removed["c"]
    assert plan.removed["short"] == r_ab and len(r_ab) == 4 and len(r_c) == 3  # one decision per add group
    s = res.graph
    assert _weights(s, "a").shape == (3, 3, 3, 4) and _weights(s, "short").shape == (1, 1, 3, 4)
    assert _weights(s, "dw").shape == (3, 3, 1, 4) and s.node("dw").attrs["groups"] == 4
    assert _weights(s, "c").shape == (3, 3, 4, 3) and _weights(s, "fc").shape == (3, 4)
    assert s.constants[s.node("bn").inputs[1]].shape == (4,)
    masked = g.copy()
    for node in ("a", "short"):
        _zero(masked, f"{node}_w", 3, r_ab)
        _zero(masked, f"{node}_b", 0, r_ab)
    _zero(masked, "c_w", 2, r_ab)
    _zero(masked, "c_w", 3, r_c)
    _zero(masked, "c_b", 0, r_c)
    _zero(masked, "fc_w", 0, r_c)
    _check_masked(g, s, masked)
    # The L1 norms chose the channels: every removed one is no larger than every kept one.
    norms = np.abs(g.constants["c_w"]).reshape(-1, 6).sum(axis=0)
    kept = np.setdiff1d(np.arange(6), r_c)
    assert norms[list(r_c)].max() <= norms[kept].min()
    assert any("removed 4 of 8 channels of 'a', 'short'" in d for d in res.details)


def test_channels_concat_and_flatten_to_dense(builder, apply):
    b = builder(seed=12)
    x = b.input("x", 5, 5, 2)
    p = _conv(b, x, 2, 4, "p", activation=RELU)
    q = _conv(b, x, 2, 6, "q")
    h = b.node("concat", [p, x, q], "cat", axis=-1)  # 4 + 2 (graph input: kept) + 6
    h = _conv(b, h, 12, 6, "r", k=1, pads=0, activation=RELU)
    h = b.node("max_pool", [h], "pool", kernel=(2, 2), strides=(2, 2))
    h = b.node("flatten", [h], "flat")  # [N, 2*2*6], channels last
    h = _dense(b, h, 24, 8, "fc1", activation=RELU)
    g = b.build(_dense(b, h, 8, 3, "fc2"))
    res = apply(PruneChannels(0.5), g)
    plan = plan_channels(g, 0.5)
    rp, rq, rr, rf = (plan.removed[n] for n in ("p", "q", "r", "fc1"))
    assert (len(rp), len(rq), len(rr), len(rf)) == (2, 3, 3, 4)
    s = res.graph
    assert _weights(s, "r").shape == (1, 1, 2 + 2 + 3, 3) and _weights(s, "fc1").shape == (12, 4)
    masked = g.copy()
    for node, rem in (("p", rp), ("q", rq), ("r", rr)):
        _zero(masked, f"{node}_w", 3, rem)
        _zero(masked, f"{node}_b", 0, rem)
    _zero(masked, "r_w", 2, [i for i in rp] + [6 + i for i in rq])  # concat offsets 0 and 4 + 2
    _zero(masked, "fc1_w", 0, [pos * 6 + c for pos in range(4) for c in rr])  # flatten: (h, w, c) order
    _zero(masked, "fc1_w", 1, rf)
    _zero(masked, "fc1_b", 0, rf)
    _zero(masked, "fc2_w", 0, rf)
    _check_masked(g, s, masked)


def test_channels_bn_saliency(builder, apply):
    b = builder(seed=13)
    h = _conv(b, b.input("x", 4, 4, 2), 2, 6, "c")
    scale, *rest = b.bn_params("bn", 6)
    b.g.constants[scale] = np.array([1.0, 0.01, 2.0, -0.02, 0.5, 0.03], np.float32)
    h = b.node("batch_norm", [h, scale, *rest], "bn")
    h = _conv(b, h, 6, 3, "c2", pads=0)
    g = b.build(b.node("global_max_pool", [h], "gmp"))
    assert plan_channels(g, 0.5, "bn").removed["c"] == (1, 3, 5)
    res = apply(PruneChannels(0.5, saliency="bn"), g)
    np.testing.assert_array_equal(res.graph.constants[res.graph.node("bn").inputs[1]], [1.0, 2.0, 0.5])


def test_channels_do_not_fire_where_they_must_not(builder, apply):
    # A conv feeding a graph output; an add group with the graph input; a reshape that moves channels.
    b = builder()
    x = b.input("x", 4, 4, 3)
    g = b.build(_conv(b, x, 3, 4, "c"))
    assert not apply(PruneChannels(0.5), g).changed
    b = builder()
    x = b.input("x", 4, 4, 3)
    h = b.node("add", [x, _conv(b, x, 3, 3, "c")], "res")
    g = b.build(_dense(b, b.node("flatten", [h], "f"), 48, 2, "fc"))
    res = apply(PruneChannels(0.5), g)
    assert not res.changed
    b = builder()
    h = _conv(b, b.input("x", 4, 4, 3), 3, 4, "c")
    h = b.node("reshape", [h], "r", shape=(8, 8))
    g = b.build(_dense(b, h, 8, 2, "fc"))
    assert not apply(PruneChannels(0.5), g).changed
    # Excluding one member of an add group leaves the whole group alone.
    b = builder()
    x = b.input("x", 4, 4, 3)
    h = b.node("add", [_conv(b, x, 3, 6, "a"), _conv(b, x, 3, 6, "b")], "res")
    g = b.build(_dense(b, b.node("global_avg_pool", [h], "gap"), 6, 2, "fc"))
    assert not apply(PruneChannels(0.5, exclude=["b"]), g).changed
    assert apply(PruneChannels(0.5), g).changed


def test_registry_and_specs():
    assert PASSES["prune:magnitude"] is PruneMagnitude and PASSES["prune:channels"] is PruneChannels
    assert PASSES["prune:2:4"] is PruneNM
    assert not any(p.name.startswith("prune") for p in default_pipeline().passes)
    p = parse_prune("magnitude:0.7")
    assert isinstance(p, PruneMagnitude) and p.sparsity == 0.7 and p.scope == "layer" and p.keep_ends == "small"
    assert parse_prune("magnitude:0.7:all").keep_ends == "never"
    assert parse_prune("magnitude-global:0.7:keep-ends").keep_ends == "always"
    p = parse_prune("channels:0.5")
    assert isinstance(p, PruneChannels) and p.ratio == 0.5 and p.saliency == "l1"
    assert parse_prune("channels-bn:0.3").saliency == "bn"
    p = parse_prune("2:4")
    assert isinstance(p, PruneNM) and (p.n, p.m) == (2, 4)
    for bad in ("magnitude:1.5", "magnitude:x", "magnitude:0.5:some", "magnitude:auto:some", "channels:auto:all",
                "magnitude:auto:", "magnitude:0.5:", ":2", "", "channels", "4:2", "fancy:0.5"):
        with pytest.raises(UsageError):
            parse_prune(bad)


@pytest.mark.parametrize("knee", [0.05, 0.3, 0.62, 0.97])
def test_search_sparsity_bisects_to_the_largest_within_budget(knee):
    from tapeout.compiler.passes.prune import search_sparsity

    tried = []

    def accuracy(s):
        tried.append(s)
        return 0.95 - (0.1 if s > knee else 0.004)

    best, curve = search_sparsity(accuracy, 0.95, 1.0)
    assert len(curve) == len(tried)
    if knee >= 0.95:
        assert best == 0.95 and len(tried) == 1
    else:
        assert best <= knee and knee - best < 0.95 / 2 ** 6 + 1e-9
        assert all(c["within_budget"] == (c["sparsity"] <= knee) for c in curve)


def test_auto_specs():
    from tapeout.compiler.passes.prune import AutoPrune

    assert parse_prune("auto") == AutoPrune("magnitude") and parse_prune("channels:auto") == AutoPrune("channels")
    assert isinstance(AutoPrune("channels").make(0.25), PruneChannels)
    assert AutoPrune("magnitude").make(0.0).sparsity == 0.0
    assert parse_prune("magnitude:auto:all") == AutoPrune("magnitude", ":all")
    assert AutoPrune("magnitude", ":all").make(0.5).keep_ends == "never"
    # --prune-exclude reaches every kind of pass, and every candidate of a search.
    assert parse_prune("auto", ["fc*"]).make(0.5).exclude == ("fc*",)
    assert all(parse_prune(s, ["a"]).exclude == ("a",) for s in ("magnitude:0.5", "channels-bn:0.5", "2:4"))


def test_channels_squeeze_excitation_gate_joins_its_feature_map(builder, apply):
    """An SE block: the gate's expand conv and the gated conv are one group; the reshape to [1, 1, C] shrinks."""
    b = builder(seed=14)
    x = b.input("x", 5, 5, 3)
    a = _conv(b, x, 3, 8, "a", activation=RELU)
    s = b.node("global_avg_pool", [a], "squeeze")
    s = b.node("reshape", [s], "se_reshape", shape=(1, 1, 8))
    s = _conv(b, s, 8, 4, "se_reduce", k=1, pads=0, activation=RELU)
    s = _conv(b, s, 4, 8, "se_expand", k=1, pads=0, activation=Activation.of("sigmoid"))
    h = b.node("mul", [a, s], "excite")
    h = _conv(b, h, 8, 6, "c", activation=RELU)
    g = b.build(_dense(b, b.node("global_avg_pool", [h], "gap"), 6, 3, "fc"))
    res = apply(PruneChannels(0.5), g)
    plan = plan_channels(g, 0.5)
    ra, rr, rc = plan.removed["a"], plan.removed["se_reduce"], plan.removed["c"]
    assert plan.removed["se_expand"] == ra and len(ra) == 4 and len(rr) == 2
    assert res.graph.node("se_reshape").attrs["shape"] == (1, 1, 4)
    masked = g.copy()
    for node, rem in (("a", ra), ("se_expand", ra), ("se_reduce", rr), ("c", rc)):
        _zero(masked, f"{node}_w", 3, rem)
        _zero(masked, f"{node}_b", 0, rem)
    _zero(masked, "se_reduce_w", 2, ra)
    _zero(masked, "se_expand_w", 2, rr)
    _zero(masked, "c_w", 2, ra)
    _zero(masked, "fc_w", 0, rc)
    _check_masked(g, res.graph, masked)


# ------------------------------------------------------------------ outcome
def test_pruning_outcome_measures_and_reports_without_the_one_shot_graph(mlp, apply):
    pruned = apply(PruneMagnitude(0.5), mlp)
    out = PruningOutcome.measure("magnitude:0.5", mlp, pruned.graph, pruned.details)
    assert out.one_shot and out.one_shot_graph is None
    assert out.after["nonzero_macs"] < out.before["nonzero_macs"] == out.before["macs"] == out.after["macs"]
    js = out.to_json()
    assert list(js) == ["spec", "before", "after", "macs_ratio", "nonzero_macs_ratio", "fine_tuning", "one_shot",
                        "layers", "details"]
    assert js["macs_ratio"] == 1.0 and 0.4 < js["nonzero_macs_ratio"] < 0.6
    assert [r["name"] for r in js["layers"]] == ["fc1", "fc2", "fc3", "out"]
    # Fine-tuned: the one-shot graph is kept for its accuracy but never reaches the report.
    out.fine_tuning, out.one_shot_graph = {"data": "train.npz", "epochs": 1}, pruned.graph
    out.search, out.accuracy = {"chosen": 0.5}, {"pruned": 0.9}
    js = out.to_json()
    assert js["one_shot"] is False and js["fine_tuning"]["epochs"] == 1
    assert list(js)[-2:] == ["search", "accuracy"] and not any(isinstance(v, Graph) for v in js.values())
