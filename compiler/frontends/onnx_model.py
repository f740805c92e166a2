"""Reading an ONNX file safely and preparing it for conversion.

Steps: parse the protobuf (never executing anything), read external data only from
the model's own folder, refuse custom domains, lift opsets older
than 7 with ``onnx.version_converter`` (the lift the onnxruntime source runner also
applies), validate with the ONNX checker (after the lift: old exporters wrote attributes
today's checker rejects), pin a concrete batch and fold every constant and shape
computation with onnxscript's constant folder.

Batch: every shape computation is folded with a concrete batch ``b`` (the source's
fixed batch, or 1 when it is dynamic), so ``Shape -> Gather -> Concat -> Reshape``
chains become constant targets whose dim 0 is ``b``; the converter reads such a
dim 0 as "the batch" and the IR gets a symbolic one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Iterator

from tapeout.compiler.errors import FrontendError
from tapeout.runtime.runners.onnxrt import LIFT_OPSET as MIN_OPSET  # one lift for import and source run
STANDARD_DOMAINS = ("", "ai.onnx")
# Folding must not build huge constants (ConstantOfShape of a batch-sized shape...).
MAX_FOLDED_ELEMENTS = 1 << 28


@dataclass
class Prepared:
    """A folded model ready for conversion (an ``onnx_ir.Model``) and what loading decided."""

    model: Any
    opset: int
    batch: int  # the concrete batch every shape was folded with
    fixed_batch: int | None  # the source's static batch; None when it is dynamic
    notes: list[str] = field(default_factory=list)
    # Output value -> the name its node has in the file (onnx-ir names unnamed nodes it touches).
    node_names: dict[str, str] = field(default_factory=dict)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


# ------------------------------------------------------------------ reading
def read_model(path: Path) -> Any:
    """Parse the file without touching external data; one FrontendError line on any failure."""
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning-like errors, ValueError...
        raise FrontendError(f"{path}: not a readable ONNX model ({_one_line(e)})") from None
    if not model.HasField("graph") or not model.opset_import or not model.graph.output:
        raise FrontendError(f"{path}: not an ONNX model (no graph, outputs or opset)")
    return model


def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers, sparse initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


def _external_location(tensor: Any) -> str | None:
    from onnx import TensorProto

    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    entries = {e.key: e.value for e in tensor.external_data}
    return entries.get("location", "")


def check_external_data(model: Any, path: Path) -> bool:
    """Refuse external-data locations outside the model's folder; True if any tensor has one."""
    folder = path.parent.resolve()
    found = False
    for tensor in _graph_tensors(model.graph):
        loc = _external_location(tensor)
        if loc is None:
            continue
        found = True
        if not isinstance(loc, str):  # protobuf hands back bytes that are not UTF-8
            raise FrontendError(f"{path}: tensor {tensor.name!r} has an external data location that is not text")
        bad = (not loc or PurePosixPath(loc).is_absolute() or PureWindowsPath(loc).is_absolute()
               or ".." in PurePosixPath(loc.replace("\\", "/")).parts)
        target = (folder / loc).resolve()
        if bad or not target.is_relative_to(folder):
            raise FrontendError(f"{path}: tensor {tensor.name!r} points at external data {loc!r} outside the "
                                "model's folder; external data is read only from the folder of the .onnx file")
        if not target.is_file():
            raise FrontendError(f"{path}: tensor {tensor.name!r} needs external data file {loc!r}, "
                                f"which is not in {path.parent}")
    return found


def load_external_data(model: Any, path: Path) -> None:
    import numpy as np
    from onnx import helper
    from onnx.external_data_helper import load_external_data_for_model

    external = [t for t in _graph_tensors(model.graph) if _external_location(t) is not None]
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:  # an unreadable data file
        raise FrontendError(f"{path}: could not read external data ({_one_line(e)})") from None
    for t in external:  # a short file loads without complaint; say so here
        want = int(np.prod(t.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        if len(t.raw_data) != want:
            raise FrontendError(f"{path}: external data of tensor {t.name!r} has {len(t.raw_data)} bytes, "
                                f"{want} expected (truncated file?)")


def check_domains(model: Any, path: Path) -> None:
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            label = node.name or (node.output[0] if node.output else "?")
            raise FrontendError(f"{path}: node {label!r} ({node.domain}::{node.op_type}) is in the custom domain "
                                f"{node.domain!r}; only the standard ONNX domain is supported")


def check_model(model: Any, path: Path, external: bool) -> None:
    """The ONNX checker; given the file when it has external data (which the checker then
    finds next to it, and which may make the model too large for an in-memory check)."""
    import onnx

    try:
        onnx.checker.check_model(str(path) if external else model)
    except Exception as e:  # ValidationError, and ValueError for >2GB protos
        raise FrontendError(f"{path}: not a valid ONNX model ({_one_line(e)})") from None


# ------------------------------------------------------------------ opsets
def default_opset(model: Any) -> int:
    versions = [o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS]
    return int(versions[0]) if versions else 1


def lift_opset(model: Any, path: Path, notes: list[str]) -> Any:
    """Refuse opsets newer than the installed onnx knows; convert older than 7 up to 7."""
    import onnx

    from tapeout.runtime.runners.onnxrt import lift_old_opset

    opset, newest = default_opset(model), onnx.defs.onnx_opset_version()
    if opset > newest:
        raise FrontendError(f"{path}: opset {opset} is newer than the installed onnx {onnx.__version__} knows "
                            f"(up to {newest}); upgrade onnx")
    if opset >= MIN_OPSET:
        return model
    try:
        lifted, _ = lift_old_opset(model)
    except Exception as e:  # the converter raises plain RuntimeErrors per unsupported adapter
        raise FrontendError(f"{path}: opset {opset} could not be converted to opset {MIN_OPSET} "
                            f"({_one_line(e)})") from None
    notes.append(f"the source uses opset {opset}; it was converted to opset {MIN_OPSET} before import")
    return lifted


# ------------------------------------------------------------------- batch
def _dims(value_info: Any) -> list[Any] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def pin_batch(model: Any, path: Path) -> tuple[int, int | None]:
    """Check the graph inputs and give their batch dims one concrete value; returns (b, fixed batch)."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    fixed: set[int] = set()
    for v in inputs:
        if not v.type.HasField("tensor_type"):
            raise FrontendError(f"{path}: input {v.name!r} is not a tensor")
        dims = _dims(v)
        if dims is None:
            raise FrontendError(f"{path}: input {v.name!r} has no shape; tapeout needs the rank and every "
                                "dimension but the batch")
        if not dims:
            raise FrontendError(f"{path}: input {v.name!r} is a scalar; inputs need a batch axis")
        for axis, d in enumerate(dims[1:], start=1):
            if d is None:
                raise FrontendError(f"{path}: input {v.name!r} has a dynamic dimension at axis {axis}; only "
                                    "the batch (axis 0) may be dynamic")
        if dims[0]:
            fixed.add(int(dims[0]))
    if len(fixed) > 1:
        raise FrontendError(f"{path}: inputs have different fixed batch sizes {sorted(fixed)}")
    b = next(iter(fixed), 1)
    for v in [*inputs, *graph.output]:
        shape = v.type.tensor_type.shape
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape") and shape.dim:
            shape.dim[0].Clear()
            shape.dim[0].dim_value = b
    # Stale intermediate shapes may contradict the pinned batch; shape inference redoes them.
    del graph.value_info[:]
    return b, next(iter(fixed), None)


# ------------------------------------------------------------------ folding
def _folded_size(node: Any) -> int | None:
    """Elements a shape-driven node would create, when its shape input is known."""
    import numpy as np

    if node.op_type not in ("ConstantOfShape", "Expand", "Tile"):
        return None
    idx = 0 if node.op_type == "ConstantOfShape" else 1
    if len(node.inputs) <= idx or node.inputs[idx] is None or node.inputs[idx].const_value is None:
        return None
    shape = node.inputs[idx].const_value.numpy().astype(np.int64).reshape(-1)
    size = int(np.prod(np.maximum(shape, 1)))
    if node.op_type == "Tile" and node.inputs[0] is not None and node.inputs[0].const_value is not None:
        size *= int(node.inputs[0].const_value.numpy().size)
    return size


def _should_fold(node: Any) -> bool:
    # Fold every constant computation (weights made by ConstantOfShape included), but
    # never build a constant larger than MAX_FOLDED_ELEMENTS.
    size = _folded_size(node)
    return size is None or size <= MAX_FOLDED_ELEMENTS


def fold(model: Any, path: Path) -> Any:
    """onnxscript's constant folder (with ONNX shape inference) plus onnx-ir clean-up passes."""
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants

    try:
        irm = ir.serde.deserialize_model(model)
        common.RemoveInitializersFromInputsPass()(irm)
        fold_constants(irm, onnx_shape_inference=True, input_size_limit=MAX_FOLDED_ELEMENTS,
                       output_size_limit=MAX_FOLDED_ELEMENTS, should_fold=_should_fold)
        common.RemoveUnusedNodesPass()(irm)
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(irm)
    except Exception as e:  # the folder evaluates ONNX ops and may reject malformed nodes
        raise FrontendError(f"{path}: constant folding failed ({_one_line(e)})") from None
    return irm


@dataclass(frozen=True)
class Hooks:
    """What a dialect of ONNX (QONNX: ``frontends.qonnx``) changes in :func:`prepare`."""

    # Refuse nodes outside the dialect's domains (and anything else refused from the raw file).
    check_domains: Callable[[Any, Path], None] = check_domains
    # On the checked, batch-pinned ModelProto, before folding.
    before_fold: Callable[[Any], None] | None = None
    # On the folded onnx_ir model, with Prepared.node_names; returns the model to convert.
    after_fold: Callable[[Any, dict[str, str]], Any] | None = None


def prepare(path: Path, model: Any = None, hooks: Hooks = Hooks()) -> Prepared:
    """Check and fold ``model`` (the ModelProto read_model parsed from ``path``; parsed here when
    None) for conversion."""
    if model is None:
        model = read_model(path)
    notes: list[str] = []
    external = check_external_data(model, path)
    hooks.check_domains(model, path)
    if default_opset(model) < MIN_OPSET:
        # Checked once lifted: today's checker rejects forms old exporters wrote (BatchNormalization-6
        # with consumed_inputs), and the lifted model is the one both tapeout and onnxruntime use.
        if external:
            load_external_data(model, path)
        model = lift_opset(model, path, notes)
        check_model(model, path, False)
    else:
        model = lift_opset(model, path, notes)  # refuses opsets newer than onnx knows
        check_model(model, path, external)
        if external:
            load_external_data(model, path)
    batch, fixed = pin_batch(model, path)
    if hooks.before_fold is not None:
        hooks.before_fold(model)
    names = {out: node.name for node in model.graph.node for out in node.output if out}
    irm = fold(model, path)
    if hooks.after_fold is not None:
        irm = hooks.after_fold(irm, names)
    return Prepared(irm, default_opset(model), batch, fixed, notes, names)
