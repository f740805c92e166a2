"""Shared fixtures: small Keras models, their IR, a mixed precision plan, one C-sim build each."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tapeout.compiler.fixedpoint import LayerPrecision, PrecisionPlan, fixed, hls_layers
from tapeout.compiler.ir import Graph

pytest.importorskip("hls4ml")
pytest.importorskip("keras")


@dataclass
class Built:
    name: str
    graph: Graph
    plan: PrecisionPlan
    project: Path
    data: np.ndarray


def _models() -> dict[str, Any]:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    keras.utils.set_random_seed(3)
    L = keras.layers
    out: dict[str, Any] = {}
    x = keras.Input((16,), name="x")
    h = L.Dense(24, activation="relu", name="fc1")(x)
    h = L.Dense(12, activation="relu", name="fc2")(h)
    out["mlp"] = keras.Model(x, L.Dense(5, activation="softmax", name="fc3")(h), name="mlp")
    x = keras.Input((20, 3), name="x")
    h = L.Conv1D(6, 3, activation="relu", name="c1")(x)
    h = L.MaxPooling1D(2, name="p1")(h)
    h = L.Flatten(name="fl")(h)
    out["conv1d"] = keras.Model(x, L.Dense(4, activation="sigmoid", name="fc")(h), name="conv1d")
    x = keras.Input((8, 8, 2), name="x")
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    h = L.MaxPooling2D(2, name="p1")(h)
    h = L.Conv2D(4, 3, name="c2")(h)
    h = L.Flatten(name="fl")(h)
    out["conv2d"] = keras.Model(x, L.Dense(3, activation="tanh", name="fc")(h), name="conv2d")
    # Global pooling: average (a 36-cell sum in accum_t, then a division) and max, joined by an add.
    x = keras.Input((6, 6, 2), name="x")
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    h = L.Add(name="both")([L.GlobalAveragePooling2D(name="gap")(h), L.GlobalMaxPooling2D(name="gmp")(h)])
    out["global_pool"] = keras.Model(x, L.Dense(3, name="fc")(h), name="global_pool")
    return out


def mixed_plan(graph: Graph) -> PrecisionPlan:
    """Types that exercise the arithmetic: products wider than the accumulator (truncated),
    rounding and saturating results, a coarse input type."""
    plan = PrecisionPlan({i: fixed(12, 4) for i in graph.inputs})
    for k, layer in enumerate(hls_layers(graph)):
        if layer.kind in ("dense", "conv"):
            plan.layers[layer.name] = LayerPrecision(
                result=fixed(16, 6) if k % 2 else fixed(14, 5, "AP_RND", "AP_SAT"),
                weight=fixed(8, 1, "AP_RND"), bias=fixed(10, 3), accum=fixed(22, 9))
        elif layer.kind == "softmax":
            sat = fixed(18, 8, "AP_RND", "AP_SAT")
            plan.layers[layer.name] = LayerPrecision(result=fixed(16, 2), table=sat, inv_table=sat, accum=sat)
        elif layer.kind in ("sigmoid", "tanh"):
            plan.layers[layer.name] = LayerPrecision(result=fixed(12, 2), table=fixed(18, 8))
        else:
            plan.layers[layer.name] = LayerPrecision(result=fixed(12, 5, "AP_RND", "AP_SAT"), accum=fixed(16, 6))
    return plan


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, Built]:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.registry import default_pipeline
    from tapeout.targets.hls4ml.config import Hls4mlOptions
    from tapeout.targets.hls4ml.lower import lower
    from tapeout.targets.hls4ml.project import build_csim

    root = tmp_path_factory.mktemp("hls4ml")
    rng = np.random.default_rng(7)
    out: dict[str, Built] = {}
    for name, model in _models().items():
        path = root / f"{name}.keras"
        model.save(path)
        graph = default_pipeline().run(load_model(path)[0]).graph
        plan = mixed_plan(graph)
        project = root / name
        lower(model, graph, plan, project, variant="vitis", options=Hls4mlOptions())
        build_csim(project)
        shape = tuple(int(d) for d in graph.type_of(graph.inputs[0]).shape[1:])
        out[name] = Built(name, graph, plan, project, rng.normal(0, 2.0, (64, *shape)).astype(np.float32))
    return out


# ------------------------------------------------------- the bundled samples, compiled once
SAMPLES = Path(__file__).resolve().parents[3] / "samples"
SAMPLE_NAMES = ("jet_mlp", "conv1d_signals", "conv2d_shapes")


@pytest.fixture(scope="session")
def compiled_samples(tmp_path_factory) -> dict[str, Any]:
    """Each sample compiled with -t hls4ml (auto precision on its calibration data, verified in C
    simulation on its held-out eval data): name -> (report, output folder). Three C-sim builds."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    from tapeout.compiler.api import compile_model

    root = tmp_path_factory.mktemp("hls4ml-samples")
    out: dict[str, Any] = {}
    for name in SAMPLE_NAMES:
        d = SAMPLES / name
        report = compile_model(d / "model.keras", ["hls4ml"], root / name, calibration=d / "calibration.npz",
                               eval_data=d / "eval.npz")
        out[name] = (report, root / name)
    return out
