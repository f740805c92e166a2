"""Runs an IR graph through the reference interpreter behind the common Runner protocol."""

from __future__ import annotations

import numpy as np

from tapeout.compiler import interpreter
from tapeout.compiler.ir import Graph
from tapeout.compiler.kernels import PRECISIONS
from tapeout.compiler.layout import is_channels_first, to_channels_first, to_channels_last
from tapeout.runtime.protocol import IOSpec, Runner


class ReferenceRunner(Runner):
    """The interpreter as a runner.

    With ``source_layout=True`` inputs are taken and outputs returned in the source
    model's layout recorded in ``graph.io_layouts`` (NCHW for most ONNX models), so the
    results compare directly with the source's runtime; by default tensors are in the
    IR's channels-last layout. ``precision="float64"`` runs the kernels in float64 (outputs
    float64; inputs are still specified and fed as the graph's dtypes).
    """

    name = "reference"

    def __init__(self, graph: Graph, *, source_layout: bool = False, precision: str = "float32") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
        self.graph = graph
        self.source_layout = source_layout
        self.precision = precision
        if precision != "float32":
            self.name = f"reference ({precision})"

    def _transposed(self, value: str) -> bool:
        rank = self.graph.type_of(value).rank
        return self.source_layout and is_channels_first(self.graph.io_layouts.get(value), rank)

    def input_specs(self) -> list[IOSpec]:
        specs = []
        for i in self.graph.inputs:
            t = self.graph.types[i]
            shape = tuple(t.shape)
            if self._transposed(i):
                shape = tuple(shape[a] for a in to_channels_first(len(shape)))
            specs.append(IOSpec(i, shape, t.dtype))
        return specs

    def output_names(self) -> list[str]:
        return list(self.graph.outputs)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.source_layout:
            feeds = {k: np.transpose(v, to_channels_last(np.ndim(v))) if k in self.graph.inputs and self._transposed(k)
                     else v for k, v in feeds.items()}
        out = interpreter.run(self.graph, feeds, precision=self.precision)
        if self.source_layout:
            out = {k: np.transpose(v, to_channels_first(v.ndim)) if self._transposed(k) else v for k, v in out.items()}
        return out
