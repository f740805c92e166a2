"""TFLite back-end tests: the Keras emitter's op cases, converted and run in LiteRT."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tapeout.compiler.ir import Graph


def _load(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


KERAS_TESTS = Path(__file__).resolve().parents[1] / "keras"


@pytest.fixture(scope="session")
def cases() -> ModuleType:
    """tests/targets/keras/op_cases.py (test folders are not packages)."""
    return _load("_tapeout_keras_op_cases", KERAS_TESTS / "op_cases.py")


@pytest.fixture(scope="session")
def keras_checks() -> ModuleType:
    return _load("_tapeout_keras_conftest", KERAS_TESTS / "conftest.py")


def convert_graph(graph: Graph, variant: str = "fp32") -> bytes:
    from tapeout.targets.tflite import convert

    traced, _ = convert.trace(graph)
    return convert.convert(traced, variant)


def run_tflite(data: bytes, feeds: dict[str, np.ndarray], tmp: Path) -> dict[str, np.ndarray]:
    from tapeout.runtime.runners.litert import LiteRTRunner

    path = tmp / "model.tflite"
    path.write_bytes(data)
    with LiteRTRunner(path) as runner:
        return runner.infer(feeds)


@pytest.fixture
def convert_fn():
    return convert_graph


@pytest.fixture
def run_fn():
    return run_tflite
