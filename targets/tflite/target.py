"""The "tflite" target: model.tflite (TensorFlow's converter on the emitted Keras model),
model.cc/model.h for TFLite Micro, verified with LiteRT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Graph
from tapeout.compiler.version import __version__
from tapeout.runtime.compare import Tolerance
from tapeout.runtime.protocol import Runner
from tapeout.targets.base import QUANTIZED_TOLERANCE, EmitResult, Target

FLOAT_INPUT_VARIANTS = ("fp32", "fp16", "dynamic")
_SCHEMES = {"fp16": "fp16", "int8": "int8", "int16x8": "int16x8"}


def unsupported_nodes(graph: Graph) -> list[str]:
    """Nodes TFLite's builtin op set cannot run: 3D pooling (no MAX/AVERAGE_POOL_3D builtin)."""
    return [f"{n.name!r} ({n.op}, 3D)" for n in graph.nodes
            if n.op in ("max_pool", "avg_pool") and len(n.attrs["kernel"]) == 3]


class TfliteTarget(Target):
    name = "tflite"
    variants = ("fp32", "fp16", "dynamic", "int8", "int16x8")
    default_variant = "fp32"
    requires = ("tensorflow", "keras")
    description = ("TFLite flatbuffer (+ C array for TFLite Micro): fp32, fp16 weights, dynamic-range int8 "
                   "weights, full int8, int16x8; verified with LiteRT")

    def __init__(self, variant: str | None = None, **options: Any) -> None:
        super().__init__(variant, **options)
        unknown = set(options) - {"c_array", "array_name"}
        if unknown:
            raise UsageError(f"target tflite has no option(s) {', '.join(sorted(unknown))}; "
                             "options: c_array, array_name")

    @classmethod
    def quant_scheme(cls, variant: str) -> str | None:
        return _SCHEMES.get(variant)

    @classmethod
    def default_tolerance(cls, variant: str) -> Tolerance | None:
        # fp16 and dynamic-range weights move every output a little, like int8: judge them alike.
        return None if variant == "fp32" else QUANTIZED_TOLERANCE

    def emit(self, graph: Graph, outdir: Path) -> EmitResult:
        # TensorFlow is imported by these modules' functions, not here: `tapeout targets` stays light.
        from tapeout.targets.tflite import convert
        from tapeout.targets.tflite.flatbuffer import read_model
        from tapeout.targets.tflite.microcontroller import c_identifier, estimate_arena, write_c_array

        if self.variant not in FLOAT_INPUT_VARIANTS:
            raise UsageError(f"tflite:{self.variant} is not available yet; use one of "
                             f"{', '.join('tflite:' + v for v in FLOAT_INPUT_VARIANTS)}")
        refused = unsupported_nodes(graph)
        if refused:
            raise UsageError(f"target tflite cannot express node(s) {', '.join(refused)}: TFLite has no "
                             "builtin 3D pooling op")
        traced, _ = convert.trace(graph)
        data = convert.convert(traced, self.variant)
        (outdir / "model.tflite").write_bytes(data)
        info = read_model(data)
        arena = estimate_arena(info)
        artifacts = ["model.tflite"]
        # Nothing here depends on what ran before in this process (the trace cache): reports of
        # identical builds must be identical. The sharing shows in the variants' seconds.
        notes = [f"{len(info.ops)} ops: " + ", ".join(f"{k} x{v}" if v > 1 else k
                                                      for k, v in info.op_counts().items())]
        fused = [f"{o.op}+{o.fused_activation}" for o in info.ops if o.fused_activation not in (None, "NONE")]
        if fused:
            notes.append(f"{len(fused)} fused activation(s): {', '.join(sorted(set(fused)))}")
        notes += traced.keras.notes
        extra: dict[str, Any] = {"ops": len(info.ops), "arena_bytes_estimate": arena.total,
                                 "arena_activation_bytes": arena.activations}
        if self.options.get("c_array", True):
            array = str(self.options.get("array_name") or f"g_{c_identifier(graph.name)}_model")
            note = f"{graph.name} for TFLite Micro: tflite:{self.variant} by tapeout {__version__}"
            artifacts += write_c_array(data, outdir, array, note, arena)
            extra["c_array"] = array
            notes.append(f"C array {array} in model.cc/model.h; tensor arena estimate {arena.total} bytes")
        return EmitResult(artifacts, notes, extra, size_artifacts=["model.tflite"])

    def runner(self, outdir: Path) -> Runner:
        from tapeout.runtime.runners.litert import LiteRTRunner

        return LiteRTRunner(outdir / "model.tflite")
