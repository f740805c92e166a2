"""Runs an IR graph through the reference interpreter behind the common Runner protocol."""

from __future__ import annotations

import numpy as np

from tapeout.compiler import interpreter
from tapeout.compiler.ir import Graph
from tapeout.runtime.protocol import IOSpec, Runner


class ReferenceRunner(Runner):
    name = "reference"

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph

    def input_specs(self) -> list[IOSpec]:
        specs = []
        for i in self.graph.inputs:
            t = self.graph.types[i]
            specs.append(IOSpec(i, tuple(t.shape), t.dtype))
        return specs

    def output_names(self) -> list[str]:
        return list(self.graph.outputs)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return interpreter.run(self.graph, feeds)
