"""The fixed-point precision search as a pass: it annotates the graph with the per-layer
``ap_fixed`` types (``Graph.fixed``) that a fixed-point back end (hls4ml) then writes.

The back end says what it needs in a ``PrecisionRequest`` (``Target.precision_request``): a
uniform type or a search within an agreement / error budget, layers the user pinned, the
activation table sizes its writer supports, and a type its writer forces on a softmax's input.
The search runs on the build's calibration data (else its eval data, else synthetic inputs),
in the reference interpreter's bit-accurate model (compiler.fixedpoint.search).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Graph
from tapeout.compiler.passes.base import Pass, PassResult

SYNTHETIC_SEARCH_SAMPLES = 512


@dataclass(frozen=True)
class PrecisionRequest:
    baseline: Any  # FixedType: the type "auto" must do at least as well as (hls4ml's default)
    precision: Any = None  # None: search; else one FixedType for every layer
    layer_precision: Mapping[str, Any] = field(default_factory=dict)  # layer -> FixedType, pinned
    min_agreement: float | None = None
    max_abs_error: float | None = None
    table_sizes: tuple[int, ...] = (1024,)  # activation lookup-table sizes the writer supports
    # A type the writer builds softmax tables for whatever the input layer's own type (hls4ml 1.3's
    # Quartus / oneAPI writers): that input layer is given it.
    softmax_input: Any = None
    # Said when the back end computes table activations with formulas the search does not model.
    own_tables_note: str | None = None
    # What "auto" minimizes (compiler.fixedpoint.cost): "resources" (the back end's DSP/LUT estimate,
    # ``resources``; EBOPs without it), "ebops", or "bits" (the first search: fewest bits, 10x guard).
    objective: str = "resources"
    # graph -> (plan -> {"dsp": int, "luts": int}): the back end's estimate of a plan, bound to the graph
    # once per search (compiler.fixedpoint.cost.objective).
    resources: Callable[[Graph], Callable[[Any], Mapping[str, int]]] | None = None


@dataclass
class FixedPrecision:
    """The annotation: the plan, what the search found (report.json's "precision"), the data it ran
    on, and the notes for the target's report."""

    plan: Any  # compiler.fixedpoint.model.PrecisionPlan
    info: dict[str, Any]
    data: dict[str, Any]
    notes: list[str]


def search_data(graph: Graph, data: Any, notes: list[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Source-layout feeds the precision is chosen (and the C simulation confirmed) on: the build's
    calibration file, else its eval file (``data``: compiler.stages.data.BuildData or None), else
    synthetic inputs; ``notes`` say when it is not the calibration file."""
    from tapeout.compiler.calibration import source_specs
    from tapeout.runtime.data import synthesize

    specs = source_specs(graph)
    if data is not None and data.calibration_file is not None:
        ds = data.calibration(specs)
    elif data is not None and data.eval_file is not None:
        ds = data.eval(specs)
        notes.append("no --calibration data: precision chosen on the --eval data (the check is then not held-out)")
    else:
        ds = synthesize(specs, num_samples=SYNTHETIC_SEARCH_SAMPLES, seed=0)
        notes.append(f"no --calibration or --eval data: precision chosen on {SYNTHETIC_SEARCH_SAMPLES} synthetic "
                     "standard-normal inputs; give --calibration DATA for types fitted to real inputs")
    return dict(ds.feeds), {"kind": ds.kind, "samples": ds.num_samples}


class PrecisionSearch(Pass):
    name = "precision-search"

    def __init__(self, request: PrecisionRequest, data: Any = None, what: str = "hls4ml") -> None:
        self.request = request
        self.data = data
        self.what = what  # the back end named in errors

    def run(self, graph: Graph) -> PassResult:
        from tapeout.compiler.calibration import to_ir_layout
        from tapeout.compiler.fixedpoint import FixedTypeError

        from tapeout.compiler.fixedpoint.qat import is_qat

        notes: list[str] = []
        # A quantization-aware graph's types come from its quantizers: the data only confirms them.
        feeds, data = search_data(graph, self.data, [] if is_qat(graph) else notes)
        try:
            plan, info = self._plan(graph, to_ir_layout(graph, feeds), notes)
        except FixedTypeError as e:
            raise UsageError(f"target {self.what}: {e}") from None
        g = graph.copy()
        g.fixed = FixedPrecision(plan, info, data, notes)
        return PassResult(g, True)

    def _plan(self, graph: Graph, feeds: dict[str, np.ndarray], notes: list[str]) -> tuple[Any, dict[str, Any]]:
        from tapeout.compiler.fixedpoint import hls_layers
        from tapeout.compiler.fixedpoint.model import TABLE_ACTIVATIONS
        from tapeout.compiler.fixedpoint.search import MIN_COSINE, Budget, observed_ranges, search, uniform_plan

        r = self.request
        layers = hls_layers(graph)
        from tapeout.compiler.fixedpoint.qat import is_qat, qat_plan

        if is_qat(graph):  # the user's trained quantizers fix the types: no search over them
            plan, qnotes = qat_plan(graph)
            notes.extend(qnotes)
            if r.precision is not None or r.layer_precision:
                notes.append("--precision ignored: the model's fixed_quant quantizers fix every type")
            quantizers = sum(layer.kind == "fixed_quant" for layer in layers)
            return plan, {"mode": "quantizers", "quantizers": quantizers,
                          "budget": {"min_agreement": r.min_agreement, "max_abs_error": r.max_abs_error}}
        names = {layer.name for layer in layers}
        unknown = sorted(set(r.layer_precision) - names)
        if unknown:
            raise UsageError(f"--precision: no {self.what} layer named {', '.join(map(repr, unknown))}; layers: "
                             f"{', '.join(layer.name for layer in layers)}")
        pinned = {k: uniform_plan(graph, t).layers[k] for k, t in r.layer_precision.items()}
        info: dict[str, Any] = {"mode": "auto" if r.precision is None else "explicit",
                                "budget": {"min_agreement": r.min_agreement, "max_abs_error": r.max_abs_error,
                                           "min_cosine": MIN_COSINE}}
        if r.precision is not None:
            plan = uniform_plan(graph, r.precision)
            plan.layers.update(pinned)
            info["type"] = str(r.precision)
            return plan, {**info, "ranges": observed_ranges(graph, feeds)}
        budget = Budget(r.min_agreement, r.max_abs_error, MIN_COSINE)
        base = uniform_plan(graph, r.baseline) if r.min_agreement is not None else None
        if r.objective == "bits":
            res = search(graph, feeds, budget, pinned=pinned, baseline=base, table_sizes=r.table_sizes)
            res.extra = {"method": "bits"}
        else:
            from tapeout.compiler.fixedpoint.cost import OBJECTIVES, objective
            from tapeout.compiler.fixedpoint.descent import search_cost

            if r.objective not in OBJECTIVES:
                raise UsageError(f"{self.what}: precision objective {r.objective!r}: expected one of "
                                 f"{', '.join((*OBJECTIVES, 'bits'))}")
            cost = objective(graph, r.objective, r.resources)
            res = search_cost(graph, feeds, budget, cost, pinned=pinned, baseline=base, table_sizes=r.table_sizes)
            res.extra["objective"] = r.objective if r.resources is not None or r.objective == "ebops" else "ebops"
        notes.extend(res.notes)
        curve = res.extra.get("curve")
        if curve:
            pick = next(c for c in curve if c["chosen"])
            notes.append(f"precision search ({res.extra['objective']}): cost {pick['cost']:,.0f} at agreement "
                         f"{pick['agreement']} (held-out {pick['held_out_agreement']}); {len(curve)} points from "
                         f"{curve[0]['cost']:,.0f} to {curve[-1]['cost']:,.0f} in precision.search.curve")
        if r.softmax_input is not None:
            _pin_softmax_input(graph, res.plan, res.ranges, r.softmax_input, notes)
        if r.own_tables_note and any(layer.kind in TABLE_ACTIVATIONS for layer in layers):
            notes.append(r.own_tables_note)
        if not res.met:
            notes.append(f"precision budget not met on the {info['budget']} budget even with wide types and "
                         f"{max(lp.table_size for lp in res.plan.layers.values())}-entry tables "
                         f"(agreement {res.agreement}, cosine {res.cosine:.4f}, max abs error "
                         f"{res.max_abs_error:.3g}): the widest plan is used")
        info.update(met=res.met, evaluations=res.evaluations, required_agreement=res.required_agreement,
                    required_cosine=res.required_cosine, cosine=res.cosine,
                    baseline={"type": str(r.baseline), "agreement": res.baseline_agreement}, ranges=res.ranges,
                    search=res.extra)
        return res.plan, info


def _pin_softmax_input(graph: Graph, plan: Any, ranges: dict[str, float], fx: Any, notes: list[str]) -> None:
    """Give each softmax's input layer the type ``fx`` (the writer builds its tables for it), unless
    the softmax is literally named 'softmax' (then hls4ml 1.3's writers use the layer's own type)."""
    from tapeout.compiler.fixedpoint import hls_layers
    from tapeout.compiler.fixedpoint.model import _alias_map
    from tapeout.compiler.fixedpoint.search import _finish

    layers = hls_layers(graph)
    alias = _alias_map(graph)
    fed = []
    for layer in layers:
        if layer.kind == "softmax" and layer.name != "softmax":
            src = alias.get(layer.inputs[0], layer.inputs[0])
            for prev in layers:
                if prev.output == src:
                    plan.layers[prev.name] = replace(plan.layers[prev.name], result=fx)
                    fed.append(prev.name)
    if fed:
        plan.layers.update(_finish(graph, plan, layers, ranges).layers)
        notes.append(f"softmax input(s) {', '.join(fed)} kept at ap_fixed<{fx.width},{fx.integer}>: hls4ml 1.3's "
                     "writer for this back end builds the softmax tables for that type")
