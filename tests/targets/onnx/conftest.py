"""Helpers for the ONNX back-end tests: hand-built IR graphs, and a check that runs a graph
through the reference interpreter and the emitted model in onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tapeout.compiler.ir import BATCH, Graph, Node, TensorType
from tapeout.compiler.ops import infer_node
from tapeout.compiler.layout import is_channels_first, to_channels_first, to_channels_last


class GraphMaker:
    """Builds a typed IR graph node by node; every node's output is named like the node."""

    def __init__(self, **inputs: tuple[tuple[int, ...], str]) -> None:
        """``inputs``: name -> (shape without batch, source layout)."""
        self.g = Graph("test", inputs=list(inputs), outputs=[])
        for name, (shape, layout) in inputs.items():
            self.g.types[name] = TensorType((BATCH, *shape))
            self.g.io_layouts[name] = layout
        self.rng = np.random.default_rng(7)

    def const(self, shape: tuple[int, ...], scale: float = 0.5, offset: float = 0.0) -> str:
        data = (self.rng.standard_normal(shape) * scale + offset).astype(np.float32)
        return self.g.add_constant("w", data)

    def shape(self, value: str) -> tuple:
        return self.g.type_of(value).shape

    def node(self, op: str, *inputs: str, **attrs: Any) -> str:
        name = self.g.unique_name(op)
        n = Node(op, name, list(inputs), [name], attrs)
        self.g.nodes.append(n)
        self.g.types[name] = infer_node(n, [self.g.type_of(i) for i in inputs], self.g)[0]
        return name

    def conv(self, x: str, filters: int, kernel: tuple[int, ...], groups: int = 1, bias: bool = True,
             **attrs: Any) -> str:
        c = self.shape(x)[-1]
        w = self.const((*kernel, c // groups, filters))
        ins = [x, w, self.const((filters,))] if bias else [x, w]
        return self.node("conv", *ins, groups=groups, **attrs)

    def dense(self, x: str, units: int, bias: bool = True, **attrs: Any) -> str:
        w = self.const((self.shape(x)[-1], units))
        return self.node("dense", *([x, w, self.const((units,))] if bias else [x, w]), **attrs)

    def done(self, *outputs: str, layouts: dict[str, str] | None = None) -> Graph:
        self.g.outputs = list(outputs)
        self.g.io_layouts.update(layouts or {})
        self.g.check()
        return self.g


def logical_to_onnx(graph: Graph, name: str, array: np.ndarray) -> np.ndarray:
    if is_channels_first(graph.io_layouts.get(name), array.ndim):
        return array.transpose(to_channels_first(array.ndim))
    return array


def onnx_to_logical(graph: Graph, name: str, array: np.ndarray) -> np.ndarray:
    if is_channels_first(graph.io_layouts.get(name), array.ndim):
        return array.transpose(to_channels_last(array.ndim))
    return array


def check_against_reference(graph: Graph, *, opset: int = 17, batches: tuple[int, ...] = (1, 5),
                            tol: float = 1e-5):
    """Emit, run the ONNX checker, and match onnxruntime to the interpreter on each batch size."""
    import onnx
    import onnxruntime as ort

    from tapeout.compiler.interpreter import run
    from tapeout.targets.onnx.emit import graph_to_onnx

    model = graph_to_onnx(graph, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == graph.inputs
    assert [o.name for o in session.get_outputs()] == graph.outputs
    rng = np.random.default_rng(1)
    for batch in batches:
        feeds = {i: rng.standard_normal((batch, *graph.types[i].shape[1:])).astype(np.float32)
                 for i in graph.inputs}
        want = run(graph, feeds)
        got = session.run(None, {i: logical_to_onnx(graph, i, a) for i, a in feeds.items()})
        for name, array in zip(graph.outputs, got):
            np.testing.assert_allclose(onnx_to_logical(graph, name, array), want[name], rtol=tol, atol=tol,
                                       err_msg=f"output {name!r}, batch {batch}")
    return model


@pytest.fixture
def maker():
    return GraphMaker


@pytest.fixture
def check():
    return check_against_reference
