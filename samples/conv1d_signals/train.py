"""Train the Conv1D sample: 4 kinds of noisy 1D signals; writes model.keras, calibration.npz, eval.npz.

Synthetic data (no download): windows of 32 samples x 2 channels holding a sine, a square
wave, a sawtooth or a decaying pulse, with random frequency, phase, amplitude and noise.
Run: python samples/conv1d_signals/train.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

SEED = 0
TRAIN, CALIBRATION, EVAL = 6000, 500, 1000
LENGTH, CHANNELS, CLASSES = 32, 2, 4
EPOCHS = 12


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, CLASSES, n)
    t = np.arange(LENGTH)[None, :]
    f = rng.uniform(0.04, 0.12, (n, 1))
    ph = rng.uniform(0, 2 * np.pi, (n, 1))
    amp = rng.uniform(0.5, 2.0, (n, 1))
    phase = 2 * np.pi * f * t + ph
    waves = np.stack([np.sin(phase), np.sign(np.sin(phase)), (phase / np.pi) % 2.0 - 1.0,
                      np.exp(-((t - rng.uniform(4, 28, (n, 1))) ** 2) / 6.0) * 2 - 0.5], 1)
    sig = amp * waves[np.arange(n), y]
    x = np.stack([sig, np.gradient(sig, axis=1)], -1) + rng.normal(0, 0.35, (n, LENGTH, CHANNELS))
    return x.astype(np.float32), y.astype(np.int64)


def build_model():
    import keras
    from keras import layers

    x = keras.Input((LENGTH, CHANNELS), name="signal")
    h = layers.Conv1D(8, 3, activation="relu", name="conv1")(x)
    h = layers.MaxPooling1D(2, name="pool1")(h)
    h = layers.Conv1D(8, 3, activation="relu", name="conv2")(h)
    h = layers.MaxPooling1D(2, name="pool2")(h)
    h = layers.Flatten(name="flatten")(h)
    return keras.Model(x, layers.Dense(CLASSES, activation="softmax", name="output")(h), name="conv1d_signals")


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
    x, y = make_data(TRAIN + CALIBRATION + EVAL, np.random.default_rng(SEED))
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x[:TRAIN], y[:TRAIN], epochs=EPOCHS, batch_size=64, verbose=0)
    xc, yc = x[TRAIN:TRAIN + CALIBRATION], y[TRAIN:TRAIN + CALIBRATION]
    xe, ye = x[TRAIN + CALIBRATION:], y[TRAIN + CALIBRATION:]
    acc = float(np.mean(np.argmax(model.predict(xe, verbose=0), -1) == ye))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras", include_optimizer=False)
    np.savez_compressed(args.out / "calibration.npz", x=xc, y=yc)
    np.savez_compressed(args.out / "eval.npz", x=xe, y=ye)
    print(f"eval accuracy {acc:.4f} on {len(ye)} samples; wrote {args.out}")


if __name__ == "__main__":
    main()
