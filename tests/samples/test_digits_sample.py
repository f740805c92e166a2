"""The bundled digits CNN sample: the model loads safely, has the documented
interface, still classifies its held-out eval set, and the data files match README."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "digits_cnn"


@pytest.fixture(scope="module")
def model():
    import keras

    return keras.saving.load_model(SAMPLE / "model.keras", safe_mode=True)


@pytest.fixture(scope="module")
def eval_data() -> dict[str, np.ndarray]:
    with np.load(SAMPLE / "eval.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def calibration_data() -> dict[str, np.ndarray]:
    with np.load(SAMPLE / "calibration.npz") as data:
        return dict(data)


def test_model_interface(model):
    assert len(model.inputs) == 1 and len(model.outputs) == 1
    assert model.inputs[0].name == "image"
    assert tuple(model.inputs[0].shape) == (None, 8, 8, 1)
    assert model.layers[-1].name == "probabilities"
    assert tuple(model.outputs[0].shape) == (None, 10)


def test_outputs_are_probabilities(model, calibration_data):
    probs = model.predict(calibration_data["x"][:16], verbose=0)
    assert np.all(probs >= 0.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_eval_accuracy(model, eval_data):
    probs = model.predict(eval_data["x"], batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == eval_data["y"]))
    assert accuracy >= 0.9, f"eval accuracy {accuracy:.4f}"


@pytest.mark.parametrize("name, count", [("eval", 360), ("calibration", 200)])
def test_npz_layout(name, count, eval_data, calibration_data):
    data = {"eval": eval_data, "calibration": calibration_data}[name]
    assert set(data) == {"x", "y"}
    x, y = data["x"], data["y"]
    assert x.dtype == np.float32 and x.shape == (count, 8, 8, 1)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.dtype == np.int64 and y.shape == (count,)
    assert set(np.unique(y)) == set(range(10))


def _train_script():
    """Import samples/digits_cnn/train.py by path: samples/ is not a package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_train", SAMPLE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_data_matches_training_split(eval_data, calibration_data):
    splits = _train_script().load_splits()
    for name, data in (("eval", eval_data), ("calibration", calibration_data)):
        np.testing.assert_array_equal(data["x"], splits[name][0])
        np.testing.assert_array_equal(data["y"], splits[name][1])
    # load_digits has no duplicate images, so any shared row would be a leak.
    seen = {row.tobytes() for row in splits["train"][0]}
    for name in ("eval", "calibration"):
        assert not any(row.tobytes() in seen for row in splits[name][0]), name
    assert not {row.tobytes() for row in eval_data["x"]} & {
        row.tobytes() for row in calibration_data["x"]
    }
