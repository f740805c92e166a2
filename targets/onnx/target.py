"""The "onnx" target: one fp32 model.onnx, run by onnxruntime."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Graph
from tapeout.runtime.protocol import Runner
from tapeout.targets.base import EmitContext, EmitResult, Target, TargetOptions

# emit.MIN_OPSET, repeated here because emit imports onnx (`tapeout --help` stays light); a test
# holds the two equal.
DEFAULT_OPSET = 17


def check_opset(target: str, opset: int) -> None:
    """Refuse an opset the emitter cannot write, when the target is built rather than at emit."""
    newest = None
    if importlib.util.find_spec("onnx") is not None:
        import onnx.defs

        newest = onnx.defs.onnx_opset_version()
    if opset < DEFAULT_OPSET or (newest is not None and opset > newest):
        raise UsageError(f"{target}: option opset: {opset} is not supported; use {DEFAULT_OPSET}.."
                         f"{newest if newest is not None else ''}")


@dataclass(frozen=True)
class OnnxOptions(TargetOptions):
    opset: int = DEFAULT_OPSET  # the ONNX default-domain opset written

    def checked(self, target: str, variant: str | None) -> OnnxOptions:
        check_opset(target, self.opset)
        return self


class OnnxTarget(Target):
    name = "onnx"
    variants = ("fp32", "int8")
    default_variant = "fp32"
    io_layouts = ("source", "channels-last")
    requires = ("onnx", "onnxruntime")
    Options = OnnxOptions
    opts: OnnxOptions
    description = ("ONNX model (opset 17, source I/O layout): float32, or int8 QDQ from the IR's "
                   "calibration; verified with onnxruntime")

    @classmethod
    def quant_scheme(cls, variant: str) -> str | None:
        return "int8" if variant == "int8" else None

    def emit(self, graph: Graph, ctx: EmitContext) -> EmitResult:
        outdir = ctx.outdir
        # onnx is imported here, not at module level, so `tapeout --help` stays light.
        from tapeout.targets.onnx.emit import graph_to_onnx

        from tapeout.targets.io import artifact_graph, io_map

        opset = self.opts.opset
        source, graph = graph, artifact_graph(graph, self.io_layout)
        io_map(source, graph).write(outdir)  # ONNX keeps every name; --io-layout may move channels last
        values: dict = {}  # IR value -> ONNX tensor, for the per-layer trace (tapeout_trace.json)
        if self.variant == "int8":
            from tapeout.targets.onnx.qdq import graph_to_qdq

            model = graph_to_qdq(graph, opset=opset, values=values)
        else:
            model = graph_to_onnx(graph, opset=opset, values=values)
        (outdir / "model.onnx").write_bytes(model.SerializeToString())
        from tapeout.targets.trace_maps import onnx_map

        onnx_map(graph, model, values).write(outdir)
        transposes = sum(n.op_type == "Transpose" for n in model.graph.node)
        layouts = ", ".join(f"{k}={graph.io_layouts[k]}" for k in [*graph.inputs, *graph.outputs]
                            if k in graph.io_layouts)
        notes = [f"opset {opset}, {len(model.graph.node)} nodes, channels-first inside",
                 f"{transposes} Transpose node(s)"]
        if layouts:
            kept = graph is source
            notes.append(f"I/O layouts {'kept from the source' if kept else '(--io-layout channels-last)'}: {layouts}")
        extra = {"opset": opset, "transposes": transposes}
        if self.variant == "int8":
            pairs = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
            weights = sum(n.op_type == "DequantizeLinear" for n in model.graph.node) - pairs
            notes.append(f"QDQ from the IR's int8 annotations: {pairs} quantized activation(s), "
                         f"{weights} integer constant(s)")
            from tapeout.compiler.passes.quantize import always_float_nodes

            lrns = always_float_nodes(graph)
            if lrns:  # the quantize pass keeps them float
                notes.append(f"{len(lrns)} LRN node(s) run in float between DequantizeLinear and QuantizeLinear "
                             f"(onnxruntime has no integer LRN): {', '.join(lrns)}")
            extra["qdq"] = {"activations": pairs, "constants": weights}
        return EmitResult(["model.onnx"], notes, extra=extra)

    def runner(self, outdir: Path) -> Runner:
        from tapeout.runtime.io_map import mapped
        from tapeout.runtime.runners.onnxrt import OnnxRuntimeRunner

        return mapped(OnnxRuntimeRunner(outdir / "model.onnx", lift_old=False), outdir)
