"""The "onnx" target: one fp32 model.onnx, run by onnxruntime."""

from __future__ import annotations

from pathlib import Path

from tapeout.compiler.ir import Graph
from tapeout.runtime.protocol import Runner
from tapeout.targets.base import EmitResult, Target


class OnnxTarget(Target):
    name = "onnx"
    variants = ("fp32", "int8")
    default_variant = "fp32"
    requires = ("onnx", "onnxruntime")
    description = ("ONNX model (opset 17, source I/O layout): float32, or int8 QDQ from the IR's "
                   "calibration; verified with onnxruntime")

    @classmethod
    def quant_scheme(cls, variant: str) -> str | None:
        return "int8" if variant == "int8" else None

    def emit(self, graph: Graph, outdir: Path) -> EmitResult:
        # onnx is imported here, not at module level, so `tapeout --help` stays light.
        from tapeout.targets.onnx.emit import MIN_OPSET, graph_to_onnx

        opset = int(self.options.get("opset", MIN_OPSET))
        if self.variant == "int8":
            from tapeout.targets.onnx.qdq import graph_to_qdq

            model = graph_to_qdq(graph, opset=opset)
        else:
            model = graph_to_onnx(graph, opset=opset)
        (outdir / "model.onnx").write_bytes(model.SerializeToString())
        transposes = sum(n.op_type == "Transpose" for n in model.graph.node)
        layouts = ", ".join(f"{k}={graph.io_layouts[k]}" for k in [*graph.inputs, *graph.outputs]
                            if k in graph.io_layouts)
        notes = [f"opset {opset}, {len(model.graph.node)} nodes, channels-first inside",
                 f"{transposes} Transpose node(s)"]
        if layouts:
            notes.append(f"I/O layouts kept from the source: {layouts}")
        extra = {"opset": opset, "transposes": transposes}
        if self.variant == "int8":
            pairs = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
            weights = sum(n.op_type == "DequantizeLinear" for n in model.graph.node) - pairs
            notes.append(f"QDQ from the IR's int8 annotations: {pairs} quantized activation(s), "
                         f"{weights} integer constant(s)")
            extra["qdq"] = {"activations": pairs, "constants": weights}
        return EmitResult(["model.onnx"], notes, extra=extra)

    def runner(self, outdir: Path) -> Runner:
        from tapeout.runtime.runners.onnxrt import OnnxRuntimeRunner

        return OnnxRuntimeRunner(outdir / "model.onnx")
