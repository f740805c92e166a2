"""QONNX models as Brevitas's ``export_qonnx`` writes them, built with onnx.helper, for tests.

Layout of an export (Brevitas 0.11, ``Int8ActPerTensorFixedPoint``/``Int8WeightPerTensorFixedPoint``
style power-of-two quantizers): a ``Quant`` on the graph input, a ``Quant`` on every weight
initializer feeding ``Gemm(transB=1)``/``Conv`` (NCHW), a ``Quant`` after each ``Relu``, scales,
zero points and bit widths as float32 initializers, domain ``qonnx.custom_op.general`` (opset 1).
Values are small enough that every sum is exact in float32, so any correct implementation
reproduces qonnx's execution bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "qonnx.custom_op.general"
OPSET = 13


class Builder:
    """Nodes and initializers of one model, with Brevitas-like names (Quant_0, Gemm_1, ...)."""

    def __init__(self, seed: int = 0, domain: str = DOMAIN) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.domain = domain
        self._count: dict[str, int] = {}

    def name(self, op: str) -> str:
        k = self._count.get(op, 0)
        self._count[op] = k + 1
        return f"{op}_{k}"

    def init(self, name: str, value: Any) -> str:
        self.inits[name] = np.asarray(value, dtype=np.float32)
        return name

    def op(self, op: str, inputs: Sequence[str], domain: str = "", **attrs: Any) -> str:
        name = self.name(op)
        out = f"{name}_out0"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, domain=domain, **attrs))
        return out

    def quant(self, x: str, scale: Any, bits: int, *, signed: bool = True, narrow: bool = False,
              rounding: str = "ROUND", zero_point: Any = 0.0, op: str = "Quant") -> str:
        name = f"{self.name('Quant') if op == 'Quant' else self.name(op)}"
        s = self.init(f"{name}_param0", scale)
        z = self.init(f"{name}_param1", zero_point)
        b = self.init(f"{name}_param2", float(bits))
        out = f"{name}_out0"
        self.nodes.append(helper.make_node(op, [x, s, z, b], [out], name=name, domain=self.domain,
                                           signed=int(signed), narrow=int(narrow), rounding_mode=rounding))
        return out

    def weight(self, shape: Sequence[int], bits: int, f: int | np.ndarray, *, narrow: bool = True) -> str:
        """A float weight initializer behind a signed narrow-range Quant with scale 2**-f (per
        output channel when ``f`` is an array)."""
        f_arr = np.asarray(f, dtype=np.float64)
        scale = np.power(2.0, -f_arr)
        if f_arr.ndim:
            scale = scale.reshape((-1,) + (1,) * (len(shape) - 1))
        top = 2 ** (bits - 1)
        w = self.rng.uniform(-top, top, shape) * scale  # spans the range: some codes clamp
        name = self.init(f"w{len(self.inits)}", w)
        return self.quant(name, scale, bits, narrow=narrow)

    def bias(self, n: int, f: int) -> str:
        """A bias on a 2**-f grid (Brevitas's Int16Bias: scale = input scale * weight scale)."""
        b = np.round(self.rng.uniform(-4, 4, n) * 2.0**f) / 2.0**f
        return self.quant(self.init(f"b{len(self.inits)}", b), 2.0**-f, 16)

    def model(self, x: str, shape: Sequence[int | None], y: str, out_shape: Sequence[int | None],
              name: str) -> onnx.ModelProto:
        ins = [helper.make_tensor_value_info(x, TensorProto.FLOAT, list(shape))]
        outs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, list(out_shape))]
        tensors = [numpy_helper.from_array(v, k) for k, v in self.inits.items()]
        graph = helper.make_graph(self.nodes, name, ins, outs, tensors)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(self.domain, 1)],
                                  producer_name="pytorch", producer_version="2.4")
        onnx.checker.check_model(model)
        return model


def mlp(bits: int = 8, *, seed: int = 0, inputs: int = 16, hidden: Sequence[int] = (32, 16),
        outputs: int = 5) -> onnx.ModelProto:
    """QuantIdentity -> (QuantLinear -> ReLU -> QuantReLU)* -> QuantLinear, ``bits``-bit weights,
    8-bit activations (signed input 2**-4, unsigned hidden 2**-3)."""
    b = Builder(seed)
    x = "global_in"
    h = b.quant(x, 2.0**-4, 8)
    f_in, width = 4, inputs
    wf = bits - 2  # weights in about [-2, 2)
    layers = [*hidden, outputs]
    for j, n in enumerate(layers):
        w = b.weight((n, width), bits, wf)
        h = b.op("Gemm", [h, w, b.bias(n, f_in + wf)], transB=1)
        if j < len(layers) - 1:
            h = b.quant(b.op("Relu", [h]), 2.0**-3, 8, signed=False)
            f_in, width = 3, n
    y = b.op("Identity", [h])
    return b.model(x, [None, inputs], y, [None, outputs], f"qonnx_mlp_w{bits}")


def cnn(bits: int = 4, *, seed: int = 1, size: int = 8, channels: tuple[int, int] = (4, 8),
        classes: int = 5, view_reshape: bool = True) -> onnx.ModelProto:
    """QuantIdentity -> QuantConv2d 3x3 -> ReLU -> QuantReLU -> MaxPool 2 -> QuantConv2d 3x3 ->
    ReLU -> QuantReLU -> flatten -> QuantLinear. Per-output-channel weight scales on the first
    conv; ``view_reshape``: flatten as PyTorch's ``x.view(x.size(0), -1)`` (Shape, Gather,
    Unsqueeze, Concat, Reshape: folds only when the quantizer's output shape is known)."""
    b = Builder(seed)
    x = "global_in"
    c1, c2 = channels
    h = b.quant(x, 2.0**-5, 8)
    wf = bits - 2
    f1 = np.array([wf + (k % 2) for k in range(c1)])  # per channel: scales 2**-wf and 2**-(wf+1)
    w1 = b.weight((c1, 1, 3, 3), bits, f1)
    h = b.op("Conv", [h, w1], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.quant(b.op("Relu", [h]), 2.0**-3, 8, signed=False)
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    w2 = b.weight((c2, c1, 3, 3), bits, wf)
    h = b.op("Conv", [h, w2, b.bias(c2, 3 + wf)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.quant(b.op("Relu", [h]), 2.0**-3, 8, signed=False)
    feat = c2 * (size // 2) ** 2
    if view_reshape:
        b.inits.update(idx0=np.array(0, np.int64), axes0=np.array([0], np.int64),
                       minus1=np.array([-1], np.int64))
        n = b.op("Gather", [b.op("Shape", [h]), "idx0"], axis=0)
        target = b.op("Concat", [b.op("Unsqueeze", [n, "axes0"]), "minus1"], axis=0)
        h = b.op("Reshape", [h, target])
    else:
        h = b.op("Flatten", [h], axis=1)
    w3 = b.weight((classes, feat), bits, wf)
    y = b.op("Gemm", [h, w3, b.bias(classes, 3 + wf)], transB=1)
    return b.model(x, [None, 1, size, size], y, [None, classes], f"qonnx_cnn_w{bits}")


def binary_mlp(*, seed: int = 7, inputs: int = 16, hidden: int = 8, outputs: int = 3) -> onnx.ModelProto:
    """8-bit input, a 4-bit QuantLinear, a BipolarQuant activation (scale 1) and a +-1 weight
    layer (a BNN's last layer, weights already bipolar)."""
    b = Builder(seed)
    h = b.quant("global_in", 2.0**-4, 8)
    h = b.op("Gemm", [h, b.weight((hidden, inputs), 4, 2)], transB=1)
    out = "BipolarQuant_0_out0"
    b.nodes.append(helper.make_node("BipolarQuant", [h, b.init("BipolarQuant_0_param0", 1.0)], [out],
                                    name="BipolarQuant_0", domain=b.domain))
    w = b.init("wb", np.where(b.rng.normal(size=(outputs, hidden)) >= 0, 1.0, -1.0))
    y = b.op("Gemm", [out, w], transB=1)
    return b.model("global_in", [None, inputs], y, [None, outputs], "qonnx_binary_mlp")


def single(op: str, shape: Sequence[int], params: dict[str, Any], attrs: dict[str, Any] | None = None,
           domain: str = DOMAIN, domain_version: int = 1) -> onnx.ModelProto:
    """One quantizer node on the graph input ``x``: ``params`` are its further inputs in order
    (name -> value; None computes that input at run time from ``x``, as dynamic quantization
    does: ``ReduceMax(Abs(x))``). ``attrs`` None: a Quant gets signed=1, narrow=0."""
    if attrs is None and op in ("Quant", "IntQuant"):
        attrs = {"signed": 1, "narrow": 0}
    inits: dict[str, np.ndarray] = {}
    nodes, names = [], ["x"]
    for k, v in params.items():
        if v is None:
            nodes += [helper.make_node("Abs", ["x"], [f"{k}/abs"]),
                      helper.make_node("ReduceMax", [f"{k}/abs"], [k], keepdims=0)]
        else:
            inits[k] = np.asarray(v, dtype=np.float32)
        names.append(k)
    nodes.append(helper.make_node(op, names, ["y"], name=f"{op}_0", domain=domain, **(attrs or {})))
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [None, *shape[1:]]) for k in "xy"]
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, op.lower(), io[:1], io[1:], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                   helper.make_opsetid(domain, domain_version)])


def save(model: onnx.ModelProto, folder: Path, name: str | None = None) -> Path:
    path = folder / f"{name or model.graph.name}.onnx"
    onnx.save_model(model, str(path))
    return path


def qonnx_execute(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """QONNX's reference execution (``qonnx.core.onnx_exec.execute_onnx``) of a one-input,
    one-output model on the batch ``x``."""
    from tapeout.runtime.runners.qonnx_exec import QonnxRunner

    if not isinstance(model, Path):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            return qonnx_execute(save(model, Path(d), "m"), x)
    with QonnxRunner(model) as r:
        spec = r.input_specs()[0]
        return r.infer({spec.name: x})[r.output_names()[0]]
