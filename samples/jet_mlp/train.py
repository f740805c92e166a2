"""Train the jet-tagging-shaped MLP sample; writes model.keras, calibration.npz, eval.npz.

The data is synthetic (no download): 5 classes standing in for the g/q/W/Z/t jets of the
hls4ml jet-tagging benchmark, 16 standardized features per jet built from a few class-dependent
latent variables through non-linear maps, so the classes overlap as real jets do (about 75%
accuracy). Run: python samples/jet_mlp/train.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

SEED = 0
TRAIN, CALIBRATION, EVAL = 20000, 2000, 2000
EPOCHS = 15
BATCH_SIZE = 128
CLASSES = 5
FEATURES = 16


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Jet-like features: mass, multiplicity and substructure proxies per class, then mixed."""
    y = rng.integers(0, CLASSES, n)
    # Per class: mean of 6 latent variables (mass, prongs, multiplicity, width, pt fraction, charge).
    means = np.array([[0.2, 1.0, 1.4, 1.2, 0.3, 0.0],   # gluon: light, wide, many constituents
                      [0.1, 1.0, 0.8, 0.7, 0.5, 0.4],   # light quark: light, narrow
                      [1.6, 2.0, 1.0, 0.9, 0.6, 0.2],   # W: two prongs, mass ~80
                      [1.8, 2.0, 1.0, 0.9, 0.6, -0.2],  # Z: like W, a little heavier
                      [3.0, 3.0, 1.6, 1.3, 0.8, 0.1]])  # top: three prongs, heaviest
    z = means[y] + rng.normal(0.0, [0.55, 0.6, 0.35, 0.3, 0.2, 0.5], (n, 6))
    mix = np.random.default_rng(1234).normal(0.0, 1.0, (6, FEATURES)) / np.sqrt(6)
    feats = z @ mix
    # Non-linear substructure-like features: ratios, squares, saturating maps.
    feats[:, 0] = np.log1p(np.exp(z[:, 0]))
    feats[:, 1] = z[:, 1] / (1.0 + np.abs(z[:, 3]))
    feats[:, 2] = np.tanh(z[:, 0] - z[:, 1])
    feats[:, 3] = z[:, 2] ** 2
    feats[:, 4] = np.abs(z[:, 5])
    feats += rng.normal(0.0, 0.15, feats.shape)
    return feats.astype(np.float32), y.astype(np.int64)


def build_model():
    import keras
    from keras import layers

    x = keras.Input((FEATURES,), name="features")
    h = layers.Dense(64, activation="relu", name="fc1")(x)
    h = layers.Dense(32, activation="relu", name="fc2")(h)
    h = layers.Dense(32, activation="relu", name="fc3")(h)
    return keras.Model(x, layers.Dense(CLASSES, activation="softmax", name="output")(h), name="jet_mlp")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(SEED)
    x, y = make_data(TRAIN + CALIBRATION + EVAL, rng)
    # Standardize with the training split's statistics, as the jet-tagging benchmark does.
    mu, sd = x[:TRAIN].mean(0), x[:TRAIN].std(0)
    x = ((x - mu) / sd).astype(np.float32)
    xt, yt = x[:TRAIN], y[:TRAIN]
    xc, yc = x[TRAIN:TRAIN + CALIBRATION], y[TRAIN:TRAIN + CALIBRATION]
    xe, ye = x[TRAIN + CALIBRATION:], y[TRAIN + CALIBRATION:]
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(xt, yt, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0, shuffle=True)
    acc = float(np.mean(np.argmax(model.predict(xe, verbose=0), -1) == ye))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras", include_optimizer=False)
    np.savez_compressed(args.out / "calibration.npz", x=xc, y=yc)
    np.savez_compressed(args.out / "eval.npz", x=xe, y=ye)
    print(f"eval accuracy {acc:.4f} on {len(ye)} samples; wrote {args.out}")


if __name__ == "__main__":
    main()
