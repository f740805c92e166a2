"""What the cost-driven precision search (compiler.fixedpoint.descent) minimizes, and its guard.

Objectives, in LUT-equivalents (lower is better):

- ``resources``: the back end's DSP/LUT estimate of the plan (the hls4ml target passes
  ``targets/hls4ml/estimates.py``'s counts in): ``LUTs + DSP_LUTS x DSPs``. A product built in
  LUTs costs ``ceil(a x w / 2)`` LUTs (``lut_multiplier_luts``); a DSP slice is worth ``DSP_LUTS``
  LUTs, the LUT/DSP ratio of hls4ml's default AMD part (xcvu13p: 1,728k LUTs, 12,288 DSPs), so
  the search trades them as shares of one device.
- ``ebops``: HGQ's effective bit operations, the sum over the multiplies of the product of their
  operands' bits (here the operand types' widths, per nonzero quantized weight and output position).

Both add ``TIE_PER_BIT`` per weight-memory and result bit, so bits that no multiplier sees (a bias,
the logits) still go down when nothing else moves.

Guard: the agreement budget holds when the one-sided Clopper-Pearson upper bound (``CONFIDENCE``)
on the disagreement rate, from the disagreements counted on the search data, stays within
``1 - min_agreement`` (``max_disagreements``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from tapeout.compiler.ir import Graph

OBJECTIVES = ("resources", "ebops")
DSP_LUTS = 140  # LUTs one DSP slice is worth: xcvu13p's 1,728k LUTs / 12,288 DSPs
TIE_PER_BIT = 0.01  # LUT-equivalents per weight/result bit (a tie-break: << one LUT multiplier)
CONFIDENCE = 0.95  # one-sided confidence of the agreement guard


def lut_multiplier_luts(a: int, w: int) -> int:
    """LUTs of one a x w product built in fabric (two partial-product bits per LUT6 with its carry)."""
    return math.ceil(a * w / 2)


def resource_cost(dsp: float, luts: float) -> float:
    return float(luts) + DSP_LUTS * float(dsp)


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n up to millions is fine for small k)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq, ln = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    return min(1.0, sum(math.exp(ln - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
                        for i in range(k + 1)))


def clopper_pearson_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided upper confidence bound on a rate from ``k`` events in ``n`` trials: the p at which
    seeing k or fewer has probability 1 - confidence."""
    if n <= 0 or k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(64):  # bisection: the CDF falls as p grows
        mid = (lo + hi) / 2
        if _binom_cdf(k, n, mid) > 1.0 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def max_disagreements(n: int, min_agreement: float, confidence: float = CONFIDENCE) -> int:
    """The most disagreements in ``n`` samples whose upper bound keeps ``min_agreement``; -1 when not
    even 0 does (too few samples to certify the budget at this confidence)."""
    allowed = 1.0 - min_agreement
    k = -1
    while k + 1 < n and clopper_pearson_upper(k + 1, n, confidence) <= allowed:
        k += 1
    return k


def ebops(graph: Graph, plan: Any, layers: list | None = None) -> int:
    """Sum over dense/conv multiplies (nonzero quantized weights x output positions) of activation
    bits x weight bits, and over batch-norm scales per element (``layers``: the graph's hls_layers,
    when the caller has them)."""
    from tapeout.compiler.fixedpoint.arith import from_float
    from tapeout.compiler.fixedpoint.model import hls_layers
    from tapeout.compiler.fixedpoint.search import _resolve_input_types

    layers = hls_layers(graph) if layers is None else layers
    src = _resolve_input_types(graph, plan, layers)
    total = 0
    for layer in layers:
        lp = plan.layers[layer.name]
        if lp.weight is None:
            continue
        a = src[layer.inputs[0]].width
        if layer.kind in ("dense", "conv"):
            w = graph.constants[layer.node.inputs[1]]
            nonzero = int(np.count_nonzero(from_float(np.asarray(w, np.float64), lp.weight)))
            out_shape = graph.type_of(layer.node.outputs[0]).shape
            positions = int(np.prod([int(d) for d in out_shape[1:-1]])) if layer.kind == "conv" else 1
            total += nonzero * positions * a * lp.weight.width
        elif layer.kind == "batch_norm":  # one product per element
            out_shape = [int(d) for d in graph.type_of(layer.node.outputs[0]).shape[1:]]
            total += int(np.prod(out_shape)) * a * lp.weight.width
    return total


def tie_bits(graph: Graph, plan: Any, layers: list | None = None) -> int:
    """Weight-memory bits plus every layer's result width x its elements per sample."""
    from tapeout.compiler.fixedpoint.model import hls_layers
    from tapeout.compiler.fixedpoint.search import weight_bits

    layers = hls_layers(graph) if layers is None else layers
    total = weight_bits(graph, plan, layers)[0]
    for layer in layers:
        t = graph.types.get(layer.output)
        dims = t.shape[1:] if t is not None else ()
        elems = int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else 1
        total += plan.layers[layer.name].result.width * elems
    return total


def plan_key(plan: Any) -> tuple:
    """A hashable key of a plan's types: equal plans, equal keys (what the searches memoize on)."""
    return (tuple(sorted(plan.inputs.items())), tuple(sorted(plan.layers.items())))


def objective(graph: Graph, kind: str,
              resources: Callable[[Graph], Callable[[Any], dict]] | None) -> Callable[[Any], dict]:
    """plan -> {"cost", "tie", "dsp", "luts", "ebops"} (what the target's estimate says, when it gives one),
    cached by the plan's types. ``resources(graph)`` gives the target's plan -> {"dsp", "luts"}: called
    here, once per search, as the graph's layers are found once, since no plan changes them."""
    from tapeout.compiler.fixedpoint.model import hls_layers

    if kind not in OBJECTIVES:
        raise ValueError(f"unknown precision objective {kind!r}; known: {', '.join(OBJECTIVES)}")
    cache: dict[Any, dict] = {}
    layers = hls_layers(graph)
    estimate = resources(graph) if resources is not None else None

    def cost(plan: Any) -> dict:
        k = plan_key(plan)
        if k not in cache:
            out: dict = {"ebops": ebops(graph, plan, layers)}
            if estimate is not None:
                r = estimate(plan)
                out.update(dsp=int(r["dsp"]), luts=int(r["luts"]))
            tie = out["tie"] = TIE_PER_BIT * tie_bits(graph, plan, layers)
            if kind == "resources" and estimate is not None:
                out["cost"] = resource_cost(out["dsp"], out["luts"]) + tie
            else:
                out["cost"] = float(out["ebops"]) + tie
            cache[k] = out
        return cache[k]

    return cost
