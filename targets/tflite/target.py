"""The "tflite" target: model.tflite (TensorFlow's converter on the emitted Keras model),
model.cc/model.h for TFLite Micro, verified with LiteRT."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Graph
from tapeout.compiler.version import __version__
from tapeout.runtime.compare import Tolerance
from tapeout.runtime.protocol import Runner
from tapeout.targets.base import EmitContext, EmitResult, QUANTIZED_TOLERANCE, Target, TargetOptions

FLOAT_INPUT_VARIANTS = ("fp32", "fp16", "dynamic")
INTEGER_VARIANTS = ("int8", "int16x8")
IO_TYPES = {"int8": ("float", "int8", "uint8"), "int16x8": ("float", "int16")}  # the first is the default
_SCHEMES = {"fp16": "fp16", "int8": "int8", "int16x8": "int16x8"}


def unsupported_nodes(graph: Graph, variant: str) -> list[str]:
    """Nodes this variant cannot express: 3D pooling (TFLite has no MAX/AVERAGE_POOL_3D builtin),
    LRN of an even size (TFLite's window has a radius);
    in int16x8, concat: TensorFlow's converter builds int16 CONCATENATION only in its own
    calibrating flow (with requantizing QUANTIZE ops), and refuses one from annotations."""
    out = [f"{n.name!r} ({n.op}, 3D): TFLite has no builtin 3D pooling op" for n in graph.nodes
           if n.op in ("max_pool", "avg_pool") and len(n.attrs["kernel"]) == 3]
    out += [f"{n.name!r} (lrn, size {n.attrs['size']}): LOCAL_RESPONSE_NORMALIZATION's window is symmetric, so "
            "an even ONNX size has no exact form" for n in graph.nodes
            if n.op == "lrn" and int(n.attrs["size"]) % 2 == 0]
    if variant == "int16x8":
        out += [f"{n.name!r} (concat): TensorFlow's converter has no int16 CONCATENATION from quantization "
                "annotations; tflite:int8 has one" for n in graph.nodes if n.op == "concat"]
    return out


@dataclass(frozen=True)
class TfliteOptions(TargetOptions):
    c_array: bool = True  # also write model.cc/model.h for TFLite Micro
    array_name: str | None = None  # the C array's name; None: g_<graph name>_model
    # Input/output type of the integer variants; None: float. Float variants ignore it (with a note).
    io: Literal["float", "int8", "uint8", "int16"] | None = None
    # Bytes added to the measured TFLite Micro arena in model.h (optimized kernels' scratch).
    arena_headroom: int = 0
    # Refuse (exit 2) a model TFLite Micro cannot run: ops it has no kernel for, types it refuses.
    mcu: bool = False

    def checked(self, target: str, variant: str | None) -> TfliteOptions:
        if self.arena_headroom < 0:
            raise UsageError(f"tflite: option arena_headroom: expected bytes >= 0, not {self.arena_headroom}")
        if self.array_name and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.array_name):
            raise UsageError(f"tflite: option array_name: {self.array_name!r} is not a C identifier")
        if self.io is not None and variant in IO_TYPES and self.io not in IO_TYPES[variant]:
            raise UsageError(f"tflite:{variant} takes --io {' or '.join(IO_TYPES[variant])}, not {self.io!r}")
        return self


class TfliteTarget(Target):
    name = "tflite"
    variants = ("fp32", "fp16", "dynamic", "int8", "int16x8")
    default_variant = "fp32"
    parallel_emit = False  # through Keras (Target.parallel_emit)
    # Channels-last by default: what TFLite and microcontroller users feed (no edge transposes).
    io_layouts = ("source", "channels-last")
    default_io_layout = "channels-last"
    requires = ("tensorflow", "keras")
    Options = TfliteOptions
    opts: TfliteOptions
    description = ("TFLite flatbuffer (+ C array for TFLite Micro): fp32, fp16 weights, dynamic-range int8 "
                   "weights, full int8, int16x8; verified with LiteRT")

    @classmethod
    def quant_scheme(cls, variant: str) -> str | None:
        return _SCHEMES.get(variant)

    @classmethod
    def default_tolerance(cls, variant: str) -> Tolerance | None:
        # fp16 and dynamic-range weights move every output a little, like int8: judge them alike.
        return None if variant == "fp32" else QUANTIZED_TOLERANCE

    def emit(self, graph: Graph, ctx: EmitContext) -> EmitResult:
        outdir = ctx.outdir
        # TensorFlow is imported by these modules' functions, not here: `tapeout targets` stays light.
        from tapeout.targets.tflite import convert
        from tapeout.targets.tflite.flatbuffer import read_model
        from tapeout.targets.tflite.arena import estimate_arena
        from tapeout.targets.tflite.microcontroller import c_identifier, write_c_array
        from tapeout.targets.tflite.micro_arena import measure

        refused = unsupported_nodes(graph, self.variant)
        if refused:
            raise UsageError(f"target tflite:{self.variant} cannot express node(s) {'; '.join(refused)}")
        from tapeout.targets.io import artifact_graph

        notes: list[str] = []
        extra: dict[str, Any] = {}
        # The graph as the model presents it: io_layouts say which inputs/outputs stay channels-first.
        agraph = artifact_graph(graph, self.io_layout)
        if self.variant in INTEGER_VARIANTS:
            data, traced = self._integer(agraph, notes, extra)
        else:
            if self.opts.io not in (None, "float"):
                notes.append(f"--io {self.opts.io} applies to the integer variants; "
                             f"tflite:{self.variant} keeps float inputs and outputs")
            traced, _ = convert.trace(agraph)
            data = convert.convert(traced, self.variant)
            notes += traced.keras.notes
        (outdir / "model.tflite").write_bytes(data)
        from tapeout.targets.trace_maps import tflite_map

        tflite_map(graph, data, traced.keras.layer_names).write(outdir)  # the per-layer trace's names
        info = read_model(data)
        io = self._io_map(graph, agraph, traced, info)
        io.write(outdir)
        renamed = [f"'{p.name}' -> '{p.artifact}'" for p in io.inputs if p.artifact != p.name]
        if renamed:
            notes.append(f"input(s) renamed as identifiers in the model's signature: {', '.join(renamed)} "
                         f"(tapeout_io.json maps them back)")
        moved = [p for p in (*io.inputs, *io.outputs) if p.perm is not None]
        if moved:
            notes.append(f"--io-layout {self.io_layout}: {', '.join(f'{p.name} {p.layout}' for p in moved)} "
                         f"(source {'/'.join(sorted({str(p.source_layout) for p in moved}))}); no transposes at "
                         "the model's edges")
        arena = estimate_arena(data)  # the analytic figure: a cross-check of the measured one, with its parts
        # TFLite Micro itself, on the bytes the C array holds: the arena measured, the model verified.
        micro = measure(data, self.variant, self.opts, arena.total) if self.opts.c_array or self.opts.mcu else None
        artifacts = ["model.tflite"]
        # Nothing here depends on what ran before in this process (the trace cache): reports of
        # identical builds must be identical. The sharing shows in the variants' seconds.
        notes[:0] = [f"{len(info.ops)} ops: " + ", ".join(f"{k} x{v}" if v > 1 else k
                                                          for k, v in info.op_counts().items())]
        fused = [f"{o.op}+{o.fused_activation}" for o in info.ops if o.fused_activation not in (None, "NONE")]
        if fused:
            notes.append(f"{len(fused)} fused activation(s): {', '.join(sorted(set(fused)))}")
        extra.update({"ops": len(info.ops), "arena_bytes_estimate": arena.total,
                      "arena_activation_bytes": arena.activations, "arena_estimate": arena.to_json()})
        if micro is not None:
            extra["tflite_micro"] = micro.to_json()
            notes.append(micro.note())
        if self.opts.c_array:
            array = self.opts.array_name or f"g_{c_identifier(graph.name)}_model"
            note = f"{graph.name} for TFLite Micro: tflite:{self.variant} by tapeout {__version__}"
            figures = micro.figures if micro is not None else None
            artifacts += write_c_array(data, outdir, array, note, figures)
            extra["c_array"] = array
            notes.append(f"C array {array} in model.cc/model.h" + (
                f"; tensor arena {figures.constant} bytes (measured in TFLite Micro)" if figures else ""))
        return EmitResult(artifacts, notes, extra, size_artifacts=["model.tflite"])

    @staticmethod
    def _io_map(graph: Graph, agraph: Graph, traced: Any, info: Any) -> Any:
        """Source names/layouts -> the model signature's, checked against the converted file."""
        from tapeout.targets.io import io_map
        from tapeout.targets.tflite.convert import ConversionError

        io = io_map(graph, agraph, dict(zip(graph.inputs, traced.input_names)))
        for kind, ports in (("inputs", io.inputs), ("outputs", io.outputs)):
            found = info.signature[kind]
            if sorted(found) != sorted(p.artifact for p in ports):
                raise ConversionError(f"the converted model's signature {kind} are {sorted(found)}, not the "
                                      f"{sorted(p.artifact for p in ports)} tapeout named")
            for p in ports:
                have = info.tensors[found[p.artifact]].shape
                if list(have[1:]) != list(p.shape[1:]):
                    raise ConversionError(f"the converted model's {kind[:-1]} {p.artifact!r} has shape {list(have)}, "
                                          f"not the {p.layout} {list(p.shape)} tapeout built")
        return io

    def _integer(self, graph: Graph, notes: list[str], extra: dict[str, Any]) -> tuple[bytes, Any]:
        """int8 / int16x8 from the quantize pass's annotations (see quantized.py)."""
        from tapeout.compiler.passes.quantize import always_float_nodes
        from tapeout.targets.tflite import convert
        from tapeout.targets.tflite.quantized import align, widen_int16_biases

        q = graph.quant
        if q is None or q.scheme != self.variant:
            raise UsageError(f"tflite:{self.variant} needs the graph annotated by the quantize pass "
                             f"(scheme {self.variant}); compile_model runs it with --calibration")
        io = self.opts.io or IO_TYPES[self.variant][0]
        traced, _ = convert.trace(graph, integer=True)
        data = convert.convert(traced, self.variant, io)
        widened = 0
        if self.variant == "int16x8":
            data, widened = widen_int16_biases(data)
        data, found = align(data, graph)
        if found.unmatched:
            raise convert.ConversionError(
                f"tflite:{self.variant}: the converter gave {len(found.unmatched)} tensor(s) quantization "
                f"parameters the IR's annotations do not hold, e.g. {found.unmatched[0]}")
        notes.append(f"{self.variant} from the IR's annotations (fake-quant ranges, no converter calibration): "
                     f"{found.activations} activation and {found.constants} constant tensor(s) carry the "
                     f"annotated scales and zero points; {io} inputs and outputs")
        if found.widened:
            notes.append(f"{len(found.widened)} activation range(s) narrower than 1e-6 (dead layers) were widened "
                         f"by TensorFlow's quantizer, which cannot represent them; e.g. {found.widened[0]}")
        if found.fixed:
            notes.append(f"{len(found.fixed)} softmax/sigmoid/tanh output(s) kept float in the IR were quantized by "
                         f"TensorFlow's converter with TFLite's fixed output scale anyway; e.g. {found.fixed[0]}")
        if widened:
            notes.append(f"{widened} int32 bias(es) the converter wrote widened to int64 (the 16x8 scheme's)")
        if found.float_ops:
            notes.append(f"left in float by the converter: {', '.join(sorted(set(found.float_ops)))}")
        # fixed_quant nodes (QAT quantizers) run as float ops by design; only the rest were the user's --keep-float.
        quantizers = [n.name for n in graph.nodes if n.op == "fixed_quant" and n.name in q.float_nodes]
        lrns = always_float_nodes(graph)
        requested = [n for n in q.float_nodes if n not in set(quantizers) | set(lrns)]
        if requested:
            notes.append(f"kept float by request: {', '.join(requested)}")
        if lrns:
            notes.append(f"{len(lrns)} LRN node(s) run in float between dequantize and quantize (TFLite has no "
                         f"integer LOCAL_RESPONSE_NORMALIZATION): {', '.join(lrns)}")
        if quantizers:
            notes.append(f"{len(quantizers)} trained quantizer(s) (fixed_quant) run as float ops between the integer "
                         f"layers, their grids setting the int8 scales where they fit; e.g. {quantizers[0]}")
        notes += traced.keras.notes
        extra["io"] = io
        extra["quantized_tensors"] = {"activations": found.activations, "constants": found.constants,
                                      "exact_scales_set": found.exact_set, "widened": len(found.widened),
                                      "fixed_outputs_quantized": len(found.fixed),
                                      "float_ops": len(found.float_ops)}
        return data, traced

    def cross_runners(self, outdir: Path, extra: Mapping[str, Any]) -> list[Runner]:
        """TFLite Micro, in the arena model.h declares, when it could run this variant."""
        arena = (extra.get("tflite_micro") or {}).get("arena_bytes")
        if arena is None:
            return []
        from tapeout.runtime.io_map import mapped
        from tapeout.runtime.runners.tflm import TflmRunner

        return [mapped(TflmRunner(outdir / "model.tflite", int(arena)), outdir)]

    def runner(self, outdir: Path) -> Runner:
        from tapeout.runtime.io_map import mapped
        from tapeout.runtime.runners.litert import LiteRTRunner

        # Source names and layouts in and out: the folder's tapeout_io.json maps them.

        return mapped(LiteRTRunner(outdir / "model.tflite"), outdir)
