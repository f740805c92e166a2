"""Runs a QONNX model (Brevitas ``export_qonnx``) with QONNX's reference execution,
``qonnx.core.onnx_exec.execute_onnx``: the quantizer nodes in qonnx's NumPy, every other node
in onnxruntime, one node at a time. onnxruntime alone cannot run the QONNX domains.

qonnx is imported on open. Its execution wants every tensor shape known, so the model is
given the batch size of each call (dim 0 of inputs and outputs) and qonnx's shape inference
runs once per batch size. A model exported with batch 1 runs batched when that gives the
same first sample as a batch-1 run, else one sample at a time.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tapeout.runtime.errors import RuntimeInputError, RuntimeUnavailable, one_line
from tapeout.runtime.protocol import FileRunner, IOSpec

QONNX_DOMAINS = ("qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general")
QONNX_QUANTIZERS = ("Quant", "IntQuant", "BipolarQuant", "Trunc")
_QONNX = "qonnx.custom_op.general"
_MARKERS = tuple(d.encode() for d in QONNX_DOMAINS)


def names_qonnx(model: Any) -> bool:
    """Whether a parsed ModelProto has a node in a QONNX domain."""
    return any(n.domain in QONNX_DOMAINS for n in model.graph.node)


def qonnx_model(path: str | Path) -> Any:
    """The ``.onnx`` file parsed (without its external data) when it holds QONNX nodes, else None
    (a byte scan first: a plain ONNX file is not parsed). Give it to :class:`QonnxRunner`,
    which then does not parse the file again."""
    import mmap

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if not any(m.find(marker) >= 0 for marker in _MARKERS):
                return None
        import onnx

        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable or empty: the runner that opens it says why
        return None
    return model if names_qonnx(model) else None


def _dtype(elem_type: int) -> str:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name


class QonnxRunner(FileRunner):
    name = "qonnx (qonnx.core.onnx_exec.execute_onnx)"

    def __init__(self, path: str | Path, model: Any = None) -> None:
        """``model``: the file as :func:`qonnx_model` parsed it (used by the first open, which
        adds the external data), else the open parses the file."""
        super().__init__()
        self.path = Path(path)
        self._parsed: Any = model
        self._model: Any = None
        self._wrappers: dict[int, Any] = {}
        self._fixed: int | None = None
        self._batched: bool | None = None  # a fixed-batch model: does it run batched?
        self.notes: list[str] = []

    def _open(self) -> None:
        try:
            import onnx
            from qonnx.core.modelwrapper import ModelWrapper  # noqa: F401
        except ImportError:
            raise RuntimeUnavailable("qonnx is not installed: pip install 'tapeout[qat]'") from None
        if not self.path.is_file():
            raise RuntimeInputError(f"{self.path}: no such ONNX model file")
        parsed, self._parsed = self._parsed, None  # once: a reopen reads the file as it is then
        try:
            if parsed is None:
                self._model = onnx.load_model(str(self.path))
            else:  # what onnx.load_model adds to its parse, from the same folder
                from onnx.external_data_helper import load_external_data_for_model

                load_external_data_for_model(parsed, os.path.dirname(os.path.abspath(self.path)))
                self._model = parsed
        except Exception as exc:  # noqa: BLE001
            raise RuntimeInputError(f"{self.path}: not a loadable ONNX model ({one_line(exc)})") from None
        self._own_domains()
        graph = self._model.graph
        inits = {t.name for t in graph.initializer}
        self._specs = []
        for v in graph.input:
            if v.name in inits:
                continue
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
            self._specs.append(IOSpec(v.name, dims, _dtype(t.elem_type)))
        self._outputs = [o.name for o in graph.output]
        batch = {s.shape[0] for s in self._specs if s.shape}
        self._fixed = batch.pop() if len(batch) == 1 and all(isinstance(b, int) for b in batch) else None
        self.notes = ["source runner: QONNX reference execution (qonnx.core.onnx_exec.execute_onnx; "
                      "quantizers in qonnx's NumPy, other nodes in onnxruntime)"]

    def _own_domains(self) -> None:
        """Standard nodes and QONNX's quantizers only, all in qonnx's own domain: qonnx imports the
        Python module a node's domain names, which a model file must not choose."""
        from onnx import helper

        for node in self._model.graph.node:
            if node.domain in ("", "ai.onnx"):
                continue
            if node.domain not in QONNX_DOMAINS or node.op_type not in QONNX_QUANTIZERS:
                label = node.name or (node.output[0] if node.output else "?")
                raise RuntimeInputError(f"{self.path}: node {label!r} ({node.domain}::{node.op_type}) is not run; "
                                        f"the QONNX runner runs standard ONNX and {', '.join(QONNX_QUANTIZERS)}")
            node.domain = _QONNX  # older exports' domains name the same ops
        versions = {o.domain: o.version for o in self._model.opset_import}
        version = max((versions.get(d, 1) for d in QONNX_DOMAINS if d in versions), default=1)
        keep = [o for o in self._model.opset_import if o.domain not in QONNX_DOMAINS]
        del self._model.opset_import[:]
        self._model.opset_import.extend([*keep, helper.make_opsetid(_QONNX, version)])

    def _close(self) -> None:
        self._model = None
        self._wrappers = {}

    def _wrapper(self, n: int) -> Any:
        """The model with batch ``n`` and every tensor shape inferred by qonnx."""
        if n not in self._wrappers:
            import onnx
            from qonnx.core.modelwrapper import ModelWrapper
            from qonnx.transformation.infer_shapes import InferShapes

            model = onnx.ModelProto()
            model.CopyFrom(self._model)
            inits = {t.name for t in model.graph.initializer}
            for v in [*model.graph.input, *model.graph.output]:
                if v.name in inits or not v.type.tensor_type.HasField("shape"):
                    continue
                dims = v.type.tensor_type.shape.dim
                if dims:
                    dims[0].Clear()
                    dims[0].dim_value = n
            del model.graph.value_info[:]
            for v in model.graph.output:  # inferred again, with the batch
                if v.type.tensor_type.HasField("shape") and any(
                        not d.HasField("dim_value") for d in v.type.tensor_type.shape.dim):
                    v.type.tensor_type.ClearField("shape")
            try:
                self._wrappers[n] = ModelWrapper(model).transform(InferShapes())
            except Exception as exc:  # noqa: BLE001 - qonnx raises plain exceptions
                raise RuntimeInputError(f"{self.path}: qonnx could not infer the model's shapes "
                                        f"({one_line(exc)})") from None
        return self._wrappers[n]

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        from qonnx.core.onnx_exec import execute_onnx

        model = self._wrapper(int(arrays[0].shape[0]))
        try:
            with warnings.catch_warnings():  # qonnx warns of shapes its inference left unknown
                warnings.simplefilter("ignore", UserWarning)
                out = execute_onnx(model, {s.name: a for s, a in zip(self._specs, arrays)})
        except Exception as exc:  # noqa: BLE001 - qonnx and onnxruntime raise untyped errors
            raise RuntimeInputError(f"{self.path}: qonnx could not run these inputs ({one_line(exc)})") from None
        return {k: np.asarray(out[k]) for k in self._outputs}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._typed_feeds(feeds)
        count = arrays[0].shape[0] if arrays and arrays[0].ndim else None
        fixed = self._fixed
        if fixed is None or count is None or count == fixed:
            return self._run(arrays)
        if self._batched is None:  # does the fixed-batch model give the same results batched?
            try:
                whole = self._run(arrays)
                one = self._run([a[:fixed] for a in arrays])
                self._batched = all(np.array_equal(whole[k][:fixed], one[k]) for k in self._outputs)
            except RuntimeInputError:
                self._batched = False
            if self._batched:
                return whole
        if self._batched:
            return self._run(arrays)
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, count, fixed):  # pad the last chunk with copies of its last sample
            chunk = [a[start:start + fixed] for a in arrays]
            real = chunk[0].shape[0]
            chunk = [np.concatenate([c, np.repeat(c[-1:], fixed - real, axis=0)]) for c in chunk]
            parts.append({k: v[:real] for k, v in self._run(chunk).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
