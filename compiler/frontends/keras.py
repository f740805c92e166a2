"""Keras front end: Keras 3 ``.keras``, legacy Keras 2 ``.h5`` and JSON + weights ``.h5`` into the IR.

Safety: every file goes through ``tapeout.runtime.model_files.load_keras_model``, the one gate
for Keras files that the source runner uses too (budgets, config shape, no code or custom
classes, no HDF5 links or external storage; legacy Keras 1 forms rewritten as data first).
:func:`check_config` adds what only the compiler knows, the activations the IR converts, and
runs inside that gate, before any Keras loader sees the file. A ``.keras`` config naming HGQ2
layers gets the HGQ2 front end's check there instead (``frontends.hgq2``) and converts with its
layers added: the gate's one read of the config serves both.

Conversion walks the live functional graph from the model outputs back through
each tensor's ``_keras_history`` (layer, node index, tensor index) and that
node's input tensors. Keras 3 and tf_keras share this structure (only the name
of a node's input list differs), Sequential models expose theirs through
``model.inputs``/``model.outputs``, and a model used as a layer is inlined by
converting its own graph with its inputs bound to the caller's values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapeout.compiler.errors import FrontendError
from tapeout.compiler.frontends.keras_layers import (CONVERTERS, MODEL_CLASSES, OP_MODULE, OPERATIONS,
                                                     SUPPORTED_CLASSES, Emitter, convert_operation, is_operation)
from tapeout.compiler.ir import BATCH, Graph, IRError, TensorType
from tapeout.runtime import hgq2_files
from tapeout.runtime.errors import one_line
from tapeout.runtime.model_files import ModelFileError, layer_entries, load_keras_model

_LAYOUTS = {2: "NC", 3: "NWC", 4: "NHWC", 5: "NDHWC"}
_LAYOUTS_FIRST = {2: "NC", 3: "NCW", 4: "NCHW", 5: "NCDHW"}  # models with channels_first layers ('th')


# ------------------------------------------------------------ safety check
def _layer_configs(cfg: dict) -> list[dict]:
    """Every layer entry of a (possibly nested) model config, depth first."""
    out = []
    for layer in (cfg.get("config") or {}).get("layers") or []:
        out.append(layer)
        if layer.get("class_name") in MODEL_CLASSES:
            out.extend(_layer_configs(layer))
    return out


def _refuse(path: Path, name: Any, cls: Any, why: str) -> FrontendError:
    return FrontendError(f"{path}: layer {name!r} ({cls}) {why}; supported layers: {', '.join(SUPPORTED_CLASSES)}")


def check_config(path: Path, cfg: Any) -> None:
    """Refuse unsupported classes and activations from the stored (already shape- and code-checked) config."""
    from tapeout.compiler.frontends.keras_layers import ACTIVATION_NAMES

    for layer in _layer_configs(cfg):
        cls = layer.get("class_name")
        name = layer.get("name") or (layer.get("config") or {}).get("name")
        if str(layer.get("module")).startswith(OP_MODULE):  # an operation on tensors (x + 3.0), not a layer
            if cls not in OPERATIONS:
                raise FrontendError(f"{path}: Keras operation {name!r} ({cls}) is not supported; supported "
                                    f"operations: {', '.join(sorted(OPERATIONS))}")
            continue
        if cls not in SUPPORTED_CLASSES:
            raise _refuse(path, name, cls, "is not supported")
        act = (layer.get("config") or {}).get("activation")
        if isinstance(act, dict):
            act = act.get("config") if act.get("class_name") == "function" else act
        if act is not None and act not in ACTIVATION_NAMES:
            raise FrontendError(f"{path}: layer {name!r} ({cls}) has activation {act!r}, which is not supported; "
                                f"supported: {', '.join(ACTIVATION_NAMES)}")


# ------------------------------------------------------------------ loading
def load_keras(path: str | Path, weights: str | Path | None = None, *, safe_mode: bool = True) -> Graph:
    """Load a Keras model file into a shape-checked IR graph.

    The file goes through tapeout.runtime.model_files (the one gate for Keras files: budgets,
    config shape, no code, no HDF5 links or external storage) with the supported-layer check
    added, before any framework sees it.
    """
    from tapeout.compiler.quiet import quiet_environment

    quiet_environment()
    p = Path(path)
    if not p.is_file():
        raise FrontendError(f"{p}: no such model file")
    if p.suffix.lower() not in (".keras", ".h5", ".hdf5", ".json"):
        raise FrontendError(f"{p}: not a Keras model file (expected .keras, .h5 or .json)")
    if p.suffix.lower() == ".json" and weights is None:
        raise FrontendError(f"{p}: an architecture JSON needs its weights .h5 (--weights)")
    if weights is not None and not Path(weights).is_file():
        raise FrontendError(f"{weights}: no such weights file")
    hgq2: list[bool] = []  # set by the check: the config names HGQ2 layers

    def check(cfg: dict) -> None:
        # The gate's one read of the config decides HGQ2 too (a .keras file only, as before).
        hgq2.clear()
        if p.suffix.lower() == ".keras" and hgq2_files.names_hgq2(layer_entries(cfg)):
            from tapeout.compiler.frontends.hgq2 import check_file

            check_file(p, cfg)
            hgq2.append(True)
        else:
            check_config(p, cfg)

    try:
        loaded = load_keras_model(p, weights, safe_mode=safe_mode, check=check)
    except ModelFileError as e:
        raise FrontendError(str(e)) from None
    converters: dict | None = None
    if hgq2:
        from tapeout.compiler.frontends.hgq2_layers import CONVERTERS as HGQ2_CONVERTERS

        converters = HGQ2_CONVERTERS
    graph = model_to_graph(loaded.model, converters)
    graph.metadata["source_format"] = loaded.format
    if loaded.notes:
        graph.metadata["notes"] = loaded.notes  # type: ignore[assignment]  # the report copies the list
    if hgq2:
        graph.metadata["quantization_aware"] = "hgq2"
    return graph


# --------------------------------------------------------------- conversion
def _flat(x: Any) -> list[Any]:
    if isinstance(x, dict):
        return [t for k in sorted(x) for t in _flat(x[k])]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat(v)]
    return [x]


def _history(t: Any) -> tuple[Any, int, int]:
    h = t._keras_history
    return h[0], int(h[1]), int(h[2])


def _key(t: Any) -> tuple[int, int, int]:
    layer, node_index, tensor_index = _history(t)
    return id(layer), node_index, tensor_index


def _node_io(t: Any) -> tuple[Any, list[Any], list[Any]]:
    layer, node_index, _ = _history(t)
    node = layer._inbound_nodes[node_index]
    # tf_keras names the flat list of a node's Keras inputs keras_inputs, Keras 3 input_tensors
    ins = node.keras_inputs if hasattr(node, "keras_inputs") else node.input_tensors
    outs = node.output_tensors if hasattr(node, "output_tensors") else node.outputs
    return layer, _flat(ins), _flat(outs)


def _emit_model(model: Any, e: Emitter, feeds: dict[tuple, str], converters: dict | None = None) -> list[str]:
    """Emit ``model``'s graph with its inputs bound by ``feeds``; returns its output values.

    ``converters`` adds layer classes (the HGQ2 front end's) to the Keras ones."""
    table = CONVERTERS if converters is None else {**CONVERTERS, **converters}
    values = dict(feeds)
    outputs = _flat(model.outputs)
    stack = list(outputs)
    while stack:
        t = stack[-1]
        if _key(t) in values:
            stack.pop()
            continue
        layer, ins, outs = _node_io(t)
        missing = [x for x in ins if _key(x) not in values]
        if missing:
            stack.extend(missing)
            continue
        stack.pop()
        cls = type(layer).__name__
        in_values = [values[_key(x)] for x in ins]
        if is_operation(layer):  # its constants are in the call arguments, not the input tensors
            args = layer._inbound_nodes[_history(t)[1]].arguments
            try:
                produced = [convert_operation(e, layer, list(args.args), dict(args.kwargs),
                                              lambda x: values[_key(x)])]
            except IRError as err:
                raise FrontendError(f"operation {layer.name!r} ({cls}): {err}") from None
        elif cls in MODEL_CLASSES:
            inner = {_key(x): v for x, v in zip(_flat(layer.inputs), in_values)}
            produced = _emit_model(layer, e, inner, converters)
        elif cls in table:
            cfg = layer.get_config()
            try:
                produced = [table[cls](e, layer, cfg, in_values)]
            except IRError as err:
                raise FrontendError(f"layer {layer.name!r} ({cls}): {err}") from None
            except (TypeError, ValueError, KeyError, IndexError) as err:  # a value the framework took as is
                raise FrontendError(f"layer {layer.name!r} ({cls}): its config is not understood "
                                    f"({type(err).__name__}: {one_line(err)})") from None
        else:
            raise FrontendError(f"layer {layer.name!r} ({cls}) is not supported; "
                                f"supported layers: {', '.join(SUPPORTED_CLASSES)}")
        if len(produced) != len(outs):
            raise FrontendError(f"layer {layer.name!r} ({cls}) has {len(outs)} outputs; only "
                                f"{len(produced)} could be mapped")
        for x, v in zip(outs, produced):
            values[_key(x)] = v
    return [values[_key(t)] for t in outputs]


def _input_type(model_name: str, name: str, t: Any) -> TensorType:
    shape = tuple(t.shape)
    dtype = str(getattr(t.dtype, "name", t.dtype))
    if "float" not in dtype:
        raise FrontendError(f"model {model_name!r}: input {name!r} has dtype {dtype}; only float inputs are supported")
    if len(shape) < 2 or any(d is None for d in shape[1:]):
        raise FrontendError(f"model {model_name!r}: input {name!r} has shape {shape}; every dimension but the "
                            "batch must be static (give keras.Input a full shape)")
    return TensorType((BATCH, *(int(d) for d in shape[1:])), "float32")


def _rename(graph: Graph, old: str, new: str) -> None:
    for n in graph.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
        n.outputs = [new if o == old else o for o in n.outputs]
    graph.outputs = [new if o == old else o for o in graph.outputs]
    graph.types[new] = graph.types.pop(old)


def model_to_graph(model: Any, converters: dict | None = None) -> Graph:
    """Convert a loaded Keras 3 or tf_keras functional/Sequential model (``converters``: see _emit_model)."""
    try:
        inputs, outputs = _flat(model.inputs), _flat(model.outputs)
    except (AttributeError, ValueError):
        raise FrontendError(f"model {model.name!r} has no defined inputs; build it on a keras.Input") from None
    graph = Graph(name=model.name, inputs=[], outputs=[])
    # A channels_first ('th') model keeps its layout between layers; its I/O is channels-last in
    # the IR, as for NCHW ONNX models, with a transpose at each edge (io_layouts says NCHW).
    first = _channels_first(model)
    layouts = _LAYOUTS_FIRST if first else _LAYOUTS
    emitter = Emitter(graph)
    feeds = {}
    for t in inputs:
        name = _history(t)[0].name
        ttype = _input_type(model.name, name, t)
        graph.inputs.append(name)
        graph.io_layouts[name] = layouts.get(len(t.shape), "")
        feeds[_key(t)] = name
        graph.types[name] = ttype
        rank = len(ttype.shape)
        if first and rank >= 3:
            graph.types[name] = TensorType((ttype.shape[0], *ttype.shape[2:], ttype.shape[1]), ttype.dtype)
            feeds[_key(t)] = emitter.node("transpose", f"{name}/to_channels_first", [name],
                                          perm=(0, rank - 1, *range(1, rank - 1)))
    produced = _emit_model(model, emitter, feeds, converters)
    if first:
        produced = [emitter.node("transpose", f"{v}/to_channels_last", [v], perm=(0, *range(2, r), 1))
                    if (r := len(emitter.shape(v))) >= 3 else v for v in produced]
    graph.outputs = produced
    _name_outputs(graph, model, outputs)
    try:
        graph.infer_shapes()
        graph.check()
    except IRError as e:
        raise FrontendError(f"model {model.name!r}: the converted graph is inconsistent: {e}") from None
    for value, t in zip(graph.outputs, outputs):
        want = (BATCH, *tuple(t.shape)[1:])
        if first and len(want) >= 3:
            want = (BATCH, *want[2:], want[1])
        if graph.types[value].shape != want:
            raise FrontendError(f"model {model.name!r}: output {value!r} infers to {graph.types[value]} but Keras "
                                f"says {tuple(t.shape)}")
        graph.io_layouts[value] = layouts.get(len(want), "")
    return graph


def _channels_first(model: Any) -> bool:
    """Whether any layer (nested models included) works channels-first."""
    for layer in getattr(model, "layers", []):
        if type(layer).__name__ in MODEL_CLASSES:
            if _channels_first(layer):
                return True
        elif type(layer).__name__ != "Flatten" and getattr(layer, "data_format", None) == "channels_first":
            return True
    return False


def _name_outputs(graph: Graph, model: Any, outputs: list[Any]) -> None:
    """Give graph outputs the model's output names where that does not clash."""
    names = list(getattr(model, "output_names", None) or [_history(t)[0].name for t in outputs])
    produced = {o for n in graph.nodes for o in n.outputs}
    for value, want in zip(list(graph.outputs), names):
        if value == want or value not in produced or graph.outputs.count(value) > 1:
            continue
        if graph.unique_name(want) == want:
            _rename(graph, value, want)
