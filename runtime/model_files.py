"""The one gate every Keras model file passes before a framework sees it.

Keras 3 ``.keras`` archives, legacy ``.h5`` models and architecture ``.json`` + weights ``.h5``
come from collaborators, hubs and CI artifacts: untrusted. :func:`load_keras_model` is the only
place tapeout hands such a file to Keras or tf_keras (the front end, inspect, the source
runner for verify, both as source and as artifact). Before that it:

* reads the architecture within budget (size, nesting depth; ``runtime.budgets``) and checks
  its shape: every model, layer entry and layer config is an object, else exit 2 naming the
  path inside the config (``config.layers[3].config``);
* refuses code: Lambda-like and custom classes, any object whose module is not Keras's own
  (the CVE-2025-1550 class), Keras 3 ``__lambda__`` objects, functions outside the activations;
  only the layers tapeout converts are allowed, by class name;
* checks every HDF5 file (legacy model, weights, the archive's ``model.weights.h5``): no
  external links, soft links, external storage or virtual datasets (they read other files:
  the CVE-2026-1669 class), no dataset declaring far more than it stores, no more declared
  weights than the budget, and no config declaring more weights than the file holds;
* reads only ``config.json``, ``metadata.json`` and ``model.weights.h5`` from a ``.keras``,
  each within the size and compression-ratio budgets, and gives Keras a fresh in-memory
  archive of those (so Keras extracts no assets to the system temp folder).

Then the framework builds the model from the *checked* config: ``tf_keras`` from JSON plus
``load_weights`` (never tf_keras's h5 model loader, which unmarshals Lambda bytecode), Keras 3
from the rebuilt archive in safe mode.

Runtime module: NumPy, h5py and the frameworks only, nothing from the compiler.
"""

from __future__ import annotations

import faulthandler
import io
import json
import math
import os
import select
import signal
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tapeout.runtime.budgets import (BUDGETS, MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_MODEL_BYTES, MAX_TENSOR_RATIO,
                                     MAX_ZIP_RATIO, RATIO_FLOOR)
from tapeout.runtime import hgq2_files
from tapeout.runtime.errors import RuntimeInputError, one_line
from tapeout.runtime.runners.keras_legacy import LegacyConfigError, load_weights, translate

KERAS3_SUFFIX = ".keras"
LEGACY_SUFFIXES = (".h5", ".hdf5")
JSON_SUFFIX = ".json"
MODEL_CLASSES = ("Functional", "Sequential", "Model")
# The layers tapeout converts (tapeout.compiler.frontends.keras_layers.SUPPORTED_CLASSES, which
# tests/runtime/test_model_files.py keeps equal): the runtime cannot import the compiler.
KERAS_LAYERS = (
    "Activation", "ActivityRegularization", "Add", "AlphaDropout", "Average", "AveragePooling1D",
    "AveragePooling2D", "BatchNormalization", "Concatenate", "Conv1D", "Conv2D", "Cropping1D", "Cropping2D",
    "Dense", "DepthwiseConv1D",
    "DepthwiseConv2D", "Dropout", "ELU", "Flatten", "Functional", "GaussianDropout", "GaussianNoise",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Identity",
    "InputLayer", "LeakyReLU", "MaxPooling1D", "MaxPooling2D", "Maximum", "Minimum", "Model", "Multiply",
    "Normalization", "Permute", "ReLU", "Rescaling", "Reshape", "SeparableConv1D", "SeparableConv2D", "Sequential",
    "Softmax", "SpatialDropout1D", "SpatialDropout2D", "Subtract", "UpSampling1D", "UpSampling2D", "ZeroPadding1D",
    "ZeroPadding2D",
)
# Keras 3 operations on tensors (x + 3.0) stored as layers, by class (compiler: OPERATIONS).
OP_MODULE = "keras.src.ops."
KERAS_OPERATIONS = ("Add", "Divide", "Maximum", "Minimum", "Multiply", "Subtract", "TrueDivide")
# Classes that carry or call code, or load other files, wherever they appear.
CODE_CLASSES = ("Lambda", "TFOpLambda", "SlicingOpLambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer",
                "FlaxLayer", "__lambda__")
# Where a serialized object's "module" may point: Keras's own layers, models, initializers...
# (not keras.config, keras.utils or keras.saving, whose functions the CVE-2025-1550 class calls).
OBJECT_MODULES = ("keras", "keras.layers", "keras.models", "keras.initializers", "keras.regularizers",
                  "keras.constraints", "keras.activations", "keras.optimizers", "keras.losses", "keras.metrics",
                  "keras.src.models.", "keras.src.layers.", "keras.src.ops.", "keras.src.initializers.",
                  "keras.src.regularizers.", "keras.src.constraints.", "keras.src.activations.",
                  "keras.src.optimizers.", "keras.src.losses.", "keras.src.metrics.", "keras.dtype_policies",
                  "keras.src.dtype_policies.", "keras.mixed_precision",
                  # tf.keras 2.13-2.15 wrote its models' modules so
                  "keras.engine.", "keras.src.engine.", "keras.src.mixed_precision.")
FUNCTION_MODULES = ("keras.activations", "keras.src.activations.", "keras.losses", "keras.src.losses.",
                    "keras.metrics", "keras.src.metrics.")
# Keras 3's own markers for values in a config (tensors, arrays, slices); __lambda__ is code.
VALUE_CLASSES = ("__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__")
# What tapeout reads from a .keras archive; assets (vocabularies) are left unread.
ARCHIVE_CONFIG, ARCHIVE_METADATA, ARCHIVE_WEIGHTS = "config.json", "metadata.json", "model.weights.h5"


# The forked HDF5 read (check_hdf5) may take this long, plus a second per this many bytes of file.
HDF5_PROBE_SECONDS = 10.0
HDF5_PROBE_RATE = 50 * (1 << 20)


class ModelFileError(RuntimeInputError):
    """A Keras model file refused before any framework read it (exit 2, one line)."""


@dataclass
class LoadedModel:
    model: Any
    config: dict  # the checked (and, for legacy forms, translated) architecture
    format: str  # "keras", "keras2-h5" or "keras2-json"
    notes: list[str] = field(default_factory=list)  # legacy forms rewritten


ConfigCheck = Callable[[dict], None]


# --------------------------------------------------------------- the config
def parse_config(label: str, raw: bytes | str) -> Any:
    """JSON text within the size and depth budgets; anything else is one ModelFileError line."""
    if len(raw) > MAX_CONFIG_BYTES.value():
        raise MAX_CONFIG_BYTES.exceeded(label, f"the architecture config ({len(raw):,} bytes)")
    try:
        cfg = json.loads(raw)
    except RecursionError:
        raise ModelFileError(f"{label}: the architecture config nests too deeply (limit "
                             f"{MAX_CONFIG_DEPTH.value()}; {MAX_CONFIG_DEPTH.env} raises it)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{label}: the architecture config is not valid JSON ({one_line(e)})") from None
    _check_depth(label, cfg)
    return cfg


def _check_depth(label: str, cfg: Any) -> None:
    limit = MAX_CONFIG_DEPTH.value()
    stack = [(cfg, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ModelFileError(f"{label}: the architecture config nests deeper than {limit} levels; "
                                 f"set {MAX_CONFIG_DEPTH.env} to raise the limit for a file you trust")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _malformed(label: str, where: str, value: Any, want: str) -> ModelFileError:
    return ModelFileError(f"{label}: malformed model config: {where} is {_kind(value)}, expected {want}")


def check_shape(label: str, cfg: Any, where: str = "the config") -> None:
    """Every model, layer entry and layer config is an object (explicit checks at the boundary).

    A Sequential's ``config`` may be the plain layer list Keras 1 wrote.
    """
    if not isinstance(cfg, dict):
        raise _malformed(label, where, cfg, "an object (a Keras Functional or Sequential model)")
    cls = cfg.get("class_name")
    if cls not in MODEL_CLASSES:
        got = cls if isinstance(cls, str) else _kind(cls)
        raise ModelFileError(f"{label}: expected a Keras Functional or Sequential model, got {got!r}")
    pre = "" if where == "the config" else f"{where}."
    body = cfg.get("config")
    if isinstance(body, list) and cls == "Sequential":
        layers, lpath = body, f"{pre}config"
    elif isinstance(body, dict):
        layers, lpath = body.get("layers", []), f"{pre}config.layers"
    else:
        raise _malformed(label, f"{pre}config", body, "an object")
    if not isinstance(layers, list):
        raise _malformed(label, lpath, layers, "a list of layers")
    for i, entry in enumerate(layers):
        here = f"{lpath}[{i}]"
        if not isinstance(entry, dict):
            raise _malformed(label, here, entry, "an object (a layer)")
        if not isinstance(entry.get("class_name"), str):
            raise _malformed(label, f"{here}.class_name", entry.get("class_name"), "a string")
        for key in ("name", "module", "registered_name"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise _malformed(label, f"{here}.{key}", entry[key], "a string")
        if not isinstance(entry.get("inbound_nodes", []), list):
            raise _malformed(label, f"{here}.inbound_nodes", entry["inbound_nodes"], "a list")
        if entry["class_name"] in MODEL_CLASSES:
            check_shape(label, entry, here)
        elif not isinstance(entry.get("config"), dict):
            raise _malformed(label, f"{here}.config", entry.get("config"), "an object")


def layer_entries(cfg: dict, where: str = "") -> list[tuple[str, dict]]:
    """(path, entry) for every layer of a shape-checked config, nested models included, depth first."""
    body = cfg.get("config")
    layers, lpath = (body, f"{where}config") if isinstance(body, list) else \
        (body.get("layers", []), f"{where}config.layers")
    out = []
    for i, entry in enumerate(layers):
        out.append((f"{lpath}[{i}]", entry))
        if entry.get("class_name") in MODEL_CLASSES:
            out.extend(layer_entries(entry, f"{lpath}[{i}]."))
    return out


def _index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _ref(label: str, where: str, item: Any) -> tuple[str, int]:
    """(layer name, node index) of one [name, node_index, tensor_index, ...] reference."""
    if not (isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str) and _index(item[1])
            and _index(item[2])):
        raise ModelFileError(f"{label}: malformed model config: {where} is not a [layer name, node index >= 0, "
                             f"tensor index >= 0] reference (got {json.dumps(item)[:80]})")
    return item[0], item[1]


def _node_refs(label: str, where: str, node: Any) -> list[tuple[str, int]]:
    """The (layer, node index) pairs one inbound node reads: tf_keras lists or Keras 3 tensors."""
    if isinstance(node, list):  # tf_keras / Keras 2: [[name, node_index, tensor_index, kwargs], ...]
        return [_ref(label, f"{where}[{j}]", item) for j, item in enumerate(node)]
    if not isinstance(node, dict):
        raise _malformed(label, where, node, "an object or a list")
    refs, stack = [], [(node, where)]  # Keras 3: __keras_tensor__ objects anywhere in args and kwargs
    while stack:
        value, here = stack.pop()
        if isinstance(value, list):
            stack.extend((v, f"{here}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                body = value.get("config")
                history = body.get("keras_history") if isinstance(body, dict) else None
                refs.append(_ref(label, f"{here}.config.keras_history", history))
            else:
                stack.extend((v, f"{here}.{k}") for k, v in value.items())
    return refs


def check_graph(label: str, cfg: dict, where: str = "") -> None:
    """Every inbound node of a functional config refers to a node that will exist, without cycles.

    tf_keras and Keras 3 rebuild a functional model by retrying the nodes they cannot build yet
    until none is left: a reference to a node that never exists (a cycle, or node 5 of a layer
    called once) makes that loop spin forever.
    """
    body = cfg.get("config")
    if isinstance(body, list):
        return
    entries = body.get("layers", [])
    lpath = f"{where}config.layers"
    for i, entry in enumerate(entries):
        # An empty name is the IR's "no value": its layer's output would read as a missing input
        # (found by make fuzz: a Dense whose config names it "" crashed shape inference, exit 4).
        inner = entry.get("config") if isinstance(entry, dict) else None
        if isinstance(inner, dict) and inner.get("name") == "":
            raise _malformed(label, f"{lpath}[{i}].config.name", "", "a non-empty layer name")
        if isinstance(entry, dict) and entry.get("name") == "":
            raise _malformed(label, f"{lpath}[{i}].name", "", "a non-empty layer name")
    if cfg.get("class_name") != "Sequential":
        counts: dict[str, int] = {}
        for i, entry in enumerate(entries):
            name = entry.get("name")
            if not isinstance(name, str):
                name = entry["config"].get("name") if isinstance(entry.get("config"), dict) else None
            if not isinstance(name, str):
                raise _malformed(label, f"{lpath}[{i}].name", name, "a string")
            if name in counts:
                raise ModelFileError(f"{label}: malformed model config: {lpath}[{i}] repeats layer name {name!r}")
            nodes = entry.get("inbound_nodes", [])
            # A layer called k times has nodes 0..k-1; an input has node 0; any other uncalled layer none.
            counts[name] = len(nodes) if nodes else int(entry.get("class_name") == "InputLayer")
        waiting: dict[tuple[str, int], int] = {}  # node -> references not yet built
        users: dict[tuple[str, int], list[tuple[str, int]]] = {}
        ready = []
        for i, entry in enumerate(entries):
            name = entry.get("name") if isinstance(entry.get("name"), str) else entry["config"]["name"]
            nodes = entry.get("inbound_nodes", [])
            if not nodes:
                ready.append((name, 0))
            for k, node in enumerate(nodes):
                here = f"{lpath}[{i}].inbound_nodes[{k}]"
                deps = _node_refs(label, here, node) + ([(name, k - 1)] if k else [])
                for src, idx in deps:
                    if src not in counts:
                        raise ModelFileError(f"{label}: malformed model config: {here} reads layer {src!r}, "
                                             "which the model does not have")
                    if idx >= counts[src]:
                        raise ModelFileError(f"{label}: malformed model config: {here} reads node {idx} of layer "
                                             f"{src!r}, which has {counts[src]}")
                    users.setdefault((src, idx), []).append((name, k))
                waiting[(name, k)] = len(deps)
                if not deps:
                    ready.append((name, k))
        built = 0
        while ready:
            node = ready.pop()
            built += 1
            for user in users.get(node, []):
                waiting[user] -= 1
                if waiting[user] == 0:
                    ready.append(user)
        stuck = sorted(n for n, left in waiting.items() if left > 0)
        if stuck:
            raise ModelFileError(f"{label}: malformed model config: layer {stuck[0][0]!r} (in {lpath}) depends on "
                                 "itself through its inbound nodes (a cycle)")
        for key in ("input_layers", "output_layers"):
            refs = body.get(key, [])
            refs = [refs] if isinstance(refs, list) and refs and isinstance(refs[0], str) else refs
            if not isinstance(refs, list):
                raise _malformed(label, f"{where}config.{key}", refs, "a list")
            for j, item in enumerate(refs):
                src, idx = _ref(label, f"{where}config.{key}[{j}]", item)
                if src not in counts or idx >= counts[src]:
                    raise ModelFileError(f"{label}: malformed model config: {where}config.{key}[{j}] names node "
                                         f"{idx} of layer {src!r}, which the model does not have")
    for i, entry in enumerate(entries):
        if entry.get("class_name") in MODEL_CLASSES:
            check_graph(label, entry, f"{lpath}[{i}].")


def _supported() -> str:
    return ", ".join(KERAS_LAYERS)


def check_safe(label: str, cfg: dict) -> None:
    """Refuse code, custom classes and foreign modules anywhere in a shape-checked config."""
    for where, entry in layer_entries(cfg):
        cls, module = entry["class_name"], entry.get("module")
        body = entry.get("config")
        name = entry.get("name") or (body.get("name") if isinstance(body, dict) else None)
        if module is not None and module.startswith(OP_MODULE):
            if cls not in KERAS_OPERATIONS:
                raise ModelFileError(f"{label}: Keras operation {name!r} ({cls}) is not supported; supported "
                                     f"operations: {', '.join(KERAS_OPERATIONS)}")
            continue
        registered = entry.get("registered_name")
        if hgq2_files.is_hgq2(entry):  # HGQ2's registered layers: its own allow-list
            why = hgq2_files.refusal(entry, hgq2_files.HGQ2_LAYERS)
            if why:
                raise ModelFileError(f"{label}: layer {name!r} ({cls}, HGQ2) {why}; supported HGQ2 layers: "
                                     f"{hgq2_files.supported()}")
            continue
        custom = (module is not None and module != "keras" and not module.startswith("keras.")) \
            or registered not in (None, cls)
        if cls in CODE_CLASSES or custom:
            raise ModelFileError(f"{label}: layer {name!r} ({cls}) holds code: tapeout does not execute code "
                                 f"from model files; supported layers: {_supported()}")
        if cls not in KERAS_LAYERS:
            raise ModelFileError(f"{label}: layer {name!r} ({cls}) is not supported; supported layers: "
                                 f"{_supported()}")
    _check_objects(label, cfg)


def _check_objects(label: str, cfg: Any) -> None:
    """Every serialized object (a dict with class_name), at any depth, names Keras's own code."""
    stack: list[tuple[Any, str]] = [(cfg, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))  # a list is never the root
            continue
        if not isinstance(node, dict):
            continue
        stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in node.items())
        if "class_name" not in node:
            continue
        cls, module, registered = node.get("class_name"), node.get("module"), node.get("registered_name")
        for key, value in (("class_name", cls), ("module", module), ("registered_name", registered)):
            if value is not None and not isinstance(value, str):
                raise _malformed(label, f"{where}.{key}" if where else key, value, "a string")
        where = where or "the config"
        if hgq2_files.is_hgq2(node):
            why = hgq2_files.refusal(node, hgq2_files.HGQ2_LAYERS + hgq2_files.HGQ2_OBJECTS)
            if why:
                raise ModelFileError(f"{label}: {where} (HGQ2 {cls}) {why}: tapeout loads HGQ2's layers "
                                     f"{hgq2_files.supported()} and their quantizer configs only")
            continue
        if cls in CODE_CLASSES or (cls or "").startswith("__") and cls not in VALUE_CLASSES:
            raise ModelFileError(f"{label}: {where} is a {cls} object, which holds code: tapeout does not "
                                 "execute code from model files")
        if registered not in (None, cls):
            raise ModelFileError(f"{label}: {where} is a custom object ({registered}): tapeout loads Keras's "
                                 "own classes only")
        if cls == "function":
            ok = isinstance(node.get("config"), str) and (module is None or module.startswith(FUNCTION_MODULES))
            if not ok:
                raise ModelFileError(f"{label}: {where} names function {node.get('config')!r} in module "
                                     f"{module!r}: only Keras's activations are loaded")
        elif module is not None and not (module in OBJECT_MODULES or module.startswith(
                tuple(m for m in OBJECT_MODULES if m.endswith(".")))):
            raise ModelFileError(f"{label}: {where} names module {module!r} (class {cls!r}): tapeout loads "
                                 "Keras's own layers, initializers and regularizers only")


# ------------------------------------------------------------------- HDF5
@dataclass
class Hdf5Summary:
    elements: int  # declared elements over every dataset
    nbytes: int  # declared bytes over every dataset


def check_hdf5(label: str, source: str | Path | io.BytesIO) -> Hdf5Summary:
    """Refuse an HDF5 file that reads other files or declares more than it stores.

    Links, external storage and virtual datasets are checked through the low-level API, so
    nothing is followed or read; declared sizes come from the dataspace, not the data. Then
    every attribute and dataset is read once, in a forked child with a time limit: a damaged
    file can make the HDF5 library loop or crash in C, where no exception reaches (found by
    make fuzz: a legacy .h5 whose model_config read never returned). The framework reads the
    same bytes only after the child did so.
    """
    if not hasattr(os, "fork"):
        return _check_and_read(label, source)
    size = source.getbuffer().nbytes if isinstance(source, io.BytesIO) else os.stat(source).st_size
    limit = HDF5_PROBE_SECONDS + size / HDF5_PROBE_RATE
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any parent's cleanup
        code = 0
        try:
            os.close(r)
            # A crash in the HDF5 library is the parent's to report, in one line: no Python
            # stack dump on the user's terminal (pytest and python -X faulthandler enable it).
            faulthandler.disable()
            try:
                s = _check_and_read(label, source)
                payload = {"elements": s.elements, "nbytes": s.nbytes}
            except RuntimeInputError as e:
                payload = {"error": str(e)}
            os.write(w, json.dumps(payload).encode())
        except BaseException:  # noqa: BLE001 - anything else: the parent reports a damaged file
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return _probe_result(label, pid, r, limit)


def _probe_result(label: str, pid: int, r: int, limit: float) -> Hdf5Summary:
    chunks, deadline = [], time.monotonic() + limit
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise ModelFileError(f"{label}: reading its HDF5 structure did not finish in {limit:.0f} s "
                                     "(a damaged file)")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    try:
        payload = json.loads(b"".join(chunks))
    except ValueError:
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}"
        raise ModelFileError(f"{label}: not a readable HDF5 file (the HDF5 library failed on it: {how})") from None
    if "error" in payload:
        raise ModelFileError(payload["error"])
    return Hdf5Summary(payload["elements"], payload["nbytes"])


def _check_and_read(label: str, source: str | Path | io.BytesIO) -> Hdf5Summary:
    import h5py

    try:
        f = h5py.File(source, "r")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{label}: not a readable HDF5 file ({one_line(e)})") from None
    try:
        with f:
            summary = _check_hdf5(label, f)
            objects = [f]
            f.visititems(lambda _, obj: objects.append(obj))
            for obj in objects:  # what a framework reads: every attribute, every dataset
                for key in obj.attrs:
                    obj.attrs[key]
                if isinstance(obj, h5py.Dataset):
                    obj[()]
            return summary
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # a damaged file: h5py's many types
        raise ModelFileError(f"{label}: not a readable HDF5 file ({type(e).__name__}: {one_line(e)})") from None


def _check_hdf5(label: str, f: Any) -> Hdf5Summary:
    import h5py

    found: list[str] = []

    def link(name: bytes, info: Any) -> None:
        if info.type != h5py.h5l.TYPE_HARD and not found:
            kind = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link"}.get(
                info.type, "a user-defined link")
            found.append(f"{name.decode(errors='replace')!r} is {kind}")
        return None

    f.id.links.visit(link, info=True)
    if found:
        raise ModelFileError(f"{label}: {found[0]}; tapeout refuses HDF5 links (they can read other files)")
    total = Hdf5Summary(0, 0)
    datasets: list[tuple[str, Any]] = []
    f.visititems(lambda name, obj: datasets.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    ratio, budget = MAX_TENSOR_RATIO.value(), MAX_MODEL_BYTES.value()
    for name, ds in datasets:
        plist = ds.id.get_create_plist()
        if plist.get_external_count() > 0:
            raise ModelFileError(f"{label}: dataset {name!r} keeps its data in another file (HDF5 external "
                                 "storage); tapeout reads weights from the model file only")
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            raise ModelFileError(f"{label}: dataset {name!r} is a virtual dataset (it maps other files); "
                                 "tapeout reads weights from the model file only")
        elements = int(ds.id.get_space().get_simple_extent_npoints())
        declared = elements * int(ds.id.get_type().get_size())
        stored = int(ds.id.get_storage_size())
        if declared > RATIO_FLOOR and declared > ratio * max(stored, 1):
            raise MAX_TENSOR_RATIO.exceeded(label, f"dataset {name!r}: {declared:,} bytes declared over "
                                                   f"{stored:,} stored")
        total.elements += elements
        total.nbytes += declared
    if total.nbytes > budget:
        raise MAX_MODEL_BYTES.exceeded(label, f"the weights it declares ({total.nbytes:,} bytes)")
    return total


def _declared_weights(cfg: dict) -> tuple[int, str]:
    """A lower bound on the weights a config's layers create, and the largest layer's name.

    Only the settings that size a weight alone (units, filters times the kernel) count, so the
    bound never exceeds what the layers really hold.
    """
    total, biggest, most = 0, "", -1
    for _, entry in layer_entries(cfg):
        c = entry.get("config")
        if not isinstance(c, dict):
            continue
        n = 0
        for key in ("units", "filters", "output_dim", "nb_filter"):
            if isinstance(c.get(key), int) and c[key] > 0:
                n = max(n, c[key])
        kernel = c.get("kernel_size")
        if n and isinstance(kernel, list) and all(isinstance(k, int) and k > 0 for k in kernel):
            for k in kernel:
                n *= k
        total += n
        if n > most:
            biggest, most = str(c.get("name") or entry.get("name")), n
    return total, biggest


def _check_declared(label: str, weights_label: str, cfg: dict, summary: Hdf5Summary) -> None:
    need, layer = _declared_weights(cfg)
    if need > summary.elements + RATIO_FLOOR:
        raise ModelFileError(f"{label}: the config declares at least {need:,} weights (layer {layer!r} the most) "
                             f"but {weights_label} holds {summary.elements:,}; refused before building the model")


# ------------------------------------------------------------ the archives
def _read_member(label: str, z: zipfile.ZipFile, name: str, limit: int, budget_of: Any) -> bytes:
    info = z.getinfo(name)
    if info.file_size > limit:
        raise budget_of.exceeded(label, f"member {name} ({info.file_size:,} bytes uncompressed)")
    ratio = MAX_ZIP_RATIO.value()
    if info.file_size > RATIO_FLOOR and info.file_size > ratio * max(info.compress_size, 1):
        raise MAX_ZIP_RATIO.exceeded(label, f"member {name} ({info.file_size:,} bytes from "
                                            f"{info.compress_size:,} compressed)")
    with z.open(info) as f:
        data = f.read(limit + 1)  # the header's sizes may lie: never read past the budget
    if len(data) > limit:
        raise budget_of.exceeded(label, f"member {name} (more than its header declares)")
    return data


def read_archive(path: Path) -> tuple[Any, dict[str, bytes]]:
    """The parsed config.json and the members tapeout needs, each read within budget."""
    label = str(path)
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{label}: not a Keras 3 .keras archive (not a zip file)")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if ARCHIVE_CONFIG not in names:
                raise ModelFileError(f"{label}: not a readable Keras 3 archive (no {ARCHIVE_CONFIG})")
            if ARCHIVE_WEIGHTS not in names:
                raise ModelFileError(f"{label}: not a readable Keras 3 archive (no {ARCHIVE_WEIGHTS}; "
                                     "weights in other forms are not supported)")
            members = {ARCHIVE_CONFIG: _read_member(label, z, ARCHIVE_CONFIG, MAX_CONFIG_BYTES.value(),
                                                    MAX_CONFIG_BYTES)}
            if ARCHIVE_METADATA in names:
                members[ARCHIVE_METADATA] = _read_member(label, z, ARCHIVE_METADATA, MAX_CONFIG_BYTES.value(),
                                                         MAX_CONFIG_BYTES)
            members[ARCHIVE_WEIGHTS] = _read_member(label, z, ARCHIVE_WEIGHTS, MAX_MODEL_BYTES.value(),
                                                    MAX_MODEL_BYTES)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        raise ModelFileError(f"{label}: not a readable Keras 3 archive ({type(e).__name__}: "
                             f"{one_line(e)})") from None
    return parse_config(label, members[ARCHIVE_CONFIG]), members


def _h5_config(path: Path) -> Any:
    """The model_config attribute of a legacy .h5, its size checked before it is read."""
    import h5py

    label = str(path)
    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise ModelFileError(f"{label}: this .h5 holds no model architecture (weights only?); "
                                     "pass the architecture .json with this file as its weights")
            size = f.attrs.get_id("model_config").get_storage_size()
            if size > MAX_CONFIG_BYTES.value():
                raise MAX_CONFIG_BYTES.exceeded(label, f"the stored model_config ({size:,} bytes)")
            raw = f.attrs["model_config"]
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # a damaged file: h5py's many types
        raise ModelFileError(f"{label}: not a readable HDF5 file ({one_line(e)})") from None
    if hasattr(raw, "tolist") and not isinstance(raw, (bytes, str)):
        raw = raw.tolist()
    if not isinstance(raw, (bytes, str)):
        raise ModelFileError(f"{label}: the stored model_config is {_kind(raw)}, expected JSON text")
    return parse_config(label, raw)


def _checked(label: str, cfg: Any, check: ConfigCheck | None) -> tuple[dict, list[str]]:
    check_shape(label, cfg)
    try:
        cfg, notes = translate(cfg)
    except LegacyConfigError as e:
        raise ModelFileError(f"{label}: {e}") from None
    check_shape(label, cfg)
    check_safe(label, cfg)  # first: a file that holds code is refused as such, whatever else is wrong
    check_graph(label, cfg)
    if check is not None:
        check(cfg)
    return cfg, notes


def _framework_error(label: str, what: str, e: BaseException) -> ModelFileError:
    return ModelFileError(f"{label}: {what}: {type(e).__name__}: {one_line(e)}")


def _elements(shape: Any) -> int:
    try:
        return math.prod(int(d) for d in shape if d is not None)
    except (TypeError, ValueError):
        return 0


@contextmanager
def _bounded_weights(label: str, weights_label: str, limit: int) -> Iterator[list[str]]:
    """While a framework builds a model, refuse any weight larger than the weights file could fill.

    A weight's size comes from the shapes flowing through the model (a Dense after a Flatten of
    a [100000, 100000] input), which only the framework computes; both create every weight
    through ``Layer.add_weight``, so the check sits there, before the initializer allocates.
    """
    refused: list[str] = []
    patched = []
    for name in ("keras", "tf_keras"):
        module = sys.modules.get(name)
        layer = getattr(getattr(module, "layers", None), "Layer", None)
        if layer is None or "add_weight" not in layer.__dict__:
            continue
        original = layer.__dict__["add_weight"]

        def add_weight(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            shape = kwargs.get("shape")
            if shape is None:
                shape = next((a for a in args if isinstance(a, (tuple, list))), ())
            n = _elements(shape)
            if n > limit:
                refused.append(f"{label}: layer {getattr(self, 'name', '?')!r} would create a weight of {n:,} "
                               f"elements, more than {weights_label} declares in all ({limit - RATIO_FLOOR:,}); "
                               "refused before allocating")
                raise ModelFileError(refused[-1])
            return _original(self, *args, **kwargs)

        layer.add_weight = add_weight
        patched.append((layer, original))
    try:
        yield refused
    finally:
        for layer, original in patched:
            layer.add_weight = original


def _tf_keras_model(label: str, cfg: dict, weights: Path, summary: Hdf5Summary) -> Any:
    import tf_keras

    with _bounded_weights(label, str(weights), summary.elements + RATIO_FLOOR) as refused:
        try:
            model = tf_keras.models.model_from_json(json.dumps(cfg))
        except Exception as e:  # any builder failure on a bad file is the user's input problem
            if refused:
                raise ModelFileError(refused[0]) from None
            raise _framework_error(label, "tf_keras could not build the model", e) from None
    try:
        load_weights(model, weights)
    except Exception as e:  # see above
        raise _framework_error(str(weights), "could not load the weights", e) from None
    return model


def _keras3_model(label: str, cfg: dict, members: dict[str, bytes], safe_mode: bool, summary: Hdf5Summary) -> Any:
    import keras  # noqa: F401 - the backend is set up before saving_lib
    from keras.src.saving import saving_lib

    if hgq2_files.names_hgq2(layer_entries(cfg)):
        hgq2_files.register()  # its classes, checked above, must be registered before Keras deserializes

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(ARCHIVE_CONFIG, json.dumps(cfg))
        for name in (ARCHIVE_METADATA, ARCHIVE_WEIGHTS):
            if name in members:
                z.writestr(name, members[name])
    buf.seek(0)
    with _bounded_weights(label, ARCHIVE_WEIGHTS, summary.elements + RATIO_FLOOR) as refused:
        try:
            # A file object: Keras reads these three members in memory and extracts nothing.
            return saving_lib.load_model(buf, compile=False, safe_mode=safe_mode)
        except Exception as e:  # see _tf_keras_model
            if refused:
                raise ModelFileError(refused[0]) from None
            raise _framework_error(label, "Keras could not load the model", e) from None


# The last model loaded, by its files' identity: compile reads the source once for the IR and runs
# it again for verification, and a Keras load costs seconds. One entry, so a `tapeout build` of
# many models holds one at a time.
_LAST: tuple[tuple[Any, ...], LoadedModel] | None = None
_LAST_LOCK = threading.Lock()


def _files_key(p: Path, w: Path | None, safe_mode: bool) -> tuple[Any, ...] | None:
    """Each file's path, device, inode, size and modification time (nanoseconds): a file rewritten
    since changes one of them, and taking them reads no bytes (hashing read every model twice)."""
    try:
        files = [(str(f.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                 for f in ([p] if w is None else [p, w]) for st in (f.stat(),)]
    except OSError:
        return None  # the load reports it
    # The budgets the load checked against: a file loaded under one is not passed under another.
    budgets = tuple(os.environ.get(b.env) for b in BUDGETS)
    return (*files, safe_mode, budgets)


def load_keras_model(path: str | Path, weights: str | Path | None = None, *, safe_mode: bool = True,
                     check: ConfigCheck | None = None) -> LoadedModel:
    """Check a Keras model file (and its weights) as described above, then load it.

    ``check`` runs on the checked config before any framework sees it (the compiler's
    supported-layer check). Raises ModelFileError (exit 2); ImportError when the framework is
    missing. Loading the same, unchanged files again in this process returns the same model
    (``check`` still runs on its config).
    """
    global _LAST
    key = _files_key(Path(path), None if weights is None else Path(weights), safe_mode)
    with _LAST_LOCK:
        last = _LAST
    if key is not None and last is not None and last[0] == key:
        if check is not None:
            check(last[1].config)
        return last[1]
    loaded = _load_keras_model(path, weights, safe_mode, check)
    if key is not None:
        with _LAST_LOCK:
            _LAST = (key, loaded)
    return loaded


def _load_keras_model(path: str | Path, weights: str | Path | None, safe_mode: bool,
                      check: ConfigCheck | None) -> LoadedModel:
    p = Path(path)
    label = str(p)
    w = Path(weights) if weights is not None else None
    for f in (p, w):
        if f is not None and not f.is_file():
            raise ModelFileError(f"{f}: no such file")
    suffix = p.suffix.lower()
    if w is not None and suffix != JSON_SUFFIX:
        raise ModelFileError(f"{label}: a weights file applies to an architecture .json only")
    if suffix == KERAS3_SUFFIX:
        raw, members = read_archive(p)
        cfg, notes = _checked(label, raw, check)
        summary = check_hdf5(f"{label} ({ARCHIVE_WEIGHTS})", io.BytesIO(members[ARCHIVE_WEIGHTS]))
        _check_declared(label, ARCHIVE_WEIGHTS, cfg, summary)
        return LoadedModel(_keras3_model(label, cfg, members, safe_mode, summary), cfg, "keras", notes)
    if suffix in LEGACY_SUFFIXES:
        summary = check_hdf5(label, p)  # first: the child reads model_config before this process does
        cfg, notes = _checked(label, _h5_config(p), check)
        _check_declared(label, "the file", cfg, summary)
        return LoadedModel(_tf_keras_model(label, cfg, p, summary), cfg, "keras2-h5", notes)
    if suffix == JSON_SUFFIX:
        if w is None:
            raise ModelFileError(f"{label}: an architecture JSON needs its weights .h5 (--weights)")
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES.value():
            raise MAX_CONFIG_BYTES.exceeded(label, f"the architecture JSON ({size:,} bytes)")
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise ModelFileError(f"{label}: not a readable JSON architecture ({one_line(e)})") from None
        cfg, notes = _checked(label, parse_config(label, raw), check)
        summary = check_hdf5(str(w), w)
        _check_declared(label, str(w), cfg, summary)
        return LoadedModel(_tf_keras_model(label, cfg, w, summary), cfg, "keras2-json", notes)
    raise ModelFileError(f"{label}: not a Keras model file (expected .keras, .h5, .hdf5 or .json)")
