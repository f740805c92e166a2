"""``--trace``: the reference side of the per-layer trace (``tapeout.runtime.trace`` measures).

The reference interpreter runs the graph each artifact was emitted from (quantization
annotations ignored: float32 kernels) with every intermediate kept; the artifact runs with the
tensors its ``tapeout_trace.json`` names exposed; both meet by IR value name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tapeout.compiler.ir import Graph
from tapeout.runtime.data import Dataset
from tapeout.runtime.errors import RuntimeInputError, RuntimeUnavailable, one_line
from tapeout.runtime.trace import TRACE_SAMPLES, TraceMap, collect, trace_report, untraced

# Targets whose artifacts cannot expose intermediates to tapeout's runners, and why.
UNTRACEABLE = {
    "tensorrt": "TensorRT engines do not expose intermediate tensors to tapeout's runner (an engine fuses "
                "and reorders layers, and needs a GPU to run)",
}
NO_MAP = "the artifact's folder holds no tapeout_trace.json (written by the onnx, tflite and hls4ml targets)"


# Both sides of the trace are held in memory at once (reference and artifact tensors): the
# number of samples traced is cut so that they stay within this many bytes.
MEMORY_BUDGET = 1 << 30


def trace_samples(graph: Graph, dataset: Dataset) -> int:
    """Samples traced: TRACE_SAMPLES at most, fewer when every intermediate of that many would not fit."""
    per_sample = sum(int(np.prod([int(d) for d in graph.type_of(o).shape[1:]])) for n in graph.nodes
                     for o in n.outputs if o in graph.types) * 4 * 2  # float32, reference and artifact
    fit = MEMORY_BUDGET // max(per_sample, 1)
    return int(max(1, min(TRACE_SAMPLES, fit, dataset.num_samples)))


def reference_values(graph: Graph, dataset: Dataset, samples: int | None = None) -> dict[str, np.ndarray]:
    """Every IR value of ``graph`` on the first ``samples`` of ``dataset`` (source-layout inputs), channels-last."""
    from tapeout.compiler import interpreter
    from tapeout.compiler.calibration import to_ir_layout

    samples = trace_samples(graph, dataset) if samples is None else samples
    feeds = to_ir_layout(graph, {k: v[:samples] for k, v in dataset.feeds.items() if k in graph.inputs})
    return interpreter.run(graph, feeds, keep_intermediates=True)


def trace_folder(folder: str | Path, graph: Graph, dataset: Dataset, target: str | None = None,
                 reference: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The report's "trace" entry for the artifact in ``folder`` emitted from ``graph``."""
    if target in UNTRACEABLE:
        return untraced(UNTRACEABLE[target])
    tmap = TraceMap.load(folder)
    if tmap is None:
        return untraced(NO_MAP)
    if reference is None:
        reference = reference_values(graph, dataset)
    try:
        got = collect(folder, tmap, dataset, samples=trace_samples(graph, dataset))
    except (RuntimeInputError, RuntimeUnavailable) as e:
        return untraced(f"the artifact could not be run with its intermediates exposed ({one_line(e)})")
    return trace_report(tmap, reference, got)


def graph_for_map(graph: Graph, tmap: TraceMap | None) -> Graph:
    """``tapeout verify``: the re-imported source's graph whose values the map names. A quantized
    artifact was emitted from the graph with activations split off (``dense/softmax``)."""
    if tmap is None or all(t.name in graph.types for t in tmap.tensors):
        return graph
    from tapeout.compiler.passes.quantize import integer_graph

    return integer_graph(graph)[0]


def trace_artifact(artifact: str | Path, graph: Graph, dataset: Dataset) -> dict[str, Any]:
    """``tapeout verify SOURCE ARTIFACT --trace``: ``graph`` is the source after the default passes."""
    path = Path(artifact)
    folder = path if path.is_dir() else path.parent
    if path.suffix.lower() == ".plan" or (folder / "plan.json").is_file():  # a tensorrt target's folder
        return untraced(UNTRACEABLE["tensorrt"])
    tmap = TraceMap.load(folder)
    if tmap is None:
        return untraced(NO_MAP)
    if not path.is_dir() and (folder / tmap.artifact).resolve() != path.resolve():
        return untraced(f"{folder}/tapeout_trace.json describes {tmap.artifact}, not {path.name}")
    graph = graph_for_map(graph, tmap)
    missing = [t.name for t in tmap.tensors if t.name not in graph.types]
    result = trace_folder(folder, graph, dataset)
    if missing and result["untraced"] is None:
        result["untraced"] = (f"{len(missing)} of {len(tmap.tensors)} traced tensors (e.g. {missing[0]}) are not "
                              "values of the source's graph as re-imported here")
    return result
