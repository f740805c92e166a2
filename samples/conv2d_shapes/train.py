"""Train the Conv2D sample: 4 kinds of shapes in noisy 10x10 images; writes model.keras,
calibration.npz, eval.npz.

Synthetic data (no download): a horizontal bar, a vertical bar, a diagonal or a filled
square at a random place and brightness, with pixel noise. Run: python samples/conv2d_shapes/train.py
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

SEED = 0
TRAIN, CALIBRATION, EVAL = 6000, 500, 1000
SIZE, CLASSES = 10, 4
EPOCHS = 12


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, CLASSES, n)
    x = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        r, c, k = rng.integers(1, SIZE - 4), rng.integers(1, SIZE - 4), rng.integers(3, 5)
        v = rng.uniform(0.6, 1.0)
        if y[i] == 0:
            x[i, r, c:c + k] = v
        elif y[i] == 1:
            x[i, r:r + k, c] = v
        elif y[i] == 2:
            x[i, np.arange(r, r + k), np.arange(c, c + k)] = v
        else:
            x[i, r:r + 2, c:c + 2] = v
    x += rng.normal(0, 0.2, x.shape).astype(np.float32)
    return x[..., None], y.astype(np.int64)


def build_model():
    import keras
    from keras import layers

    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = layers.Conv2D(4, 3, activation="relu", name="conv1")(x)
    h = layers.MaxPooling2D(2, name="pool1")(h)
    h = layers.Conv2D(8, 3, activation="relu", name="conv2")(h)
    h = layers.Flatten(name="flatten")(h)
    return keras.Model(x, layers.Dense(CLASSES, activation="softmax", name="output")(h), name="conv2d_shapes")


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
