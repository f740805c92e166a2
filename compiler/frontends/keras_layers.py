"""Per-layer mapping from Keras layers (Keras 3 or tf_keras) onto IR nodes.

Each converter gets the emitter, the live layer, its ``get_config()`` and the IR
value names of its inputs, and returns the IR value name of its output. The
converters read only configs and ``get_weights()``/weight attributes, which both
Keras 3 and tf_keras expose in the same form.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tapeout.compiler.errors import FrontendError
from tapeout.compiler.ir import Activation, Graph, Node
from tapeout.compiler.ops import infer_node, same_pads


class Emitter:
    """Appends nodes to a graph, typing each one as it goes so converters can read input shapes."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def node(self, op: str, name: str, inputs: list[str], **attrs: Any) -> str:
        g = self.graph
        name = g.unique_name(name)
        node = Node(op, name, list(inputs), [name], attrs)
        g.nodes.append(node)
        g.types[name] = infer_node(node, [g.type_of(i) for i in inputs], g)[0]
        return name

    def const(self, base: str, array: Any) -> str:
        return self.graph.add_constant(base, np.asarray(array, dtype=np.float32))

    def shape(self, value: str) -> tuple:
        return self.graph.type_of(value).shape


Converter = Callable[[Emitter, Any, dict, list[str]], str]


def _fail(layer: Any, why: str) -> FrontendError:
    return FrontendError(f"layer {layer.name!r} ({type(layer).__name__}): {why}")


def _is_tf_keras(layer: Any) -> bool:
    return type(layer).__module__.startswith("tf_keras")


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return (int(v),) * n


def _weights(layer: Any) -> list[np.ndarray]:
    return [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]


def _var(v: Any) -> np.ndarray:
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float32)


def _channels_last(layer: Any, cfg: dict) -> None:
    if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
        raise _fail(layer, f"data_format={cfg['data_format']!r} is not supported (channels_last only)")


def _to_last(e: "Emitter", name: str, x: str, axis: int) -> tuple[str, tuple[int, ...]]:
    """Transpose ``axis`` of ``x`` to the end; returns the value and the perm that undoes it."""
    rank = len(e.shape(x))
    axis %= rank
    perm = (*[a for a in range(rank) if a != axis], axis)
    back = tuple(int(i) for i in np.argsort(perm))
    return e.node("transpose", f"{name}/to_channels_last", [x], perm=perm), back


def _channels_first_aware(convert: "Converter") -> "Converter":
    """Run a channels-last converter on a channels_first layer (Keras 1 'th' models) between transposes.

    The IR op is channels-last; the value between layers keeps the layer's own layout, so a
    later Flatten flattens in the same (channels-first) order as Keras did. The passes cancel
    the transposes between consecutive channels_first layers.
    """
    def wrapped(e: "Emitter", layer, cfg, ins):
        if cfg.get("data_format") != "channels_first":
            return convert(e, layer, cfg, ins)
        x, back = _to_last(e, layer.name, ins[0], 1)
        y = convert(e, layer, {**cfg, "data_format": "channels_last"}, [x])
        if len(e.shape(y)) != len(back):  # a global pool without keepdims: [N, C], nothing to undo
            return y
        return e.node("transpose", f"{layer.name}/to_channels_first", [y], perm=back)
    return wrapped


# -------------------------------------------------------------- activations
# Keras activation names -> (IR op, attrs). hard_sigmoid differs between Keras 3
# (relu6(x+3)/6) and tf_keras 2.x (0.2x+0.5), so it is resolved per framework.
_ACTIVATIONS: dict[str, tuple[str, dict]] = {
    "linear": ("identity", {}),
    "relu": ("relu", {}),
    "relu6": ("clip", {"min": 0.0, "max": 6.0}),
    "leaky_relu": ("leaky_relu", {"alpha": 0.2}),
    "elu": ("elu", {"alpha": 1.0}),
    "sigmoid": ("sigmoid", {}),
    "tanh": ("tanh", {}),
    "softmax": ("softmax", {"axis": -1}),
    "swish": ("swish", {}),
    "silu": ("swish", {}),
    "hard_swish": ("hard_swish", {}),
    "hard_silu": ("hard_swish", {}),
    "gelu": ("gelu", {"approximate": False}),
}
ACTIVATION_NAMES = sorted([*_ACTIVATIONS, "hard_sigmoid"])


def activation_of(layer: Any, spec: Any) -> Activation:
    if spec is None:
        return Activation()
    if isinstance(spec, dict):  # Keras 3 may serialize builtins as {"class_name": "function", "config": name}
        spec = spec.get("config") if isinstance(spec.get("config"), str) else spec
    if spec == "hard_sigmoid":
        alpha = 0.2 if _is_tf_keras(layer) else 1.0 / 6.0
        return Activation.of("hard_sigmoid", alpha=alpha, beta=0.5)
    if not isinstance(spec, str) or spec not in _ACTIVATIONS:
        raise _fail(layer, f"activation {spec!r} is not supported; supported: {', '.join(ACTIVATION_NAMES)}")
    op, attrs = _ACTIVATIONS[spec]
    return Activation.of(op, **attrs)


def _apply(e: Emitter, name: str, x: str, act: Activation) -> str:
    return e.node(act.op, name, [x], **act.attr_dict())


def _activation_layer(e: Emitter, layer, cfg, ins):
    return _apply(e, layer.name, ins[0], activation_of(layer, cfg["activation"]))


def _relu(e: Emitter, layer, cfg, ins):
    if float(cfg.get("threshold") or 0.0) != 0.0:
        raise _fail(layer, "a non-zero threshold is not supported")
    slope = float(cfg.get("negative_slope") or 0.0)
    top = cfg.get("max_value")
    if slope == 0.0:
        if top is None:
            return e.node("relu", layer.name, ins)
        return e.node("clip", layer.name, ins, min=0.0, max=float(top))
    x = e.node("leaky_relu", layer.name if top is None else f"{layer.name}/leaky", ins, alpha=slope)
    return x if top is None else e.node("clip", layer.name, [x], min=None, max=float(top))


def _leaky_relu(e: Emitter, layer, cfg, ins):
    alpha = cfg.get("negative_slope", cfg.get("alpha", 0.3))
    return e.node("leaky_relu", layer.name, ins, alpha=float(alpha))


def _elu(e: Emitter, layer, cfg, ins):
    return e.node("elu", layer.name, ins, alpha=float(cfg.get("alpha", 1.0)))


def _softmax(e: Emitter, layer, cfg, ins):
    axis = cfg.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise _fail(layer, f"softmax over several axes {axis} is not supported")
        axis = axis[0]
    return e.node("softmax", layer.name, ins, axis=int(axis))


# ------------------------------------------------------------ dense / conv
def _dense(e: Emitter, layer, cfg, ins):
    w = _weights(layer)
    inputs = [ins[0], e.const(f"{layer.name}/kernel", w[0])]
    if cfg.get("use_bias", True):
        inputs.append(e.const(f"{layer.name}/bias", w[1]))
    return e.node("dense", layer.name, inputs, activation=activation_of(layer, cfg.get("activation")))


def _pads(layer, cfg, sizes, kernel, strides, dil) -> tuple[tuple[int, int], ...]:
    padding = cfg.get("padding", "valid").lower()
    if padding == "valid":
        return tuple((0, 0) for _ in kernel)
    if padding == "same":
        return tuple(same_pads(s, k, st, d) for s, k, st, d in zip(sizes, kernel, strides, dil))
    if padding == "causal" and len(kernel) == 1:
        return (((kernel[0] - 1) * dil[0], 0),)
    raise _fail(layer, f"padding {padding!r} is not supported")


def _conv_node(e: Emitter, layer, cfg, name: str, x: str, kernel_w: np.ndarray, bias: np.ndarray | None,
               groups: int, act: Activation, strides=None, dil=None) -> str:
    nsp = kernel_w.ndim - 2
    k = kernel_w.shape[:nsp]
    strides = strides or _tuple(cfg.get("strides", 1), nsp)
    dil = dil or _tuple(cfg.get("dilation_rate", 1), nsp)
    if any(s > 1 for s in strides) and any(d > 1 for d in dil):
        raise _fail(layer, "strides > 1 together with dilation_rate > 1 is not supported")
    pads = _pads(layer, cfg, e.shape(x)[1:-1], k, strides, dil)
    inputs = [x, e.const(f"{name}/kernel", kernel_w)]
    if bias is not None:
        inputs.append(e.const(f"{name}/bias", bias))
    return e.node("conv", name, inputs, strides=tuple(strides), dilations=tuple(dil), pads=pads,
                  groups=groups, activation=act)


def _conv(e: Emitter, layer, cfg, ins):
    _channels_last(layer, cfg)
    w = _weights(layer)
    bias = w[1] if cfg.get("use_bias", True) else None
    return _conv_node(e, layer, cfg, layer.name, ins[0], w[0], bias, int(cfg.get("groups", 1)),
                      activation_of(layer, cfg.get("activation")))


def _depthwise_kernel(k: np.ndarray) -> np.ndarray:
    # Keras stores [*kernel, C, m]; output channel c*m + j is input channel c with
    # multiplier j, which is exactly the row-major flattening of (C, m).
    return k.reshape(k.shape[:-2] + (1, k.shape[-2] * k.shape[-1]))


def _depthwise(e: Emitter, layer, cfg, ins):
    _channels_last(layer, cfg)
    w = _weights(layer)
    bias = w[1] if cfg.get("use_bias", True) else None
    c = w[0].shape[-2]
    return _conv_node(e, layer, cfg, layer.name, ins[0], _depthwise_kernel(w[0]), bias, c,
                      activation_of(layer, cfg.get("activation")))


def _separable(e: Emitter, layer, cfg, ins):
    _channels_last(layer, cfg)
    w = _weights(layer)
    bias = w[2] if cfg.get("use_bias", True) else None
    c = w[0].shape[-2]
    x = _conv_node(e, layer, cfg, f"{layer.name}/depthwise", ins[0], _depthwise_kernel(w[0]), None, c,
                   Activation())
    one = (1,) * (w[1].ndim - 2)
    return _conv_node(e, layer, {"padding": "valid"}, layer.name, x, w[1], bias, 1,
                      activation_of(layer, cfg.get("activation")), strides=one, dil=one)


def _batch_norm(e: Emitter, layer, cfg, ins):
    rank = len(e.shape(ins[0]))
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if not isinstance(axis, int) or not 0 < axis % rank:
        raise _fail(layer, f"normalising over axis {axis} is not supported (one axis, not the batch)")
    if axis % rank != rank - 1:  # channels-first (axis=1): normalize the axis moved last
        x, back = _to_last(e, layer.name, ins[0], axis)
        y = _batch_norm(e, layer, {**cfg, "axis": -1}, [x])
        return e.node("transpose", f"{layer.name}/to_channels_first", [y], perm=back)
    mean, var = _var(layer.moving_mean), _var(layer.moving_variance)
    gamma = _var(layer.gamma) if getattr(layer, "gamma", None) is not None else np.ones_like(mean)
    beta = _var(layer.beta) if getattr(layer, "beta", None) is not None else np.zeros_like(mean)
    names = [e.const(f"{layer.name}/{k}", v) for k, v in
             (("gamma", gamma), ("beta", beta), ("moving_mean", mean), ("moving_variance", var))]
    return e.node("batch_norm", layer.name, [ins[0], *names], epsilon=float(cfg.get("epsilon", 1e-3)))


# ----------------------------------------------------------------- pooling
def _pool(op: str) -> Converter:
    def convert(e: Emitter, layer, cfg, ins):
        _channels_last(layer, cfg)
        nsp = len(e.shape(ins[0])) - 2
        k = _tuple(cfg["pool_size"], nsp)
        strides = _tuple(cfg.get("strides") or k, nsp)
        pads = _pads(layer, cfg, e.shape(ins[0])[1:-1], k, strides, (1,) * nsp)
        extra = {"count_include_pad": False} if op == "avg_pool" else {}
        return e.node(op, layer.name, ins, kernel=k, strides=strides, pads=pads, **extra)
    return convert


def _global_pool(op: str) -> Converter:
    def convert(e: Emitter, layer, cfg, ins):
        _channels_last(layer, cfg)
        return e.node(op, layer.name, ins, keepdims=bool(cfg.get("keepdims", False)))
    return convert


# ------------------------------------------------------------------ merging
def _chain(e: Emitter, op: str, name: str, ins: list[str]) -> str:
    x = ins[0]
    for i, y in enumerate(ins[1:], start=1):
        x = e.node(op, name if i == len(ins) - 1 else f"{name}/{i}", [x, y])
    return x


def _merge(op: str) -> Converter:
    def convert(e: Emitter, layer, cfg, ins):
        if op == "sub" and len(ins) != 2:
            raise _fail(layer, f"Subtract needs exactly 2 inputs, got {len(ins)}")
        return _chain(e, op, layer.name, ins)
    return convert


def _average(e: Emitter, layer, cfg, ins):
    total = _chain(e, "add", f"{layer.name}/sum", ins)
    scale = e.const(f"{layer.name}/scale", np.full((1,), 1.0 / len(ins)))
    shift = e.const(f"{layer.name}/shift", np.zeros((1,)))
    return e.node("affine", layer.name, [total, scale, shift])


def _concat(e: Emitter, layer, cfg, ins):
    return e.node("concat", layer.name, ins, axis=int(cfg.get("axis", -1)))


# ------------------------------------------------------------------- shaping
def _flatten(e: Emitter, layer, cfg, ins):
    if cfg.get("data_format") == "channels_first" and len(e.shape(ins[0])) > 2:
        # Keras moves channels last before flattening, to keep weight order across formats
        x, _ = _to_last(e, layer.name, ins[0], 1)
        return e.node("flatten", layer.name, [x])
    return e.node("flatten", layer.name, ins)


def _reshape(e: Emitter, layer, cfg, ins):
    return e.node("reshape", layer.name, ins, shape=tuple(int(d) for d in cfg["target_shape"]))


def _permute(e: Emitter, layer, cfg, ins):
    return e.node("transpose", layer.name, ins, perm=(0, *(int(d) for d in cfg["dims"])))


def _zero_padding(e: Emitter, layer, cfg, ins):
    _channels_last(layer, cfg)
    nsp = len(e.shape(ins[0])) - 2
    pad = layer.padding
    if nsp == 1:
        pairs = (_tuple(pad, 2),)
    else:
        pairs = tuple(_tuple(p, 2) for p in pad)
    return e.node("pad", layer.name, ins, pads=((0, 0), *pairs, (0, 0)))


def _cropping(e: Emitter, layer, cfg, ins):
    """CroppingND: a slice of the spatial axes (NASNetMobile crops after its stem's padding)."""
    _channels_last(layer, cfg)
    shape = e.shape(ins[0])
    nsp = len(shape) - 2
    crop = cfg["cropping"]
    pairs = (_tuple(crop, 2),) if nsp == 1 else tuple(_tuple(c, 2) for c in crop)
    if len(pairs) != nsp:
        raise _fail(layer, f"cropping {crop!r} does not match {nsp} spatial axes")
    axes = tuple(range(1, nsp + 1))
    dims = shape[1:nsp + 1]
    if any(not isinstance(d, int) for d in dims):
        ends = tuple(-hi if hi else 2**62 for _, hi in pairs)  # ONNX Slice's clamping: to the end
    else:
        ends = tuple(int(d) - hi for d, (_, hi) in zip(dims, pairs))
    return e.node("slice", layer.name, ins, axes=axes, starts=tuple(lo for lo, _ in pairs), ends=ends)


def _upsampling(e: Emitter, layer, cfg, ins):
    _channels_last(layer, cfg)
    if cfg.get("interpolation", "nearest") != "nearest":
        raise _fail(layer, f"interpolation {cfg['interpolation']!r} is not supported (nearest only)")
    nsp = len(e.shape(ins[0])) - 2
    return e.node("resize", layer.name, ins, scales=_tuple(cfg["size"], nsp))


# ------------------------------------------------------- identity-like layers
def _dropout(e: Emitter, layer, cfg, ins):
    return e.node("dropout", layer.name, ins, rate=float(cfg.get("rate", 0.0)))


def _identity(e: Emitter, layer, cfg, ins):
    return e.node("identity", layer.name, ins)


def _affine(e: Emitter, layer, x: str, scale: np.ndarray, shift: np.ndarray) -> str:
    rank = len(e.shape(x))
    # Keras broadcasts against the whole tensor; drop a leading batch axis of 1 so the
    # constants never carry the batch.
    scale, shift = (np.reshape(v, v.shape[1:]) if v.ndim == rank else np.reshape(v, v.shape or (1,))
                    for v in (np.asarray(scale, np.float32), np.asarray(shift, np.float32)))
    return e.node("affine", layer.name, [x, e.const(f"{layer.name}/scale", scale),
                                         e.const(f"{layer.name}/shift", shift)])


def _rescaling(e: Emitter, layer, cfg, ins):
    return _affine(e, layer, ins[0], np.asarray(cfg.get("scale", 1.0)), np.asarray(cfg.get("offset", 0.0)))


def _normalization(e: Emitter, layer, cfg, ins):
    mean, var = _var(layer.mean), _var(layer.variance)
    std = np.maximum(np.sqrt(var), np.float32(1e-7))  # keras.backend.epsilon(), as Keras's call() uses
    if cfg.get("invert", False):
        return _affine(e, layer, ins[0], std, mean)
    return _affine(e, layer, ins[0], 1.0 / std, -mean / std)


# ------------------------------------------- Keras 3 operations on tensors
# ``x + 3.0`` or ``keras.ops.multiply(x, c)`` in a functional model is stored as an operation
# (module keras.src.ops.*), not a layer; its call arguments may hold constants, which a node's
# input tensors leave out (MobileNetV3's hard sigmoid is relu6(x + 3) * (1/6)).
OP_MODULE = "keras.src.ops."
OPERATIONS: dict[str, str] = {
    "Add": "add", "Subtract": "sub", "Multiply": "mul", "Divide": "div", "TrueDivide": "div",
    "Maximum": "maximum", "Minimum": "minimum",
}


def is_operation(layer: Any) -> bool:
    return type(layer).__module__.startswith(OP_MODULE)


def convert_operation(e: Emitter, op: Any, args: list[Any], kwargs: dict, value_of: Callable[[Any], str]) -> str:
    """Emit a binary elementwise operation; ``value_of`` maps a Keras tensor to its IR value."""
    cls = type(op).__name__
    if cls not in OPERATIONS:
        raise _fail(op, f"the Keras operation is not supported; supported operations: {', '.join(sorted(OPERATIONS))}")
    if len(args) != 2 or kwargs:
        raise _fail(op, f"expected 2 positional operands, got {len(args)} and keywords {sorted(kwargs)}")
    operands = []
    for i, a in enumerate(args):
        if hasattr(a, "_keras_history"):
            operands.append(value_of(a))
            continue
        try:
            c = np.asarray(a.numpy() if hasattr(a, "numpy") else a, dtype=np.float32)
        except (TypeError, ValueError):
            raise _fail(op, f"operand {i} ({type(a).__name__}) is neither a tensor nor a number") from None
        operands.append(e.const(f"{op.name}/operand{i}", c.reshape(c.shape or (1,))))
    return e.node(OPERATIONS[cls], op.name, operands)


_cf = _channels_first_aware  # layers with a data_format

CONVERTERS: dict[str, Converter] = {
    "Dense": _dense,
    "Conv1D": _cf(_conv), "Conv2D": _cf(_conv),
    "DepthwiseConv1D": _cf(_depthwise), "DepthwiseConv2D": _cf(_depthwise),
    "SeparableConv1D": _cf(_separable), "SeparableConv2D": _cf(_separable),
    "BatchNormalization": _batch_norm,
    "Activation": _activation_layer, "ReLU": _relu, "LeakyReLU": _leaky_relu, "ELU": _elu, "Softmax": _softmax,
    "MaxPooling1D": _cf(_pool("max_pool")), "MaxPooling2D": _cf(_pool("max_pool")),
    "AveragePooling1D": _cf(_pool("avg_pool")), "AveragePooling2D": _cf(_pool("avg_pool")),
    "GlobalAveragePooling1D": _cf(_global_pool("global_avg_pool")),
    "GlobalAveragePooling2D": _cf(_global_pool("global_avg_pool")),
    "GlobalMaxPooling1D": _cf(_global_pool("global_max_pool")),
    "GlobalMaxPooling2D": _cf(_global_pool("global_max_pool")),
    "Add": _merge("add"), "Subtract": _merge("sub"), "Multiply": _merge("mul"),
    "Maximum": _merge("maximum"), "Minimum": _merge("minimum"), "Average": _average,
    "Concatenate": _concat,
    "Flatten": _flatten, "Reshape": _reshape, "Permute": _permute,
    "ZeroPadding1D": _cf(_zero_padding), "ZeroPadding2D": _cf(_zero_padding),
    "Cropping1D": _cf(_cropping), "Cropping2D": _cf(_cropping),
    "UpSampling1D": _cf(_upsampling), "UpSampling2D": _cf(_upsampling),
    "Dropout": _dropout, "SpatialDropout1D": _dropout, "SpatialDropout2D": _dropout,
    "GaussianNoise": _identity, "GaussianDropout": _identity, "AlphaDropout": _identity,
    "ActivityRegularization": _identity, "Identity": _identity,
    "Rescaling": _rescaling, "Normalization": _normalization,
}

# Containers the front end inlines, and the input placeholder.
MODEL_CLASSES = ("Functional", "Sequential", "Model")
SUPPORTED_CLASSES = sorted([*CONVERTERS, "InputLayer", *MODEL_CLASSES])
