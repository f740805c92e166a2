"""Automatic per-layer precision: integer bits from observed ranges, fractional bits as few as
the user's budget allows, judged on the NumPy bit-accurate model (no C++ per candidate).

1. Ranges: the float reference interpreter runs the calibration data; every layer's input,
   pre-activation sum and output gets its max |value|; weights and biases their max |value|.
2. Integer bits: ``ceil(log2(max * margin)) + 1`` (sign). Results saturate (``AP_SAT``) and round
   (``AP_RND``), so a calibration outlier clips instead of wrapping; weights round to nearest.
3. Fractional bits: start generous, then for each layer in order lower the weight's and then the
   result's fractional bits by bisection while the whole model still meets the budget: cosine with
   the float model >= ``min_cosine`` (always: the hls4ml verification checks it, and it is the only
   measure of a non-classifier output), top-1 agreement >= ``min_agreement`` (classifier outputs),
   and/or max |error| <= ``max_abs_error``.
   Accumulators keep every product bit (``F_acc = F_x + F_w``), so only the chosen types round.
4. Lookup tables: when even wide types miss the budget, the softmax/sigmoid/tanh tables grow
   (``table_size`` 1024 -> 65536): a softmax's exp table is indexed by the top bits of
   ``max - x``, and logits closer than one index step tie, which decides top-1.
5. Baseline: with ``baseline`` (e.g. uniform ``ap_fixed<16,6>``) the search also holds the
   calibration agreement to at least the baseline's, so auto is never worse than the default.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import numpy as np

from tapeout.compiler import interpreter
from tapeout.compiler.fixedpoint.model import (COPIES, DEFAULT_SOFTMAX_TABLE, DEFAULT_TABLE, GLOBAL_POOLS, POOLS,
                                               HlsLayer, LayerCache, LayerPrecision, PrecisionPlan, activation_of, hls_layers,
                                               pool_cells, predict_fixed, run_fixed, scale_shift)
from tapeout.compiler.fixedpoint.types import FixedType, FixedTypeError, fixed
from tapeout.compiler.ir import LINEAR, Graph, Node
from tapeout.runtime.compare import _cosine

CACHE_ENV = "TAPEOUT_SEARCH_CACHE"
MARGIN = 1.25  # headroom over the largest calibration value
START_FRAC = 12
MIN_FRAC = 0
MAX_INT_BITS = 24
TABLE_SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
# Each bisection stops where the calibration data just meets the budget; one more fractional
# bit per searched type keeps unseen data from falling over that edge.
SAFETY_BITS = 1
# A small calibration set cannot certify a 0.995 budget with a margin (0.9995 of 500 samples is
# "no flip at all"): it is extended to this many samples with jittered copies of itself (noise of
# JITTER x each input element's spread), which puts more samples near the decision boundaries.
MIN_SEARCH_SAMPLES = 2000
JITTER = 0.1


def extend_feeds(feeds: dict[str, np.ndarray], n: int = MIN_SEARCH_SAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    have = len(next(iter(feeds.values())))
    if have == 0 or have >= n:
        return feeds
    rng = np.random.default_rng(seed)
    reps = -(-n // have)
    out = {}
    for k, x in feeds.items():
        x = np.asarray(x)
        if x.dtype.kind != "f":
            return feeds  # integer/boolean inputs are not jittered
        spread = x.std(axis=0, keepdims=True)
        copies = [x] + [x + rng.normal(0.0, 1.0, x.shape).astype(x.dtype) * JITTER * spread for _ in range(reps - 1)]
        out[k] = np.concatenate(copies)[:n]
    return out


# The search holds the calibration data to a stricter agreement than the user asked for, so the
# chosen types keep the budget on data they were not picked on: it allows this share of the
# disagreements the budget would allow (0.995 -> searched at 0.9995).
GUARD = 0.1
# The cosine (all outputs' elements, as runtime.compare computes it) the hls4ml target's verification
# requires of the artifact against the float model; its default_tolerance reads this constant.
MIN_COSINE = 0.99
# The cosine is searched at 1 - COSINE_GUARD x (1 - MIN_COSINE) = 0.995. A milder guard than
# agreement's: 1 - cos is about half the relative squared error summed over every element of every
# sample, so it moves less between data drawn alike (agreement counts rare flips: 0.005 of 500
# samples is 2.5 of them, hence its 10x guard). Measured held-out / search-data ratio of 1 - cos:
# 0.75-1.04 on the samples and small test models, 1.9 at worst (digits_cnn: 200 calibration
# samples, errors from a few near-tie softmax outputs). The guard's 2x (half a bit) covers that, and
# the safety bit below, kept while 0.99 holds, divides 1 - cos by about 3-4 more.
COSINE_GUARD = 0.5


@dataclass(frozen=True)
class Budget:
    min_agreement: float | None = 0.995
    max_abs_error: float | None = None
    min_cosine: float | None = MIN_COSINE

    def guarded(self) -> "Budget":
        agree, cos = self.min_agreement, self.min_cosine
        return Budget(None if agree is None else 1.0 - (1.0 - agree) * GUARD, self.max_abs_error,
                      None if cos is None else 1.0 - (1.0 - cos) * COSINE_GUARD)


@dataclass
class SearchResult:
    plan: PrecisionPlan
    ranges: dict[str, float]  # hls layer name (and "<layer>:weight") -> observed max |value|
    agreement: float | None
    max_abs_error: float
    evaluations: int
    per_layer: list[dict] = field(default_factory=list)
    met: bool = True  # False: even the widest start missed the budget (the plan is that start)
    required_agreement: float | None = None  # what the search held the calibration data to
    baseline_agreement: float | None = None  # the baseline plan's agreement on the same data
    notes: list[str] = field(default_factory=list)
    cosine: float | None = None  # the plan's cosine with the float model on the search data
    required_cosine: float | None = None  # what the search held the calibration data to
    extra: dict = field(default_factory=dict)  # the cost search's guard, sensitivity and trade curve


def int_bits(maxabs: float, margin: float = MARGIN) -> int:
    """Integer bits (sign included) holding ``maxabs * margin``: a signed type with I integer bits
    holds [-2^(I-1), 2^(I-1)), so an exact power of two needs one bit more than ceil(log2) + 1 gives
    (a BatchNormalization scale of exactly 1.0 in ap_fixed<W,1,AP_RND,AP_WRAP> wrapped to -1.0)."""
    if maxabs <= 0 or not math.isfinite(maxabs):
        return 1
    return min(MAX_INT_BITS, max(1, math.floor(math.log2(maxabs * margin)) + 2))


def observed_ranges(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """max |value| of every graph input, hls layer output, pre-activation sum and constant operand."""
    values = interpreter.run(graph, feeds, keep_intermediates=True)
    out: dict[str, float] = {i: float(np.max(np.abs(values[i]))) for i in graph.inputs}
    for layer in hls_layers(graph):
        n = layer.node
        if layer.kind in ("dense", "conv"):
            args = [graph.constants[i] if i in graph.constants else values[i] if i else None for i in n.inputs]
            linear = Node(n.op, n.name, n.inputs, n.outputs, {**n.attrs, "activation": LINEAR})
            pre = interpreter.eval_node(linear, args)[0]
            out[layer.name] = float(np.max(np.abs(pre)))
            out[f"{layer.name}:weight"] = float(np.max(np.abs(graph.constants[n.inputs[1]])))
            if len(n.inputs) > 2 and n.inputs[2]:
                out[f"{layer.name}:bias"] = float(np.max(np.abs(graph.constants[n.inputs[2]])))
        else:
            out[layer.name] = float(np.max(np.abs(values[layer.output]))) if layer.output in values else 0.0
            if layer.kind == "batch_norm":  # its scale and bias are the "weight" and "bias"
                s, t = scale_shift(graph, n)
                out[f"{layer.name}:weight"], out[f"{layer.name}:bias"] = float(np.max(np.abs(s))), float(np.max(np.abs(t)))
    return out


def _agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.ndim < 2 or a.shape[-1] < 2:
        return None
    return float(np.mean(np.argmax(a.reshape(len(a), -1), -1) == np.argmax(b.reshape(len(b), -1), -1)))


class _Evaluator:
    def __init__(self, graph: Graph, feeds: dict[str, np.ndarray], budget: Budget) -> None:
        self.graph, self.feeds, self.budget = graph, feeds, budget
        self.reference = interpreter.run(graph, feeds)
        self.count = 0
        # TAPEOUT_SEARCH_CACHE=off recomputes every layer on every evaluation (the benchmark's "before").
        self.cache = None if os.environ.get(CACHE_ENV) == "off" else LayerCache()

    def score(self, plan: PrecisionPlan) -> tuple[float | None, float, float]:
        """Agreement (None without a classifier output), max |error| and cosine: the worst output's."""
        self.count += 1
        got = predict_fixed(self.graph, plan, self.feeds, cache=self.cache)
        agree, err, cos = [], 0.0, 1.0
        for o in self.graph.outputs:
            ref = np.asarray(self.reference[o], np.float64)
            have = np.asarray(got[o], np.float64).reshape(ref.shape)
            err = max(err, float(np.max(np.abs(have - ref))) if ref.size else 0.0)
            cos = min(cos, _cosine(ref.ravel(), have.ravel()))
            a = _agreement(have, ref)
            if a is not None:
                agree.append(a)
        return (min(agree) if agree else None), err, cos

    def ok(self, plan: PrecisionPlan) -> bool:
        try:
            agree, err, cos = self.score(plan)
        except FixedTypeError:
            # A type the candidate implies is illegal (e.g. constant-zero logits narrowed to
            # ap_fixed<1,1> give hls4ml's softmax an ap_ufixed<0,0> inp_norm_t): not a candidate.
            return False
        b = self.budget
        if b.min_agreement is not None and agree is not None and agree < b.min_agreement:
            return False
        if b.max_abs_error is not None and err > b.max_abs_error:
            return False
        # A classifier whose top-1 never changes (a global-pool head on a dominant class) keeps
        # agreement 1.0 at 1-4 bits: the cosine is what catches it, and a regression output has nothing else.
        if b.min_cosine is not None and cos < b.min_cosine:
            return False
        return True


def _resolve_input_types(graph: Graph, plan: PrecisionPlan, layers: list[HlsLayer]) -> dict[str, FixedType]:
    """The type of every IR value a layer reads (through flatten/reshape aliases)."""
    from tapeout.compiler.fixedpoint.model import _alias_map

    alias = _alias_map(graph)
    types: dict[str, FixedType] = dict(plan.inputs)
    for layer in layers:
        types[layer.output] = plan.layers[layer.name].result
    return {v: types[alias.get(v, v)] for layer in layers for v in layer.inputs}


def _finish(graph: Graph, plan: PrecisionPlan, layers: list[HlsLayer], ranges: dict[str, float]) -> PrecisionPlan:
    for layer in layers:  # padding/upsampling copy values: hls4ml needs the input's type (first: others read it)
        if layer.kind in COPIES:
            t = _resolve_input_types(graph, plan, layers)[layer.inputs[0]]
            plan.layers[layer.name] = replace(plan.layers[layer.name], result=t)
    src = _resolve_input_types(graph, plan, layers)
    for layer in layers:
        lp = plan.layers[layer.name]
        if layer.kind in ("dense", "conv") and lp.weight is not None:
            x = src[layer.inputs[0]]
            f = x.frac + lp.weight.frac
            i = max(int_bits(ranges[layer.name], 2.0), lp.bias.integer if lp.bias else 1)
            plan.layers[layer.name] = replace(lp, accum=fixed(i + f, i))
        elif layer.kind in (*POOLS, *GLOBAL_POOLS):
            x = src[layer.inputs[0]]
            # The average sums every cell in accum_t before dividing: room for the sum's growth.
            grow = max(4, (pool_cells(graph, layer) - 1).bit_length())
            plan.layers[layer.name] = replace(lp, accum=fixed(x.width + grow, x.integer + grow))
    return plan


def _softmax_inputs(graph: Graph, layers: list[HlsLayer]) -> dict[str, float]:
    """{value: 2.0} for every value a softmax reads. hls4ml's stable softmax holds ``max(x) - x``
    in ``inp_norm_t``, derived from the input type with one integer bit less and unsigned: a type
    that holds |x| <= R holds differences up to R only, and a larger one wraps (AP_WRAP). Logits
    within +-5.9 with differences up to 8.6 wrapped 1% of them (exp(-8.6) became exp(-0.6)):
    cosine 0.979. Range 2R keeps every difference."""
    from tapeout.compiler.fixedpoint.model import _alias_map

    alias = _alias_map(graph)
    return {alias.get(v, v): 2.0 for layer in layers if layer.kind == "softmax" for v in layer.inputs}


def initial_plan(graph: Graph, ranges: dict[str, float], frac: int = START_FRAC, table_size: int = 1024,
                 pinned: dict[str, LayerPrecision] | None = None) -> PrecisionPlan:
    layers = hls_layers(graph)
    headroom = _softmax_inputs(graph, layers)
    plan = PrecisionPlan({i: fixed(int_bits(ranges[i] * headroom.get(i, 1.0)) + frac,
                                   int_bits(ranges[i] * headroom.get(i, 1.0)), "AP_RND", "AP_SAT")
                          for i in graph.inputs})
    for layer in layers:
        ib = int_bits(ranges[layer.name] * headroom.get(layer.output, 1.0))
        res = fixed(ib + frac, ib, "AP_RND", "AP_SAT")
        if layer.kind in ("dense", "conv", "batch_norm"):
            wi = int_bits(ranges[f"{layer.name}:weight"], 1.0)
            bi = int_bits(ranges.get(f"{layer.name}:bias", 0.0), 1.0)
            plan.layers[layer.name] = LayerPrecision(result=res, weight=fixed(wi + frac, wi, "AP_RND"),
                                                     bias=fixed(bi + frac, bi, "AP_RND"),
                                                     accum=None if layer.kind == "batch_norm" else res)
        elif layer.kind == "softmax":
            plan.layers[layer.name] = LayerPrecision(result=fixed(17, 1, "AP_RND", "AP_SAT"),
                                                     table=DEFAULT_SOFTMAX_TABLE, inv_table=DEFAULT_SOFTMAX_TABLE,
                                                     accum=DEFAULT_SOFTMAX_TABLE, table_size=table_size)
        elif layer.kind in ("sigmoid", "tanh"):
            plan.layers[layer.name] = LayerPrecision(result=fixed(11, 2, "AP_RND", "AP_SAT"), table=DEFAULT_TABLE,
                                                     table_size=table_size)
        else:
            plan.layers[layer.name] = LayerPrecision(result=res)
    plan.layers.update(pinned or {})
    return _finish(graph, plan, layers, ranges)


def _set_frac(t: FixedType, f: int) -> FixedType:
    return FixedType(t.integer + f, t.integer, t.signed, t.rounding, t.overflow)


def _rows(layers: list[HlsLayer], plan: PrecisionPlan, ranges: dict[str, float]) -> list[dict]:
    out = []
    for layer in layers:
        lp = plan.layers[layer.name]
        row = {"layer": layer.name, "kind": layer.kind, "range": ranges.get(layer.name),
               **{k: str(v) for k, v in lp.types().items()}}
        if layer.kind in ("softmax", "sigmoid", "tanh"):
            row["table_size"] = lp.table_size
        out.append(row)
    return out


def search(graph: Graph, feeds: dict[str, np.ndarray], budget: Budget = Budget(), *,
           pinned: dict[str, LayerPrecision] | None = None, baseline: PrecisionPlan | None = None,
           table_sizes: tuple[int, ...] = TABLE_SIZES) -> SearchResult:
    """The smallest per-layer weight/result fractional bits meeting ``budget`` on ``feeds``.

    ``pinned`` layers keep the given types (the user's explicit per-layer precision); with
    ``baseline`` the calibration agreement must also reach that plan's (see the module doc).
    """
    pinned = pinned or {}
    given = len(next(iter(feeds.values())))
    feeds = extend_feeds(feeds)
    ranges = observed_ranges(graph, feeds)
    layers = hls_layers(graph)
    guarded = budget.guarded()
    ev = _Evaluator(graph, feeds, guarded)
    base_agree = None
    if baseline is not None and guarded.min_agreement is not None:
        base_agree, _, _ = ev.score(baseline)
        if base_agree is not None and base_agree > guarded.min_agreement:
            ev.budget = replace(guarded, min_agreement=base_agree)
    notes: list[str] = []
    if len(next(iter(feeds.values()))) > given:
        notes.append(f"{given} calibration samples extended to {MIN_SEARCH_SAMPLES} with jittered copies for the search")
    plan = initial_plan(graph, ranges, pinned=pinned)
    if not ev.ok(plan):
        for ts in table_sizes:
            cand = initial_plan(graph, ranges, frac=START_FRAC + 6, table_size=ts, pinned=pinned)
            if ev.ok(cand):
                plan = cand
                if ts != table_sizes[0]:
                    notes.append(f"lookup tables of softmax/sigmoid/tanh raised to {ts} entries: with "
                                 f"{table_sizes[0]} their index step ties close logits and misses the budget")
                break
        else:
            # Lookup tables (softmax/sigmoid/tanh) bound the accuracy whatever the widths: report it.
            agree, err, cos = ev.score(cand)
            return SearchResult(cand, ranges, agree, err, ev.count, _rows(layers, cand, ranges), met=False,
                                required_agreement=ev.budget.min_agreement, baseline_agreement=base_agree,
                                notes=notes, cosine=cos, required_cosine=ev.budget.min_cosine)
    searched: list[tuple[str, str]] = []
    for inp in graph.inputs:  # the input type sets the first layer's product widths
        cur = plan.inputs[inp]
        lo, hi = MIN_FRAC, cur.frac
        while lo < hi:
            mid = (lo + hi) // 2
            trial = _finish(graph, PrecisionPlan({**plan.inputs, inp: _set_frac(cur, mid)}, dict(plan.layers)),
                            layers, ranges)
            if ev.ok(trial):
                hi = mid
            else:
                lo = mid + 1
        plan = _finish(graph, PrecisionPlan({**plan.inputs, inp: _set_frac(cur, hi)}, plan.layers), layers, ranges)
    for layer in layers:
        keys = ["weight", "bias", "result"] if layer.kind in ("dense", "conv", "batch_norm") else \
            [] if layer.kind in COPIES else ["result"]
        if layer.kind in ("softmax", "sigmoid", "tanh"):
            # Probabilities are what the user reads: a graph output keeps 16 fractional bits
            # (top-1 on a few-bit softmax is decided by ties).
            keys = [] if layer.output in graph.outputs else ["result"]
        if layer.name in pinned:
            keys = []
        for key in keys:
            cur: FixedType = getattr(plan.layers[layer.name], key)
            lo, hi = MIN_FRAC, cur.frac  # hi is known good
            while lo < hi:
                mid = (lo + hi) // 2
                trial = PrecisionPlan(dict(plan.inputs), dict(plan.layers))
                trial.layers[layer.name] = replace(trial.layers[layer.name], **{key: _set_frac(cur, mid)})
                trial = _finish(graph, trial, layers, ranges)
                if ev.ok(trial):
                    hi = mid
                else:
                    lo = mid + 1
            plan.layers[layer.name] = replace(plan.layers[layer.name], **{key: _set_frac(cur, hi)})
            plan = _finish(graph, plan, layers, ranges)
            searched.append((layer.name, key))
    if SAFETY_BITS:
        # More bits are not always better (a softmax's table index moves with its input type):
        # keep the wider plan only when it still meets the budget.
        safe = PrecisionPlan({k: _set_frac(t, t.frac + SAFETY_BITS) for k, t in plan.inputs.items()},
                             dict(plan.layers))
        for name, key in searched:
            cur = getattr(safe.layers[name], key)
            safe.layers[name] = replace(safe.layers[name], **{key: _set_frac(cur, cur.frac + SAFETY_BITS)})
        safe = _finish(graph, safe, layers, ranges)
        # The extra bit lowers every error; a close call in the calibration data may still flip
        # (near-ties flip under any perturbation), so it is held to the user's own budget only.
        user = _Evaluator.__new__(_Evaluator)
        user.__dict__.update(ev.__dict__)
        user.budget = budget
        if user.ok(safe):
            plan = safe
        else:
            notes.append("the safety fractional bit was dropped: the wider plan missed the budget")
    agree, err, cos = ev.score(plan)
    return SearchResult(plan, ranges, agree, err, ev.count, _rows(layers, plan, ranges),
                        required_agreement=ev.budget.min_agreement, baseline_agreement=base_agree, notes=notes,
                        cosine=cos, required_cosine=ev.budget.min_cosine)


def float_layer_outputs(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every hls layer's output in float (the reference interpreter), keyed by hls layer name."""
    values = interpreter.run(graph, feeds, keep_intermediates=True)
    out: dict[str, np.ndarray] = {}
    for layer in hls_layers(graph):
        n = layer.node
        if layer.kind in ("dense", "conv") and activation_of(n) != "identity":
            args = [graph.constants[i] if i in graph.constants else values[i] if i else None for i in n.inputs]
            linear = Node(n.op, n.name, n.inputs, n.outputs, {**n.attrs, "activation": LINEAR})
            out[layer.name] = np.asarray(interpreter.eval_node(linear, args)[0])
        elif layer.output not in values:  # a conv's padding, written as its own layer
            pads = tuple(tuple(p) for p in n.attrs["pads"])
            out[layer.name] = np.pad(np.asarray(values[layer.inputs[0]]), ((0, 0), *pads, (0, 0)))
        else:
            out[layer.name] = np.asarray(values[layer.output])
    return out


def layer_errors(graph: Graph, plan: PrecisionPlan, feeds: dict[str, np.ndarray],
                 reference: dict[str, np.ndarray] | None = None,
                 got: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """Per hls layer: max |fixed - float| and the relative RMS error ||fixed - float|| / ||float||.

    ``got`` (layer -> float array, e.g. the C simulation's trace) replaces the NumPy model's outputs.
    """
    reference = reference if reference is not None else float_layer_outputs(graph, feeds)
    if got is None:
        fx = run_fixed(graph, plan, feeds, keep_intermediates=True)
        got = {k: v.to_float() for k, v in fx.items()}
    out: dict[str, dict[str, float]] = {}
    for layer in hls_layers(graph):
        ref = np.asarray(reference[layer.name], np.float64).reshape(len(reference[layer.name]), -1)
        have = np.asarray(got[layer.name], np.float64).reshape(ref.shape)
        diff = have - ref
        norm = float(np.linalg.norm(ref))
        out[layer.name] = {"max_abs_error": float(np.max(np.abs(diff))) if diff.size else 0.0,
                           "rel_rms_error": float(np.linalg.norm(diff) / norm) if norm > 0 else float(np.linalg.norm(diff))}
    return out


def first_error_jump(errors: dict[str, dict[str, float]], factor: float = 4.0, floor: float = 0.02) -> str | None:
    """The first layer whose relative error exceeds ``floor`` and ``factor`` times the layer before's."""
    prev = 0.0
    for name, e in errors.items():
        r = e["rel_rms_error"]
        if r > floor and r > factor * prev:
            return name
        prev = max(prev, r)
    return None


def uniform_plan(graph: Graph, t: FixedType) -> PrecisionPlan:
    """Every input, weight, bias and result in ``t``; accumulators exact (as hls4ml infers them)."""
    layers = hls_layers(graph)
    plan = PrecisionPlan({i: t for i in graph.inputs})
    for layer in layers:
        if layer.kind in ("dense", "conv", "batch_norm"):
            plan.layers[layer.name] = LayerPrecision(result=t, weight=t, bias=t,
                                                     accum=None if layer.kind == "batch_norm" else t)
        elif layer.kind == "softmax":
            plan.layers[layer.name] = LayerPrecision(result=t, table=DEFAULT_SOFTMAX_TABLE,
                                                     inv_table=DEFAULT_SOFTMAX_TABLE, accum=DEFAULT_SOFTMAX_TABLE)
        elif layer.kind in ("sigmoid", "tanh"):
            plan.layers[layer.name] = LayerPrecision(result=t, table=DEFAULT_TABLE)
        else:
            plan.layers[layer.name] = LayerPrecision(result=t)
    ranges = {layer.name: 2.0 ** (t.integer - 1) for layer in layers}
    return _finish(graph, plan, layers, ranges)


def weight_bits(graph: Graph, plan: PrecisionPlan, layers: list[HlsLayer] | None = None) -> tuple[int, float]:
    """Total weight-memory bits (weights and biases) and the mean bits per weight (``layers``: the
    graph's hls_layers, when the caller has them)."""
    total, count = 0, 0
    for layer in hls_layers(graph) if layers is None else layers:
        lp = plan.layers[layer.name]
        n = layer.node
        if layer.kind in ("dense", "conv") and lp.weight is not None:
            nw = int(graph.constants[n.inputs[1]].size)
            total += nw * lp.weight.width
            count += nw
            if len(n.inputs) > 2 and n.inputs[2] and lp.bias is not None:
                total += int(graph.constants[n.inputs[2]].size) * lp.bias.width
    return total, (total / count if count else 0.0)
