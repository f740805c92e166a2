"""Runs a .tflite model in TensorFlow Lite Micro (``runtime.tflm``): the interpreter a
microcontroller runs, with its reference kernels, in an arena of a given size. The interpreter
lives in a child process (``tflm.Session``): TFLite Micro aborts the process on some inputs.

Like the LiteRT runner, callers feed floats and get floats (integer inputs and outputs are
quantized here with the tensor's own scale and zero point), and ports are named by the
model's signature. A TFLite Micro model has a fixed batch (1 for tapeout's): the feed runs one
batch-sized slice at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tapeout.runtime import tflm
from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.protocol import FileRunner, IOSpec
from tapeout.runtime.runners.litert import QuantizedPort


def _port(name: str, index: int, details: dict) -> QuantizedPort:
    q = details.get("quantization_parameters") or {}
    scales, zeros = np.asarray(q.get("scales", [])), np.asarray(q.get("zero_points", []))
    return QuantizedPort(name, {"index": index, "dtype": details["dtype"], "shape": details["shape"],
                                "quantization": (float(scales[0]) if scales.size else 0.0,
                                                 int(zeros[0]) if zeros.size else 0)})


class TflmRunner(FileRunner):
    name = "tflite-micro"

    def __init__(self, path: str | Path, arena_size: int | None = None) -> None:
        """``arena_size``: the tensor arena in bytes (the model.h constant); None: measured."""
        super().__init__()
        self.path = Path(path)
        self.arena_size = arena_size
        self._session: tflm.Session | None = None
        self._inputs: list[QuantizedPort] = []
        self._outs: list[QuantizedPort] = []

    def _open(self) -> None:
        if not self.path.is_file():
            raise RuntimeInputError(f"{self.path}: no such TFLite model file")
        data = self.path.read_bytes()
        sig = tflm.signature(data)
        arena = self.arena_size if self.arena_size is not None else tflm.measure_arena(data).minimum
        try:
            self._session = session = tflm.Session(data, arena)
        except tflm.TflmError as exc:
            raise tflm.TflmError(f"{self.path}: {exc}") from None
        self._inputs = [_port(n, i, d) for i, (n, d) in enumerate(zip(sig.inputs, session.inputs))]
        self._outs = [_port(n, i, d) for i, (n, d) in enumerate(zip(sig.outputs, session.outputs))]
        self._specs = [IOSpec(p.name, p.shape, "float32" if p.quantized else p.dtype.name) for p in self._inputs]
        self._outputs = [p.name for p in self._outs]

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._typed_feeds(feeds)
        batch = self._inputs[0].shape[0] if self._inputs and self._inputs[0].shape else 1
        n = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 1
        for port, a in zip(self._inputs, arrays):
            if tuple(a.shape[1:]) != tuple(port.shape[1:]):
                raise RuntimeInputError(f"{self.path}: input '{port.name}' has shape {list(a.shape)}; the model "
                                        f"takes {list(port.shape)}")
        if batch < 1 or n % batch:
            raise RuntimeInputError(f"{self.path}: the model has a fixed batch of {batch}; {n} samples do not "
                                    "split into it")
        samples = [[port.quantize(a[i:i + batch]) for port, a in zip(self._inputs, arrays)] for i in range(0, n, batch)]
        try:
            results = self._session.run(samples)
        except tflm.TflmError as exc:
            raise tflm.TflmError(f"{self.path}: {exc}") from None
        return {p.name: np.concatenate([p.dequantize(r[k]) for r in results], axis=0) for k, p in enumerate(self._outs)}
