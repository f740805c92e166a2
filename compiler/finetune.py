"""Fine-tune a (pruned) IR graph: IR -> Keras (``compiler.keras_model``), train with the zeros held, IR back.

Only conv/dense weights and biases train; every other layer (batch norms, affine constants) is
frozen so the returned graph differs from the input only in those constants. Each weight that
is exactly zero in the IR (pruned) is held at zero: after every optimizer step the kernel is
multiplied by its mask, and the weights written back are masked again so the zeros stay exact.
Training is seeded and uses TensorFlow's deterministic ops, so two runs give the same weights.

Two modes (docs/pruning.md). ``epochs=N``: exactly N epochs on all the data at a constant
learning rate. ``epochs=None``: until the task is done. A seeded, stratified fifth of the data
is held out; after each epoch the validation accuracy is compared with the unpruned model's
(``baseline``) on the same split. Training stops once it is within ``max_drop`` points for
``CONFIRM`` epochs in a row, when neither validation accuracy nor loss has improved for
``PATIENCE`` epochs, or at ``MAX_EPOCHS``; the rate halves after ``PLATEAU`` epochs without a
lower validation loss. That picks the epoch count; the model then trains again from the pruned
weights on all the data for that many epochs at the same rates. The defaults were measured on
the digits CNN (``channels:0.5``, docs/pruning.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tapeout.compiler.errors import DataError
from tapeout.compiler.ir import Graph, Node
from tapeout.compiler.ops import ends_in_softmax

DEFAULT_BATCH = 32
DEFAULT_LR = 1e-3  # --epochs N: constant
AUTO_LR = 3e-3  # until done: the starting rate (from 1e-3 the digits CNN stalled 2 points short)
MAX_EPOCHS = 100  # the cap on the validation run (the run on all the data repeats at most as many)
PATIENCE = 15  # epochs with neither a higher validation accuracy nor a lower loss before giving up
PLATEAU = 10  # epochs without a lower validation loss before the rate halves
MIN_DELTA = 0.02  # a validation loss lower by less than 2% is no improvement
MIN_LR_FACTOR = 1 / 64  # the rate halves down to lr / 64 at most
CONFIRM = 3  # epochs within the budget in a row before stopping (one lucky epoch is not enough)
VALIDATION_FRACTION = 0.2
DEFAULT_MAX_DROP = 1.0  # top-1 points, when --max-accuracy-drop is not given


@dataclass
class FineTuneInfo:
    epochs: int
    samples: int
    seed: int
    batch_size: int
    learning_rate: float
    loss: str
    losses: list[float]  # training loss per epoch
    masked_layers: int  # layers holding pruned zeros
    mode: str = "fixed"  # "fixed" (--epochs N) or "until-done"
    validation: dict[str, Any] | None = None  # until-done: split, baseline, target, stop reason
    curve: list[dict[str, Any]] = field(default_factory=list)  # until-done: per epoch
    budget_met: bool | None = None  # until-done on class labels: validation accuracy within max_drop

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode, "epochs": self.epochs, "samples": self.samples, "seed": self.seed,
            "batch_size": self.batch_size, "learning_rate": self.learning_rate, "loss": self.loss,
            "losses": [round(float(v), 6) for v in self.losses], "masked_layers": self.masked_layers}
        if self.mode != "fixed":
            out.update(validation=self.validation, curve=self.curve, budget_met=self.budget_met)
        return out


def validation_verdict(info: FineTuneInfo) -> dict[str, Any]:
    """The budget judged on the validation split (until-done with class labels): the report's
    ``fine_tuning.budget`` until the compile judges it again on labelled verification data."""
    v = info.validation or {}
    return _verdict(v["max_accuracy_drop"], v["unpruned_accuracy"], v["accuracy"], "validation", v["samples"],
                    v["stopped"])


def accuracy_verdict(fine_tuning: dict[str, Any], unpruned: float, pruned: float, kind: str,
                     samples: int) -> dict[str, Any]:
    """The budget judged on the accuracies the report gives (``pruning.accuracy``, --eval labels)."""
    v = fine_tuning["validation"]
    return _verdict(v["max_accuracy_drop"], unpruned, pruned, kind, samples, v["stopped"])


def _verdict(max_drop: float, unpruned: float, pruned: float, kind: str, samples: int, stopped: str) -> dict[str, Any]:
    drop = 100.0 * (unpruned - pruned)
    met = drop <= max_drop + 1e-9
    note = None if met else (
        f"fine-tuning missed the accuracy budget: top-1 {pruned:.4f} pruned vs {unpruned:.4f} unpruned on "
        f"{samples} {kind} samples, {drop:.2f} points lost, {max_drop:g} allowed (training stopped: {stopped}); "
        "more training (--epochs N, more --train data) or a smaller prune fraction would help")
    return {"max_accuracy_drop": max_drop, "judged_on": kind, "samples": int(samples),
            "unpruned": round(float(unpruned), 6), "pruned": round(float(pruned), 6), "drop_pt": round(drop, 4),
            "met": bool(met), "note": note}


def _weighted(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if n.op in ("conv", "dense") and n.inputs[1] in graph.constants
            and all(i in graph.constants for i in n.inputs[2:] if i)]


def _loss_for(graph: Graph, y: np.ndarray) -> tuple[str, Any]:
    import keras

    if _labels(y):
        name = "sparse categorical cross-entropy" + ("" if _probabilities(graph) else " (logits)")
        return name, keras.losses.SparseCategoricalCrossentropy(from_logits=not _probabilities(graph))
    return "mean squared error", keras.losses.MeanSquaredError()


def _labels(y: np.ndarray) -> bool:
    return bool(np.issubdtype(y.dtype, np.integer) and y.ndim == 1)


def _probabilities(graph: Graph) -> bool:
    out = graph.outputs[0]
    prod = next((n for n in graph.nodes if out in n.outputs), None)
    return prod is not None and ends_in_softmax(prod)


def validation_split(y: np.ndarray, seed: int, fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) sample indices: a seeded shuffle, stratified by class for integer labels
    (each class gives round(fraction * its count), at least one when it has two or more)."""
    fraction = VALIDATION_FRACTION if fraction is None else fraction
    rng = np.random.default_rng(seed)
    n = len(y)
    if not _labels(y):
        order = rng.permutation(n)
        k = max(1, round(fraction * n))
        return np.sort(order[k:]), np.sort(order[:k])
    val: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = max(1, round(fraction * len(idx))) if len(idx) >= 2 else 0
        val.append(idx[:k])
    held = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(n), held), held


def finetune(graph: Graph, feeds: dict[str, np.ndarray], y: np.ndarray, *, epochs: int | None = None,
             seed: int = 0, batch_size: int = DEFAULT_BATCH, learning_rate: float | None = None,
             baseline: Graph | None = None, max_drop: float = DEFAULT_MAX_DROP,
             max_epochs: int = MAX_EPOCHS) -> tuple[Graph, FineTuneInfo]:
    """Train ``graph``'s conv/dense weights on (``feeds``, ``y``); return the new graph.

    ``feeds`` are keyed by graph input name in the source layout (``graph.io_layouts``), as the
    data files hold them. One output is trained; ``y`` holds integer class labels (cross-entropy)
    or targets shaped like the output (mean squared error). ``epochs=N`` trains exactly N epochs
    on all the data; ``None`` trains until validation accuracy is within ``max_drop`` points of
    ``baseline`` (the unpruned graph) on a held-out split, or stops improving (module docstring).
    """
    import keras
    import tensorflow as tf

    from tapeout.compiler.keras_model import graph_to_keras

    if len(graph.outputs) != 1:
        raise DataError(f"fine-tuning needs a model with one output, this one has {len(graph.outputs)}")
    n = len(y)
    if any(len(v) != n for v in feeds.values()):
        raise DataError("training inputs and labels y have different sample counts")
    auto = epochs is None
    lr = float(learning_rate if learning_rate is not None else (AUTO_LR if auto else DEFAULT_LR))
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    km = graph_to_keras(graph, keep_io_layout=True)
    model = km.model
    layers = {node.name: model.get_layer(km.layer_names[node.name]) for node in _weighted(graph)}
    trainable = set(layers.values())
    for layer in model.layers:
        layer.trainable = layer in trainable
    masks = {name: graph.constants[graph.node(name).inputs[1]] != 0 for name in layers}
    masked = {name: m for name, m in masks.items() if not m.all()}
    kernels = {name: layers[name].weights[0] for name in masked}
    keras_masks = {name: _keras_kernel(graph.node(name), m, layers[name].weights[0].shape)
                   for name, m in masked.items()}

    class HoldZeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            for name, var in kernels.items():
                var.assign(var * keras_masks[name])

    loss_name, loss = _loss_for(graph, y)
    x = [feeds[i] for i in graph.inputs]
    callbacks: list[Any] = [HoldZeros()] if masked else []
    if not auto:
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
        hist = model.fit(_pack(x), y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
                         callbacks=callbacks)
        info = FineTuneInfo(int(epochs), n, seed, batch_size, lr, loss_name,
                            [float(v) for v in hist.history.get("loss", [])], len(masked))
    else:
        info = _until_done(model, x, y, baseline, layers, callbacks, seed, batch_size, lr, max_drop,
                           max_epochs, loss, loss_name, len(masked))
    out = graph.copy()
    for name, layer in layers.items():
        node = out.node(name)
        w = layer.get_weights()
        kernel = np.asarray(w[0], np.float32).reshape(graph.constants[node.inputs[1]].shape)
        kernel = np.where(masks[name], kernel, np.float32(0))
        node.inputs[1] = out.add_constant(f"{name}_w", kernel)
        if len(w) > 1 and len(node.inputs) > 2 and node.inputs[2]:
            node.inputs[2] = out.add_constant(f"{name}_b", np.asarray(w[1], np.float32))
    out.remove_unused_constants()
    return out, info


def _pack(x: list[np.ndarray]) -> Any:
    return x[0] if len(x) == 1 else x


def _shuffled(x: list[np.ndarray], y: np.ndarray, seed: int, batch_size: int) -> Any:
    """Batches in a new seeded order every epoch: under op determinism Keras's own shuffle of
    arrays repeats one order in every epoch."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((tuple(x) if len(x) > 1 else x[0], y))
    return data.shuffle(len(y), seed=seed, reshuffle_each_iteration=True).batch(batch_size)


def _until_done(model: Any, x: list[np.ndarray], y: np.ndarray, baseline: Graph | None,
                layers: dict[str, Any], callbacks: list[Any], seed: int, batch_size: int, lr: float,
                max_drop: float, max_epochs: int, loss_fn: Any, loss_name: str, masked: int) -> FineTuneInfo:
    """Train on a held-out split until the budget, a plateau or the cap picks the epoch count E,
    then train again from the pruned weights on all the data for E epochs at the same rates (on
    the digits CNN the held-out fifth, trained on too, is worth about half a point)."""
    import keras

    from tapeout.compiler.keras_model import graph_to_keras

    train_idx, val_idx = validation_split(y, seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(f"fine-tuning without --epochs holds out {VALIDATION_FRACTION:.0%} of --train for "
                        f"validation: {len(y)} samples are too few (give --epochs N to train on all of them)")
    xt, xv = [a[train_idx] for a in x], [a[val_idx] for a in x]
    yt, yv = y[train_idx], y[val_idx]
    nv = len(val_idx)
    classes = _labels(y) and int(model.outputs[0].shape[-1] or 0) > 1
    base_acc = None
    if classes and baseline is not None:
        pred = graph_to_keras(baseline, keep_io_layout=True).model.predict(_pack(xv), batch_size=256, verbose=0)
        base_acc = float(np.mean(np.argmax(pred, axis=-1) == yv))
    target = None if base_acc is None else base_acc - max_drop / 100.0
    start = {name: layer.get_weights() for name, layer in layers.items()}
    curve: list[dict[str, Any]] = []
    rates: list[float] = []
    state = {"rate": lr, "floor": lr * MIN_LR_FACTOR, "best_acc": -1.0, "best_loss": float("inf"),
             "best_epoch": 0, "since_best": 0, "since_loss": 0, "within": 0, "reason": f"epoch cap ({max_epochs})"}

    class Watch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.model.optimizer.learning_rate.assign(state["rate"])
            rates.append(state["rate"])

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            acc = round(float(logs["val_accuracy"]) * nv) / nv if classes else None  # a count of samples
            vloss = float(logs["val_loss"])
            curve.append({"epoch": epoch + 1, "loss": round(float(logs["loss"]), 6), "val_loss": round(vloss, 6),
                          "val_accuracy": None if acc is None else round(acc, 6),
                          "learning_rate": float(f"{state['rate']:.6g}")})
            if _update(state, epoch + 1, acc, vloss, target):
                self.model.stop_training = True

    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")] if classes else []
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss_fn, metrics=metrics)
    model.fit(_shuffled(xt, yt, seed, batch_size), validation_data=(_pack(xv), yv), validation_batch_size=256,
              epochs=max_epochs, verbose=0, callbacks=[*callbacks, Watch()])
    chosen = int(state["best_epoch"])
    kept = curve[chosen - 1]
    met = None if target is None else kept["val_accuracy"] >= target - 1e-9
    # Again from the pruned weights, on all the data, for the chosen epochs at the same rates.
    for name, layer in layers.items():
        layer.set_weights(start[name])
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss_fn)
    replay = keras.callbacks.LearningRateScheduler(lambda epoch, _: rates[epoch])
    hist = model.fit(_shuffled(x, y, seed, batch_size), epochs=chosen, verbose=0, callbacks=[*callbacks, replay])
    validation = {"samples": nv, "train_samples": int(len(train_idx)), "fraction": VALIDATION_FRACTION,
                  "max_epochs": max_epochs, "patience": PATIENCE, "plateau": PLATEAU, "confirm": CONFIRM,
                  "unpruned_accuracy": None if base_acc is None else round(base_acc, 6),
                  "max_accuracy_drop": max_drop, "target_accuracy": None if target is None else round(target, 6),
                  "accuracy": kept["val_accuracy"], "loss": kept["val_loss"], "epochs": len(curve),
                  "chosen_epochs": chosen, "stopped": state["reason"]}
    return FineTuneInfo(chosen, len(y), seed, batch_size, lr, loss_name,
                        [float(v) for v in hist.history.get("loss", [])], masked,
                        mode="until-done", validation=validation, curve=curve, budget_met=met)


def _update(state: dict[str, Any], epoch: int, acc: float | None, vloss: float, target: float | None) -> bool:
    """One epoch of the until-done rules on ``state``; True to stop."""
    # Still improving: a higher validation accuracy, or a validation loss lower by MIN_DELTA
    # (accuracy on a few hundred samples moves in coarse steps while the loss still falls).
    lower = vloss < state["best_loss"] * (1 - MIN_DELTA)
    if lower or (acc is not None and acc > state["best_acc"]) or not state["best_epoch"]:
        state["best_epoch"], state["since_best"] = epoch, 0
    else:
        state["since_best"] += 1
    if acc is not None:
        state["best_acc"] = max(state["best_acc"], acc)
    state["since_loss"] = 0 if lower else state["since_loss"] + 1
    state["best_loss"] = min(state["best_loss"], vloss)
    state["within"] = state["within"] + 1 if target is not None and acc is not None and acc >= target - 1e-9 else 0
    if state["within"] >= CONFIRM:
        state["best_epoch"] = epoch
        state["reason"] = f"within the accuracy budget for {CONFIRM} epochs in a row"
        return True
    if state["since_best"] >= PATIENCE:
        what = "accuracy or loss" if acc is not None else "loss"
        state["reason"] = f"no better validation {what} in {PATIENCE} epochs"
        return True
    if state["since_loss"] >= PLATEAU and state["rate"] > state["floor"] * 1.0001:
        state["rate"], state["since_loss"] = state["rate"] / 2, 0
    return False


def _keras_kernel(node: Node, mask: np.ndarray, shape: Any) -> np.ndarray:
    # Depthwise kernels are [*K, C, m] in Keras and [*K, 1, C*m] in the IR: the same element order.
    return mask.reshape(tuple(int(d) for d in shape)).astype(np.float32)
