"""Read what a .tflite flatbuffer holds: operators in execution order (with their fused
activation), tensors (shape at batch 1, type, constant or not), the main subgraph's I/O.

Uses the flatbuffer schema module that LiteRT ships (``ai_edge_litert.schema_py_generated``,
no TensorFlow import), else TensorFlow's copy of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np


def schema() -> ModuleType:
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated  # type: ignore[no-redef]
    return schema_py_generated


def _enum_names(enum_class: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


# Bytes per element of each TFLite tensor type used for activations.
_ITEMSIZE = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
             "INT8": 1, "FLOAT64": 8, "UINT32": 4, "UINT16": 2, "INT4": 1}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # batch 1 where the signature has a dynamic dimension
    dtype: str  # TFLite type name: "FLOAT32", "INT8", ...
    constant: bool  # data stored in the file (weights), not in the arena

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE.get(self.dtype, 4)


@dataclass(frozen=True)
class OpInfo:
    op: str  # builtin operator name: "CONV_2D", "FULLY_CONNECTED", ...
    inputs: tuple[int, ...]  # tensor indices; -1 for an omitted optional input
    outputs: tuple[int, ...]
    fused_activation: str | None  # "RELU", "RELU6", "NONE"...; None when the op has no such option


@dataclass(frozen=True)
class ModelInfo:
    ops: list[OpInfo]
    tensors: list[TensorInfo]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    # The first signature's names -> tensor indices ({"inputs": {...}, "outputs": {...}}).
    signature: dict[str, dict[str, int]] = field(default_factory=lambda: {"inputs": {}, "outputs": {}})

    def op_names(self) -> list[str]:
        return [o.op for o in self.ops]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.ops:
            counts[o.op] = counts.get(o.op, 0) + 1
        return dict(sorted(counts.items()))


def read_model(data: bytes) -> ModelInfo:
    """The main subgraph of a .tflite model."""
    s = schema()
    model = s.Model.GetRootAs(bytearray(data), 0)
    op_names = _enum_names(s.BuiltinOperator)
    options = _enum_names(s.BuiltinOptions)
    activations = _enum_names(s.ActivationFunctionType)
    types = _enum_names(s.TensorType)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes above 127 live in BuiltinCode; DeprecatedBuiltinCode keeps old readers working.
        value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(value, str(value))
        codes.append(f"CUSTOM:{(code.CustomCode() or b'').decode()}" if name == "CUSTOM" else name)
    sub = model.Subgraphs(0)
    tensors = []
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        buf = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
        constant = buf is not None and (buf.DataLength() > 0 or buf.Offset() > 1)
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        name = (t.Name() or b"").decode("utf-8", "replace")
        tensors.append(TensorInfo(name, shape, types.get(t.Type(), str(t.Type())), constant))
    ops = []
    for j in range(sub.OperatorsLength()):
        op = sub.Operators(j)
        fused = None
        table = op.BuiltinOptions()
        opt_name = options.get(op.BuiltinOptionsType())
        if table is not None and opt_name and hasattr(s, opt_name):
            opts = getattr(s, opt_name)()
            opts.Init(table.Bytes, table.Pos)
            if hasattr(opts, "FusedActivationFunction"):
                fused = activations.get(opts.FusedActivationFunction(), "NONE")
        ins = tuple(int(v) for v in op.InputsAsNumpy()) if op.InputsLength() else ()
        outs = tuple(int(v) for v in op.OutputsAsNumpy()) if op.OutputsLength() else ()
        ops.append(OpInfo(codes[op.OpcodeIndex()], ins, outs, fused))
    graph_in = tuple(int(v) for v in np.atleast_1d(sub.InputsAsNumpy())) if sub.InputsLength() else ()
    graph_out = tuple(int(v) for v in np.atleast_1d(sub.OutputsAsNumpy())) if sub.OutputsLength() else ()
    signature: dict[str, dict[str, int]] = {"inputs": {}, "outputs": {}}
    if model.SignatureDefsLength():
        sig = model.SignatureDefs(0)
        for kind, count, get in (("inputs", sig.InputsLength(), sig.Inputs),
                                 ("outputs", sig.OutputsLength(), sig.Outputs)):
            for i in range(count):
                signature[kind][get(i).Name().decode("utf-8", "replace")] = int(get(i).TensorIndex())
    return ModelInfo(ops, tensors, graph_in, graph_out, signature)
