"""Small HGQ2 models trained in the tests (issue 18): a jet-tagger-like MLP and a Conv2D model,
each with a float twin of the same architecture, on seeded synthetic data.

Shared by the front-end tests (tests/compiler/frontends/test_hgq2.py) and the hls4ml
end-to-end tests (tests/targets/hls4ml/test_hgq2_hls4ml.py). Importing this module imports
Keras but not HGQ2; the builders import ``hgq`` submodules (never the ``qkeras`` shim).
"""

from __future__ import annotations

from typing import Any

import numpy as np

JET_FEATURES, JET_CLASSES = 16, 5
IMAGE_SHAPE = (8, 8, 1)


def jet_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Jet-like features: five classes, each a Gaussian blob with its own means and scales."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).normal(0.0, 1.0, (JET_CLASSES, JET_FEATURES))
    scales = np.random.default_rng(4321).uniform(0.6, 1.4, (JET_CLASSES, JET_FEATURES))
    y = rng.integers(0, JET_CLASSES, n)
    x = centers[y] + scales[y] * rng.normal(0.0, 1.0, (n, JET_FEATURES))
    return x.astype(np.float32), y.astype(np.int64)


def image_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images of five stroke patterns (rows, columns, diagonals, a box, a cross) plus noise."""
    rng = np.random.default_rng(seed)
    patterns = np.zeros((5, 8, 8), np.float32)
    patterns[0, 2:6, :] = 1.0
    patterns[1, :, 2:6] = 1.0
    patterns[2][np.eye(8, dtype=bool)] = 1.0
    patterns[3, 1:7, 1] = patterns[3, 1:7, 6] = patterns[3, 1, 1:7] = patterns[3, 6, 1:7] = 1.0
    patterns[4, 3:5, :] = patterns[4, :, 3:5] = 1.0
    y = rng.integers(0, 5, n)
    shift = rng.integers(-1, 2, (n, 2))
    x = np.stack([np.roll(patterns[c], tuple(s), axis=(0, 1)) for c, s in zip(y, shift)])
    x = x * rng.uniform(0.5, 1.5, (n, 1, 1)) + rng.normal(0.0, 0.3, x.shape)
    return x[..., None].astype(np.float32), y.astype(np.int64)


def _seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def hgq2_mlp(units: tuple[int, ...] = (32, 16, 16), beta0: float = 1e-5, seed: int = 0) -> Any:
    """16-u1-u2-...-5 HGQ2 MLP (QDense, relu; HGQ2's default quantizers: per-element input
    types, per-element kernel types, per-element bias types), logits out."""
    import keras
    from hgq.config import LayerConfigScope
    from hgq.layers import QDense

    _seed(seed)
    with LayerConfigScope(beta0=beta0):
        inp = keras.Input((JET_FEATURES,), name="features")
        x = inp
        for u in units:
            x = QDense(u, activation="relu")(x)
        out = QDense(JET_CLASSES, name="logits")(x)
    return keras.Model(inp, out, name="hgq2_jet_mlp")


def float_mlp(units: tuple[int, ...] = (32, 16, 16), seed: int = 0) -> Any:
    import keras

    _seed(seed)
    inp = keras.Input((JET_FEATURES,), name="features")
    x = inp
    for u in units:
        x = keras.layers.Dense(u, activation="relu")(x)
    out = keras.layers.Dense(JET_CLASSES, name="logits")(x)
    return keras.Model(inp, out, name="float_jet_mlp")


def hgq2_cnn(beta0: float = 1e-5, seed: int = 0) -> Any:
    """8x8x1 -> QConv2D(4, 3x3, relu) -> QMaxPooling2D(2) -> QConv2D(8, 3x3, relu) -> Flatten ->
    QDense(5). The second conv's kernel quantizer is per output channel, its input quantizer
    per tensor (HGQ2's homogeneous axes), to cover those granularities."""
    import keras
    from hgq.config import LayerConfigScope, QuantizerConfig
    from hgq.layers import QConv2D, QDense, QMaxPooling2D

    _seed(seed)
    per_channel = QuantizerConfig("kbi", "weight", homogeneous_axis=(0, 1, 2))
    per_tensor = QuantizerConfig("kif", "datalane", homogeneous_axis=(0, 1, 2, 3))
    with LayerConfigScope(beta0=beta0):
        inp = keras.Input(IMAGE_SHAPE, name="image")
        x = QConv2D(4, 3, activation="relu", padding="same")(inp)
        x = QMaxPooling2D(2)(x)
        x = QConv2D(8, 3, activation="relu", kq_conf=per_channel, iq_conf=per_tensor)(x)
        x = keras.layers.Flatten()(x)
        out = QDense(5, name="logits")(x)
    return keras.Model(inp, out, name="hgq2_cnn")


def float_cnn(seed: int = 0) -> Any:
    import keras

    _seed(seed)
    inp = keras.Input(IMAGE_SHAPE, name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", padding="same")(inp)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(5, name="logits")(x)
    return keras.Model(inp, out, name="float_cnn")


def train(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 3e-3, seed: int = 0) -> float:
    """A few seeded epochs of Adam on cross-entropy from logits; returns the training accuracy."""
    import keras

    _seed(seed)
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    hist = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    return float(hist.history["accuracy"][-1])


def forward(model: Any, x: np.ndarray) -> np.ndarray:
    """HGQ2's own inference pass (the reference)."""
    return np.asarray(model(x, training=False))
