"""Train the bundled digits CNN sample and write model.keras, calibration.npz, eval.npz.

Data: scikit-learn's load_digits (8x8 grayscale digits shipped inside the package,
so no download). Run: python samples/digits_cnn/train.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

SEED = 0
EVAL_SIZE = 360
CALIBRATION_SIZE = 200
EPOCHS = 30
BATCH_SIZE = 32


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed stratified split: train, calibration (carved from train), eval (held out)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16; scale to [0, 1] and add the channel axis (NHWC).
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_rest, x_eval, y_rest, y_eval = train_test_split(
        x, y, test_size=EVAL_SIZE, stratify=y, random_state=SEED
    )
    x_train, x_cal, y_train, y_cal = train_test_split(
        x_rest, y_rest, test_size=CALIBRATION_SIZE, stratify=y_rest, random_state=SEED
    )
    return {
        "train": (x_train, y_train),
        "calibration": (x_cal, y_cal),
        "eval": (x_eval, y_eval),
    }


def build_model():
    import keras
    from keras import layers

    inputs = keras.Input(shape=(8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(32, 3, padding="same", name="conv3")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    x = layers.Dense(64, activation="relu", name="fc1")(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: this script's folder)")
    args = parser.parse_args(argv)

    # Quiet TF and pin it to CPU before it is imported, for repeatable numbers.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()

    splits = load_splits()
    x_train, y_train = splits["train"]
    x_eval, y_eval = splits["eval"]

    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=True, verbose=0)

    probs = model.predict(x_eval, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == y_eval))

    args.out.mkdir(parents=True, exist_ok=True)
    # Save an uncompiled copy: the optimizer state would triple the file for no use.
    inference_model = build_model()
    inference_model.set_weights(model.get_weights())
    inference_model.save(args.out / "model.keras")
    x_cal, y_cal = splits["calibration"]
    np.savez_compressed(args.out / "calibration.npz", x=x_cal, y=y_cal)
    np.savez_compressed(args.out / "eval.npz", x=x_eval, y=y_eval)
    print(f"train={len(x_train)} calibration={len(x_cal)} eval={len(x_eval)}")
    print(f"eval accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    main()
