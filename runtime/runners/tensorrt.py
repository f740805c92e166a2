"""Runs a serialized TensorRT engine (``model.plan``) on a CUDA GPU.

GPU only. ``tensorrt`` is imported when the runner opens, and device memory goes through
the CUDA driver library (``libcuda.so.1``, present wherever a GPU driver is) via ctypes, so
this module needs NumPy and nothing else to import, and no pycuda/cuda-python/torch to run.
Without TensorRT or a GPU, ``open`` raises RuntimeUnavailable (exit code 3) saying which.

Not yet exercised on hardware from this repository's CI (no GPU there); see docs/tensorrt.md.
"""

from __future__ import annotations

import ctypes
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tapeout.runtime.errors import RuntimeInputError, RuntimeUnavailable, one_line
from tapeout.runtime.protocol import FileRunner, IOSpec

# CUdevice_attribute values from cuda.h (stable across CUDA versions).
_CC_MAJOR, _CC_MINOR = 75, 76


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"


class CudaDriver:
    """The few CUDA driver calls a TensorRT engine needs: the primary context, a stream, memory."""

    def __init__(self, device: int = 0) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError:
            raise RuntimeUnavailable("no CUDA driver on this machine (libcuda.so.1 not found): "
                                     "a TensorRT engine needs an NVIDIA GPU") from None
        self._check(self.lib.cuInit(0), "cuInit", gpu_missing=True)
        count = ctypes.c_int(0)
        self._check(self.lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount", gpu_missing=True)
        if count.value <= device:
            raise RuntimeUnavailable(f"no CUDA GPU {device} ({count.value} visible)")
        self.device = ctypes.c_int(0)
        self._check(self.lib.cuDeviceGet(ctypes.byref(self.device), device), "cuDeviceGet")
        self.context = ctypes.c_void_p()
        # The primary context is the one the CUDA runtime (and so TensorRT) uses: memory is shared.
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), self.device),
                    "cuDevicePrimaryCtxRetain")
        self._check(self.lib.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        self.lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
        self.lib.cuMemFree_v2.argtypes = [ctypes.c_uint64]
        self.lib.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
        self.lib.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
        self.lib.cuStreamSynchronize.argtypes = [ctypes.c_void_p]

    def _check(self, status: int, call: str, gpu_missing: bool = False) -> None:
        if status != 0:
            if gpu_missing:
                raise RuntimeUnavailable(f"no usable CUDA GPU ({call} returned CUDA error {status})")
            raise RuntimeInputError(f"CUDA {call} failed with error {status}")

    def gpu(self) -> GpuInfo:
        buf = ctypes.create_string_buffer(256)
        self._check(self.lib.cuDeviceGetName(buf, 256, self.device), "cuDeviceGetName")
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self._check(self.lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, self.device), "cuDeviceGetAttribute")
        self._check(self.lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, self.device), "cuDeviceGetAttribute")
        return GpuInfo(buf.value.decode(errors="replace"), f"{major.value}.{minor.value}")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self._check(self.lib.cuStreamCreate(ctypes.byref(s), 0), "cuStreamCreate")
        return int(s.value or 0)

    def destroy_stream(self, stream: int) -> None:
        self.lib.cuStreamDestroy_v2(ctypes.c_void_p(stream))

    def sync(self, stream: int) -> None:
        self._check(self.lib.cuStreamSynchronize(ctypes.c_void_p(stream)), "cuStreamSynchronize")

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64(0)
        self._check(self.lib.cuMemAlloc_v2(ctypes.byref(ptr), max(int(nbytes), 1)), "cuMemAlloc")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        self.lib.cuMemFree_v2(ptr)

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array)
        self._check(self.lib.cuMemcpyHtoD_v2(ptr, a.ctypes.data, a.nbytes), "cuMemcpyHtoD")

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._check(self.lib.cuMemcpyDtoH_v2(array.ctypes.data, ptr, array.nbytes), "cuMemcpyDtoH")


def gpu_status() -> tuple[GpuInfo | None, str | None]:
    """(the first CUDA GPU, None) or (None, why there is none). Imports no framework."""
    try:
        return CudaDriver().gpu(), None
    except (RuntimeUnavailable, RuntimeInputError) as exc:
        return None, str(exc)


def tensorrt_status() -> str | None:
    """None when a TensorRT engine can be built and run here, else the reason it cannot."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (pip install tensorrt, on a machine with an NVIDIA GPU)"
    _, reason = gpu_status()
    return reason


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeUnavailable(f"the tensorrt Python package is not importable ({one_line(exc)}): "
                                 "TensorRT engines run on NVIDIA GPUs only") from None
    return trt


class TensorRTRunner(FileRunner):
    """Executes ``model.plan`` with TensorRT's Python API (TensorRT 10 name-based I/O)."""

    name = "tensorrt"

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._trt: Any = None
        self._cuda: CudaDriver | None = None
        self._engine: Any = None
        self._context: Any = None
        self._stream = 0
        self._max_batch: int | None = None

    def _open(self) -> None:
        if not self.path.is_file():
            raise RuntimeInputError(f"{self.path}: no such TensorRT engine file")
        trt = _import_tensorrt()
        self._cuda = CudaDriver()
        logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise RuntimeInputError(f"{self.path}: TensorRT could not deserialize this engine (built by another "
                                    "TensorRT version or for another GPU?)")
        self._context = self._engine.create_execution_context()
        self._stream = self._cuda.stream()
        self._trt = trt
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in inputs]
        self._specs = []
        maxes = []
        for n in inputs:
            shape = tuple(int(d) if int(d) >= 0 else "N" for d in self._engine.get_tensor_shape(n))
            self._specs.append(IOSpec(n, shape, np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))).name))
            if shape and shape[0] == "N":
                maxes.append(int(self._engine.get_tensor_profile_shape(n, 0)[2][0]))
        self._max_batch = min(maxes) if maxes else None

    def _close(self) -> None:
        if self._cuda is not None and self._stream:
            self._cuda.destroy_stream(self._stream)
        self._context = self._engine = self._trt = None
        self._stream = 0

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        assert self._cuda is not None
        trt, ctx, cuda = self._trt, self._context, self._cuda
        ptrs: list[int] = []
        try:
            for spec, a in zip(self._specs, arrays):
                if not ctx.set_input_shape(spec.name, tuple(a.shape)):
                    raise RuntimeInputError(f"{self.path}: input {spec.name!r} shape {a.shape} is outside the "
                                            "engine's optimization profile")
                ptr = cuda.alloc(a.nbytes)
                ptrs.append(ptr)
                cuda.to_device(ptr, a)
                ctx.set_tensor_address(spec.name, ptr)
            results = {}
            for name in self._outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                results[name] = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
                ptr = cuda.alloc(results[name].nbytes)
                ptrs.append(ptr)
                ctx.set_tensor_address(name, ptr)
            if not ctx.execute_async_v3(self._stream):
                raise RuntimeInputError(f"{self.path}: TensorRT failed to run these inputs")
            cuda.sync(self._stream)
            for name, ptr in zip(self._outputs, ptrs[len(arrays):]):
                cuda.to_host(results[name], ptr)
            return results
        finally:
            for ptr in ptrs:
                cuda.free(ptr)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [np.ascontiguousarray(a) for a in self._typed_feeds(feeds)]
        count = arrays[0].shape[0] if arrays and arrays[0].ndim else 0
        step = self._max_batch or count or 1
        if count <= step:
            return self._run(arrays)
        # More samples than the profile's max batch: run them in slices of the max batch.
        parts = [self._run([a[s:s + step] for a in arrays]) for s in range(0, count, step)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def throughput(self, batch: int, seconds: float = 2.0, warmup: int = 10) -> float:
        """Samples per second at ``batch`` with inputs and outputs kept on the GPU (compute only)."""
        self.open()
        assert self._cuda is not None
        ctx, cuda = self._context, self._cuda
        ptrs = []
        try:
            for spec in self._specs:
                shape = (batch, *[int(d) for d in spec.shape[1:]])
                ctx.set_input_shape(spec.name, shape)
                ptr = cuda.alloc(int(np.prod(shape)) * np.dtype(spec.dtype).itemsize)
                ptrs.append(ptr)
                ctx.set_tensor_address(spec.name, ptr)
            for name in self._outputs:
                dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
                ptr = cuda.alloc(int(np.prod(tuple(ctx.get_tensor_shape(name)))) * dtype.itemsize)
                ptrs.append(ptr)
                ctx.set_tensor_address(name, ptr)
            for _ in range(warmup):
                ctx.execute_async_v3(self._stream)
            cuda.sync(self._stream)
            runs, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                for _ in range(10):
                    ctx.execute_async_v3(self._stream)
                cuda.sync(self._stream)
                runs += 10
            return runs * batch / (time.perf_counter() - t0)
        finally:
            for ptr in ptrs:
                cuda.free(ptr)
