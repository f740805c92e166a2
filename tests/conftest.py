"""Session-wide test settings: quiet TensorFlow, deterministic NumPy."""

import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_cnn_path(tmp_path_factory) -> Path:
    """A small Keras 3 CNN (conv/bn/relu/pool/flatten/dense/softmax) saved as .keras."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.1, name="dropout")(x)
    out = keras.layers.Dense(5, activation="softmax", name="probabilities")(x)
    model = keras.Model(inp, out, name="tiny_cnn")
    # Non-trivial batch-norm statistics so folding it is really tested.
    bn = model.get_layer("bn1")
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.1, 4), rng.normal(0, 0.1, 4), rng.uniform(0.5, 2, 4)])
    path = tmp_path_factory.mktemp("models") / "tiny_cnn.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_eval_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("data") / "eval.npz"
    np.savez(path, x=rng.random((20, 8, 8, 1), dtype=np.float32), y=rng.integers(0, 5, 20))
    return path


# The build cache stays off in tests (a hit would skip the emit a test patches or times); the
# cache and build tests turn it on with their own TAPEOUT_CACHE_DIR.
os.environ["TAPEOUT_NO_CACHE"] = "1"
# hls4ml's precompiled header (about 115 MB) goes to a folder of this run, removed at exit, not to
# the user's ~/.cache; tests of the PCH itself set their own folder.
if not os.environ.get("TAPEOUT_HLS4ML_PCH_DIR"):
    import atexit
    import shutil
    import tempfile

    _pch = tempfile.mkdtemp(prefix="tapeout-test-pch-")
    os.environ["TAPEOUT_HLS4ML_PCH_DIR"] = _pch
    atexit.register(shutil.rmtree, _pch, True)
