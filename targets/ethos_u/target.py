"""The "ethos-u" target: an Arm Ethos-U NPU model compiled by Vela from tapeout's int8 TFLite.

emit writes the int8 model through the tflite target (int8 inputs and outputs by default, so no
QUANTIZE/DEQUANTIZE is left on the CPU), runs Vela on it, and keeps both: model_vela.tflite (and
its C array) is what the device runs; model.tflite is what Vela consumed and what is verified.
The NPU's command stream cannot run here (TFLite Micro's host build has only a stub for the
ethos-u custom op), so the report says so rather than claim it ran.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

from tapeout.compiler.errors import MissingToolError, UsageError
from tapeout.compiler.ir import Graph
from tapeout.compiler.version import __version__
from tapeout.runtime.protocol import Runner
from tapeout.targets.base import EmitContext, EmitResult, Target, TargetOptions
from tapeout.targets.ethos_u import vela

VERIFIED_MODEL = "model.tflite"  # the int8 model Vela consumed
_MEMORY = {"sram": "SRAM", "dram": "DRAM", "on_chip_flash": "on-chip flash", "off_chip_flash": "off-chip flash"}
NOT_EXECUTED = ("the NPU graph itself was not executed: TFLite Micro's host build has only a stub for the ethos-u "
                "custom op in model_vela.tflite; verification ran the int8 model Vela consumed (model.tflite) in "
                "LiteRT and TFLite Micro")


@dataclass(frozen=True)
class EthosUOptions(TargetOptions):
    # Vela's --system-config and --memory-mode: sections of its ini (Arm's vela.ini, or `config`).
    # None: Vela's default for the accelerator, filled in when the options are checked.
    system_config: str | None = None
    memory_mode: str | None = None
    optimise: Literal["Performance", "Size"] = "Performance"
    arena_cache_size: int | None = None  # bytes; None: the memory mode's
    # A Vela .ini read instead of Arm's, as `vela --config` does (it then needs both names above).
    config: str | None = field(default=None, metadata={"path": True})
    io: Literal["int8", "float"] = "int8"  # the model's input/output type
    array_name: str | None = None  # the C array's name; None: g_<graph name>_vela_model

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, target: str, variant: str | None = None) -> EthosUOptions:
        # Vela spells these with hyphens (--system-config): both spellings are taken.
        return super().from_mapping({str(k).replace("-", "_"): v for k, v in values.items()}, target=target,
                                    variant=variant)

    def checked(self, target: str, variant: str | None) -> EthosUOptions:
        if self.array_name and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.array_name):
            raise UsageError(f"ethos-u: option array_name: {self.array_name!r} is not a C identifier")
        found = vela.check(variant or EthosUTarget.default_variant, self.system_config, self.memory_mode,
                           self.arena_cache_size, self.config)
        if found is None:  # no Vela: the build stops with exit 3 after the options
            return self
        return replace(self, system_config=found[0], memory_mode=found[1])


class EthosUTarget(Target):
    name = "ethos-u"
    variants = vela.accelerators()
    default_variant = "u55-128"
    parallel_emit = False  # through Keras (the tflite target's emit)
    io_layouts = ("source", "channels-last")
    default_io_layout = "channels-last"
    requires = ("ethosu.vela", "tensorflow", "keras")
    Options = EthosUOptions
    opts: EthosUOptions
    # The quantize stage's refusal without --calibration says why this target has no float form.
    quantized_only: ClassVar[str | None] = "Vela needs a fully quantized (int8) model"
    description = ("Arm Ethos-U NPU (U55/U65/U85) through Arm's Vela: int8 TFLite (int8 I/O) compiled for the NPU, "
                   "with Vela's cycle, memory and op-placement estimates; the int8 model is verified in LiteRT")

    @classmethod
    def quant_scheme(cls, variant: str) -> str | None:
        return "int8"

    def emit(self, graph: Graph, ctx: EmitContext) -> EmitResult:
        from importlib.metadata import version

        from tapeout.targets.tflite.flatbuffer import read_model
        from tapeout.targets.tflite.microcontroller import c_identifier, write_c_array
        from tapeout.targets.tflite.target import TfliteTarget

        o = self.opts
        if o.system_config is None or o.memory_mode is None:  # the options were checked without Vela
            raise MissingToolError("target 'ethos-u' needs ethosu.vela: pip install 'tapeout[ethos-u]'")
        lrns = [n.name for n in graph.nodes if n.op == "lrn"]
        if lrns:  # Vela leaves it to the CPU, where TFLite Micro has no kernel for it: no runnable artifact
            raise UsageError(f"target ethos-u cannot run node(s) {', '.join(map(repr, lrns))} (lrn): neither the NPU "
                             "nor TFLite Micro has an LRN kernel")
        tfl = TfliteTarget("int8", io=o.io, c_array=False)
        tfl.io_layout = self.io_layout
        int8 = tfl.emit(graph, ctx)  # model.tflite, tapeout_io.json, tapeout_trace.json
        setup = vela.Setup(f"ethos-{self.variant}", o.system_config, o.memory_mode, o.optimise,
                           o.arena_cache_size, o.config)
        run = vela.compile_model(ctx.outdir / VERIFIED_MODEL, ctx.outdir, setup)
        data = (ctx.outdir / run.optimized).read_bytes()
        optimized_ops = read_model(data).op_counts()
        s = run.summary
        mem = {k: round(float(s[f"{k}_memory_used"]) * 1024) for k in _MEMORY}  # Vela writes KiB
        cpu = [{"op": layer.original, "vela_op": layer.op, "name": layer.name,
                "reason": run.reasons.get(layer.name, "Vela printed no reason")} for layer in run.cpu]
        npu_types = sorted({layer.original for layer in run.npu})
        extra: dict[str, Any] = {
            "io": int8.extra.get("io"),
            "vela": {"version": version("ethos-u-vela"), "accelerator": setup.accelerator,
                     "system_config": s["system_config"], "memory_mode": s["memory_mode"], "optimise": o.optimise,
                     "core_clock_hz": s["core_clock"], "arena_cache_size_bytes": round(float(s["arena_cache_size"]) * 1024)},
            "inferences_per_second": s["inferences_per_second"],
            "inference_seconds": s["inference_time"],
            "cycles_total": s["cycles_total"],
            "cycles_npu": s["cycles_npu"],
            "memory_bytes": mem,
            "npu_ops": len(run.npu),
            "cpu_ops": len(run.cpu),
            "npu_op_types": npu_types,
            "cpu_placement": cpu,
            "optimized_model_ops": optimized_ops,
            "npu_executed": False,
            "verified_model": VERIFIED_MODEL,
            "int8_model": {k: v for k, v in int8.extra.items() if k in ("ops", "quantized_tensors")},
        }
        mhz = s["core_clock"] / 1e6
        notes = [
            f"Vela {extra['vela']['version']} for {setup.accelerator} ({s['system_config']}, {s['memory_mode']}, "
            f"optimise {o.optimise}): {s['inferences_per_second']:,.1f} inferences/s estimated, "
            f"{s['cycles_total']:,} cycles at {mhz:g} MHz ({s['cycles_npu']:,} NPU cycles); "
            + ", ".join(f"{_MEMORY[k]} {v:,} B" for k, v in mem.items() if v) + " used",
            _placement_note(run, cpu, npu_types),
            NOT_EXECUTED,
        ]
        notes += [f"int8 model: {n}" for n in int8.notes]
        array = o.array_name or f"g_{c_identifier(graph.name)}_vela_model"
        note = f"{graph.name} for TFLite Micro with the Ethos-U driver: ethos-u:{self.variant} by tapeout {__version__}"
        c_files = write_c_array(data, ctx.outdir, array, note, None, stem="model_vela")
        extra["c_array"] = array
        notes.append(f"C array {array} in model_vela.cc/model_vela.h (no arena constant: TFLite Micro's arena holds "
                     "Vela's SRAM figure for the NPU plus its own bookkeeping, not measured here)")
        artifacts = [run.optimized, *c_files, run.summary_csv, run.per_layer_csv, *int8.artifacts]
        return EmitResult(artifacts, notes, extra, size_artifacts=[run.optimized])

    def cross_runners(self, outdir: Path, extra: Mapping[str, Any]) -> list[Runner]:
        """TFLite Micro on the same int8 model, as the tflite target's is checked (its arena measured
        when it opens: this folder holds no C array of that model)."""
        from tapeout.runtime.io_map import mapped
        from tapeout.runtime.runners.tflm import TflmRunner

        return [mapped(TflmRunner(outdir / VERIFIED_MODEL), outdir)]

    def runner(self, outdir: Path) -> Runner:
        from tapeout.runtime.io_map import mapped
        from tapeout.runtime.runners.litert import LiteRTRunner

        # The int8 model Vela consumed, with source names and layouts (tapeout_io.json).
        return mapped(LiteRTRunner(outdir / VERIFIED_MODEL), outdir)


def _placement_note(run: vela.Result, cpu: list[dict[str, Any]], npu_types: list[str]) -> str:
    total = len(run.layers)
    head = (f"Vela placement: {len(run.npu)} of {total} operator(s) on the NPU ({', '.join(npu_types) or 'none'})")
    if not cpu:
        return f"{head}, none on the CPU"
    return f"{head}; on the CPU: " + "; ".join(f"{c['op']} '{c['name']}' ({c['reason']})" for c in cpu)
