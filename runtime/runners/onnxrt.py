"""Runs an ONNX model with onnxruntime (imported on open, so choosing this runner stays light)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tapeout.runtime.errors import RuntimeInputError, RuntimeUnavailable, one_line
from tapeout.runtime.protocol import FileRunner, IOSpec

# onnxruntime type strings whose element name is not a NumPy dtype name.
_ORT_DTYPES = {"float": "float32", "double": "float64"}


def _numpy_dtype(ort_type: str) -> str:
    """'tensor(float)' -> 'float32', 'tensor(int64)' -> 'int64'."""
    elem = ort_type.removeprefix("tensor(").removesuffix(")")
    return _ORT_DTYPES.get(elem, elem)


class OnnxRuntimeRunner(FileRunner):
    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, providers: list[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.providers = providers or ["CPUExecutionProvider"]
        self._session: Any = None

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
        source = self.model if isinstance(self.model, bytes) else str(self.model)
        try:
            self._session = ort.InferenceSession(source, options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for any bad file
            raise RuntimeInputError(f"{self._label()}: not a loadable ONNX model ({one_line(exc)})") from None
        self._specs = [IOSpec(i.name, tuple(i.shape), _numpy_dtype(i.type)) for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]

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
