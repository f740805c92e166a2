"""Keras emitter tests: the shared op cases and a check that runs a graph through the
reference interpreter and the emitted Keras model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tapeout.compiler.ir import Graph
from tapeout.compiler.layout import is_channels_first, to_channels_first, to_channels_last


def load_cases() -> ModuleType:
    """tests/targets/keras/op_cases.py, loaded once by path (test folders are not packages)."""
    name = "_tapeout_keras_op_cases"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("op_cases.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def to_source_layout(graph: Graph, name: str, array: np.ndarray) -> np.ndarray:
    if is_channels_first(graph.io_layouts.get(name), array.ndim):
        return array.transpose(to_channels_first(array.ndim))
    return array


def from_source_layout(graph: Graph, name: str, array: np.ndarray) -> np.ndarray:
    if is_channels_first(graph.io_layouts.get(name), array.ndim):
        return array.transpose(to_channels_last(array.ndim))
    return array


def check_keras(graph: Graph, *, batches: tuple[int, ...] = (1, 5), tol: float = 1e-5):
    """Emit ``graph`` as Keras and match the model to the interpreter on each batch size."""
    from tapeout.compiler.interpreter import run
    from tapeout.targets.keras.emit import graph_to_keras

    cases = load_cases()
    emitted = graph_to_keras(graph)
    model = emitted.model
    assert model.inputs[0].shape[0] is None, "the batch dimension must stay dynamic"
    for batch in batches:
        feeds = cases.feeds_for(graph, batch)
        want = run(graph, feeds)
        args = [to_source_layout(graph, i, feeds[i]) for i in graph.inputs]
        got = model(args[0] if len(args) == 1 else args, training=False)
        got = got if isinstance(got, (list, tuple)) else [got]
        assert len(got) == len(graph.outputs)
        for name, array in zip(graph.outputs, got):
            np.testing.assert_allclose(from_source_layout(graph, name, np.asarray(array)), want[name],
                                       rtol=tol, atol=tol, err_msg=f"output {name!r}, batch {batch}")
    return emitted


@pytest.fixture(scope="session")
def cases() -> ModuleType:
    return load_cases()


@pytest.fixture
def check():
    return check_keras
