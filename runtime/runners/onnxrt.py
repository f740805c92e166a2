"""Runs an ONNX model with onnxruntime (imported on open, so choosing this runner stays light).

onnxruntime has no kernels for most ops below opset 7 (``Gemm-6``, ``BatchNormalization-6``...),
so a model that old is upgraded with ``onnx.version_converter`` before it runs; the ONNX front
end imports through the same :func:`lift_old_opset`, so both see the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tapeout.runtime.errors import RuntimeInputError, RuntimeUnavailable, one_line
from tapeout.runtime.protocol import FileRunner, IOSpec

# onnxruntime type strings whose element name is not a NumPy dtype name.
_ORT_DTYPES = {"float": "float32", "double": "float64"}

# Models below this opset are upgraded to it before they run (see lift_old_opset).
LIFT_OPSET = 7
# Attributes old exporters wrote that are hints only (in-place reuse, training mode) and that
# some old files carry on op versions whose schema no longer has them (BatchNormalization-6
# with consumed_inputs): dropped where the node's schema does not declare them.
_HINT_ATTRIBUTES = ("consumed_inputs", "is_test")


def default_opset(model: Any) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return int(versions[0]) if versions else 1


def _drop_stale_hints(model: Any, opset: int) -> None:
    import onnx

    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            declared = onnx.defs.get_schema(node.op_type, opset).attributes
        except onnx.defs.SchemaError:
            continue  # an unknown op: the converter reports it
        keep = [a for a in node.attribute if a.name not in _HINT_ATTRIBUTES or a.name in declared]
        if len(keep) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(keep)


def _ranks(model: Any) -> dict[str, int]:
    graph = model.graph
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    for v in [*graph.input, *graph.value_info, *graph.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            ranks.setdefault(v.name, len(v.type.tensor_type.shape.dim))
    return ranks


def _align_axis_broadcasts(model: Any) -> None:
    """Rewrite old ``broadcast=1, axis=k`` binary ops as suffix broadcasts.

    Opset 6 aligned B with A at axis k (a [C] bias onto NCHW: k=1). onnx's 6 -> 7 adapter
    unsqueezes B by rank(A) - rank(B) trailing axes whatever k is (wrong for k=1 above, and
    the value it adds has no element type), so B is unsqueezed here by the right count and
    the axis dropped: a suffix broadcast, which the adapter passes through unchanged.
    """
    from onnx import helper

    ranks = _ranks(model)
    graph = model.graph
    nodes = []
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.domain in ("", "ai.onnx") and "axis" in attrs and attrs.get("broadcast") is not None \
                and attrs["broadcast"].i == 1 and len(node.input) == 2 \
                and node.input[0] in ranks and node.input[1] in ranks:
            rank_a, rank_b, axis = ranks[node.input[0]], ranks[node.input[1]], attrs["axis"].i
            axis = axis + rank_a if axis < 0 else axis
            extra = rank_a - axis - rank_b
            if extra > 0:
                name = f"{node.input[1]}__at_axis{axis}_of_{node.output[0]}"
                nodes.append(helper.make_node("Unsqueeze", [node.input[1]], [name],
                                              axes=list(range(rank_b, rank_b + extra))))
                node.input[1] = name
            if extra >= 0:
                keep = [a for a in node.attribute if a.name != "axis"]
                del node.attribute[:]
                node.attribute.extend(keep)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def lift_old_opset(model: Any) -> tuple[Any, int | None]:
    """Upgrade a model below LIFT_OPSET to LIFT_OPSET; returns (model, its original opset or None).

    Opsets below 6 go to 6 first, then shapes are inferred: some 6 -> 7 adapters (Gemm's
    removed ``broadcast``) need the input shapes, which old files rarely store. Raises the
    converter's own exception when an op has no adapter.
    """
    import onnx
    from onnx import shape_inference, version_converter

    opset = default_opset(model)
    if opset >= LIFT_OPSET:
        return model, None
    lifted = onnx.ModelProto()
    lifted.CopyFrom(model)
    _drop_stale_hints(lifted, opset)
    if opset < 6:
        lifted = version_converter.convert_version(lifted, 6)
    lifted = shape_inference.infer_shapes(lifted)
    _align_axis_broadcasts(lifted)
    return version_converter.convert_version(lifted, LIFT_OPSET), opset


def _numpy_dtype(ort_type: str) -> str:
    """'tensor(float)' -> 'float32', 'tensor(int64)' -> 'int64'."""
    elem = ort_type.removeprefix("tensor(").removesuffix(")")
    return _ORT_DTYPES.get(elem, elem)


class OnnxRuntimeRunner(FileRunner):
    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, providers: list[str] | None = None, *,
                 lift_old: bool = True, extra_outputs: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        # Intermediate tensors returned with the outputs (runtime.trace), added as graph outputs
        # to an in-memory copy of the model; the file itself is not changed.
        self.extra_outputs = list(extra_outputs)
        self.providers = providers or ["CPUExecutionProvider"]
        # False for tapeout's own artifacts (opset >= 17): no parse with onnx on open to read the opset.
        self.lift_old = lift_old
        self._session: Any = None
        self.notes: list[str] = []  # what was done to the model so that it runs (an opset upgrade)

    def _label(self) -> str:
        return "ONNX model bytes" if isinstance(self.model, bytes) else str(self.model)

    def _open(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeUnavailable("onnxruntime is not installed: pip install 'tapeout[onnx]'") from None
        if not isinstance(self.model, bytes) and not Path(self.model).is_file():
            raise RuntimeInputError(f"{self.model}: no such ONNX model file")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        options.use_deterministic_compute = True
        source = (self.lift_old and self._lifted()) or (self.model if isinstance(self.model, bytes) else str(self.model))
        if self.extra_outputs:
            source = self._with_outputs(source)
        try:
            self._session = ort.InferenceSession(source, options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for any bad file
            raise RuntimeInputError(f"{self._label()}: not a loadable ONNX model ({one_line(exc)})") from None
        self._specs = [IOSpec(i.name, tuple(i.shape), _numpy_dtype(i.type)) for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]

    def _with_outputs(self, source: str | bytes) -> bytes:
        """The model with ``extra_outputs`` as graph outputs too (their types left to onnxruntime)."""
        import onnx

        model = onnx.load_model_from_string(source) if isinstance(source, bytes) else onnx.load_model(source)
        have = {o.name for o in model.graph.output}
        produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
        missing = [t for t in self.extra_outputs if t not in produced]
        if missing:
            raise RuntimeInputError(f"{self._label()}: no tensor(s) {', '.join(missing[:3])} to trace")
        for t in self.extra_outputs:
            if t not in have:
                model.graph.output.append(onnx.ValueInfoProto(name=t))
                have.add(t)
        return model.SerializeToString()

    def _lifted(self) -> bytes | None:
        """The model upgraded to LIFT_OPSET as bytes when it is older, else None (run it as it is)."""
        try:
            import onnx

            model = onnx.load_model_from_string(self.model) if isinstance(self.model, bytes) else \
                onnx.load_model(str(self.model), load_external_data=False)
        except ImportError:
            return None  # without onnx, onnxruntime itself says what it cannot run
        except Exception:  # noqa: BLE001 - an unreadable file: onnxruntime reports it below
            return None
        if not model.HasField("graph") or not model.opset_import or default_opset(model) >= LIFT_OPSET:
            return None  # not a model (onnxruntime says so below), or new enough
        try:
            if not isinstance(self.model, bytes):
                model = onnx.load_model(str(self.model))  # with any external data, from its folder
            lifted, opset = lift_old_opset(model)
        except Exception as exc:  # the converter raises plain RuntimeErrors per missing adapter
            raise RuntimeInputError(f"{self._label()}: opset {default_opset(model)} could not be upgraded to "
                                    f"opset {LIFT_OPSET} for onnxruntime ({one_line(exc)})") from None
        self.notes = [f"source runner: opset {opset} upgraded to opset {LIFT_OPSET} for onnxruntime"]
        return lifted.SerializeToString()

    def _close(self) -> None:
        self._session = None

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        cast = dict(zip([s.name for s in self._specs], arrays))
        try:
            results = self._session.run(self._outputs, cast)
        except Exception as exc:  # shape/type errors from the data come back as untyped runtime errors
            raise RuntimeInputError(f"{self._label()}: onnxruntime could not run these inputs "
                                    f"({one_line(exc)})") from None
        return dict(zip(self._outputs, results))

    def _fixed_batch(self) -> int | None:
        """The static batch (dim 0) every input shares, for models exported with a fixed batch."""
        dims = {s.shape[0] for s in self._specs if s.shape}
        return dims.pop() if len(dims) == 1 and all(isinstance(d, int) for d in dims) else None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._typed_feeds(feeds)
        fixed = self._fixed_batch()
        count = arrays[0].shape[0] if arrays and arrays[0].ndim else None
        if fixed is None or count is None or count == fixed:
            return self._run(arrays)
        # A fixed-batch model (a batch-1 export, say) fed another number of samples: run it
        # `fixed` samples at a time, padding the last chunk with copies of its last sample.
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, count, fixed):
            chunk = [a[start:start + fixed] for a in arrays]
            real = chunk[0].shape[0]
            chunk = [np.concatenate([c, np.repeat(c[-1:], fixed - real, axis=0)]) for c in chunk]
            parts.append({k: v[:real] for k, v in self._run(chunk).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
