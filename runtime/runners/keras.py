"""Runs a Keras source model: Keras 3 ``.keras``, legacy tf_keras ``.h5``, or ``.json`` + weights.

Inputs are named after the InputLayers and outputs after the output layers, the names the
Keras front end gives the graph's inputs and outputs, so artifacts compare by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tapeout.runtime.errors import RuntimeInputError, RuntimeUnavailable, one_line
from tapeout.runtime.protocol import FileRunner, IOSpec


def _layer_name(tensor: Any) -> str:
    """The name of the layer that produced a Keras 3 symbolic tensor."""
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else tensor.name


def _dtype_name(dtype: Any) -> str:
    return getattr(dtype, "name", None) or str(dtype)  # tf.DType (tf_keras) or str (Keras 3)


def _channels_first(model: Any) -> bool:
    """Whether a layer (nested models included) computes channels-first (Keras 1 'th' models)."""
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and _channels_first(layer):
            return True
        if type(layer).__name__ != "Flatten" and getattr(layer, "data_format", None) == "channels_first":
            return True
    return False


class KerasRunner(FileRunner):
    name = "keras"

    def __init__(self, path: str | Path, weights: str | Path | None = None, safe_mode: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.weights = Path(weights) if weights is not None else None
        self.safe_mode = safe_mode
        self._model: Any = None
        self._call: Any = None  # the model, or its XLA-compiled call (channels_first models)
        self._inputs: list[str] = []
        self.notes: list[str] = []  # legacy config forms rewritten so that tf_keras reads them

    # loading ---------------------------------------------------------------
    def _load(self) -> Any:
        # The one gate for Keras files (runtime.model_files): the checks compile applies, before
        # Keras or tf_keras sees the file; tf_keras's own h5 loader (which runs Lambda bytecode)
        # is never used.
        from tapeout.runtime.model_files import load_keras_model

        loaded = load_keras_model(self.path, self.weights, safe_mode=self.safe_mode)
        if loaded.notes:
            framework = "Keras" if loaded.format == "keras" else "tf_keras"
            self.notes = [f"source runner: {framework} ran the legacy config as rewritten for the import"]
        return loaded.model

    def _open(self) -> None:
        for f in (self.path, self.weights):
            if f is not None and not f.is_file():
                raise RuntimeInputError(f"{f}: no such file")
        try:
            model = self._load()
        except RuntimeInputError:
            raise
        except ImportError as exc:
            raise RuntimeUnavailable(f"running {self.path.name} needs {exc.name or 'TensorFlow/Keras'}: "
                                     "pip install 'tapeout[keras]'") from None
        except Exception as exc:  # Keras/h5py raise many unrelated types for unreadable files
            raise RuntimeInputError(f"{self.path}: cannot load the Keras model ({one_line(exc)})") from None
        legacy = hasattr(model, "input_names")  # tf_keras models carry their layer names directly
        self._inputs = list(model.input_names) if legacy else [_layer_name(t) for t in model.inputs]
        names = getattr(model, "output_names", None)
        self._outputs = list(names) if names else [_layer_name(t) for t in model.outputs]
        self._specs = [
            IOSpec(name, tuple("N" if i == 0 and d is None else d for i, d in enumerate(t.shape)),
                   _dtype_name(t.dtype))
            for name, t in zip(self._inputs, model.inputs)
        ]
        self._model = model
        self._call = model
        if _channels_first(model):
            import tensorflow as tf

            # TensorFlow's CPU kernels run convolution and pooling channels-last only (without
            # oneDNN, which tapeout keeps off for reproducible sums); XLA compiles either layout.
            compiled = tf.function(lambda x: model(x, training=False), jit_compile=True)
            self._call = lambda x, training=False: compiled(x)
            self.notes.append("source runner: the channels_first layers ran through XLA (TensorFlow's CPU "
                              "kernels are channels-last only)")

    def _close(self) -> None:
        self._model = None
        self._call = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._typed_feeds(feeds)
        # Calling the model directly: model.predict is slow and prints progress bars.
        try:
            result = self._call(arrays[0] if len(arrays) == 1 else arrays, training=False)
        except Exception as exc:  # shape errors from the data come back as framework errors
            raise RuntimeInputError(f"{self.path}: the model could not run these inputs ({one_line(exc)})") from None
        if isinstance(result, dict):
            result = [result[n] for n in self._outputs] if set(result) == set(self._outputs) else list(result.values())
        elif not isinstance(result, (list, tuple)):
            result = [result]
        return {n: np.asarray(r) for n, r in zip(self._outputs, result)}
