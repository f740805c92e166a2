"""plan.json: everything needed to rebuild the TensorRT engine of one variant elsewhere.

Built from the IR graph handed to the emitter, the ONNX model written next to it and the
pass records of the compile; no timestamps, no absolute paths unless the user gave one
(--cache-dir), so two builds of the same model give byte-identical files. The JSON Schema
is ``plan.schema.json`` next to this module.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from tapeout.compiler.ir import Graph
from tapeout.compiler.passes.prune import nm_violations
from tapeout.compiler.version import __version__

SCHEMA_ID = "tapeout.tensorrt.plan/1"
SCHEMA_FILE = Path(__file__).with_name("plan.schema.json")
CACHE_FILE = "timing.cache"
DEFAULT_CACHE_DIR = "tensorrt-cache"  # under OUTDIR, beside the variant folders, so rebuilds find it

# What each variant asks the builder for: trtexec flag, BuilderFlags, precision of quantized / other layers.
VARIANT_FLAGS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "fp32": (None, ()),
    "fp16": ("--fp16", ("FP16",)),
    "int8": ("--int8", ("INT8",)),
    "best": ("--best", ("FP16", "INT8")),
}
# IR ops TensorRT can run in int8 when their tensors come through Q/DQ (explicit quantization);
# activations such as softmax or sigmoid are requested in float even when their output is quantized.
_INT8_OPS = ("conv", "dense", "matmul", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool", "add",
             "concat", "flatten", "reshape", "transpose", "pad", "resize", "relu", "clip", "identity")


@dataclass(frozen=True)
class BuildOptions:
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 32
    workspace_mib: int = 1024
    optimization_level: int = 3  # TensorRT's default builder optimization level
    cache: str = f"{DEFAULT_CACHE_DIR}/{CACHE_FILE}"  # relative to OUTDIR, or absolute (--cache-dir)


# ------------------------------------------------------------------ fusion groups
_FOLDED = re.compile(r"^folded (\w+) '(.+)' into (?:the following )?(\w+) '(.+)'$")
_FUSED = re.compile(r"^fused (\w+) '(.+)' into (\w+) '(.+)'$")


def fusion_groups(graph: Graph, pass_records: Sequence[Mapping[str, Any]],
                  onnx_nodes: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """The groups of source layers the compiler merged into one IR node (conv+batch_norm+relu, ...).

    Read from the fuse passes' records; an activation fused there but split off again for
    integer quantization is left out (it is its own node in the graph handed to the emitter).
    """
    absorbed: dict[str, list[tuple[str, str]]] = {}
    for rec in pass_records:
        for line in rec.get("details", []):
            m = _FOLDED.match(line) or _FUSED.match(line)
            if m:
                op, name, _, into = m.groups()
                absorbed.setdefault(into, []).append((op, name))
    names = {n.name for n in graph.nodes}
    groups = []
    for node in graph.nodes:
        act = node.attrs.get("activation")
        fused_act = act is not None and not act.is_identity
        members = [(op, name) for op, name in absorbed.get(node.name, [])
                   if name not in names and (op == "batch_norm" or (fused_act and op == act.op))]
        if not members and not fused_act:
            continue
        ops = [node.op, *[op for op, _ in members if op == "batch_norm"]]
        if fused_act:
            ops.append(act.op)
        groups.append({"layer": node.name, "ops": ops, "source_layers": [node.name, *[n for _, n in members]],
                       "formed_by": "compiler" if members else "source model",
                       "onnx_nodes": list(onnx_nodes.get(node.name, []))})
    return groups


# ------------------------------------------------------------------ ONNX <-> IR
def onnx_nodes_by_layer(graph: Graph, model: Any) -> dict[str, list[str]]:
    """IR node -> the ONNX nodes lowered from it (named after the node, or after a value it writes)."""
    producers = {o: n.name for n in graph.nodes for o in n.outputs}
    layers = sorted({n.name for n in graph.nodes}, key=len, reverse=True)
    out: dict[str, list[str]] = {n.name: [] for n in graph.nodes}
    for node in model.graph.node:
        owner = None
        for name in layers:  # longest first: "conv1_1" before "conv1"
            if node.name == name or node.name.startswith(name + "/"):
                owner = name
                break
        if owner is None:
            for value in sorted(producers, key=len, reverse=True):
                if node.name.startswith(value + "/"):
                    owner = producers[value]
                    break
        if owner is not None:
            out[owner].append(node.name)
    return out


def _is_int8(graph: Graph, value: str) -> bool:
    tq = graph.quant.of(value) if graph.quant is not None else None
    return tq is not None and tq.dtype == "int8"


def layer_precisions(graph: Graph, variant: str, onnx_nodes: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """The precision requested for every IR layer; kept-float layers are pinned to fp32."""
    float_nodes = set(graph.quant.float_nodes) if graph.quant is not None else set()
    rows = []
    for node in graph.nodes:
        if node.name in float_nodes:
            precision = "fp32"
        elif variant in ("int8", "best") and node.op in _INT8_OPS and _is_int8(graph, node.outputs[0]):
            precision = "int8"
        elif variant in ("fp16", "best"):
            precision = "fp16"
        else:
            precision = "fp32"
        rows.append({"layer": node.name, "op": node.op, "precision": precision,
                     "pinned": node.name in float_nodes, "onnx_nodes": list(onnx_nodes.get(node.name, []))})
    return rows


# ------------------------------------------------------------------ trtexec
def shape_arg(shapes: Sequence[tuple[str, Sequence[int]]]) -> str:
    """trtexec's shape spec: 'a:1x3x224x224,b:1x10' (names with odd characters quoted, as trtexec reads them)."""
    parts = []
    for name, dims in shapes:
        quoted = f"'{name}'" if re.search(r"[^\w./-]", name) else name
        parts.append(f"{quoted}:{'x'.join(str(d) for d in dims)}")
    return ",".join(parts)


def trtexec_args(variant: str, inputs: Sequence[Mapping[str, Any]], opts: BuildOptions, cache_from_variant: str,
                 pinned_onnx_nodes: Sequence[str], sparse: bool = False) -> list[str]:
    """The trtexec argument list that rebuilds model.plan, run from the variant folder."""
    flag, flags = VARIANT_FLAGS[variant]
    args = ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan", "--skipInference"]
    if flag:
        args.append(flag)
    if sparse:
        args.append("--sparsity=enable")
    dynamic = [i for i in inputs if i["shape"] and i["shape"][0] == "N"]
    if dynamic:
        for key, which in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            args.append(f"{key}={shape_arg([(i['name'], i['profile'][which]) for i in dynamic])}")
    if pinned_onnx_nodes and "FP16" in flags:
        args += ["--precisionConstraints=obey",
                 "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in pinned_onnx_nodes),
                 "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in pinned_onnx_nodes)]
    args += [f"--memPoolSize=workspace:{opts.workspace_mib}MiB",
             f"--builderOptimizationLevel={opts.optimization_level}",
             f"--timingCacheFile={cache_from_variant}",
             "--profilingVerbosity=detailed"]
    return args


# ------------------------------------------------------------------ 2:4 sparsity
def nm_sparse_layers(model: Any, n: int = 2, m: int = 4) -> list[str]:
    """ONNX Conv/Gemm/MatMul nodes whose constant weights hold ``n`` or fewer non-zeros in every
    ``m`` consecutive weights along the reduction axis as the ONNX stores them, the layout
    TensorRT's sparse tensor cores read (Q/DQ weights are checked through their int8 tensor)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    dq_source = {nd.output[0]: nd.input[0] for nd in model.graph.node if nd.op_type == "DequantizeLinear"}
    found = []
    for nd in model.graph.node:
        if nd.op_type not in ("Conv", "Gemm", "MatMul") or len(nd.input) < 2:
            continue
        name = dq_source.get(nd.input[1], nd.input[1])
        if name not in inits:
            continue
        w = numpy_helper.to_array(inits[name])
        if nd.op_type == "Conv":
            axis = 1 if w.ndim >= 3 and w.shape[1] > 1 else None  # [F, C/g, *K]; depthwise has no C
        elif nd.op_type == "Gemm":
            trans_b = next((a.i for a in nd.attribute if a.name == "transB"), 0)
            axis = 1 if trans_b else 0
        else:
            axis = 0 if w.ndim == 2 else None
        if axis is not None and w.shape[axis] % m == 0 and nm_violations(w, axis, n, m) == 0:
            found.append(nd.name)
    return found


# ------------------------------------------------------------------ the plan
def build_plan(graph: Graph, model: Any, model_bytes: bytes, variant: str, opts: BuildOptions,
               pass_records: Sequence[Mapping[str, Any]], folder: str) -> dict[str, Any]:
    """plan.json's content for ``model`` (the ONNX written for ``graph``) in OUTDIR/``folder``."""
    from onnx import helper

    def io(v: Any, source: str) -> dict[str, Any]:
        dims = [d.dim_value if d.HasField("dim_value") else "N" for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": dims, "layout": graph.io_layouts.get(source)}

    inputs = []
    for v in model.graph.input:
        entry = io(v, v.name)
        if entry["shape"] and entry["shape"][0] == "N":
            rest = entry["shape"][1:]
            if any(not isinstance(d, int) or d <= 0 for d in rest):
                raise ValueError(f"input {v.name!r} has a dynamic non-batch dimension {entry['shape']}")
            entry["profile"] = {k: [b, *rest] for k, b in (("min", opts.min_batch), ("opt", opts.opt_batch),
                                                           ("max", opts.max_batch))}
        inputs.append(entry)
    outputs = [io(v, v.name) for v in model.graph.output]
    by_layer = onnx_nodes_by_layer(graph, model)
    layers = layer_precisions(graph, variant, by_layer)
    pinned = [n for row in layers if row["pinned"] for n in row["onnx_nodes"]]
    cache_from_variant = opts.cache if Path(opts.cache).is_absolute() else f"../{opts.cache}"
    # prune:2:4 leaves the pattern sparse tensor cores need; TensorRT supports 2:4 only.
    sparse = graph.metadata.get("sparsity_pattern") == "2:4"
    args = trtexec_args(variant, inputs, opts, cache_from_variant, pinned, sparse)
    flag, flags = VARIANT_FLAGS[variant]
    flags = (*flags, "SPARSE_WEIGHTS") if sparse else flags
    q = graph.quant
    quant = None
    if variant in ("int8", "best"):
        assert q is not None
        quant = {"scheme": q.scheme, "explicit_qdq": True,
                 "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
                 "dequantize_nodes": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
                 "float_layers": list(q.float_nodes)}
    elif q is not None:
        quant = {"scheme": q.scheme, "explicit_qdq": False, "quantize_nodes": 0, "dequantize_nodes": 0,
                 "float_layers": list(q.float_nodes)}
    return {
        "schema": SCHEMA_ID,
        "tapeout_version": __version__,
        "variant": variant,
        "model": {"file": "model.onnx", "sha256": hashlib.sha256(model_bytes).hexdigest(),
                  "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                  "nodes": len(model.graph.node)},
        "engine": "model.plan",
        "inputs": inputs,
        "outputs": outputs,
        "profiles": [{"min_batch": opts.min_batch, "opt_batch": opts.opt_batch, "max_batch": opts.max_batch}],
        "precision": {"builder_flags": list(flags), "trtexec_flag": flag,
                      "constraints": "obey" if pinned and "FP16" in flags else "none", "layers": layers},
        "quantization": quant,
        "fusion_groups": fusion_groups(graph, pass_records, by_layer),
        "builder": {"workspace_mib": opts.workspace_mib, "optimization_level": opts.optimization_level,
                    "timing_cache": opts.cache, "profiling_verbosity": "detailed", "sparse_weights": sparse,
                    "sparse_layers": nm_sparse_layers(model) if sparse else []},
        "trtexec": {"cwd": folder, "args": args, "command": shlex.join(args)},
        "build": None,
    }


def dumps(plan: Mapping[str, Any]) -> bytes:
    return (json.dumps(plan, indent=2) + "\n").encode()


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())
