"""Cost-driven precision search: fewest estimated resources (or EBOPs) within the agreement budget.

The same types, ranges and lookup-table growth as ``search.search`` (the "bits" search), but:

1. Data: every 5th search sample is held out (``HOLD_OUT``); the rest (extended to 2,000 with
   jittered copies when smaller, as before) is the search data.
2. Guard: on the search data at most ``max_disagreements(n, min_agreement)`` top-1 disagreements,
   the most whose one-sided Clopper-Pearson upper bound (95%) on the disagreement rate stays
   within ``1 - min_agreement`` (4 of 2,000 for 0.995, where the old 10x margin allowed 1 and
   then added a safety bit); also no more than uniform ``ap_fixed<16,6>`` has there; the cosine
   and ``max_abs_error`` as the bits search guards them.
3. Sensitivity: each searched type (input, every layer's weight, bias and result) alone is
   lowered by bisection with the rest at the wide start: its fewest fractional bits.
4. Joint start: every type at its own fewest bits plus one common offset, the smallest that meets
   the guard (bisection).
5. Greedy descent on weights and activations together: each round prices one fractional bit less
   on every type (and, where that saves no resources, the first of two or three bits less that
   does: DSP -> LUT steps), scores the four that save most on the NumPy bit-accurate model (the
   next four when none passes), takes the feasible move with the most cost saved per budget
   spent, and drops a type whose next bit fails.
6. Held-out confirmation: the cheapest plan on the descent path whose held-out agreement,
   cosine and error meet the user's (unguarded) budget is chosen.
7. Curve: the path, then a few cheaper moves past the budget (down to ``1 - 4 x (1 - min_agreement)``
   agreement): cost, DSP/LUT, EBOPs, weight bits, search and held-out agreement per point.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from tapeout.compiler.fixedpoint.cost import CONFIDENCE, clopper_pearson_upper, max_disagreements, plan_key
from tapeout.compiler.fixedpoint.model import COPIES, HlsLayer, PrecisionPlan, hls_layers
from tapeout.compiler.fixedpoint.search import (MIN_FRAC, MIN_SEARCH_SAMPLES, START_FRAC, Budget, SearchResult,
                                                _Evaluator, _finish, _rows, _set_frac, extend_feeds, initial_plan,
                                                observed_ranges)
from tapeout.compiler.fixedpoint.types import FixedType, FixedTypeError
from tapeout.compiler.ir import Graph

HOLD_OUT = 5  # every HOLD_OUT-th sample is held out (20%)
HELD_CONFIDENCE = 0.5  # the held-out check: the median-unbiased disagreement rate within the budget
SLACK = 0.01  # budget share a move is charged at least, so free moves rank by their saving
CURVE_FACTOR = 4  # the curve goes on past the budget down to 1 - CURVE_FACTOR x (1 - min_agreement)
CURVE_EXTRA = 4  # at most this many moves past the chosen plan
# Fewer real search samples than this are extended to 2,000 with jittered copies (as the bits search):
# the bound then counts copies as samples, and the held-out check is what stands on real data alone.
MIN_REAL = 1000
BATCH = 4  # moves the model scores per round, the most cost saved first (more only when none passes)
JUMP = 3  # a step that saves no resources may look this many bits down for one that does


def split_feeds(feeds: dict[str, np.ndarray], every: int = HOLD_OUT) -> tuple[dict, dict]:
    """(search, held-out): every ``every``-th sample held out, deterministic."""
    n = len(next(iter(feeds.values())))
    held = np.arange(n) % every == every - 1
    if n < every:  # too few to hold any out
        held[:] = False
    return ({k: np.asarray(v)[~held] for k, v in feeds.items()}, {k: np.asarray(v)[held] for k, v in feeds.items()})


@dataclass(frozen=True)
class Knob:
    owner: str  # a graph input or an hls layer
    key: str  # "input", "weight", "bias" or "result"

    def get(self, plan: PrecisionPlan) -> FixedType:
        return plan.inputs[self.owner] if self.key == "input" else getattr(plan.layers[self.owner], self.key)

    def set(self, plan: PrecisionPlan, frac: int) -> PrecisionPlan:
        out = PrecisionPlan(dict(plan.inputs), dict(plan.layers))
        t = _set_frac(self.get(plan), frac)
        if self.key == "input":
            out.inputs[self.owner] = t
        else:
            out.layers[self.owner] = replace(out.layers[self.owner], **{self.key: t})
        return out

    def __str__(self) -> str:
        return self.owner if self.key == "input" else f"{self.owner}.{self.key}"


class _Judge:
    """Scores plans on one data set: disagreements, cosine, max |error|, and whether they meet a limit.
    Each distinct plan runs the model once (``count``: distinct plans run): the search asks again for
    the start and for the plan each descent starts from."""

    def __init__(self, graph: Graph, feeds: dict[str, np.ndarray]) -> None:
        self.ev = _Evaluator(graph, feeds, Budget())
        self.n = len(next(iter(feeds.values()))) if feeds else 0
        self.scores: dict[tuple, dict | None] = {}

    @property
    def count(self) -> int:
        return self.ev.count

    def score(self, plan: PrecisionPlan) -> dict | None:
        k = plan_key(plan)
        if k not in self.scores:
            self.scores[k] = self._score(plan)
        return self.scores[k]

    def _score(self, plan: PrecisionPlan) -> dict | None:
        try:
            agree, err, cos = self.ev.score(plan)
        except FixedTypeError:
            return None  # a type the candidate implies is illegal: not a candidate
        return {"agreement": agree, "disagreements": None if agree is None else int(round((1 - agree) * self.n)),
                "cosine": cos, "max_abs_error": err}


@dataclass
class _Limit:
    disagreements: int | None
    cosine: float | None
    max_abs_error: float | None

    def ok(self, s: dict | None) -> bool:
        if s is None:
            return False
        if self.disagreements is not None and s["disagreements"] is not None and s["disagreements"] > self.disagreements:
            return False
        if self.cosine is not None and s["cosine"] < self.cosine:
            return False
        return self.max_abs_error is None or s["max_abs_error"] <= self.max_abs_error

    def damage(self, s: dict) -> float:
        """How much of the budget a score spends (1.0: all of one constraint)."""
        d = 0.0
        if self.disagreements is not None and s["disagreements"] is not None:
            d += s["disagreements"] / (self.disagreements + 1)
        if self.cosine is not None:
            d += (1.0 - s["cosine"]) / max(1.0 - self.cosine, 1e-12)
        if self.max_abs_error is not None:
            d += s["max_abs_error"] / self.max_abs_error
        return d


def _knobs(graph: Graph, layers: list[HlsLayer], pinned: dict) -> list[Knob]:
    out = [Knob(i, "input") for i in graph.inputs]
    for layer in layers:
        if layer.name in pinned or layer.kind in COPIES:
            continue
        if layer.kind in ("softmax", "sigmoid", "tanh"):
            # Probabilities are what the user reads: a graph output keeps 16 fractional bits (as the bits search).
            keys = [] if layer.output in graph.outputs else ["result"]
        elif layer.kind in ("dense", "conv", "batch_norm"):
            keys = ["weight", "bias", "result"]
        else:
            keys = ["result"]
        out += [Knob(layer.name, k) for k in keys]
    return out


def search_cost(graph: Graph, feeds: dict[str, np.ndarray], budget: Budget, cost: Callable[[PrecisionPlan], dict], *,
                pinned: dict | None = None, baseline: PrecisionPlan | None = None,
                table_sizes: tuple[int, ...] = (1024,), confidence: float = CONFIDENCE) -> SearchResult:
    """The cheapest plan by ``cost`` (compiler.fixedpoint.cost.objective) meeting ``budget`` with the
    module's guard; ``SearchResult.extra`` holds the guard, the sensitivity and the trade curve."""
    pinned = pinned or {}
    layers = hls_layers(graph)
    notes: list[str] = []
    search_feeds, held_feeds = split_feeds(feeds)
    given = len(next(iter(search_feeds.values())))
    if given < MIN_REAL:
        search_feeds = extend_feeds(search_feeds)
    n = len(next(iter(search_feeds.values())))
    if n > given:
        notes.append(f"{given} search samples (after holding out every {HOLD_OUT}th) extended to "
                     f"{MIN_SEARCH_SAMPLES} with jittered copies")
    ranges = observed_ranges(graph, search_feeds)
    judge, held = _Judge(graph, search_feeds), _Judge(graph, held_feeds) if len(next(iter(held_feeds.values()))) else None
    guarded = budget.guarded()
    k_allowed: int | None = None
    if budget.min_agreement is not None:
        k_allowed = max_disagreements(n, budget.min_agreement, confidence)
        if k_allowed < 0:
            k_allowed = 0
            notes.append(f"{n} search samples cannot certify {budget.min_agreement} at {confidence:.0%} confidence "
                         "even with no disagreement: searched at none")
    base_agree = None
    if baseline is not None and k_allowed is not None:
        s = judge.score(baseline)
        if s is not None and s["disagreements"] is not None:
            base_agree = s["agreement"]
            k_allowed = min(k_allowed, s["disagreements"])
    limit = _Limit(k_allowed, guarded.min_cosine, budget.max_abs_error)
    user = _Limit(None, budget.min_cosine, budget.max_abs_error)  # the held-out check (agreement: a rate)

    def held_ok(s: dict | None) -> bool:
        if s is None or not user.ok(s):
            return False
        if budget.min_agreement is None or s["disagreements"] is None:
            return True
        # The median-unbiased rate (the 50% bound): a point estimate that does not round in the plan's
        # favour; a held-out set too small for that to pass at all asks for no disagreement.
        k = s["disagreements"]
        return k == 0 or clopper_pearson_upper(k, held.n, HELD_CONFIDENCE) <= 1.0 - budget.min_agreement

    def fin(plan: PrecisionPlan) -> PrecisionPlan:
        return _finish(graph, plan, layers, ranges)

    # The wide start, with lookup tables grown when it misses the budget (as the bits search), and
    # while it spends more than half the disagreements allowed (near-tie logits the tables flip):
    # the types need the rest.
    roomy = replace(limit, disagreements=None if k_allowed is None else k_allowed // 2)
    start = initial_plan(graph, ranges, pinned=pinned)
    if not roomy.ok(judge.score(start)):
        first = start if limit.ok(judge.score(start)) else None
        for ts in table_sizes:
            cand = initial_plan(graph, ranges, frac=START_FRAC + 6, table_size=ts, pinned=pinned)
            s = judge.score(cand)
            if roomy.ok(s) or (first is None and limit.ok(s)):
                first = cand
            if roomy.ok(s):
                break
        if first is None:
            s = judge.score(cand) or {"agreement": None, "max_abs_error": float("inf"), "cosine": 0.0}
            return SearchResult(cand, ranges, s["agreement"], s["max_abs_error"], judge.count,
                                _rows(layers, cand, ranges), met=False,
                                required_agreement=None if k_allowed is None else 1 - k_allowed / n,
                                baseline_agreement=base_agree, notes=notes, cosine=s["cosine"],
                                required_cosine=limit.cosine)
        start = first
        ts = max((lp.table_size for lp in start.layers.values()), default=table_sizes[0])
        if ts != table_sizes[0]:
            notes.append(f"lookup tables of softmax/sigmoid/tanh raised to {ts} entries: with "
                         f"{table_sizes[0]} their index step ties close logits and spends the budget")

    knobs = _knobs(graph, layers, pinned)
    top = {k: k.get(start).frac for k in knobs}
    # 3. Sensitivity: each type alone.
    low: dict[Knob, int] = {}
    for k in knobs:
        lo, hi = MIN_FRAC, top[k]
        while lo < hi:
            mid = (lo + hi) // 2
            if limit.ok(judge.score(fin(k.set(start, mid)))):
                hi = mid
            else:
                lo = mid + 1
        low[k] = hi

    def at(fracs: dict[Knob, int]) -> PrecisionPlan:
        plan = start
        for k, f in fracs.items():
            plan = k.set(plan, f)
        return fin(plan)

    # 4. Joint start: own fewest bits + a common offset.
    lo, hi = 0, max((top[k] - low[k] for k in knobs), default=0)
    while lo < hi:
        mid = (lo + hi) // 2
        if limit.ok(judge.score(at({k: min(top[k], low[k] + mid) for k in knobs}))):
            hi = mid
        else:
            lo = mid + 1
    fracs = {k: min(top[k], low[k] + hi) for k in knobs}
    plan = at(fracs)
    path: list[tuple[PrecisionPlan, dict]] = [(start, judge.score(start)), (plan, judge.score(plan))]

    def descend(plan: PrecisionPlan, fracs: dict[Knob, int], lim: _Limit, floor: dict[Knob, int],
                max_moves: int) -> list[tuple[PrecisionPlan, dict, dict[Knob, int]]]:
        """Greedy moves from ``plan``; each entry is the plan after one move."""
        steps = []
        cur_s = judge.score(plan)
        active = [k for k in knobs if fracs[k] > floor[k]]
        while active and len(steps) < max_moves:
            c0 = cost(plan)
            base = c0["cost"] - c0["tie"]
            moves = []  # (saved, knob, fractional bits, plan): priced first, the model runs on the best few
            for k in active:
                f = fracs[k]
                one = fin(k.set(plan, f - 1))
                moves.append((c0["cost"] - cost(one)["cost"], k, f - 1, one))
                if cost(one)["cost"] - cost(one)["tie"] >= base:  # no resource saved: look further down
                    for g in range(f - 2, max(floor[k], f - JUMP) - 1, -1):
                        trial = fin(k.set(plan, g))
                        if cost(trial)["cost"] - cost(trial)["tie"] < base:
                            moves.append((c0["cost"] - cost(trial)["cost"], k, g, trial))
                            break
            moves.sort(key=lambda m: (-m[0], str(m[1]), -m[2]))
            best = None
            for i in range(0, len(moves), BATCH):
                for saved, k, g, trial in moves[i:i + BATCH]:
                    if k not in active:
                        continue
                    s = judge.score(trial)
                    if not lim.ok(s):
                        if g == fracs[k] - 1:
                            active.remove(k)  # its next bit fails now; it will not pass with fewer elsewhere
                        continue
                    ratio = saved / (max(lim.damage(s) - lim.damage(cur_s), 0.0) + SLACK)
                    if best is None or ratio > best[0]:
                        best = (ratio, k, g, trial, s)
                if best is not None:
                    break
            if best is None or best[0] <= 0:
                break
            _, k, g, plan, cur_s = best
            fracs = {**fracs, k: g}
            if g <= floor[k]:
                active.remove(k)
            steps.append((plan, cur_s, fracs))
        return steps

    # 5. Descent within the guard.
    for p, s, f in descend(plan, fracs, limit, low, 10_000):
        path.append((p, s))
        fracs = f
    # 6. Held-out confirmation: the cheapest plan on the path that keeps the budget on unseen data.
    held_scores = [held.score(p) if held is not None else None for p, _ in path]
    chosen = len(path) - 1
    if held is not None:
        while chosen > 0 and not held_ok(held_scores[chosen]):
            chosen -= 1
        if chosen < len(path) - 1:
            notes.append(f"held-out check: the descent's last {len(path) - 1 - chosen} move(s) missed the budget on "
                         f"the {held.n} held-out samples; the plan before them is used")
        if not held_ok(held_scores[chosen]):
            notes.append(f"held-out check: even the widest plan misses the budget on the {held.n} held-out samples")
    else:
        notes.append("too few samples to hold any out: the plan is not confirmed on unseen data")
    # 7. The curve past the budget (cheaper plans for the user to weigh), from the descent's end.
    extra: list[tuple[PrecisionPlan, dict]] = []
    if budget.min_agreement is not None:
        loose = 1.0 - CURVE_FACTOR * (1.0 - budget.min_agreement)
        ext = _Limit(int((1.0 - loose) * n), budget.min_cosine, None)
        extra = [(p, s) for p, s, _ in descend(path[-1][0], fracs, ext, {k: MIN_FRAC for k in knobs}, CURVE_EXTRA)]
    curve = []
    for i, ((p, s), hs) in enumerate(zip(path + extra, held_scores + [held.score(p) if held else None
                                                                     for p, _ in extra])):
        c = cost(p)
        curve.append({"cost": round(c["cost"], 1), **{k: c[k] for k in ("dsp", "luts", "ebops") if k in c},
                      "weight_bits": _weight_bits(graph, p, layers),
                      "agreement": None if s is None else s["agreement"],
                      "cosine": None if s is None else round(s["cosine"], 6),
                      "held_out_agreement": None if hs is None else hs["agreement"],
                      "chosen": i == chosen, "within_budget": i < len(path)})
    plan, s = path[chosen]
    extra_info = {
        "method": "cost", "confidence": confidence, "search_samples": n,
        "held_out_samples": 0 if held is None else held.n, "max_disagreements": k_allowed,
        "held_out": None if held_scores[chosen] is None else {
            "agreement": held_scores[chosen]["agreement"], "cosine": round(held_scores[chosen]["cosine"], 6)},
        "sensitivity": {str(k): low[k] for k in knobs}, "curve": curve}
    return SearchResult(plan, ranges, s["agreement"], s["max_abs_error"], judge.count + (held.count if held else 0),
                        _rows(layers, plan, ranges), required_agreement=None if k_allowed is None else 1 - k_allowed / n,
                        baseline_agreement=base_agree, notes=notes, cosine=s["cosine"],
                        required_cosine=limit.cosine, extra=extra_info)


def _weight_bits(graph: Graph, plan: PrecisionPlan, layers: list[HlsLayer]) -> int:
    from tapeout.compiler.fixedpoint.search import weight_bits

    return weight_bits(graph, plan, layers)[0]

