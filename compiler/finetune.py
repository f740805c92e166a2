"""Fine-tune a (pruned) IR graph: IR -> Keras (``compiler.keras_model``), train with the zeros held, IR back.

Only conv/dense weights and biases train; every other layer (batch norms, affine constants) is
frozen so the returned graph differs from the input only in those constants. Each weight that
is exactly zero in the IR (pruned) is held at zero: after every optimizer step the kernel is
multiplied by its mask, and the weights written back are masked again so the zeros stay exact.
Training is seeded and uses TensorFlow's deterministic ops, so two runs give the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tapeout.compiler.errors import DataError
from tapeout.compiler.ir import Graph, Node
from tapeout.compiler.ops import ends_in_softmax

DEFAULT_EPOCHS = 5
DEFAULT_BATCH = 32
DEFAULT_LR = 1e-3


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

    def to_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "samples": self.samples, "seed": self.seed, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "loss": self.loss,
                "losses": [round(float(v), 6) for v in self.losses], "masked_layers": self.masked_layers}


def _weighted(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if n.op in ("conv", "dense") and n.inputs[1] in graph.constants
            and all(i in graph.constants for i in n.inputs[2:] if i)]


def _loss_for(graph: Graph, y: np.ndarray) -> tuple[str, Any]:
    import keras

    out = graph.outputs[0]
    prod = next((n for n in graph.nodes if out in n.outputs), None)
    probabilities = prod is not None and ends_in_softmax(prod)
    if np.issubdtype(y.dtype, np.integer) and y.ndim == 1:
        name = "sparse categorical cross-entropy" + ("" if probabilities else " (logits)")
        return name, keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    return "mean squared error", keras.losses.MeanSquaredError()


def finetune(graph: Graph, feeds: dict[str, np.ndarray], y: np.ndarray, *, epochs: int = DEFAULT_EPOCHS,
             seed: int = 0, batch_size: int = DEFAULT_BATCH, learning_rate: float = DEFAULT_LR) -> tuple[Graph, FineTuneInfo]:
    """Train ``graph``'s conv/dense weights on (``feeds``, ``y``) for ``epochs``; return the new graph.

    ``feeds`` are keyed by graph input name in the source layout (``graph.io_layouts``), as the
    data files hold them. One output is trained; ``y`` holds integer class labels (cross-entropy)
    or targets shaped like the output (mean squared error).
    """
    import keras
    import tensorflow as tf

    from tapeout.compiler.keras_model import graph_to_keras

    if len(graph.outputs) != 1:
        raise DataError(f"fine-tuning needs a model with one output, this one has {len(graph.outputs)}")
    n = len(y)
    if any(len(v) != n for v in feeds.values()):
        raise DataError("training inputs and labels y have different sample counts")
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
    keras_masks = {name: _keras_kernel(graph.node(name), m, layers[name].weights[0].shape) for name, m in masked.items()}

    class HoldZeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            for name, var in kernels.items():
                var.assign(var * keras_masks[name])

    loss_name, loss = _loss_for(graph, y)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    x = [feeds[i] for i in graph.inputs]
    hist = model.fit(x[0] if len(x) == 1 else x, y, epochs=epochs, batch_size=batch_size, shuffle=True,
                     verbose=0, callbacks=[HoldZeros()] if masked else [])
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
    info = FineTuneInfo(epochs, n, seed, batch_size, learning_rate, loss_name,
                        [float(v) for v in hist.history.get("loss", [])], len(masked))
    return out, info


def _keras_kernel(node: Node, mask: np.ndarray, shape: Any) -> np.ndarray:
    # Depthwise kernels are [*K, C, m] in Keras and [*K, 1, C*m] in the IR: the same element order.
    return mask.reshape(tuple(int(d) for d in shape)).astype(np.float32)
