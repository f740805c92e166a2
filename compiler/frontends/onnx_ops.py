"""The ONNX op table: op_type -> handler, one module per family of ops.

A handler gets the conversion ``Context`` and the ``OnnxNode`` and returns one bound
value (an IR ``Value`` or a NumPy constant) per output it supports, in order; the
converter refuses the node if a further output is used. To support a new op, write
a handler in the module of its family with ``@handles("OpType")``.
"""

from __future__ import annotations

from tapeout.compiler.frontends import onnx_ops_elementwise, onnx_ops_linear, onnx_ops_shape, onnx_ops_spatial
from tapeout.compiler.frontends.onnx_context import Handler

HANDLERS: dict[str, Handler] = {
    **onnx_ops_elementwise.HANDLERS,
    **onnx_ops_linear.HANDLERS,
    **onnx_ops_spatial.HANDLERS,
    **onnx_ops_shape.HANDLERS,
}


def supported_ops() -> list[str]:
    return sorted(HANDLERS)
