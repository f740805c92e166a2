"""Lower a Keras model (the IR's Keras form) plus a precision plan into an hls4ml project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tapeout.compiler.fixedpoint.model import PrecisionPlan, hls_layers
from tapeout.compiler.ir import Graph
from tapeout.targets.hls4ml.config import Hls4mlOptions, hls_config
from tapeout.targets.hls4ml.project import convert, write_manifest
from tapeout.targets.onnx.layout import is_channels_first


def lower(keras_model: Any, graph: Graph, plan: PrecisionPlan, outdir: Path, *, variant: str,
          options: Hls4mlOptions, names: dict[str, str] | None = None) -> Any:
    """Write the hls4ml project for ``keras_model`` (which computes ``graph``) into ``outdir``."""
    layers = hls_layers(graph)
    config = hls_config(layers, plan, options, names)
    model = convert(keras_model, config, outdir, variant=variant, part=options.part_for(variant),
                    clock_period=options.clock_period, io_type=options.io_type, trace=options.trace)
    def io(v: str) -> dict[str, Any]:
        # The C++ works channels-last (the IR's layout); a channels-first source input/output keeps
        # its layout at the runner's boundary: ``perm`` takes the source layout to the IR's.
        t = graph.type_of(v)
        shape = [int(d) for d in t.shape[1:]]
        entry: dict[str, Any] = {"name": v, "shape": shape}
        if t.rank >= 3 and is_channels_first(graph.io_layouts.get(v), t.rank):
            entry["shape"] = [shape[-1], *shape[:-1]]
            entry["layout"] = graph.io_layouts[v]
            entry["perm"] = [0, *range(2, t.rank), 1]
        return entry

    traced = [{"name": layer.name, "size": int(np.prod(layer.get_output_variable().shape))}
              for layer in model.get_layers()
              if layer.get_attr("function_cpp", None) and layer.get_attr("trace", False)]
    write_manifest(outdir, inputs=[io(i) for i in graph.inputs], outputs=[io(o) for o in graph.outputs],
                   trace=sorted(traced, key=lambda t: t["name"]))
    return model
