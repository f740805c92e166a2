"""QONNX front end: an ``.onnx`` file with QONNX quantizer nodes into the IR.

Brevitas's ``export_qonnx`` writes standard ONNX plus ``Quant``/``IntQuant``, ``BipolarQuant``
and ``Trunc`` nodes in the domain ``qonnx.custom_op.general`` (older exports: ``onnx.brevitas``,
FINN's ``finn.custom_op.general``). Loading is the ONNX front end's (``onnx_model``, ``onnx``)
with three differences:

- those domains pass the domain check; any other custom node is still refused;
- before folding, every quantizer output gets the shape of its input (onnx's shape inference
  does not know the ops), so shape computations behind a quantizer still fold;
- a quantizer whose inputs are all constants (weights, biases) is evaluated here with QONNX's
  arithmetic and the model folded again; the rest become IR ``fixed_quant`` nodes
  (``qonnx_ops``). Their scale, zero point and bit width must be constants.

``qonnx`` itself is never imported here; the source runner for verification
(``runtime.runners.qonnx_exec``) is QONNX's own ``execute_onnx``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapeout.compiler.errors import FrontendError
from tapeout.compiler.frontends import onnx_model as om
from tapeout.compiler.frontends.qonnx_ops import QONNX_DOMAINS, QONNX_OPS, evaluate_constant, input_names
from tapeout.compiler.gc_pause import gc_paused
from tapeout.compiler.ir import Graph

__all__ = ["load_qonnx"]


def load_qonnx(path: str | Path, model: Any = None) -> Graph:
    """Load a QONNX model file into a shape-checked IR graph with ``fixed_quant`` quantizers
    (``model``: the file as ``onnx_model.read_model`` parsed it, else it is parsed here)."""
    from tapeout.compiler.frontends.onnx import convert
    from tapeout.compiler.frontends.onnx_ops import HANDLERS
    from tapeout.compiler.frontends.qonnx_ops import HANDLERS as QUANT_HANDLERS

    p = Path(path)
    if not p.is_file():
        raise FrontendError(f"{p}: no such model file")
    with gc_paused():
        prepared, folded = prepare(p, model)
        graph = convert(prepared, p, {**HANDLERS, **QUANT_HANDLERS})
    quantizers = sum(n.op == "fixed_quant" for n in graph.nodes)
    graph.metadata["source_format"] = "qonnx"
    graph.metadata["source_opset"] = str(prepared.opset)
    notes = list(graph.metadata.get("notes", []))  # type: ignore[arg-type]
    notes.append(f"QONNX: {quantizers} activation quantizer(s) read as fixed_quant, "
                 f"{folded} weight/bias quantizer(s) folded into constants")
    graph.metadata["notes"] = notes  # type: ignore[assignment]
    return graph


# ------------------------------------------------------------------ prepare
def _label(node: Any) -> str:
    return node.name or (node.output[0] if node.output else "?")


def check_domains(model: Any, path: Path) -> None:
    """Standard and QONNX quantizer nodes only, each with the inputs its op version takes
    (``Trunc`` has 5 in version 1 of the domain, 6 from version 2, as qonnx picks it)."""
    versions = {o.domain: int(o.version) for o in model.opset_import if o.domain in QONNX_DOMAINS}
    for node in model.graph.node:
        if node.domain in om.STANDARD_DOMAINS:
            continue
        if node.domain not in QONNX_DOMAINS:
            raise FrontendError(f"{path}: node {_label(node)!r} ({node.domain}::{node.op_type}) is in the custom "
                                f"domain {node.domain!r}; only the standard ONNX and QONNX domains are supported")
        if node.op_type not in QONNX_OPS:
            raise FrontendError(f"{path}: node {_label(node)!r} ({node.domain}::{node.op_type}) is not supported; "
                                f"supported QONNX ops: {', '.join(QONNX_OPS)}")
        want = len(QONNX_OPS[node.op_type])
        if node.op_type == "Trunc" and versions.get(node.domain, 1) < 2:
            want = 5
        if len(node.input) != want or not all(node.input):
            raise FrontendError(f"{path}: node {_label(node)!r} ({node.op_type}) has {len(node.input)} inputs; "
                                f"its version in domain {node.domain!r} takes {want} "
                                f"({', '.join(QONNX_OPS[node.op_type][:want])})")


def annotate_shapes(model: Any) -> None:
    """Give every quantizer output its input's type, in ``value_info``: the folder's shape
    inference has no schema for QONNX ops and would lose every shape behind them."""
    import onnx

    quant = {n.output[0]: n for n in model.graph.node if n.domain in QONNX_DOMAINS and n.output}
    if not quant:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    nodes = [onnx.helper.make_node("Identity", [n.input[0]], [n.output[0]]) if n.domain in QONNX_DOMAINS else n
             for n in probe.graph.node]
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception:  # noqa: BLE001 - no shapes: the converter still checks every op itself
        return
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name in quant)


def _fold_quantizers(irm: Any, path: Path) -> int:
    """Evaluate quantizers whose inputs are all constants (weights, biases); returns how many."""
    import onnx_ir as ir

    count = 0
    for node in list(irm.graph):
        if node.domain not in QONNX_DOMAINS:
            continue
        inputs = list(node.inputs)
        if not inputs or any(v is None or v.const_value is None for v in inputs):
            continue
        arrays = [v.const_value.numpy() for v in inputs]
        attrs = {k: a.value for k, a in node.attributes.items()}
        where = f"{path}: node {node.name or node.outputs[0].name!r} ({node.op_type})"
        try:
            result = evaluate_constant(node.op_type, arrays, attrs, lambda why: FrontendError(f"{where}: {why}"))
        except ValueError as e:  # parameters that do not broadcast onto the constant
            raise FrontendError(f"{where}: {e}") from None
        out = node.outputs[0]
        const = ir.Value(name=f"{out.name}/folded", const_value=ir.Tensor(result))
        const.shape = ir.Shape(result.shape)
        const.type = ir.TensorType(ir.DataType.FLOAT)
        irm.graph.register_initializer(const)
        was_output = out in irm.graph.outputs
        out.replace_all_uses_with(const, replace_graph_outputs=True)
        if was_output:  # keep the model's output name
            const.name, out.name = out.name, f"{out.name}/unused"
        irm.graph.remove(node, safe=True)
        count += 1
    return count


def check_parameters(irm: Any, path: Path, names: dict[str, str]) -> None:
    """Refuse quantizers whose scale, zero point or bit widths are computed at run time."""
    for node in irm.graph:
        if node.domain not in QONNX_DOMAINS:
            continue
        for i, v in enumerate(node.inputs[1:], start=1):
            if v is not None and v.const_value is None:
                label = names.get(node.outputs[0].name, node.name or node.outputs[0].name)
                what = input_names(node.op_type, len(node.inputs))[i]
                raise FrontendError(f"{path}: node {label!r} ({node.op_type}): {what} (input {i}, {v.name!r}) is "
                                    "computed at run time; tapeout reads quantizers with constant parameters only")


def check_file(model: Any, path: Path) -> None:
    """The QONNX domain check, then opsets too old to take QONNX nodes (``onnx_model`` would lift them)."""
    check_domains(model, path)
    if om.default_opset(model) < om.MIN_OPSET:
        raise FrontendError(f"{path}: opset {om.default_opset(model)} with QONNX nodes is not supported "
                            f"(opset {om.MIN_OPSET} or newer)")


def prepare(path: Path, model: Any = None) -> tuple[om.Prepared, int]:
    """``onnx_model.prepare`` for QONNX models (see the module docstring) with this module's
    hooks; also returns how many quantizers were folded into constants."""
    folded = 0

    def after_fold(irm: Any, names: dict[str, str]) -> Any:
        nonlocal folded
        folded = _fold_quantizers(irm, path)
        if folded:  # what read the folded weights (a Transpose, say) folds now
            import onnx_ir as ir

            irm = om.fold(ir.serde.serialize_model(irm), path)
        check_parameters(irm, path, names)
        return irm

    hooks = om.Hooks(check_domains=check_file, before_fold=annotate_shapes, after_fold=after_fold)
    return om.prepare(path, model, hooks), folded
