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

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = dict(zip([s.name for s in self._specs], self._typed_feeds(feeds)))
        try:
            results = self._session.run(self._outputs, cast)
        except Exception as exc:  # shape/type errors from the data come back as untyped runtime errors
            raise RuntimeInputError(f"{self._label()}: onnxruntime could not run these inputs "
                                    f"({one_line(exc)})") from None
        return dict(zip(self._outputs, results))
