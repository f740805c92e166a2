"""KerasRunner on tiny Keras 3 (.keras) and tf_keras (.h5, .json + weights) models with known weights."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.protocol import IOSpec
from tapeout.runtime.runners.keras import KerasRunner

W = np.array([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]], np.float32)
B = np.array([0.25, -0.5], np.float32)


def _dense(x: np.ndarray) -> np.ndarray:
    return x @ W + B


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Models computing dense(x) (and relu(x) as a second Keras 3 output), with W and B above."""
    pytest.importorskip("tensorflow")
    import keras
    import tf_keras

    folder = tmp_path_factory.mktemp("keras_models")
    inp = keras.Input((3,), name="features")
    dense = keras.layers.Dense(2, name="scores")
    model = keras.Model(inp, [dense(inp), keras.layers.ReLU(name="rectified")(inp)])
    dense.set_weights([W, B])
    model.save(folder / "two_out.keras")

    seq = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="last")])
    seq.layers[-1].set_weights([W, B])
    seq.save(folder / "seq.keras")

    lam = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: t * 2.0)])
    lam.save(folder / "lambda.keras")

    legacy_in = tf_keras.Input((3,), name="x_in")
    legacy_dense = tf_keras.layers.Dense(2, name="logits")
    legacy = tf_keras.Model(legacy_in, legacy_dense(legacy_in))
    legacy_dense.set_weights([W, B])
    with warnings.catch_warnings():  # HDF5 is legacy, and that is the point here
        warnings.simplefilter("ignore")
        legacy.save(folder / "legacy.h5")
    (folder / "arch.json").write_text(legacy.to_json())
    legacy.save_weights(folder / "arch.weights.h5")
    (folder / "broken.keras").write_bytes(b"PK\x03\x04 not really a zip")
    return {p.name: p for p in folder.iterdir()}


X = np.array([[1.0, 2.0, -3.0], [0.0, -1.0, 0.5]])


def test_keras3_functional_two_outputs(models) -> None:
    with KerasRunner(models["two_out.keras"]) as runner:
        assert runner.name == "keras"
        assert runner.input_specs() == [IOSpec("features", ("N", 3), "float32")]
        assert runner.output_names() == ["scores", "rectified"]
        got = runner.infer({"features": X})
    np.testing.assert_allclose(got["scores"], _dense(X), rtol=1e-6)
    np.testing.assert_allclose(got["rectified"], np.maximum(X, 0))


def test_keras3_sequential_names_come_from_layers(models) -> None:
    runner = KerasRunner(models["seq.keras"])
    (spec,) = runner.input_specs()
    assert runner.output_names() == ["last"]
    assert not spec.name.startswith("keras_tensor")  # the InputLayer's name, not a tensor id
    np.testing.assert_allclose(runner.infer({spec.name: X})["last"], _dense(X), rtol=1e-6)


def test_legacy_h5(models) -> None:
    with KerasRunner(models["legacy.h5"]) as runner:
        assert runner.input_specs() == [IOSpec("x_in", ("N", 3), "float32")]
        assert runner.output_names() == ["logits"]
        np.testing.assert_allclose(runner.infer({"x_in": X})["logits"], _dense(X), rtol=1e-6)


def test_json_with_weights(models) -> None:
    with KerasRunner(models["arch.json"], weights=models["arch.weights.h5"]) as runner:
        assert runner.output_names() == ["logits"]
        np.testing.assert_allclose(runner.infer({"x_in": X})["logits"], _dense(X), rtol=1e-6)


@pytest.mark.parametrize(("name", "weights", "message"), [
    ("arch.json", None, "needs its weights"),
    ("legacy.h5", "arch.weights.h5", "architecture .json only"),
    ("broken.keras", None, "not a Keras 3 .keras archive"),
    ("lambda.keras", None, "does not execute code"),  # runtime.model_files refuses it before Keras reads it
    ("absent.keras", None, "no such file"),
])
def test_load_errors_are_one_line(models, name: str, weights: str | None, message: str) -> None:
    path = models.get(name, Path("/nonexistent") / name)
    with pytest.raises(RuntimeInputError, match=message) as info:
        KerasRunner(path, weights=models[weights] if weights else None).open()
    assert "\n" not in str(info.value)


def test_bad_feeds(models) -> None:
    with KerasRunner(models["legacy.h5"]) as runner:
        with pytest.raises(RuntimeInputError, match="no data for input"):
            runner.infer({"wrong": X})
        with pytest.raises(RuntimeInputError, match="could not run"):
            runner.infer({"x_in": np.zeros((2, 5))})
