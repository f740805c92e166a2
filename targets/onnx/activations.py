"""Activation ops (standalone or fused into dense/conv) as ONNX nodes."""

from __future__ import annotations

import math
from typing import Any

from tapeout.targets.onnx.builder import Builder
from tapeout.targets.onnx.layout import physical_axis

GELU_OPSET = 20  # first opset with a Gelu op

_SIMPLE = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "hard_swish": "HardSwish",
           "identity": "Identity", "dropout": "Identity"}


def emit_activation(b: Builder, op: str, attrs: dict[str, Any], x: str, out: str, name: str,
                    rank: int, cf: bool) -> None:
    """Write ``out = op(x)``; ``name`` names the node (helper nodes derive from it)."""
    if op in _SIMPLE:
        b.add(_SIMPLE[op], [x], out, name)
    elif op == "clip":
        lo, hi = attrs.get("min"), attrs.get("max")
        bounds = ["" if v is None else b.scalar(float(v)) for v in (lo, hi)]
        b.add("Clip", [x, *bounds], out, name)
    elif op == "leaky_relu":
        b.add("LeakyRelu", [x], out, name, alpha=float(attrs.get("alpha", 0.3)))
    elif op == "elu":
        b.add("Elu", [x], out, name, alpha=float(attrs.get("alpha", 1.0)))
    elif op == "hard_sigmoid":
        b.add("HardSigmoid", [x], out, name, alpha=float(attrs.get("alpha", 1.0 / 6.0)),
              beta=float(attrs.get("beta", 0.5)))
    elif op == "softmax":
        b.add("Softmax", [x], out, name, axis=physical_axis(int(attrs.get("axis", -1)), rank, cf))
    elif op == "swish":
        # ONNX has no Swish before opset 24; x * sigmoid(x) is what exporters emit.
        s = b.add_aux("Sigmoid", [x], f"{name}/sigmoid")
        b.add("Mul", [x, s], out, name)
    elif op == "gelu":
        _gelu(b, bool(attrs.get("approximate", False)), x, out, name)
    else:
        raise ValueError(f"unknown activation {op!r}")


def _gelu(b: Builder, approximate: bool, x: str, out: str, name: str) -> None:
    if b.opset >= GELU_OPSET:
        b.add("Gelu", [x], out, name, approximate="tanh" if approximate else "none")
        return
    if approximate:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.add_aux("Mul", [x, b.add_aux("Mul", [x, x], f"{name}/x2")], f"{name}/x3")
        inner = b.add_aux("Add", [x, b.add_aux("Mul", [cube, b.scalar(0.044715)], f"{name}/cx3")], f"{name}/poly")
        scaled = b.add_aux("Mul", [inner, b.scalar(math.sqrt(2.0 / math.pi))], f"{name}/scaled")
        core = b.add_aux("Tanh", [scaled], f"{name}/tanh")
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        core = b.add_aux("Erf", [b.add_aux("Mul", [x, b.scalar(1.0 / math.sqrt(2.0))], f"{name}/scaled")],
                         f"{name}/erf")
    one_plus = b.add_aux("Add", [core, b.scalar(1.0)], f"{name}/one_plus")
    half_x = b.add_aux("Mul", [x, b.scalar(0.5)], f"{name}/half_x")
    b.add("Mul", [half_x, one_plus], out, name)
