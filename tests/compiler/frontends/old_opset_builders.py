"""ONNX models in the forms early exporters wrote (PyTorch 0.3/0.4, opsets 4-7), built with onnx.helper.

Each function returns an ``onnx.ModelProto`` with seeded, trained-looking weights (He-scaled
kernels, positive BatchNorm variances, small biases), a fixed batch of 1 as those exporters
baked in, PyTorch's numeric value names (``0``, ``input.1``...) and IR version 3, whose graph
inputs list every initializer. The files are written as those exporters wrote them, so some
are *not* accepted by today's ``onnx.checker`` (``consumed_inputs`` on BatchNormalization-6).

``reference(model, x)`` runs any of them in NumPy from the stored weights, independently of
onnx's version converter and of onnxruntime.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _he(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _small(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.standard_normal(n) * 0.1).astype(np.float32)


def _model(nodes: list, x: str, x_shape: list[int], y: str, y_shape: list[int], inits: dict[str, np.ndarray],
           opset: int) -> onnx.ModelProto:
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, x_shape)]
    inputs += [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
               for k, v in inits.items()]  # IR version 3: initializers are graph inputs too
    graph = helper.make_graph(nodes, "torch-jit-export", inputs,
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, y_shape)], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=3,
                             producer_name="pytorch", producer_version="0.3")


def mlp(opset: int = 6, *, seed: int = 0, sizes: tuple[int, ...] = (16, 64, 32, 32, 5)) -> onnx.ModelProto:
    """A jet-tagger-like MLP: Gemm (``broadcast=1`` below opset 7, ``transB=1``) + Relu, Softmax last.

    Input ``0`` [1, sizes[0]], output the last value name.
    """
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {}
    nodes, x, counter = [], "0", 1
    extra: dict[str, Any] = {"broadcast": 1} if opset < 7 else {}
    for i, (k, m) in enumerate(zip(sizes[:-1], sizes[1:])):
        w, b = str(counter), str(counter + 1)
        counter += 2
        inits[w], inits[b] = _he(rng, m, k), _small(rng, m)
        inits[w] *= np.float32(2.0 if i == len(sizes) - 2 else 1.0)  # logits with some spread
        nodes.append(helper.make_node("Gemm", [x, w, b], [f"g{i}"], alpha=1.0, beta=1.0, transB=1, **extra))
        x = f"g{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Softmax", [x], ["output"], axis=1))
    return _model(nodes, "0", [1, sizes[0]], "output", [1, sizes[-1]], inits, opset)


def cnn(opset: int = 6, *, seed: int = 0, channels: int = 3, size: int = 16, width: int = 8,
        classes: int = 10, consumed_inputs: bool = True) -> onnx.ModelProto:
    """Conv + BatchNormalization + Relu + MaxPool, twice, a per-channel bias Add, Dropout, Flatten
    (``Reshape`` with a ``shape`` attribute below opset 5, with a shape input above) and Gemm.

    Below opset 7: BatchNormalization has ``is_test=1`` (and ``consumed_inputs`` when asked: PyTorch
    0.3 wrote it at opset 6 too, where the schema no longer has it), Dropout ``is_test=1``, Add
    ``broadcast=1, axis=1`` (the old axis-aligned broadcast of a [C] bias onto NCHW), Gemm
    ``broadcast=1``. Input ``input.1`` [1, channels, size, size], output ``output`` [1, classes].
    """
    rng = np.random.default_rng(seed)
    old = opset < 7
    inits: dict[str, np.ndarray] = {}
    nodes: list = []
    x, cin, s = "input.1", channels, size
    for i in range(2):
        p = f"features.{i}"
        inits[f"{p}.conv.weight"], inits[f"{p}.conv.bias"] = _he(rng, width, cin, 3, 3), _small(rng, width)
        inits[f"{p}.bn.weight"] = rng.uniform(0.7, 1.3, width).astype(np.float32)
        inits[f"{p}.bn.bias"] = _small(rng, width)
        inits[f"{p}.bn.running_mean"] = _small(rng, width)
        inits[f"{p}.bn.running_var"] = rng.uniform(0.5, 2.0, width).astype(np.float32)
        nodes.append(helper.make_node("Conv", [x, f"{p}.conv.weight", f"{p}.conv.bias"], [f"{p}.c"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1],
                                      group=1))
        bn_attrs: dict[str, Any] = {"epsilon": 1e-5, "momentum": 0.9}
        if old:
            bn_attrs["is_test"] = 1
            if consumed_inputs or opset < 6:
                bn_attrs["consumed_inputs"] = [0, 0, 0, 1, 1]
        nodes.append(helper.make_node("BatchNormalization", [f"{p}.c", *(f"{p}.bn.{k}" for k in (
            "weight", "bias", "running_mean", "running_var"))], [f"{p}.n"], **bn_attrs))
        nodes.append(helper.make_node("Relu", [f"{p}.n"], [f"{p}.r"]))
        nodes.append(helper.make_node("MaxPool", [f"{p}.r"], [f"{p}.p"], kernel_shape=[2, 2], pads=[0, 0, 0, 0],
                                      strides=[2, 2]))
        x, cin, s = f"{p}.p", width, s // 2
    inits["shift"] = _small(rng, width)
    nodes.append(helper.make_node("Add", [x, "shift"], ["shifted"], **({"broadcast": 1, "axis": 1} if old else {})))
    if not old:
        inits["shift"] = inits["shift"].reshape(width, 1, 1)  # numpy broadcasting from opset 7
    nodes.append(helper.make_node("Dropout", ["shifted"], ["dropped"], ratio=0.5, **({"is_test": 1} if old else {})))
    flat = width * s * s
    if opset < 5:
        nodes.append(helper.make_node("Reshape", ["dropped"], ["flat"], shape=[1, flat]))
    else:
        inits["flat_shape"] = np.array([1, flat], np.int64)
        nodes.append(helper.make_node("Reshape", ["dropped", "flat_shape"], ["flat"]))
    inits["classifier.weight"], inits["classifier.bias"] = _he(rng, classes, flat) * np.float32(2.0), \
        _small(rng, classes)
    nodes.append(helper.make_node("Gemm", ["flat", "classifier.weight", "classifier.bias"], ["output"], alpha=1.0,
                                  beta=1.0, transB=1, **({"broadcast": 1} if old else {})))
    return _model(nodes, "input.1", [1, channels, size, size], "output", [1, classes], inits, opset)


# ------------------------------------------------------------- reference
def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    h, wd = x.shape[2] - k + 1, x.shape[3] - k + 1
    out = np.zeros((x.shape[0], w.shape[0], h, wd), np.float64)
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,fc->nfhw", x[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out + b.reshape(1, -1, 1, 1)


def reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Run a model built by this module in NumPy (float64), from its initializers and attributes."""
    params = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    vals: dict[str, np.ndarray] = {model.graph.input[0].name: x.astype(np.float64)}
    for n in model.graph.node:
        a = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        ins = [vals[i] if i in vals else params[i] for i in n.input]
        op = n.op_type
        if op == "Gemm":
            y = ins[0] @ ins[1].T + ins[2]
        elif op == "Relu":
            y = np.maximum(ins[0], 0)
        elif op == "Softmax":
            e = np.exp(ins[0] - ins[0].max(axis=1, keepdims=True))
            y = e / e.sum(axis=1, keepdims=True)
        elif op == "Conv":
            y = _conv(ins[0], ins[1], ins[2], a["pads"][0])
        elif op == "BatchNormalization":
            c = (1, -1, 1, 1)
            scale, bias, mean, var = (v.reshape(c) for v in ins[1:])
            y = (ins[0] - mean) / np.sqrt(var + a["epsilon"]) * scale + bias
        elif op == "MaxPool":
            n_, c_, h, w = ins[0].shape
            y = ins[0].reshape(n_, c_, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        elif op == "Add":
            b = ins[1].reshape(-1, 1, 1) if ins[1].ndim == 1 else ins[1]
            y = ins[0] + b
        elif op == "Dropout":
            y = ins[0]
        elif op == "Reshape":
            y = ins[0].reshape(x.shape[0], -1)
        else:
            raise NotImplementedError(op)
        vals[n.output[0]] = y
    return vals[model.graph.output[0].name]
