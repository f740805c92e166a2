"""Builds model.plan with TensorRT's Python API: the one module of the target that imports tensorrt.

``configure`` turns plan.json into builder settings and takes the tensorrt module as an
argument, so its logic is unit-tested with a stand-in module on machines without a GPU;
``build`` does the real work and runs only where TensorRT and a CUDA GPU are present.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tapeout.compiler.errors import TapeoutError


class EngineBuildError(TapeoutError):
    """TensorRT refused the model or the build failed (the message says where)."""

    exit_code = 2


@dataclass
class Configured:
    config: Any
    flags: list[str]
    pinned_layers: list[str] = field(default_factory=list)  # TensorRT layers held at fp32
    profile: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)


def _owner(layer: str, nodes: set[str]) -> str | None:
    """The ONNX node a TensorRT layer comes from: its name, or the longest node name it extends with '_'."""
    if layer in nodes:
        return layer
    best = None
    for n in nodes:
        if layer.startswith(n + "_") and (best is None or len(n) > len(best)):
            best = n
    return best


def configure(trt: Any, builder: Any, network: Any, plan: Mapping[str, Any], cache: bytes) -> Configured:
    """A builder config holding plan.json's precision, profile, workspace, level and timing cache."""
    config = builder.create_builder_config()
    settings = plan["builder"]
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings["workspace_mib"]) << 20)
    config.builder_optimization_level = int(settings["optimization_level"])
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    flags = list(plan["precision"]["builder_flags"])
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    pinned: list[str] = []
    wanted = {n for row in plan["precision"]["layers"] if row["pinned"] for n in row["onnx_nodes"]}
    if plan["precision"]["constraints"] == "obey":
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        all_nodes = {n for row in plan["precision"]["layers"] for n in row["onnx_nodes"]}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if _owner(layer.name, all_nodes) in wanted:
                layer.precision = trt.float32
                for k in range(layer.num_outputs):
                    layer.set_output_type(k, trt.float32)
                pinned.append(layer.name)
    profile_shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    dynamic = [i for i in plan["inputs"] if "profile" in i]
    if dynamic:
        profile = builder.create_optimization_profile()
        for inp in dynamic:
            p = inp["profile"]
            shapes = (tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
            profile.set_shape(inp["name"], *shapes)
            profile_shapes[inp["name"]] = shapes
        config.add_optimization_profile(profile)
    timing = config.create_timing_cache(cache)
    config.set_timing_cache(timing, False)  # False: a cache from another GPU or version is an error, not ignored
    return Configured(config, flags, pinned, profile_shapes)


def layer_info(inspector_json: str) -> list[dict[str, Any]]:
    """The engine inspector's layers as {name, type, fused, precisions} (DETAILED verbosity)."""
    data = json.loads(inspector_json)
    rows = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):  # LAYER_NAMES_ONLY verbosity gives bare names
            layer = {"Name": layer}
        name = str(layer.get("Name", ""))
        formats = [str(t.get("Format/Datatype", "")) for t in layer.get("Outputs", []) if isinstance(t, dict)]
        precisions = sorted({p for f in formats for p, keys in (("int8", ("Int8",)), ("fp16", ("FP16", "Half")),
                                                               ("fp32", ("FP32", "Float")))
                             if any(k in f for k in keys)})
        rows.append({"name": name, "type": layer.get("LayerType"), "fused": [p.strip() for p in name.split(" + ")],
                     "precisions": precisions})
    return rows


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def build(onnx_path: Path, plan: Mapping[str, Any], engine_path: Path, cache_path: Path) -> dict[str, Any]:
    """Build and write ``engine_path``; update the timing cache; return what plan.json and the report record."""
    import tensorrt as trt

    from tapeout.runtime.runners.tensorrt import CudaDriver

    gpu = CudaDriver().gpu()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT 10 networks are always explicit-batch; 8.x needs the flag.
    net_flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser refused {onnx_path.name}: {errors}")
    warm = cache_path.is_file()
    cache = cache_path.read_bytes() if warm else b""
    configured = configure(trt, builder, network, plan, cache)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, configured.config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path.name} "
                               f"(flags {', '.join(configured.flags) or 'fp32'}); rerun with --debug")
    engine_bytes = bytes(serialized)
    _write_atomic(engine_path, engine_bytes)
    _write_atomic(cache_path, bytes(configured.config.get_timing_cache().serialize()))
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
    layers = layer_info(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    return {
        "plan": {"tensorrt_version": trt.__version__, "gpu": gpu.name, "compute_capability": gpu.compute_capability},
        "seconds": seconds,  # for benchmarks; kept out of the report so --no-timings reports stay stable
        "report": {"built": True, "timing_cache": {"path": str(cache_path), "warm": warm},
                   "pinned_layers": configured.pinned_layers, "layers": layers,
                   "fused_layers": [r["name"] for r in layers if len(r["fused"]) > 1],
                   "precisions": {p: sum(p in r["precisions"] for r in layers) for p in ("fp32", "fp16", "int8")}},
    }
