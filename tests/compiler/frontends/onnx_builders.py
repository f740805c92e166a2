"""Small ONNX models built with onnx.helper for the ONNX front-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = Sequence[int | str | None]


def rand(rng: np.random.Generator, *shape: int, scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] | str, name: str | None = None,
         **attrs: Any) -> onnx.NodeProto:
    outs = [outputs] if isinstance(outputs, str) else list(outputs)
    return helper.make_node(op, list(inputs), outs, name=name or outs[0], **attrs)


def make_model(nodes: Sequence[onnx.NodeProto], inputs: dict[str, Shape], outputs: dict[str, Shape | None],
               inits: dict[str, np.ndarray] | None = None, *, opset: int = 17, name: str = "model",
               ir_version: int | None = None, inits_as_inputs: bool = False) -> onnx.ModelProto:
    """A model with float inputs/outputs; ``inits`` become initializers (typed by their arrays)."""
    inits = inits or {}
    ins = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in inputs.items()]
    if inits_as_inputs:  # what IR version 3 requires
        ins += [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                for k, v in inits.items()]
    outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, None if v is None else list(v))
            for k, v in outputs.items()]
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    graph = helper.make_graph(list(nodes), name, ins, outs, tensors)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="tapeout-tests",
                              ir_version=ir_version or max(4, helper.find_min_ir_version_for(opsets)))
    if any(v is None for v in outputs.values()):  # the checker wants output shapes: infer them
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, folder: Path, name: str = "model") -> Path:
    path = folder / f"{name}.onnx"
    onnx.save_model(model, str(path))
    return path


# ------------------------------------------------------------------ models
def conv_bn_relu(rng: np.random.Generator, prefix: str, x: str, cin: int, cout: int,
                 inits: dict[str, np.ndarray], *, stride: int = 1, relu: bool = True) -> tuple[list, str]:
    """Conv 3x3 (pads 1) + BatchNormalization (+ Relu), as PyTorch exports them."""
    inits[f"{prefix}.w"] = rand(rng, cout, cin, 3, 3)
    inits[f"{prefix}.b"] = rand(rng, cout)
    for k, v in (("scale", rng.uniform(0.5, 1.5, cout)), ("bias", rng.normal(0, 0.1, cout)),
                 ("mean", rng.normal(0, 0.1, cout)), ("var", rng.uniform(0.5, 2.0, cout))):
        inits[f"{prefix}.bn.{k}"] = v.astype(np.float32)
    nodes = [node("Conv", [x, f"{prefix}.w", f"{prefix}.b"], f"{prefix}.conv", kernel_shape=[3, 3],
                  pads=[1, 1, 1, 1], strides=[stride, stride]),
             node("BatchNormalization", [f"{prefix}.conv", *(f"{prefix}.bn.{k}" for k in
                                                             ("scale", "bias", "mean", "var"))],
                  f"{prefix}.bn", epsilon=1e-5)]
    out = f"{prefix}.bn"
    if relu:
        nodes.append(node("Relu", [out], f"{prefix}.relu"))
        out = f"{prefix}.relu"
    return nodes, out


def pytorch_cnn(batch: int | str = 1, *, seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """Conv/BN/Relu/MaxPool twice, Flatten, Gemm (transB=1), like torch.onnx.export of a small CNN."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {}
    n1, x = conv_bn_relu(rng, "features.0", "input", 3, 8, inits)
    n2, y = conv_bn_relu(rng, "features.1", "pool1", 8, 16, inits)
    inits["fc.weight"] = rand(rng, classes, 16 * 4 * 4, scale=0.1)
    inits["fc.bias"] = rand(rng, classes)
    nodes = [*n1, node("MaxPool", [x], "pool1", kernel_shape=[2, 2], strides=[2, 2]), *n2,
             node("MaxPool", [y], "pool2", kernel_shape=[2, 2], strides=[2, 2]),
             node("Flatten", ["pool2"], "flat", axis=1),
             node("Gemm", ["flat", "fc.weight", "fc.bias"], "logits", transB=1)]
    return make_model(nodes, {"input": [batch, 3, 16, 16]}, {"logits": [batch, classes]}, inits, opset=13,
                      name="pytorch_cnn")


def resnet_style(batch: int | str = 1, *, seed: int = 0, blocks: int = 2, width: int = 8) -> onnx.ModelProto:
    """Stem conv, residual blocks (conv-bn-relu-conv-bn + identity add, relu), a strided
    block with a 1x1 projection shortcut, global average pool, flatten, Gemm."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {}
    nodes, x = conv_bn_relu(rng, "stem", "images", 3, width, inits)
    for b in range(blocks):
        stride = 2 if b == blocks - 1 else 1
        n1, h = conv_bn_relu(rng, f"layer{b}.a", x, width, width, inits, stride=stride)
        n2, h = conv_bn_relu(rng, f"layer{b}.b", h, width, width, inits, relu=False)
        nodes += n1 + n2
        shortcut = x
        if stride != 1:
            inits[f"layer{b}.proj.w"] = rand(rng, width, width, 1, 1)
            nodes.append(node("Conv", [x, f"layer{b}.proj.w"], f"layer{b}.proj", strides=[2, 2]))
            shortcut = f"layer{b}.proj"
        nodes += [node("Add", [h, shortcut], f"layer{b}.add"), node("Relu", [f"layer{b}.add"], f"layer{b}.out")]
        x = f"layer{b}.out"
    inits["fc.weight"] = rand(rng, 5, width, scale=0.3)
    inits["fc.bias"] = rand(rng, 5)
    nodes += [node("GlobalAveragePool", [x], "gap"), node("Flatten", ["gap"], "flat"),
              node("Gemm", ["flat", "fc.weight", "fc.bias"], "scores", transB=1)]
    return make_model(nodes, {"images": [batch, 3, 16, 16]}, {"scores": [batch, 5]}, inits, opset=17,
                      name="resnet_style")


def single(op: str, x_shape: Shape, *, inputs: Sequence[str] = (), attrs: dict[str, Any] | None = None,
           inits: dict[str, np.ndarray] | None = None, opset: int = 17, conv: bool = False,
           seed: int = 0) -> onnx.ModelProto:
    """Input "x" -> (optional 1x1 Conv, so the op reads a channels-last IR value) -> ``op`` -> "y".

    ``inputs`` are the op's further inputs, or all of them when one is "$x" (the main input).
    """
    rng = np.random.default_rng(seed)
    inits = dict(inits or {})
    nodes, x = [], "x"
    if conv:
        c = int(x_shape[1])  # type: ignore[arg-type]
        inits["pre.w"] = rand(rng, c, c, *([1] * (len(x_shape) - 2)))
        nodes.append(node("Conv", ["x", "pre.w"], "pre"))
        x = "pre"
    args = [x if i == "$x" else i for i in inputs] if "$x" in inputs else [x, *inputs]
    nodes.append(node(op, args, "y", name=f"the_{op.lower()}",
                      **(attrs or {})))
    return make_model(nodes, {"x": x_shape}, {"y": None}, inits, opset=opset, name=op.lower())
