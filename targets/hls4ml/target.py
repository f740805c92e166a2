"""The "hls4ml" target: an HLS project per back end (Vitis default), with automatic per-layer
fixed-point precision, C-simulation verification and pre-synthesis estimates.

IR -> Keras 3 (the shared emitter, channels-last) -> hls4ml's public converter, with every
layer's types written explicitly from a ``PrecisionPlan``. The plan comes from the search on
the NumPy bit-accurate model (``precision="auto"``) or from the user's ``ap_fixed<W,I>``.
The chosen project is compiled once with g++ and run on the search data to confirm it.
"""

from __future__ import annotations

import math
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

import numpy as np

from tapeout.compiler.errors import MissingToolError, UsageError
from tapeout.compiler.ir import Graph
from tapeout.runtime.compare import Tolerance
from tapeout.runtime.protocol import Runner
from tapeout.targets.base import EmitContext, EmitResult, Target, TargetOptions

if TYPE_CHECKING:
    from tapeout.compiler.fixedpoint.precision import PrecisionRequest
    from tapeout.compiler.stages.data import BuildData

DEFAULT_MIN_AGREEMENT = 0.995
BASELINE = "ap_fixed<16,6>"  # hls4ml's default type: auto must do at least as well on the calibration data
AMD_TABLES = ("vitis", "vivado")  # back ends whose activation tables the NumPy model reproduces
CSIM_VARIANTS = ("vitis", "vivado", "quartus", "catapult")  # build_lib.sh with g++; oneAPI needs icpx


@dataclass
class Settings:
    """The user's hls4ml choices, parsed and checked before any model is loaded."""

    precision: Any = None  # None: auto; else a FixedType for the whole model
    layer_precision: dict[str, Any] = field(default_factory=dict)  # layer -> FixedType
    reuse_factor: int = 1
    layer_reuse: dict[str, int] = field(default_factory=dict)
    min_agreement: float | None = DEFAULT_MIN_AGREEMENT
    max_abs_error: float | None = None
    strategy: str = "latency"
    io_type: str = "parallel"
    part: str | None = None
    clock_period: float = 5.0
    synth: bool = False
    build_csim: bool = True
    precision_objective: str = "bits"  # compiler.fixedpoint.cost: resources, ebops; "bits": the first search


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _parse_type(text: str, what: str) -> Any:
    from tapeout.compiler.fixedpoint.types import FixedType, FixedTypeError

    try:
        return FixedType.parse(str(text))
    except FixedTypeError as e:
        raise UsageError(f"{what}: {e}") from None


def _parse_int(text: Any, what: str) -> int:
    try:
        n = int(text)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: {text!r} is not an integer") from None
    if n < 1:
        raise UsageError(f"{what}: must be >= 1, not {n}")
    return n


# The config file's model-level keys (flags win over them).
_FILE_KEYS = ("precision", "reuse_factor", "strategy", "io_type", "part", "clock_period", "min_agreement",
              "max_abs_error", "precision_objective")


@dataclass(frozen=True)
class Hls4mlTargetOptions(TargetOptions):
    """The options of docs/hls4ml.md's table; the --hls-config file is merged in when they are built."""

    precision: tuple[str, ...] = ()  # "auto" (also when empty), "ap_fixed<W,I>", "LAYER=ap_fixed<W,I>"
    min_agreement: float | None = DEFAULT_MIN_AGREEMENT  # None: max_abs_error alone is the budget
    max_abs_error: float | None = None
    reuse_factor: tuple[str, ...] = ()  # "N" (the model's; default 1) and "LAYER=N"
    strategy: Literal["latency", "resource", "distributed_arithmetic"] = "latency"
    io_type: Literal["parallel", "stream"] = "parallel"
    part: str | None = None  # None: the back end's default part
    clock_period: float = 5.0  # ns
    # The --hls-config TOML file, already merged into the fields above.
    config: str | None = field(default=None, metadata={"path": True})
    synth: bool = False
    build_csim: bool = True
    precision_objective: Literal["resources", "ebops", "bits"] = "bits"  # what "auto" minimizes

    @classmethod
    def prepare(cls, values: dict[str, Any], target: str) -> dict[str, Any]:
        values = {k: v for k, v in values.items() if v is not None}  # None: not given, as on the CLI
        if values.get("config"):
            path = Path(str(values["config"]))
            try:
                cfg = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise UsageError(f"hls4ml: --hls-config {path}: {e}") from None
            # Flags win over the file: the file's model-level keys fill only what was not given.
            for key in _FILE_KEYS:
                if key in cfg and values.get(key) is None:
                    values[key] = cfg[key]
            # Its layers come first, so a flag's LAYER=... for the same layer wins.
            precision, reuse = [], []
            for layer, entry in (cfg.get("layers") or {}).items():
                if "precision" in entry:
                    _parse_type(entry["precision"], f"hls4ml: --hls-config layer {layer}")
                    precision.append(f"{layer}={entry['precision']}")
                if "reuse_factor" in entry:
                    _parse_int(entry["reuse_factor"], f"hls4ml: --hls-config layer {layer}")
                    reuse.append(f"{layer}={entry['reuse_factor']}")
            for key, items in (("precision", precision), ("reuse_factor", reuse)):
                if items:
                    values[key] = items + _as_list(values[key] if values.get(key) is not None else [])
        for key in ("strategy", "io_type"):
            if isinstance(values.get(key), str):
                values[key] = values[key].lower().removeprefix("io_")
        if values.get("max_abs_error") is not None and values.get("min_agreement") is None:
            values["min_agreement"] = None  # the error budget alone, as asked
        return values

    def checked(self, target: str, variant: str | None) -> Hls4mlTargetOptions:
        s = settings(self)  # every check, before any model loads
        if s.strategy == "distributed_arithmetic":
            from tapeout.targets.hls4ml.da import check_variant

            check_variant(variant)
        return self


def settings(o: Hls4mlTargetOptions) -> Settings:
    """The options as the emitter uses them (types parsed, per-layer entries split out)."""
    s = Settings(min_agreement=o.min_agreement, max_abs_error=o.max_abs_error, strategy=o.strategy,
                 io_type=o.io_type, part=o.part or None, clock_period=o.clock_period, synth=o.synth,
                 build_csim=o.build_csim, precision_objective=o.precision_objective)
    for item in o.precision:
        layer, _, text = item.rpartition("=") if "=" in item else ("", "", item)
        if layer:
            s.layer_precision[layer] = _parse_type(text, f"hls4ml: --precision {item}")
        elif text.strip().lower() == "auto":
            s.precision = None
        else:
            s.precision = _parse_type(text, f"hls4ml: --precision {item}")
    for item in o.reuse_factor:
        layer, _, text = item.rpartition("=")
        if layer:
            s.layer_reuse[layer] = _parse_int(text, f"hls4ml: --reuse-factor {item}")
        else:
            s.reuse_factor = _parse_int(text, "hls4ml: --reuse-factor")
    if s.min_agreement is not None and not 0.0 < s.min_agreement <= 1.0:
        raise UsageError(f"hls4ml: --min-agreement {s.min_agreement}: expected a fraction in (0, 1]")
    if s.max_abs_error is not None and s.max_abs_error <= 0:
        raise UsageError("hls4ml: --max-abs-error must be > 0")
    if s.clock_period <= 0:
        raise UsageError("hls4ml: --clock-period must be > 0 (ns)")
    if s.strategy == "distributed_arithmetic":
        from tapeout.targets.hls4ml.da import check_reuse

        check_reuse(s.reuse_factor, s.layer_reuse)
    return s


def parse_settings(options: Mapping[str, Any]) -> Settings:
    """``Hls4mlTarget(variant, **options)``'s settings, checked (a UsageError names what is wrong)."""
    return settings(Hls4mlTargetOptions.from_mapping(options, target="hls4ml"))


class Hls4mlTarget(Target):
    name = "hls4ml"
    # The C++ takes channels-last arrays whatever the source (tapeout_io.json says so; the C-simulation
    # runner transposes a channels-first source's data with the manifest's perm).
    io_layouts = ("channels-last",)
    default_io_layout = "channels-last"
    variants = ("vitis", "vivado", "quartus", "oneapi", "catapult")
    default_variant = "vitis"
    parallel_emit = False  # through Keras (Target.parallel_emit)
    requires = ("hls4ml", "keras", "tensorflow")
    Options = Hls4mlTargetOptions
    opts: Hls4mlTargetOptions
    description = ("FPGA HLS project through hls4ml (Vitis, Vivado, Quartus, oneAPI, Catapult): per-layer "
                   "ap_fixed precision searched on calibration data, verified in C simulation, with "
                   "pre-synthesis DSP/LUT/latency estimates")

    def __init__(self, variant: str | None = None, **options: Any) -> None:
        super().__init__(variant, **options)
        self.settings = settings(self.opts)
        if self.settings.synth:
            from tapeout.targets.hls4ml.synth import require_tool

            require_tool(self.variant)  # exit 3 before any work

    @classmethod
    def default_tolerance(cls, variant: str) -> Tolerance | None:  # type: ignore[override]
        from tapeout.compiler.fixedpoint.search import MIN_COSINE

        return Tolerance(min_cosine=MIN_COSINE, min_top1_agreement=DEFAULT_MIN_AGREEMENT)

    # ------------------------------------------------------------- precision
    def precision_request(self) -> PrecisionRequest:
        """The search this target's types come from (run by the build before emit)."""
        from tapeout.compiler.fixedpoint import fixed
        from tapeout.compiler.fixedpoint.precision import PrecisionRequest
        from tapeout.compiler.fixedpoint.search import TABLE_SIZES

        s = self.settings
        own = (f"hls4ml:{self.variant} computes softmax/sigmoid/tanh with its own tables: the search models "
               "Vivado/Vitis's, so the C simulation is the judge of those layers")
        # The NumPy model's lookup tables are Vivado/Vitis's; the other back ends write their own
        # (other formulas), so their tables stay at hls4ml's default size.
        return PrecisionRequest(
            baseline=_parse_type(BASELINE, "baseline"), precision=s.precision, layer_precision=dict(s.layer_precision),
            min_agreement=s.min_agreement, max_abs_error=s.max_abs_error,
            table_sizes=TABLE_SIZES if self.variant in AMD_TABLES else (1024,),
            # hls4ml 1.3's Quartus/oneAPI writers compute the softmax exp table for an ap_fixed<16,6> input.
            softmax_input=fixed(16, 6, "AP_RND", "AP_SAT") if self.variant in ("quartus", "oneapi") else None,
            own_tables_note=None if self.variant in AMD_TABLES else own,
            # Distributed arithmetic has no multipliers to count: EBOPs stand in for its adder graphs.
            objective="ebops" if s.strategy == "distributed_arithmetic" and s.precision_objective == "resources"
            else s.precision_objective, resources=self._resource_estimate)

    def _resource_estimate(self, graph: Graph) -> Callable[[Any], dict[str, int]]:
        """plan -> the estimate's DSPs and LUTs (the precision search's objective); the graph's layers and
        reuse factors, which no plan changes, are found here once per search."""
        from tapeout.compiler.fixedpoint import hls_layers
        from tapeout.compiler.fixedpoint.cost import lut_multiplier_luts
        from tapeout.targets.hls4ml.estimates import estimate

        s = self.settings
        layers = hls_layers(graph)
        reuse = self._reuse(graph, [], layers)[0]

        def resources(plan: Any) -> dict[str, int]:
            rows, totals = estimate(graph, plan, reuse, variant=self.variant, io_type=s.io_type, strategy=s.strategy,
                                    clock_period=s.clock_period, layers=layers)
            return {"dsp": totals["dsp"], "luts": sum(r.lut_multipliers * lut_multiplier_luts(*r.operand_bits)
                                                      for r in rows if r.lut_multipliers)}

        return resources

    def _resources(self, graph: Graph, plan: Any) -> dict[str, int]:
        """The estimate's DSPs and LUTs of one plan."""
        return self._resource_estimate(graph)(plan)

    # ----------------------------------------------------------------- reuse
    def _reuse(self, graph: Graph, notes: list[str],
               layers: list[Any] | None = None) -> tuple[dict[str, int], list[dict[str, Any]]]:
        from tapeout.compiler.fixedpoint import hls_layers
        from tapeout.compiler.fixedpoint.reuse import MAX_UNROLLED_MULTS, auto_reuse, valid_reuse_factor

        s = self.settings
        layers = [layer for layer in (hls_layers(graph) if layers is None else layers)
                  if layer.kind in ("dense", "conv")]
        unknown = sorted(set(s.layer_reuse) - {layer.name for layer in layers})
        if unknown:
            raise UsageError(f"--reuse-factor: no dense/conv layer named {', '.join(map(repr, unknown))}")
        limit = MAX_UNROLLED_MULTS if s.io_type == "parallel" and s.strategy == "latency" else 1 << 62
        reuse: dict[str, int] = {}
        raised: list[dict[str, Any]] = []
        for layer in layers:
            w = graph.constants[layer.node.inputs[1]]
            n_in, n_out = int(np.prod(w.shape[:-1])), int(w.shape[-1])
            asked = s.layer_reuse.get(layer.name, s.reuse_factor)
            rf = auto_reuse(n_in, n_out, asked, limit)
            reuse[layer.name] = rf
            if rf != asked:
                why = (f"{n_in * n_out:,} multiplications per reuse cycle exceed the {MAX_UNROLLED_MULTS:,} HLS "
                       "unrolls in io_parallel/latency" if -(-n_in * n_out // asked) > limit
                       else f"{asked} is not a reuse factor hls4ml accepts for {n_in}x{n_out}")
                raised.append({"layer": layer.name, "requested": asked, "chosen": rf, "n_in": n_in, "n_out": n_out,
                               "multipliers": math.ceil(n_in * n_out / rf), "reason": why,
                               "valid": valid_reuse_factor(n_in, n_out, rf)})
                notes.append(f"reuse factor of {layer.name} raised from {asked} to {rf}: {why}")
        return reuse, raised

    # ------------------------------------------------------------------ emit
    def emit(self, graph: Graph, ctx: EmitContext) -> EmitResult:
        outdir = ctx.outdir
        from tapeout.compiler.fixedpoint import FixedTypeError, hls_layers
        from tapeout.compiler.fixedpoint.search import MIN_COSINE, weight_bits
        from tapeout.compiler.quiet import captured_output
        from tapeout.targets.hls4ml.config import Hls4mlOptions
        from tapeout.targets.hls4ml.estimates import estimate
        from tapeout.targets.hls4ml.lower import check_io_type, check_quantizer_variant, keras_model, lower

        s = self.settings
        try:
            layers = hls_layers(graph)
            check_io_type(layers, s.io_type, graph)
            check_quantizer_variant(layers, graph, self.variant)
        except FixedTypeError as e:
            raise UsageError(f"target hls4ml: {e}") from None
        if graph.fixed is None:
            raise UsageError("target hls4ml needs the graph annotated by the precision search "
                             "(compiler.fixedpoint.precision); compile_model runs it")
        plan, prec, data = graph.fixed.plan, graph.fixed.info, graph.fixed.data
        notes: list[str] = list(graph.fixed.notes)
        reuse, raised = self._reuse(graph, notes)
        da = s.strategy == "distributed_arithmetic"
        if da:  # hls4ml's DA reads the weights as given and sums exactly (targets/hls4ml/da.py)
            from tapeout.targets.hls4ml.da import da_graph, da_plan

            keras_graph, plan = da_graph(graph, plan), da_plan(graph, plan)
        else:
            keras_graph = graph
        options = Hls4mlOptions(part=s.part, clock_period=s.clock_period, io_type=s.io_type, strategy=s.strategy,
                                reuse_factor=s.reuse_factor, layer_reuse=reuse)
        with captured_output():  # keras is imported and the model built here: its start-up noise
            km = keras_model(keras_graph)
        names = self._names(graph, layers, km)
        model = lower(km.model, graph, plan, outdir, variant=self.variant, options=options, names=names)
        _write_trace_map(graph, layers, names, plan, outdir)
        costs = None
        if da:
            from tapeout.targets.hls4ml.da import csim_at_o1, da_costs

            costs = da_costs(model, graph, names)
            csim_at_o1(outdir)
        rows, totals = estimate(graph, plan, reuse, variant=self.variant, io_type=s.io_type, strategy=s.strategy,
                                clock_period=s.clock_period, da_costs=costs)
        built = self._build_csim(outdir, notes)
        total_bits, mean_bits = weight_bits(graph, plan)
        base_bits, _ = weight_bits(graph, _uniform(graph))
        per_layer = _layer_rows(layers, plan, prec.get("ranges", {}), rows)
        report: dict[str, Any] = {
            "backend": self.variant, "part": options.part_for(self.variant), "clock_period_ns": s.clock_period,
            "io_type": s.io_type, "strategy": s.strategy, "project": ".",
            "precision": {k: v for k, v in prec.items() if k != "ranges"} | {"data": data},
            "layers": per_layer,
            "totals": {"weight_memory_bits": total_bits, "mean_weight_bits": round(mean_bits, 4),
                       "uniform_16_6_weight_memory_bits": base_bits,
                       "weight_bits_saved": round(1.0 - total_bits / base_bits, 4) if base_bits else 0.0},
            "reuse": {"layers": reuse, "raised": raised},
            "estimates": {"totals": totals, "assumptions": "docs/hls4ml.md#estimates-before-synthesis"},
            "csim": {"built": built},  # the verify stage runs it (confirm)
            "synthesis": None,
        }
        if raised:
            report["reuse"]["note"] = "; ".join(f"{r['layer']}: {r['requested']} -> {r['chosen']}" for r in raised)
        notes.insert(0, f"precision {prec['mode']}" + (f" ({prec['type']})" if "type" in prec else "")
                     + f": {mean_bits:.2f} mean weight bits, {total_bits:,} weight bits "
                       f"({report['totals']['weight_bits_saved']:.0%} fewer than uniform {BASELINE})")
        if da:
            # The same plan with multipliers, for comparison (the DSP-based design).
            _, base = estimate(graph, plan, reuse, variant=self.variant, io_type=s.io_type, strategy="latency",
                               clock_period=s.clock_period)
            report["estimates"]["latency_strategy"] = base
            notes.append(f"estimates (distributed arithmetic): {totals['dsp']:,} DSPs, {totals['da_luts']:,} LUTs "
                         f"in adder graphs (da4ml's cost), latency {totals['latency_cycles']} cycles; the latency "
                         f"strategy: {base['dsp']:,} DSPs for {base['dsp_multipliers']:,} multipliers, "
                         f"{base['lut_multipliers']:,} in LUTs")
        else:
            notes.append(f"estimates: {totals['multipliers']:,} multipliers ({totals['dsp']:,} DSPs for "
                         f"{totals['dsp_multipliers']:,}, {totals['lut_multipliers']:,} in LUTs), latency "
                         f"{totals['latency_cycles']} cycles, II {totals['interval_cycles']}")
        if s.synth:
            from tapeout.targets.hls4ml.synth import run_synthesis

            report["synthesis"] = run_synthesis(outdir, self.variant)
        artifacts = [str(p.relative_to(outdir)) for p in sorted(outdir.rglob("*")) if p.is_file()]
        key = [a for a in artifacts if a in _KEY_FILES or a.endswith(".so")]
        # The user's --min-agreement judges the C simulation too.
        tol = Tolerance(min_cosine=MIN_COSINE, min_top1_agreement=self.settings.min_agreement)
        return EmitResult(key, notes, {"hls4ml": report}, size_artifacts=artifacts, tolerance=tol,
                          confirm_state=names)

    def _build_csim(self, outdir: Path, notes: list[str]) -> bool:
        """Build the C-simulation library (a failing build of a project tapeout wrote is tapeout's
        bug: exit 4 with the compiler's first error); False where it is not built."""
        from tapeout.targets.hls4ml.project import build_csim

        if self.variant not in CSIM_VARIANTS or not self.settings.build_csim:
            why = "oneAPI's C simulation needs Intel's icpx" if self.variant == "oneapi" else "not requested"
            notes.append(f"C simulation not built ({why}); the NumPy model stands in for the per-layer errors")
            return False
        if shutil.which("g++") is None:
            raise MissingToolError("hls4ml's C simulation needs g++ on PATH")
        build_csim(outdir)
        return True

    def confirm(self, graph: Graph, outdir: Path, data: BuildData, emitted: EmitResult,
                report: dict[str, Any], notes: list[str]) -> None:
        """Run the C simulation on the precision search's data against the fixed-point NumPy model
        (bit-exactness per layer) and the float graph (agreement, cosine, per-layer errors)."""
        from tapeout.compiler.calibration import to_ir_layout
        from tapeout.compiler.fixedpoint.precision import search_data

        h = report["hls4ml"]
        assert graph.fixed is not None  # emit refused a graph without it
        feeds, _ = search_data(graph, data, [])
        plan = graph.fixed.plan
        if self.settings.strategy == "distributed_arithmetic":
            from tapeout.targets.hls4ml.da import da_plan

            plan = da_plan(graph, plan)  # the exact sums DA computes
        csim = self._confirm(graph, plan, outdir, feeds, to_ir_layout(graph, feeds),
                             emitted.confirm_state or {}, notes, h["csim"]["built"])
        errors = csim.pop("layer_errors", {})
        h["csim"] = csim
        for row in h["layers"]:
            if row["layer"] in errors:
                estimate = row.pop("estimate", None)  # the errors come before it, as emit wrote rows
                row.update({k: float(f"{v:.6g}") for k, v in errors[row["layer"]].items()})
                if estimate is not None:
                    row["estimate"] = estimate

    @staticmethod
    def _names(graph: Graph, layers: list[Any], km: Any) -> dict[str, str]:
        """tapeout layer name -> the name hls4ml gives it (Keras layer names may be sanitized)."""
        names = dict(zip(graph.inputs, km.input_names))
        for layer in layers:
            base = km.layer_names.get(layer.node.name, layer.node.name)
            names[layer.name] = base if layer.name == layer.node.name else f"{base}{layer.name[len(layer.node.name):]}"
        return {k: v for k, v in names.items() if k != v}

    def _confirm(self, graph: Graph, plan: Any, outdir: Path, feeds: dict[str, np.ndarray],
                 ir_feeds: dict[str, np.ndarray], names: dict[str, str], notes: list[str],
                 built: bool) -> dict[str, Any]:
        """Run the built C simulation on the search data: agreement, per-layer errors, bit-exactness."""
        from tapeout.compiler import interpreter
        from tapeout.compiler.fixedpoint import hls_layers, run_fixed
        from tapeout.compiler.fixedpoint.model import TABLE_ACTIVATIONS
        from tapeout.compiler.fixedpoint.search import first_error_jump, layer_errors
        from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

        model = run_fixed(graph, plan, ir_feeds, keep_intermediates=True)
        ref = interpreter.run(graph, ir_feeds)
        out: dict[str, Any] = {"built": built}
        numpy_out = {o: model[_last_layer(graph, o)].to_float() for o in graph.outputs}
        out["numpy_agreement"] = _agreement(ref, numpy_out)
        out["numpy_cosine"] = _cosine_of(ref, numpy_out)
        if not built:
            out["layer_errors"] = layer_errors(graph, plan, ir_feeds)
            out["first_error_jump"] = first_error_jump(out["layer_errors"])
            self._below_budget(out["numpy_agreement"], "the NumPy model's", out["first_error_jump"], notes,
                               out["numpy_cosine"])
            return out
        with Hls4mlCsimRunner(outdir, build=False) as runner:
            got, traces = runner.run(feeds, trace=True)
        back = {v: k for k, v in names.items()}
        traces = {back.get(k, k): v for k, v in traces.items()}
        layers = hls_layers(graph)
        exact, mismatched = 0, []
        for layer in layers:
            if layer.name not in traces:
                continue
            want = model[layer.name].to_float().reshape(len(traces[layer.name]), -1)
            diff = float(np.max(np.abs(traces[layer.name] - want))) if want.size else 0.0
            if layer.kind in TABLE_ACTIVATIONS:
                continue  # within a table step, checked by the tests; not counted as bit-exact here
            if diff == 0.0:
                exact += 1
            else:
                mismatched.append({"layer": layer.name, "max_abs_diff": diff})
        csim_ir = to_ir_outputs(graph, got)
        from tapeout.compiler.fixedpoint.qat import is_qat

        if is_qat(graph):  # the quantizers fix every rounding: the C simulation must equal the interpreter
            differ = {k: int(np.sum(np.asarray(csim_ir[k], np.float64).reshape(np.shape(r)) != r))
                      for k, r in ref.items() if k in csim_ir}
            out["interpreter_compared"] = int(sum(np.size(ref[k]) for k in differ))
            out["interpreter_mismatches"] = sum(differ.values())
            if out["interpreter_mismatches"]:
                notes.append(f"C simulation differs from the reference interpreter in {out['interpreter_mismatches']:,} "
                             f"of {out['interpreter_compared']:,} output values of this quantization-aware model")
        out.update(csim_agreement=_agreement(ref, csim_ir), csim_cosine=_cosine_of(ref, csim_ir),
                   bit_exact_layers=exact,
                   checked_layers=exact + len(mismatched), mismatched=mismatched,
                   samples=int(len(next(iter(ir_feeds.values())))))
        have = {k: v for k, v in traces.items()}
        for layer in layers:  # untraced layers (none expected) fall back to the NumPy model
            have.setdefault(layer.name, model[layer.name].to_float())
        errors = layer_errors(graph, plan, ir_feeds, got=have)
        out["layer_errors"] = errors
        out["first_error_jump"] = first_error_jump(errors)
        if mismatched:
            notes.append(f"C simulation differs from the NumPy model in {len(mismatched)} layer(s), first "
                         f"{mismatched[0]['layer']}")
        self._below_budget(out["csim_agreement"], "C simulation", out["first_error_jump"], notes, out["csim_cosine"])
        return out

    def _below_budget(self, agree: float | None, who: str, jump: str | None, notes: list[str],
                      cosine: float | None = None) -> None:
        from tapeout.compiler.fixedpoint.search import MIN_COSINE

        budget = self.settings.min_agreement
        where = f"the first layer whose error jumps: {jump or '(no single layer stands out)'}"
        if budget is not None and agree is not None and agree < budget:
            notes.append(f"{who} top-1 agreement {agree:.4f} is below {budget} on the search data; {where}")
        if cosine is not None and cosine < MIN_COSINE:
            notes.append(f"{who} cosine {cosine:.4f} is below {MIN_COSINE} on the search data; {where}")

    def runner(self, outdir: Path) -> Runner:
        from tapeout.runtime.errors import RuntimeUnavailable
        from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

        if self.variant not in CSIM_VARIANTS:
            raise RuntimeUnavailable("hls4ml:oneapi C simulation needs Intel's oneAPI compiler (icpx); compile it "
                                     "with --no-verify to write the project only")
        return Hls4mlCsimRunner(outdir)


_KEY_FILES = ("build_prj.tcl", "CMakeLists.txt", "Makefile", "firmware/myproject.cpp", "src/firmware/myproject.cpp",
              "tapeout_csim.json")


def _write_trace_map(graph: Graph, layers: list[Any], names: dict[str, str], plan: Any, outdir: Path) -> None:
    """tapeout_trace.json: the traced layers of the manifest by IR value (the per-layer trace)."""
    import json

    from tapeout.runtime.runners.hls4ml_csim import MANIFEST
    from tapeout.targets.trace_maps import hls4ml_map

    traced = json.loads((outdir / MANIFEST).read_text()).get("trace", [])
    hls4ml_map(graph, layers, names, plan, traced).write(outdir)


def _uniform(graph: Graph) -> Any:
    from tapeout.compiler.fixedpoint.search import uniform_plan

    return uniform_plan(graph, _parse_type(BASELINE, "baseline"))


def _last_layer(graph: Graph, output: str) -> str:
    """The hls layer producing graph output ``output`` (through flatten/reshape aliases)."""
    from tapeout.compiler.fixedpoint import hls_layers
    from tapeout.compiler.fixedpoint.model import _alias_map

    src = _alias_map(graph).get(output, output)
    return next(layer.name for layer in hls_layers(graph) if layer.output == src)


def to_ir_outputs(graph: Graph, outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from tapeout.compiler.calibration import to_ir_layout

    return to_ir_layout(graph, outs)


def _agreement(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float | None:
    vals = []
    for k, r in ref.items():
        r = np.asarray(r)
        if k in got and r.ndim == 2 and r.shape[1] > 1:
            vals.append(float(np.mean(np.argmax(r, -1) == np.argmax(np.asarray(got[k]).reshape(r.shape), -1))))
    return min(vals) if vals else None


def _cosine_of(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float | None:
    """The worst output's cosine, as the verification computes it."""
    from tapeout.runtime.compare import _cosine

    vals = [_cosine(np.asarray(r, np.float64).ravel(), np.asarray(got[k], np.float64).reshape(np.shape(r)).ravel())
            for k, r in ref.items() if k in got]
    return min(vals) if vals else None


def _layer_rows(layers: list[Any], plan: Any, ranges: dict[str, float], estimates: list[Any]) -> list[dict[str, Any]]:
    est = {e.layer: e for e in estimates}
    rows = []
    for layer in layers:
        lp = plan.of(layer.name)
        row: dict[str, Any] = {"layer": layer.name, "kind": layer.kind,
                               "types": {k: str(v) for k, v in lp.types().items()},
                               "range": None if ranges.get(layer.name) is None else round(ranges[layer.name], 6)}
        if layer.kind in ("softmax", "sigmoid", "tanh"):
            row["table_size"] = lp.table_size
        if layer.kind in ("dense", "conv"):
            row["weight_range"] = ranges.get(f"{layer.name}:weight")
        e = est.get(layer.name)
        if e is not None:
            row["estimate"] = {k: v for k, v in e.to_json().items() if k not in ("layer", "kind")}
        rows.append(row)
    return rows
