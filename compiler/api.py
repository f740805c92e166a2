"""The Python API behind the CLI: compile, inspect, verify.

Each call returns an object (the CLI only prints it), raises the errors of
``tapeout.compiler.errors`` for user mistakes, and never prints. The work itself is done by the
stages in ``compiler/stages/`` (load, passes, quantize, emit, verify, report), run in order by
``stages.compile``; ``compile_model`` only turns its arguments into a ``BuildSpec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tapeout.compiler.frontends.loader import SourceInfo, load_model
from tapeout.compiler.ir import Graph
from tapeout.compiler.ops import graph_macs, graph_params, node_macs
from tapeout.compiler.quiet import quiet_environment
from tapeout.compiler.report import CompileReport
from tapeout.compiler.stages.report import graph_summary
from tapeout.compiler.stages.spec import BuildSpec, Progress, noop
from tapeout.compiler.stages.verify import (failing_artifacts, is_build_folder, primary_artifact, quantized_artifact,
                                            verify_artifact, verify_build)

__all__ = ["BuildSpec", "CompileReport", "InspectResult", "NodeRow", "compile_model", "failing_artifacts",
           "graph_summary", "inspect_model", "is_build_folder", "load_model", "primary_artifact",
           "quantized_artifact", "verify_artifact", "verify_build"]


# ---------------------------------------------------------------- inspect
@dataclass
class NodeRow:
    name: str
    op: str
    shape: str
    params: int
    macs: int


@dataclass
class InspectResult:
    graph: Graph
    source: SourceInfo
    rows: list[NodeRow]

    @property
    def totals(self) -> dict[str, int]:
        return {"nodes": len(self.rows), "params": graph_params(self.graph), "macs": graph_macs(self.graph)}

    def to_json(self) -> dict:
        return {
            "source": self.source.to_json(),
            "graph": graph_summary(self.graph),
            "nodes": [r.__dict__ for r in self.rows],
        }


def inspect_model(model: str | Path, weights: str | Path | None = None, *, optimize: bool = False) -> InspectResult:
    quiet_environment()
    graph, info = load_model(model, weights)
    if optimize:
        from tapeout.compiler.passes.registry import default_pipeline

        graph = default_pipeline().run(graph).graph
    rows = []
    for n in graph.nodes:
        params = sum(int(graph.constants[i].size) for i in n.inputs if i in graph.constants)
        shape = ", ".join(str(graph.type_of(o)) for o in n.outputs)
        rows.append(NodeRow(n.name, n.op, shape, params, node_macs(n, graph)))
    return InspectResult(graph, info, rows)


# --------------------------------------------------------------- compile
def compile_model(model: str | Path, targets: Sequence[str] = ("onnx",), outdir: str | Path = "out", *,
                  progress: Progress = noop, jobs: int = 1, cache: Any = None, **settings: Any) -> CompileReport:
    """Compile ``model`` for each target, verify every artifact against the source, write OUTDIR/report.json.

    Quantized targets (``Target.quant_scheme``) get the graph annotated by the quantize pass;
    those quantizing activations need ``calibration`` (a data file, or "synthetic"), which is
    run once through the reference interpreter (``calibration_method``, ``percentile``) so
    every such target shares the same ranges. ``keep_float`` names layers left in float.
    ``target_options`` maps a target name ("tflite") or one variant ("tflite:int8") to the
    keyword options its class takes (``Target(variant, **options)``); the variant's win.
    ``max_accuracy_drop`` (percentage points, needs labelled ``eval_data``) fails every
    quantized artifact that loses more top-1 accuracy; ``fallback`` keeps the most sensitive
    layers in float until that budget (or, without one, the cosine / top-1 agreement
    criteria) holds on the quantization simulation (``compiler.accuracy_control``).
    ``prune`` names a pruning pass run after the default passes (``passes.prune.parse_prune``);
    ``prune_exclude`` names conv/dense layers it leaves alone. ``io_layout`` ("source" or
    "channels-last", ``targets.io``) is the layout of a channels-first source's rank >= 3 inputs and
    outputs in every artifact; None: each target's default (tflite channels-last, others source).
    """
    from tapeout.compiler.stages.compile import compile_spec

    return compile_spec(BuildSpec.of(model, targets, outdir, **settings), progress, jobs=jobs, cache=cache)
