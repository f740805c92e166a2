"""Calibration: ranges against NumPy on the interpreter's own tensors, the KL search against a
plain loop, layouts, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.calibration import (HISTOGRAM_BINS, calibrate, entropy_bins, percentile_range,
                                          source_specs, to_ir_layout)
from tapeout.compiler.errors import DataError, UsageError
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import BATCH, Activation, Graph, Node, TensorType


def small_graph() -> Graph:
    """x[N,4] -> dense(relu) -> dense -> tanh: signed, one-sided and bounded values."""
    rng = np.random.default_rng(0)
    g = Graph("small", ["x"], ["t"])
    g.types["x"] = TensorType((BATCH, 4))
    g.constants.update(w1=rng.normal(size=(4, 8)).astype(np.float32), b1=rng.normal(size=8).astype(np.float32),
                       w2=rng.normal(size=(8, 3)).astype(np.float32))
    g.nodes = [Node("dense", "d1", ["x", "w1", "b1"], ["h"], {"activation": Activation.of("relu")}),
               Node("dense", "d2", ["h", "w2"], ["y"]),
               Node("tanh", "t", ["y"], ["t"])]
    g.infer_shapes()
    g.check()
    return g


def data(n: int = 500, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)}


def all_values(g: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run(g, feeds, keep_intermediates=True)


# ------------------------------------------------------------------- minmax
def test_minmax_is_the_observed_range_of_every_value_whatever_the_batch_size():
    g, feeds = small_graph(), data()
    env = all_values(g, feeds)
    for batch in (7, 64, 10_000):
        c = calibrate(g, feeds, method="minmax", batch_size=batch).calibration
        assert c is not None and c.method == "minmax" and c.samples == 500 and c.data == "calibration"
        assert set(c.ranges) == {"x", "h", "y", "t"}
        for v, (lo, hi) in c.ranges.items():
            assert (lo, hi) == (float(env[v].min()), float(env[v].max())), v
    assert c.ranges["h"][0] == 0.0  # the relu output


def test_calibrate_returns_a_copy_and_records_the_data_kind():
    g = small_graph()
    c = calibrate(g, data(20), method="minmax", data_kind="synthetic")
    assert g.calibration is None and c.calibration.data == "synthetic"
    assert c.calibration.describe() == "minmax on 20 synthetic samples"
    assert "calibration: minmax on 20 synthetic samples" in c.dump()
    copy = c.copy()
    copy.calibration.ranges["x"] = (0.0, 0.0)
    assert c.calibration.ranges["x"] != (0.0, 0.0)


def test_non_finite_values_are_ignored():
    g = small_graph()
    feeds = data(50)
    feeds["x"][3, 1] = np.inf
    feeds["x"][4, 2] = np.nan
    with np.errstate(invalid="ignore"):
        lo, hi = calibrate(g, feeds, method="minmax").calibration.ranges["x"]
    finite = feeds["x"][np.isfinite(feeds["x"])]
    assert (lo, hi) == (float(finite.min()), float(finite.max()))


# --------------------------------------------------------------- percentile
def test_percentile_matches_numpy_within_one_bin_and_stays_inside_minmax():
    g, feeds = small_graph(), data(2000)
    env = all_values(g, feeds)
    mm = calibrate(g, feeds, method="minmax").calibration.ranges
    c = calibrate(g, feeds, method="percentile", percentile=99.0).calibration
    assert c.percentile == 99.0 and c.describe() == "percentile 99 on 2000 calibration samples"
    for v, (lo, hi) in c.ranges.items():
        a = env[v].ravel()
        width = (a.max() - a.min()) / HISTOGRAM_BINS
        assert mm[v][0] <= lo <= hi <= mm[v][1]
        assert abs(hi - np.percentile(a, 99.0)) <= width * 1.01, v
        assert abs(lo - np.percentile(a, 1.0)) <= width * 1.01, v
    # Percentile really clips: the signed input loses its tails.
    assert c.ranges["x"][1] < mm["x"][1] and c.ranges["x"][0] > mm["x"][0]


def test_percentile_100_is_minmax():
    g, feeds = small_graph(), data(100)
    assert (calibrate(g, feeds, method="percentile", percentile=100.0).calibration.ranges
            == calibrate(g, feeds, method="minmax").calibration.ranges)


def test_percentile_range_on_a_hand_made_histogram():
    hist = np.zeros(10)
    hist[0], hist[5], hist[9] = 1, 998, 1  # 0.1 % at each end
    assert percentile_range(hist, 0.0, 10.0, 99.8) == (5.0, 6.0)  # both ends clipped to the bulk's bin
    assert percentile_range(hist, 0.0, 10.0, 99.95) == (0.0, 10.0)  # cuts inside the end bins keep them


# ------------------------------------------------------------------ entropy
def entropy_bins_loop(hist: np.ndarray, levels: int) -> int:
    """The same definition written as a plain loop (the vectorized search must agree)."""
    h = hist.astype(np.float64)
    best, best_kl = h.size, np.inf
    for i in range(levels, h.size + 1):
        ref = h[:i].copy()
        p = ref.copy()
        p[-1] += h[i:].sum()
        q = np.zeros(i)
        for k in range(levels):
            members = [j for j in range(i) if (j * levels) // i == k]
            nonempty = [j for j in members if p[j] > 0]
            for j in nonempty:
                q[j] = ref[members].sum() / len(nonempty)
        pn, qn = p / p.sum(), q / (q.sum() or 1.0)
        kl = sum(pn[j] * (np.log(pn[j]) - np.log(max(qn[j], 1e-10))) for j in range(i) if pn[j] > 0)
        if kl < best_kl:
            best, best_kl = i, kl
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_search_matches_a_plain_loop(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    samples = np.abs(rng.standard_t(3, size=20_000))
    hist, _ = np.histogram(samples, bins=200, range=(0, samples.max()))
    import tapeout.compiler.calibration as cal

    monkeypatch.setattr(cal, "_KL_CHUNK", 7)  # several chunks, a partial one at the end
    assert entropy_bins(hist, levels=16) == entropy_bins_loop(hist, levels=16)


def test_entropy_clips_rare_outliers_but_keeps_a_dense_range():
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal(200_000))
    x[:20] = 60.0  # 0.01 % far outliers
    hist, _ = np.histogram(x, bins=HISTOGRAM_BINS, range=(0, 60.0))
    t = entropy_bins(hist) * 60.0 / HISTOGRAM_BINS
    assert 2.5 < t < 8.0
    u = rng.uniform(0, 1, 200_000)
    hist, _ = np.histogram(u, bins=HISTOGRAM_BINS, range=(0, 1.0))
    assert entropy_bins(hist) * 1.0 / HISTOGRAM_BINS > 0.95


def test_entropy_keeps_the_range_of_discrete_data():
    g = Graph("id", ["x"], ["y"], types={"x": TensorType((BATCH, 16))})
    g.nodes = [Node("relu", "r", ["x"], ["y"])]
    g.infer_shapes()
    pixels = np.random.default_rng(0).integers(0, 17, size=(300, 16)).astype(np.float32) / 16
    c = calibrate(g, {"x": pixels}, method="entropy").calibration
    assert c.ranges["x"] == (0.0, 1.0)


def test_entropy_range_is_signed_and_clamped_to_the_observed_range():
    g, feeds = small_graph(), data(3000)
    mm = calibrate(g, feeds, method="minmax").calibration.ranges
    c = calibrate(g, feeds, method="entropy").calibration.ranges
    for v, (lo, hi) in c.items():
        assert mm[v][0] <= lo <= hi <= mm[v][1], v
    assert c["h"][0] == 0.0 and c["h"][1] > 0  # one-sided relu output stays one-sided
    assert c["y"][0] < 0 < c["y"][1]


# -------------------------------------------------------------- general
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_deterministic(method):
    g, feeds = small_graph(), data(300)
    assert (calibrate(g, feeds, method=method, batch_size=32).calibration.ranges
            == calibrate(g, feeds, method=method, batch_size=32).calibration.ranges)


def test_channels_first_data_is_brought_to_the_ir_layout():
    g = Graph("cf", ["img"], ["y"], types={"img": TensorType((BATCH, 2, 3, 2))}, io_layouts={"img": "NCHW"})
    g.constants["s"] = np.array([1.0, 0.0], np.float32)
    g.constants["t"] = np.array([0.0, 0.0], np.float32)
    g.nodes = [Node("affine", "a", ["img", "s", "t"], ["y"])]
    g.infer_shapes()
    assert [s.shape for s in source_specs(g)] == [(BATCH, 2, 2, 3)]
    nchw = np.zeros((5, 2, 2, 3), np.float32)
    nchw[:, 0] = 1.0  # channel 0 holds ones, channel 1 tens
    nchw[:, 1] = 10.0
    assert to_ir_layout(g, {"img": nchw})["img"].shape == (5, 2, 3, 2)
    r = calibrate(g, {"img": nchw}, method="minmax").calibration.ranges
    assert r["img"] == (1.0, 10.0) and r["y"] == (0.0, 1.0)  # the affine kept channel 0 only


def test_errors_are_one_line_user_errors():
    g = small_graph()
    with pytest.raises(UsageError, match="unknown calibration method 'kl'"):
        calibrate(g, data(), method="kl")
    with pytest.raises(UsageError, match="--percentile must be in"):
        calibrate(g, data(), method="percentile", percentile=120)
    with pytest.raises(DataError, match="no array for input"):
        calibrate(g, {"other": data()["x"]})
    with pytest.raises(DataError, match="no samples"):
        calibrate(g, {"x": np.zeros((0, 4), np.float32)})
