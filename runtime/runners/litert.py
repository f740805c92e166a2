"""Runs a .tflite model with LiteRT (``ai_edge_litert``), else ``tflite_runtime``, else
TensorFlow's ``tf.lite`` (imported only when neither LiteRT package is installed).

Callers feed floats and get floats: integer (int8/uint8/int16) inputs and outputs are
quantized and dequantized here with the tensor's scale and zero point. Inputs and outputs
are named by the model's signature (the source model's names for tapeout's artifacts),
else by tensor name. A dynamic batch dimension is resized to each feed; a model with a
fixed batch runs the feed in slices of that batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tapeout.runtime.errors import RuntimeInputError, RuntimeUnavailable, one_line
from tapeout.runtime.protocol import FileRunner, IOSpec

BACKENDS = ("litert", "tflite_runtime", "tf.lite")


def interpreter_class(backend: str | None = None) -> tuple[Any, str]:
    """(Interpreter class, backend name): the first installed of BACKENDS, or ``backend``."""
    for name in (backend,) if backend else BACKENDS:
        try:
            if name == "litert":
                from ai_edge_litert.interpreter import Interpreter
            elif name == "tflite_runtime":
                from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
            elif name == "tf.lite":
                import tensorflow as tf

                Interpreter = tf.lite.Interpreter  # noqa: N806
            else:
                raise ValueError(f"unknown TFLite backend {name!r}; known: {', '.join(BACKENDS)}")
        except ImportError:
            continue
        return Interpreter, name
    raise RuntimeUnavailable("running a .tflite model needs LiteRT: pip install ai-edge-litert "
                             "(or tflite-runtime, or tensorflow)")


def _clean(tensor_name: str) -> str:
    """'serving_default_image:0' -> 'image' for models without a signature list."""
    return tensor_name.removeprefix("serving_default_").split(":")[0]


class QuantizedPort:
    """One input or output tensor: its index and how to (de)quantize it."""

    def __init__(self, name: str, details: dict[str, Any]) -> None:
        self.name = name
        self.index = int(details["index"])
        self.dtype = np.dtype(details["dtype"])
        scale, zero_point = details.get("quantization", (0.0, 0))
        self.quantized = self.dtype.kind in "iu" and float(scale) > 0.0
        self.scale = np.float32(scale)
        self.zero_point = int(zero_point)
        sig = details.get("shape_signature")
        shape = details["shape"] if sig is None or len(sig) == 0 else sig
        self.shape = tuple(int(d) for d in shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return np.ascontiguousarray(x, dtype=self.dtype)
        info = np.iinfo(self.dtype)
        v = np.asarray(x, np.float32) / self.scale
        # Half away from zero, as TFLite's own quantize kernel rounds.
        q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return q
        return ((q.astype(np.float32) - np.float32(self.zero_point)) * self.scale).astype(np.float32)


def _no_delegates(cls: Any) -> Any:
    """The interpreter module's BUILTIN_WITHOUT_DEFAULT_DELEGATES resolver, None if it has none."""
    import sys

    kinds = getattr(sys.modules.get(cls.__module__), "OpResolverType", None)
    return getattr(kinds, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)


class LiteRTRunner(FileRunner):
    name = "litert"

    def __init__(self, path: str | Path, num_threads: int | None = None, backend: str | None = None, *,
                 intermediates: Sequence[str] = ()) -> None:
        super().__init__()
        self.path = Path(path)
        # Tensors (by name) returned with the outputs, dequantized (runtime.trace): the interpreter
        # then keeps every tensor and runs without its default delegate (XNNPACK), which would
        # compute them inside its own buffers.
        self.intermediates = list(intermediates)
        self.num_threads = num_threads
        self.backend = backend
        self._interp: Any = None
        self._inputs: list[QuantizedPort] = []
        self._outs: list[QuantizedPort] = []
        self._batch: int | None = None  # the fixed batch of a model without a dynamic one
        self._current: dict[int, tuple[int, ...]] = {}

    def _open(self) -> None:
        if not self.path.is_file():
            raise RuntimeInputError(f"{self.path}: no such TFLite model file")
        cls, self.name = interpreter_class(self.backend)
        kwargs: dict[str, Any] = {} if self.num_threads is None else {"num_threads": self.num_threads}
        if self.intermediates:
            kwargs["experimental_preserve_all_tensors"] = True
            resolver = _no_delegates(cls)
            if resolver is not None:
                kwargs["experimental_op_resolver_type"] = resolver
        try:
            self._interp = cls(model_path=str(self.path), **kwargs)
            self._interp.allocate_tensors()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError for any bad file
            raise RuntimeInputError(f"{self.path}: not a loadable TFLite model ({one_line(exc)})") from None
        in_details = self._interp.get_input_details()
        out_details = self._interp.get_output_details()
        self._inputs = self._ports(in_details, "inputs")
        self._outs = self._ports(out_details, "outputs")
        dynamic = any(p.shape and p.shape[0] == -1 for p in self._inputs)
        self._batch = None if dynamic or not self._inputs or not self._inputs[0].shape else self._inputs[0].shape[0]
        self._current = {p.index: tuple(int(d) for d in d_["shape"]) for p, d_ in zip(self._inputs, in_details)}
        self._specs = [IOSpec(p.name, tuple("N" if i == 0 and d == -1 else (None if d == -1 else d)
                                            for i, d in enumerate(p.shape)),
                              "float32" if p.quantized else p.dtype.name) for p in self._inputs]
        if self.intermediates:
            by_name = {d["name"]: d for d in self._interp.get_tensor_details()}
            missing = [t for t in self.intermediates if t not in by_name]
            if missing:
                raise RuntimeInputError(f"{self.path}: no tensor(s) {', '.join(missing[:3])} to trace")
            self._outs += [QuantizedPort(t, by_name[t]) for t in self.intermediates]
        self._outputs = [p.name for p in self._outs]

    def _ports(self, details: list[dict[str, Any]], kind: str) -> list[QuantizedPort]:
        """Ports in the subgraph's order, named by the signature when the model has one."""
        by_index = {int(d["index"]): d for d in details}
        names = {int(d["index"]): _clean(d["name"]) for d in details}
        signatures = getattr(self._interp, "_get_full_signature_list", lambda: {})() or {}
        if signatures:
            key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
            for name, index in signatures[key][kind].items():
                if int(index) in names:
                    names[int(index)] = name
        return [QuantizedPort(names[int(d["index"])], by_index[int(d["index"])]) for d in details]

    def _close(self) -> None:
        self._interp = None
        self._current = {}

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._typed_feeds(feeds)
        for port, a in zip(self._inputs, arrays):
            if a.ndim != len(port.shape):
                raise RuntimeInputError(f"{self.path}: input '{port.name}' has shape {a.shape}; the model "
                                        f"takes rank {len(port.shape)} {list(port.shape)}")
        n = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 1
        if self._batch is None or n == self._batch:
            return self._run(arrays)
        if self._batch < 1 or n % self._batch:
            raise RuntimeInputError(f"{self.path}: the model has a fixed batch of {self._batch}; "
                                    f"{n} samples do not split into it")
        parts = [self._run([a[i:i + self._batch] for a in arrays]) for i in range(0, n, self._batch)]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in self._outputs}

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        interp = self._interp
        try:
            resized = False
            for port, a in zip(self._inputs, arrays):
                if self._current.get(port.index) != a.shape:
                    interp.resize_tensor_input(port.index, list(a.shape), strict=False)
                    self._current[port.index] = a.shape
                    resized = True
            if resized:
                interp.allocate_tensors()
            for port, a in zip(self._inputs, arrays):
                interp.set_tensor(port.index, port.quantize(a))
            interp.invoke()
            return {p.name: p.dequantize(np.array(interp.get_tensor(p.index))) for p in self._outs}
        except (ValueError, RuntimeError) as exc:
            raise RuntimeInputError(f"{self.path}: the TFLite interpreter could not run these inputs "
                                    f"({one_line(exc)})") from None


def median_latency_ms(runner: LiteRTRunner, feeds: dict[str, np.ndarray], runs: int, warmup: int) -> float:
    """Median wall time of one ``runner.infer(feeds)`` in ms, after ``warmup`` untimed calls (the
    sweep's and the benchmarks' one way to time a .tflite on the host)."""
    import time

    for _ in range(warmup):
        runner.infer(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.infer(feeds)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))
