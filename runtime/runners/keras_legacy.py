"""Keras 1 and early Keras 2 architecture configs, rewritten in the spellings tf_keras reads.

Keras 1 and Keras 2 up to 2.2.4 wrote a Sequential model's ``config`` as a plain list of
layers; Keras 1 also spelled layers and settings differently (``Convolution2D``,
``nb_filter``, ``border_mode``, ``output_dim``, ``dim_ordering``...). tf_keras reads the list
form but none of the Keras 1 names. :func:`translate` rewrites a parsed config as plain data
(nothing in it is executed); both the Keras front end and the Keras source runner read it, so
the model tapeout converts and the model it verifies against are the same. Settings that
only matter for training (initializers, regularizers, constraints) are dropped; any other
Keras 1 setting tapeout does not map is refused with the layer and the key.

Weights: :func:`load_weights` is tf_keras's ``load_weights``, which reads Keras 1 weight
files (``layer_names``/``weight_names`` at the root or under ``model_weights``, Keras 1
Conv1D kernels, 'th' ordered Conv2D kernels) when the file has no ``keras_version``; files
Keras 1.x stamped with its version are read the same way.

Runtime module (no compiler import): the source runner needs it too.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

MODEL_CLASSES = ("Functional", "Sequential", "Model")

CLASS_RENAMES = {
    "Convolution1D": "Conv1D", "Convolution2D": "Conv2D", "Convolution3D": "Conv3D",
    "AtrousConvolution1D": "Conv1D", "AtrousConvolution2D": "Conv2D",
    "SeparableConvolution2D": "SeparableConv2D", "Deconvolution2D": "Conv2DTranspose",
    "Deconvolution3D": "Conv3DTranspose",
}
# Keras 1 key -> Keras 2 key (the value kept).
KEY_RENAMES = {
    "nb_filter": "filters", "subsample": "strides", "border_mode": "padding", "atrous_rate": "dilation_rate",
    "bias": "use_bias", "input_dtype": "dtype", "filter_length": "kernel_size", "subsample_length": "strides",
    "pool_length": "pool_size", "stride": "strides", "p": "rate", "sigma": "stddev",
}
PER_CLASS_RENAMES = {"Dense": {"output_dim": "units"}, "UpSampling1D": {"length": "size"}}
# Training-only Keras 1 settings, in forms tf_keras cannot read: dropped.
TRAINING_ONLY = (
    "init", "inner_init", "W_regularizer", "b_regularizer", "U_regularizer", "W_constraint", "b_constraint",
    "U_constraint", "beta_init", "gamma_init", "W_learning_rate_multiplier", "b_learning_rate_multiplier",
)
# Keys Keras 2 and 3 keep under the same name (batch norm, depthwise and separable convs): legacy
# only with a Keras 1 value. Counted as legacy whatever the value, every Keras 3 MobileNet or
# EfficientNet was "translated" and paid a 5 s tf_keras import to have its keys checked.
SHARED_TRAINING = (
    "activity_regularizer", "gamma_regularizer", "beta_regularizer", "depthwise_regularizer",
    "pointwise_regularizer", "depthwise_constraint", "pointwise_constraint",
)
DIM_ORDERINGS = {"tf": "channels_last", "th": "channels_first"}
MERGE_MODES = {"sum": "Add", "mul": "Multiply", "ave": "Average", "max": "Maximum", "concat": "Concatenate"}
# Keyword arguments every tf_keras layer takes besides its own (tf_keras base Layer).
BASE_KWARGS = {"input_dim", "input_shape", "batch_input_shape", "batch_size", "weights", "activity_regularizer",
               "autocast", "implementation", "dtype", "name", "trainable", "dynamic"}


class LegacyConfigError(ValueError):
    """A Keras 1 form tapeout does not map (one line, names the layer and the key)."""


def _fail(name: Any, cls: Any, why: str) -> LegacyConfigError:
    return LegacyConfigError(f"layer {name!r} ({cls}): {why}")


def _keras1_value(v: Any) -> bool:
    """A Keras 1 regularizer or constraint ({"name": ...}); Keras 2 and 3 write {"class_name": ...}."""
    return isinstance(v, dict) and "name" in v and "class_name" not in v


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _translate_merge(entry: dict, cfg: dict, name: Any) -> None:
    if cfg.get("layers"):
        raise _fail(name, "Merge", "a Merge of Sequential branches is not supported; build the model "
                                   "with the functional API")
    mode, mode_type = cfg.get("mode", "sum"), cfg.get("mode_type", "raw")
    if mode_type != "raw" or not isinstance(mode, str):
        raise _fail(name, "Merge", "holds code (a function mode): tapeout does not execute code from model files")
    if mode not in MERGE_MODES:
        raise _fail(name, "Merge", f"setting 'mode'={mode!r} is not supported; supported: "
                                   f"{', '.join(MERGE_MODES)}")
    new = {"name": name, "trainable": cfg.get("trainable", True)}
    if mode == "concat":
        new["axis"] = cfg.get("concat_axis", -1)
    entry["class_name"], entry["config"] = MERGE_MODES[mode], new


def _translate_layer(entry: dict, first: bool) -> bool:
    """Rewrite one layer entry in place; True if it held a Keras 1 form.

    ``first``: the first layer of a Sequential list, whose Keras 1 ``input_dim`` (and
    ``input_length``) give the input shape; later layers carry them as information only.
    """
    cls, cfg = entry.get("class_name"), entry.get("config")
    if not isinstance(cfg, dict) or cls in MODEL_CLASSES:
        return False
    name = cfg.get("name", entry.get("name"))
    if cls == "Merge":
        _translate_merge(entry, cfg, name)
        return True
    legacy = cls in CLASS_RENAMES
    new_cls = CLASS_RENAMES.get(cls, cls)
    out: dict[str, Any] = {}
    renames = {**KEY_RENAMES, **PER_CLASS_RENAMES.get(new_cls, {})}
    for key, value in cfg.items():
        if key in TRAINING_ONLY or (key in SHARED_TRAINING and _keras1_value(value)):
            legacy = True
            continue
        if key == "mode" and new_cls == "BatchNormalization":
            legacy = True
            if value != 0:
                raise _fail(name, cls, f"setting 'mode'={value!r} is not supported (Keras 1 mode 0, feature-wise "
                                       "with moving statistics, only)")
            continue
        if key in ("nb_row", "nb_col"):
            out["kernel_size"] = [cfg.get("nb_row"), cfg.get("nb_col")]
            legacy = True
            continue
        if key == "dim_ordering":
            legacy = True
            if value not in DIM_ORDERINGS:
                raise _fail(name, cls, f"setting 'dim_ordering'={value!r} is not supported ('tf' or 'th')")
            out["data_format"] = DIM_ORDERINGS[value]
            continue
        if key == "border_mode" and value not in ("valid", "same", "causal"):
            raise _fail(name, cls, f"setting 'border_mode'={value!r} is not supported ('valid' or 'same')")
        if key in renames and renames[key] not in cfg:
            legacy = True
            key = renames[key]
            if key in ("strides", "pool_size", "kernel_size", "size") and new_cls.endswith("1D") \
                    and value is not None:
                value = _pair(value)
        out[key] = value
    if "input_dim" in out and new_cls != "Embedding":  # Keras 1 only (Embedding's own key in Keras 2)
        legacy = True
        dim, length = out.pop("input_dim"), out.pop("input_length", None)
        if first and "batch_input_shape" not in out and dim is not None:
            out["batch_input_shape"] = [None, length, dim] if length else [None, dim]
    entry["class_name"], entry["config"] = new_cls, out
    return legacy


def _check_keys(entry: dict, original: str) -> None:
    """Refuse a setting the tf_keras class does not take (a Keras 1 key tapeout does not map)."""
    import inspect

    import tf_keras

    cls = entry.get("class_name")
    layer_cls = getattr(tf_keras.layers, str(cls), None)
    if layer_cls is None or cls in MODEL_CLASSES:
        return  # an unknown class: the front end's allow-list refuses it by name
    known = set(BASE_KWARGS)
    for klass in inspect.getmro(layer_cls):
        init = klass.__dict__.get("__init__")
        if init is not None:
            known |= set(inspect.signature(init).parameters)
    cfg = entry.get("config") or {}
    for key in cfg:
        if key not in known:
            raise _fail(cfg.get("name"), original, f"Keras 1 setting {key!r} is not supported")


def _walk(model: dict, found: list[str]) -> None:
    cfg = model.get("config")
    if isinstance(cfg, list):  # Keras 1 / Keras <= 2.2.4 Sequential: the layer list itself
        model["config"] = cfg = {"name": model.get("name") or "sequential", "layers": cfg}
        found.append("list")
    sequential = model.get("class_name") == "Sequential"
    for i, entry in enumerate((cfg or {}).get("layers") or []):
        if not isinstance(entry, dict):
            continue
        if entry.get("class_name") in MODEL_CLASSES:
            _walk(entry, found)
            continue
        original = str(entry.get("class_name"))
        if _translate_layer(entry, sequential and i == 0):
            found.append("keras1")
            _check_keys(entry, original)


def translate(cfg: Any) -> tuple[Any, list[str]]:
    """A Keras 2 spelled copy of a parsed model config, and notes on what was rewritten.

    Configs with no legacy form come back unchanged with no notes. Raises LegacyConfigError.
    """
    if not isinstance(cfg, dict) or cfg.get("class_name") not in MODEL_CLASSES:
        return cfg, []
    new = copy.deepcopy(cfg)
    found: list[str] = []
    _walk(new, found)
    notes = []
    if "list" in found:
        notes.append("the Sequential config is a plain layer list (Keras 1 / Keras <= 2.2.4); read as "
                     "{'layers': [...]}")
    if "keras1" in found:
        notes.append("Keras 1 layer names and settings were translated to their Keras 2 spellings "
                     "(initializers, regularizers and constraints dropped: training only)")
    return (new, notes) if found else (cfg, [])


def translate_json(text: str) -> tuple[str, list[str]]:
    """translate() for JSON text; text that is not a model config comes back unchanged."""
    try:
        cfg = json.loads(text)
    except ValueError:
        return text, []
    new, notes = translate(cfg)
    return (json.dumps(new), notes) if notes else (text, [])


def _keras1_version(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        version = root.attrs.get("keras_version")
    if isinstance(version, bytes):
        version = version.decode()
    return isinstance(version, str) and version.startswith("1.")


def load_weights(model: Any, path: str | Path) -> None:
    """tf_keras ``load_weights``, with a Keras 1.x version stamp read as Keras 1.

    tf_keras converts Keras 1 kernels only for files without a ``keras_version`` (Keras 1
    wrote none in weight files), so a copy without the stamp is loaded for a "1.x" one.
    """
    path = Path(path)
    if not _keras1_version(path):
        model.load_weights(str(path))
        return
    import h5py

    with tempfile.TemporaryDirectory(prefix="tapeout-keras1-") as tmp:
        copy_path = Path(tmp) / "weights.h5"
        with h5py.File(path, "r") as src, h5py.File(copy_path, "w") as dst:
            root = src["model_weights"] if "layer_names" not in src.attrs and "model_weights" in src else src
            for key in root:
                root.copy(root[key], dst, name=key)
            for key, value in root.attrs.items():
                if key != "keras_version":
                    dst.attrs[key] = value
        model.load_weights(str(copy_path))
