"""Calibration: run the reference interpreter over calibration data and record, for every
value a quantized target needs (graph inputs and node outputs), the float range to quantize.

The result is plain data on the graph (``Graph.calibration``, see docs/quantization.md);
the quantize pass turns it into scales and zero points. Methods:

- ``minmax``: the observed minimum and maximum (TFLite's and ONNX Runtime's default).
- ``percentile``: the ``(100 - P)``-th and ``P``-th percentiles (default P = 99.99), each
  read off a 2048-bin histogram over the observed range and clamped to it; outliers
  beyond them are clipped.
- ``entropy``: TensorRT's KL-divergence method: a 2048-bin histogram of |x| over
  ``[0, max|x|]``; for every candidate threshold of i >= 128 bins, P is the first i bins
  with the tail folded into the last one and Q is the same bins merged into 128 levels
  (int8's 127 positive codes plus zero, as TensorRT) and spread back over P's non-empty
  bins; the threshold with the smallest KL(P || Q) wins. Exact zeros are left out of the
  histogram (as pytorch-quantization's ``skip_zeros``): zero is always exactly representable,
  and a ReLU output's zero spike would otherwise pull the threshold far down (on the digits
  sample it clipped a conv output at 6% of its range). The range is (-t, t) clamped to the
  observed (min, max), so a ReLU output gets (0, t). A histogram with fewer than 128
  non-empty bins (discrete data, e.g. 8-bit pixels) keeps its observed range: the search
  degenerates there (it clipped the digits' 17-level input to 1/16). int16x8 reuses these int8-tuned
  ranges (use minmax or percentile when 16-bit activations should clip less).

Why not onnxruntime.quantization's calibrators: they calibrate an ONNX model (they augment
and run it in an InferenceSession), while ranges here belong to IR values that TFLite and
hls4ml back ends need without onnxruntime installed (it is only in the ``onnx`` extra).
Its array-level ``HistogramCollector`` would run on our arrays, but prints to stdout,
histograms entropy data over [-t, t] with 128 bins by default (so its entropy threshold is
the max unless num_bins is raised) and scans candidates in a Python loop with integer-
truncated Q bins; the vectorized search below takes well under a second per tensor.

Everything is deterministic: fixed batch order, histograms over ranges fixed by a first
min/max pass (so batches merge exactly), the first minimum on ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping

import numpy as np

from tapeout.compiler.errors import DataError, UsageError
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import Calibration, Graph
from tapeout.compiler.layout import is_channels_first, to_channels_first, to_channels_last
from tapeout.runtime.protocol import IOSpec

from tapeout.compiler.schemes import METHODS  # noqa: E402  (re-exported)
DEFAULT_METHOD = "minmax"
DEFAULT_PERCENTILE = 99.99
BATCH_SIZE = 32
HISTOGRAM_BINS = 2048
ENTROPY_LEVELS = 128
_KL_EPS = 1e-10  # stands in for an empty Q bin under a non-empty P bin (TensorRT smooths likewise)
_KL_CHUNK = 128  # candidate thresholds evaluated per vectorized block (bounds memory at ~2 MB each)


# ------------------------------------------------------------------ layouts
def source_specs(graph: Graph) -> list[IOSpec]:
    """The graph's inputs as the user's data holds them: in each input's source layout."""
    specs = []
    for name in graph.inputs:
        t = graph.types[name]
        shape = tuple(t.shape)
        if is_channels_first(graph.io_layouts.get(name), t.rank):
            shape = tuple(shape[a] for a in to_channels_first(t.rank))
        specs.append(IOSpec(name, shape, t.dtype))
    return specs


def to_ir_layout(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Source-layout feeds (what data files hold) -> the IR's channels-last layout."""
    out = {}
    for name, a in feeds.items():
        a = np.asarray(a)
        if is_channels_first(graph.io_layouts.get(name), a.ndim):
            a = a.transpose(to_channels_last(a.ndim))
        out[name] = a
    return out


# ------------------------------------------------------------------- stats
@dataclass
class _Observed:
    lo: float = np.inf
    hi: float = -np.inf
    hist: np.ndarray | None = None

    def update(self, a: np.ndarray) -> None:
        if a.size:
            self.lo = min(self.lo, float(a.min()))
            self.hi = max(self.hi, float(a.max()))

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a if np.isfinite(a).all() else a[np.isfinite(a)]


def _calibrated_values(graph: Graph) -> list[str]:
    values = list(graph.inputs) + [o for n in graph.nodes for o in n.outputs]
    return [v for v in values if np.issubdtype(np.dtype(graph.type_of(v).dtype), np.floating)]


class Means:
    """Running float64 sums of some values over the samples (the batch axis kept, size 1): bias
    correction's mean layer inputs, gathered in the calibration's own sweep."""

    def __init__(self, values: Collection[str]) -> None:
        self.values = set(values)
        self.sums: dict[str, np.ndarray] = {}

    def observe(self, name: str, a: np.ndarray) -> None:
        if name in self.values:
            s = a.astype(np.float64).sum(axis=0, keepdims=True)
            self.sums[name] = s if name not in self.sums else self.sums[name] + s

    def means(self, samples: int) -> dict[str, np.ndarray]:
        return {k: (v / samples).astype(np.float32) for k, v in self.sums.items()}


def sweep(graph: Graph, feeds: Mapping[str, np.ndarray], batch_size: int, observe=None, raw=None) -> None:
    """Run the interpreter batch by batch (``feeds`` in the IR's layout), calling
    ``observe(name, finite_values)`` on every float value and ``raw(name, values)`` on every value."""
    wanted = set(_calibrated_values(graph))

    def hook(name: str, a: np.ndarray) -> np.ndarray:
        if raw is not None:
            raw(name, a)
        if observe is not None and name in wanted:
            observe(name, _finite(a))
        return a

    n = next(iter(feeds.values())).shape[0]
    for start in range(0, n, batch_size):
        run(graph, {k: v[start:start + batch_size] for k, v in feeds.items()}, value_hook=hook)


# ---------------------------------------------------------------- methods
def percentile_range(hist: np.ndarray, lo: float, hi: float, p: float) -> tuple[float, float]:
    """(100-p)-th and p-th percentiles from a histogram over [lo, hi], bin-edge resolution."""
    if p >= 100.0 or hi <= lo:
        return lo, hi
    edges = np.linspace(lo, hi, hist.size + 1)
    cdf = np.cumsum(hist, dtype=np.float64) / float(hist.sum())
    cut = 1.0 - p / 100.0
    upper = edges[min(int(np.searchsorted(cdf, 1.0 - cut)), hist.size - 1) + 1]  # first bin reaching p
    lower = edges[int(np.searchsorted(cdf, cut, side="right"))]  # first bin past the lower cut
    return max(lo, float(lower)), min(hi, float(upper))


def entropy_bins(hist: np.ndarray, levels: int = ENTROPY_LEVELS) -> int:
    """How many leading bins of an |x| histogram to keep: TensorRT's minimum-KL threshold."""
    h = np.asarray(hist, dtype=np.float64)
    nbins = h.size
    # Fewer non-empty bins than levels (discrete data such as pixel values): the search
    # degenerates, since a P whose kept bins hold one spike matches its Q exactly whatever it
    # clipped; the observed range already keeps such values apart, so keep it.
    if nbins <= levels or np.count_nonzero(h) < levels:
        return nbins
    tail = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])  # tail[i] = sum(h[i:])
    j = np.arange(nbins)
    best_i, best_kl = nbins, np.inf
    for chunk in range(levels, nbins + 1, _KL_CHUNK):
        cand = np.arange(chunk, min(chunk + _KL_CHUNK, nbins + 1))
        rows = np.arange(cand.size)
        valid = j[None, :] < cand[:, None]
        ref = np.where(valid, h[None, :], 0.0)  # the kept bins, without the tail
        p = ref.copy()
        p[rows, cand - 1] += tail[cand]  # P: the tail folded into the last kept bin
        group = np.minimum((j[None, :] * levels) // cand[:, None], levels - 1)
        flat = (rows[:, None] * levels + group)[valid]
        nonempty = (p > 0) & valid
        sums = np.bincount(flat, weights=ref[valid], minlength=cand.size * levels).reshape(cand.size, levels)
        counts = np.bincount(flat, weights=nonempty[valid], minlength=cand.size * levels).reshape(cand.size, levels)
        per_bin = sums / np.where(counts > 0, counts, 1.0)
        q = np.where(nonempty, per_bin[rows[:, None], group], 0.0)  # Q: levels spread over P's non-empty bins
        pn = p / p.sum(axis=1, keepdims=True)
        qsum = q.sum(axis=1, keepdims=True)
        qn = q / np.where(qsum > 0, qsum, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(pn > 0, pn * (np.log(pn) - np.log(np.maximum(qn, _KL_EPS))), 0.0)
        kl = terms.sum(axis=1)
        k = int(np.argmin(kl))
        if kl[k] < best_kl:  # strict: the first (smallest) threshold wins ties
            best_i, best_kl = int(cand[k]), float(kl[k])
    return best_i


# -------------------------------------------------------------------- main
def calibrate(graph: Graph, feeds: Mapping[str, np.ndarray], *, method: str = DEFAULT_METHOD,
              percentile: float = DEFAULT_PERCENTILE, data_kind: str = "calibration",
              batch_size: int = BATCH_SIZE) -> Graph:
    """A copy of ``graph`` with ``calibration`` set from ``feeds`` (source-layout arrays by input name)."""
    return calibrate_with_means(graph, feeds, (), method=method, percentile=percentile, data_kind=data_kind,
                                batch_size=batch_size)[0]


def calibrate_with_means(graph: Graph, feeds: Mapping[str, np.ndarray], means_of: Collection[str], *,
                         method: str = DEFAULT_METHOD, percentile: float = DEFAULT_PERCENTILE,
                         data_kind: str = "calibration", batch_size: int = BATCH_SIZE
                         ) -> tuple[Graph, dict[str, np.ndarray]]:
    """``calibrate``, and the mean over the samples of each of ``means_of`` (``Means``) from the same
    sweep: bias correction's inputs without a second pass of the float graph."""
    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}; one of {', '.join(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise UsageError(f"--percentile must be in (50, 100], got {percentile:g}")
    missing = [i for i in graph.inputs if i not in feeds]
    if missing:
        raise DataError(f"calibration data has no array for input(s) {', '.join(missing)}")
    ir_feeds = to_ir_layout(graph, {i: feeds[i] for i in graph.inputs})
    samples = int(next(iter(ir_feeds.values())).shape[0]) if ir_feeds else 0
    if samples == 0:
        raise DataError("calibration data holds no samples")

    stats = {v: _Observed() for v in _calibrated_values(graph)}
    means = Means(means_of)
    sweep(graph, ir_feeds, batch_size, lambda name, a: stats[name].update(a), means.observe if means_of else None)
    if method != "minmax":
        # Second sweep: histograms over the now-known ranges, so every batch bins identically.
        def histogram(name: str, a: np.ndarray) -> None:
            s = stats[name]
            if not s.seen or s.hi <= s.lo or not a.size:
                return
            if method == "percentile":
                h, _ = np.histogram(a, bins=HISTOGRAM_BINS, range=(s.lo, s.hi))
            else:
                nonzero = np.abs(a[a != 0])
                h, _ = np.histogram(nonzero, bins=HISTOGRAM_BINS, range=(0.0, max(-s.lo, s.hi)))
            s.hist = h if s.hist is None else s.hist + h

        sweep(graph, ir_feeds, batch_size, histogram)

    ranges: dict[str, tuple[float, float]] = {}
    for name, s in stats.items():
        if not s.seen:  # nothing finite was ever seen: a zero range quantizes it to 0
            ranges[name] = (0.0, 0.0)
        elif s.hist is None or method == "minmax":
            ranges[name] = (s.lo, s.hi)
        elif method == "percentile":
            ranges[name] = percentile_range(s.hist, s.lo, s.hi, percentile)
        else:
            amax = max(-s.lo, s.hi)
            t = entropy_bins(s.hist) * amax / HISTOGRAM_BINS
            ranges[name] = (max(s.lo, -t), min(s.hi, t))
    out = graph.copy()
    out.calibration = Calibration(method, data_kind, samples, ranges,
                                  percentile if method == "percentile" else None)
    return out, means.means(samples)
