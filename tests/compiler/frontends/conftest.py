"""Helpers for the Keras front-end tests: save, load through tapeout, compare to Keras."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest


def _keras_outputs(model: Any, feeds: list[np.ndarray]) -> list[np.ndarray]:
    out = model(feeds if len(feeds) > 1 else feeds[0], training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


@pytest.fixture
def check_keras(tmp_path: Path) -> Callable:
    """Save a Keras 3 model to .keras, load it with load_keras and run it on random inputs.

    Returns the graph; asserts every output matches Keras within ``atol``.
    """
    from tapeout.compiler.frontends.keras import load_keras
    from tapeout.compiler.interpreter import run

    def check(model: Any, *, low: float = -2.0, high: float = 2.0, atol: float = 1e-4, batch: int = 2):
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        graph = load_keras(path)
        rng = np.random.default_rng(0)
        feeds = [rng.uniform(low, high, (batch, *tuple(t.shape)[1:])).astype(np.float32) for t in model.inputs]
        got = run(graph, dict(zip(graph.inputs, feeds)))
        want = _keras_outputs(model, feeds)
        assert len(graph.outputs) == len(want)
        for name, w in zip(graph.outputs, want):
            np.testing.assert_allclose(got[name], w, atol=atol, rtol=0, err_msg=f"output {name}")
        return graph

    return check
