"""IR graph -> Keras 3 functional model: the builder the TFLite and hls4ml back ends emit
through (``targets/keras`` re-exports it) and fine-tuning trains (``compiler.finetune``). It
lives in the compiler so the compiler never imports a target.

One builder per IR op (``BUILDERS``) appends layers to a functional graph. Choices:

- Built-in layers wherever one computes the op exactly (Dense, ConvND, DepthwiseConvND,
  pooling, merge layers, Reshape, Permute, ...), so hls4ml and the TFLite converter see
  layers they know; ``tapeout.compiler.keras_model_layers`` covers the rest.
- The layer holding a node's weights (or computing it) is named after the node. Keras
  forbids "/" in names, so other characters than ``[A-Za-z0-9_.-]`` become "_"
  (``KerasModel.layer_names`` maps node names to layer names). Helper layers (padding,
  a separate activation) derive their names from the node's.
- A fused activation stays fused (``Dense(activation="relu")``) whenever a Keras
  activation string computes it exactly, so converters emit fused ops; otherwise it
  becomes a separate layer named ``<node>_<activation>``.
- Explicit pads that equal TensorFlow's "same" padding become ``padding="same"``; other
  pads become a padding layer in front of a "valid" op.
- Dimension 0 stays dynamic. Graph inputs and outputs keep the source model's layout
  (``graph.io_layouts``): a channels-first one gets a Permute at the boundary.
- ``value_hook`` lets a back end wrap every IR value as it is defined (graph inputs and
  node outputs), e.g. the TFLite integer variants insert fake-quant layers there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import keras
import numpy as np

from tapeout.compiler.ir import Activation, Graph, IRError, Node
from tapeout.compiler.ops import same_pads, slice_bounds, slice_spec
from tapeout.compiler import keras_model_layers as custom
from tapeout.compiler.layout import is_channels_first, to_channels_first, to_channels_last

_NAME_OK = re.compile(r"[^A-Za-z0-9_.\-]")
# identifiers=True (hls4ml writes layer names into C++ type names, and input names as variables):
# C++ keywords, hls4ml's 'input' (refused) and the names of its generated code get a "_" appended.
_CPP_KEYWORDS = frozenset(
    "alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t char32_t class "
    "compl concept const consteval constexpr constinit const_cast continue co_await co_return co_yield decltype "
    "default delete do double dynamic_cast else enum explicit export extern false float for friend goto if inline "
    "int long mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected public register "
    "reinterpret_cast requires return short signed sizeof static static_assert static_cast struct switch template "
    "this thread_local throw true try typedef typeid typename union unsigned using virtual void volatile wchar_t "
    "while xor xor_eq".split())
_HLS4ML_NAMES = re.compile(r"^(?:input|[wbsz]\d+|layer\d+_out|\w*_t|\w*config\d+|nnet|std|ap_\w+|myproject\w*|"
                           r"N_[A-Z0-9_]+)$")


def cpp_identifier(base: str) -> str:
    """``base`` as a C/C++ identifier that hls4ml's generated code does not already use."""
    name = re.sub(r"\W", "_", base, flags=re.ASCII) or "layer"
    if name[0].isdigit():
        name = "_" + name
    if name in _CPP_KEYWORDS or _HLS4ML_NAMES.match(name):
        name += "_"
    return name


@dataclass
class KerasModel:
    model: keras.Model
    layer_names: dict[str, str]  # IR node name -> name of the Keras layer that computes it
    input_names: list[str]  # Keras Input names, in graph.inputs order
    notes: list[str] = field(default_factory=list)


class BuildContext:
    """The functional graph under construction: IR value -> Keras tensor, and unique layer names."""

    def __init__(self, graph: Graph, identifiers: bool = False) -> None:
        self.graph = graph
        self.identifiers = identifiers
        self.values: dict[str, Any] = {}
        self.layer_names: dict[str, str] = {}
        self.notes: list[str] = []
        self._taken: set[str] = set()

    # ------------------------------------------------------------------ names
    def unique(self, base: str) -> str:
        name = cpp_identifier(base) if self.identifiers else _NAME_OK.sub("_", base) or "layer"
        # hls4ml lowercases some type names (fc1_weight_t): identifiers are unique regardless of case.
        key = str.lower if self.identifiers else str
        candidate, i = name, 1
        while key(candidate) in self._taken:
            candidate, i = f"{name}_{i}", i + 1
        self._taken.add(key(candidate))
        return candidate

    def name(self, node: Node) -> str:
        """The layer name of ``node`` itself (call once per node)."""
        name = self.unique(node.name)
        self.layer_names[node.name] = name
        return name

    def helper(self, node: Node, suffix: str) -> str:
        return self.unique(f"{node.name}_{suffix}")

    # ----------------------------------------------------------------- values
    def is_const(self, value: str) -> bool:
        return value in self.graph.constants

    def const(self, value: str) -> np.ndarray:
        return np.asarray(self.graph.constants[value], dtype=np.float32)

    def tensor(self, node: Node, value: str) -> Any:
        if value in self.graph.constants:
            raise IRError(f"node {node.name!r} ({node.op}): the Keras emitter needs {value!r} to be a runtime "
                          "value here, not a constant")
        return self.values[value]

    def rank(self, value: str) -> int:
        return self.graph.type_of(value).rank

    def shape(self, value: str) -> tuple:
        return self.graph.type_of(value).shape


def apply(layer: keras.layers.Layer, inputs: Any, weights: list[np.ndarray] | None = None) -> Any:
    """Call ``layer`` (which builds it), then load ``weights`` into it."""
    out = layer(inputs)
    if weights is not None:
        layer.set_weights([np.asarray(w, dtype=np.float32) for w in weights])
    return out


def _optional(n: Node, i: int) -> str:
    return n.inputs[i] if len(n.inputs) > i and n.inputs[i] else ""


# ------------------------------------------------------------- activations
def _close(a: Any, b: float) -> bool:
    return a is not None and math.isclose(float(a), b, rel_tol=1e-6, abs_tol=1e-9)


def keras_activation(act: Activation, rank: int) -> str | None:
    """The Keras activation string that computes ``act`` exactly, or None when there is none."""
    a, op = act.attr_dict(), act.op
    if op in ("identity", "dropout"):
        return "linear"
    if op in ("relu", "sigmoid", "tanh"):
        return op
    if op == "swish":
        return "silu"
    if op == "hard_swish":
        return "hard_silu"
    if op == "clip":
        lo, hi = a.get("min"), a.get("max")
        if _close(lo, 0.0) and hi is None:
            return "relu"
        if _close(lo, 0.0) and _close(hi, 6.0):
            return "relu6"
        if lo is None and hi is None:
            return "linear"
        return None
    if op == "elu":
        return "elu" if _close(a.get("alpha", 1.0), 1.0) else None
    if op == "leaky_relu":
        return "leaky_relu" if _close(a.get("alpha", 0.3), 0.2) else None
    if op == "hard_sigmoid":
        ok = _close(a.get("alpha", 1.0 / 6.0), 1.0 / 6.0) and _close(a.get("beta", 0.5), 0.5)
        return "hard_sigmoid" if ok else None
    if op == "softmax":
        return "softmax" if int(a.get("axis", -1)) % rank == rank - 1 else None
    if op == "gelu":
        return None if a.get("approximate", False) else "gelu"
    return None


def activation_layer(op: str, attrs: dict[str, Any], rank: int, name: str) -> keras.layers.Layer:
    """A layer computing the unary activation ``op`` (standalone, or split off a dense/conv)."""
    L = keras.layers
    if op == "relu":
        return L.ReLU(name=name)
    if op == "identity":
        return L.Identity(name=name)
    if op == "dropout":
        return L.Dropout(float(attrs.get("rate", 0.0)), name=name)
    if op == "clip":
        lo, hi = attrs.get("min"), attrs.get("max")
        if lo is None and hi is None:
            return L.Identity(name=name)
        if _close(lo, 0.0) and (hi is None or _close(hi, 6.0)):
            return L.ReLU(max_value=None if hi is None else 6.0, name=name)
        return custom.Clip(lo, hi, name=name)
    if op == "leaky_relu":
        return L.LeakyReLU(negative_slope=float(attrs.get("alpha", 0.3)), name=name)
    if op == "elu":
        return L.ELU(alpha=float(attrs.get("alpha", 1.0)), name=name)
    if op == "softmax":
        return L.Softmax(axis=int(attrs.get("axis", -1)), name=name)
    if op == "hard_sigmoid":
        alpha, beta = attrs.get("alpha", 1.0 / 6.0), attrs.get("beta", 0.5)
        if _close(alpha, 1.0 / 6.0) and _close(beta, 0.5):
            return L.Activation("hard_sigmoid", name=name)
        return custom.HardSigmoid(alpha, beta, name=name)
    if op == "gelu":
        approximate = bool(attrs.get("approximate", False))
        return custom.Gelu(True, name=name) if approximate else L.Activation("gelu", name=name)
    known = keras_activation(Activation.of(op, **attrs), rank)
    if known is None:
        raise IRError(f"no Keras layer for activation {op!r}")
    return L.Activation(known, name=name)


def _with_activation(ctx: BuildContext, node: Node, make: Callable[[str | None], Any]) -> Any:
    """``make(activation)`` builds the main layer(s); the activation is fused when Keras can."""
    act = node.attr("activation")
    rank = ctx.rank(node.outputs[0])
    fused = keras_activation(act, rank)
    y = make(None if fused == "linear" else fused)
    if fused is None:
        y = activation_layer(act.op, act.attr_dict(), rank, ctx.helper(node, act.op))(y)
    return y


# -------------------------------------------------------------- dense/conv
def _dense(ctx: BuildContext, n: Node) -> Any:
    x, w, b = n.inputs[0], n.inputs[1], _optional(n, 2)
    if not ctx.is_const(w) or (b and not ctx.is_const(b)):
        # Runtime weights: a matmul, a bias add, then the activation.
        def make_runtime(act: str | None) -> Any:
            y = custom.Binary("matmul", name=ctx.name(n))([ctx.tensor(n, x), ctx.tensor(n, w)])
            if b:
                y = _binary_tensors(ctx, n, "add", y, b, ctx.helper(n, "bias"))
            return y if act is None else keras.layers.Activation(act, name=ctx.helper(n, act))(y)

        return _with_activation(ctx, n, make_runtime)
    weights = [ctx.const(w)] + ([ctx.const(b)] if b else [])

    def make(act: str | None) -> Any:
        layer = keras.layers.Dense(int(ctx.shape(w)[1]), activation=act, use_bias=bool(b), name=ctx.name(n))
        return apply(layer, ctx.tensor(n, x), weights)

    return _with_activation(ctx, n, make)


_CONV = {1: "Conv1D", 2: "Conv2D", 3: "Conv3D"}
_DEPTHWISE = {1: "DepthwiseConv1D", 2: "DepthwiseConv2D"}
_ZERO_PAD = {1: "ZeroPadding1D", 2: "ZeroPadding2D", 3: "ZeroPadding3D"}
_MAX_POOL = {1: "MaxPooling1D", 2: "MaxPooling2D", 3: "MaxPooling3D"}
_AVG_POOL = {1: "AveragePooling1D", 2: "AveragePooling2D", 3: "AveragePooling3D"}
_GLOBAL = {("global_avg_pool", 1): "GlobalAveragePooling1D", ("global_avg_pool", 2): "GlobalAveragePooling2D",
           ("global_avg_pool", 3): "GlobalAveragePooling3D", ("global_max_pool", 1): "GlobalMaxPooling1D",
           ("global_max_pool", 2): "GlobalMaxPooling2D", ("global_max_pool", 3): "GlobalMaxPooling3D"}
_UPSAMPLE = {1: "UpSampling1D", 2: "UpSampling2D", 3: "UpSampling3D"}


def _spatial(n: Node, nsp: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    strides = tuple(int(s) for s in (n.attrs.get("strides") or (1,) * nsp))
    dil = tuple(int(d) for d in (n.attrs.get("dilations") or (1,) * nsp))
    pads = tuple((int(p[0]), int(p[1])) for p in (n.attrs.get("pads") or ((0, 0),) * nsp))
    return strides, dil, pads


def _padding_mode(sizes: tuple, kernel: tuple, strides: tuple, dil: tuple,
                  pads: tuple[tuple[int, int], ...]) -> str | None:
    """"valid" or "same" when the explicit pads are exactly that, else None."""
    if all(p == (0, 0) for p in pads):
        return "valid"
    if all(pads[i] == same_pads(sizes[i], kernel[i], strides[i], dil[i]) for i in range(len(pads))):
        return "same"
    return None


def _zero_pad(ctx: BuildContext, n: Node, x: Any, pads: tuple[tuple[int, int], ...]) -> Any:
    nsp = len(pads)
    padding = pads[0] if nsp == 1 else pads
    return getattr(keras.layers, _ZERO_PAD[nsp])(padding=padding, name=ctx.helper(n, "pad"))(x)


def _subsample(ctx: BuildContext, n: Node, y: Any, strides: tuple[int, ...]) -> Any:
    """Every ``strides``-th element: a max pool of size 1 (Keras convs cannot stride and dilate at once)."""
    nsp = len(strides)
    return getattr(keras.layers, _MAX_POOL[nsp])(pool_size=(1,) * nsp, strides=strides, padding="valid",
                                                 name=ctx.helper(n, "stride"))(y)


def _conv(ctx: BuildContext, n: Node) -> Any:
    x, w, b = n.inputs[0], n.inputs[1], _optional(n, 2)
    if not ctx.is_const(w) or (b and not ctx.is_const(b)):
        raise IRError(f"node {n.name!r} (conv): the Keras emitter needs constant weights and bias")
    xshape = ctx.shape(x)
    nsp = len(xshape) - 2
    kernel = tuple(int(k) for k in ctx.shape(w)[:nsp])
    channels, filters = int(xshape[-1]), int(ctx.shape(w)[-1])
    groups = int(n.attr("groups"))
    strides, dil, pads = _spatial(n, nsp)
    split_stride = any(s > 1 for s in strides) and any(d > 1 for d in dil)
    mode = None if split_stride else _padding_mode(xshape[1:-1], kernel, strides, dil, pads)
    wval = ctx.const(w)
    depthwise = groups > 1 and groups == channels and nsp in _DEPTHWISE
    if depthwise:  # [*K, 1, C * m] -> [*K, C, m]: output channel c * m + j reads input channel c
        wval = wval.reshape(*kernel, channels, filters // channels)
    weights = [wval] + ([ctx.const(b)] if b else [])

    def make(act: str | None) -> Any:
        y = ctx.tensor(n, x)
        if mode is None:
            y = _zero_pad(ctx, n, y, pads)
        common = dict(kernel_size=kernel, strides=(1,) * nsp if split_stride else strides, padding=mode or "valid",
                      dilation_rate=dil, activation=act, use_bias=bool(b), name=ctx.name(n))
        if depthwise:
            layer = getattr(keras.layers, _DEPTHWISE[nsp])(depth_multiplier=filters // channels, **common)
        else:
            layer = getattr(keras.layers, _CONV[nsp])(filters, groups=groups, **common)
        y = apply(layer, y, weights)
        return _subsample(ctx, n, y, strides) if split_stride else y

    return _with_activation(ctx, n, make)


def _matmul(ctx: BuildContext, n: Node) -> Any:
    a, b = n.inputs
    if not ctx.is_const(a) and ctx.is_const(b) and ctx.rank(b) == 2:
        # x @ W over the last axis is a Dense without bias (FULLY_CONNECTED in TFLite).
        layer = keras.layers.Dense(int(ctx.shape(b)[1]), use_bias=False, name=ctx.name(n))
        return apply(layer, ctx.tensor(n, a), [ctx.const(b)])
    return _binary_tensors(ctx, n, "matmul", a, b, ctx.name(n))


# ----------------------------------------------------------- normalisation
def _batch_norm(ctx: BuildContext, n: Node) -> Any:
    params = n.inputs[1:]
    if not all(ctx.is_const(p) for p in params):
        raise IRError(f"node {n.name!r} (batch_norm): the Keras emitter needs constant parameters")
    layer = keras.layers.BatchNormalization(axis=-1, epsilon=float(n.attr("epsilon")), name=ctx.name(n))
    return apply(layer, ctx.tensor(n, n.inputs[0]), [ctx.const(p) for p in params])


def _affine(ctx: BuildContext, n: Node) -> Any:
    x, scale, shift = n.inputs
    if ctx.is_const(scale) and ctx.is_const(shift):
        s, t = ctx.const(scale), ctx.const(shift)
        layer = custom.Affine(s.shape, t.shape, name=ctx.name(n))
        return apply(layer, ctx.tensor(n, x), [s, t])
    y = _binary_tensors(ctx, n, "mul", x, scale, ctx.helper(n, "scale"))
    return _binary_tensors(ctx, n, "add", y, shift, ctx.name(n))


def _lrn(ctx: BuildContext, n: Node) -> Any:
    size = int(n.attr("size"))
    if size % 2 == 0:  # targets refuse it first (tflite.target.unsupported_nodes); this guards the rest
        raise IRError(f"node {n.name!r} (lrn): size {size} is even; TensorFlow's LRN window is symmetric")
    layer = custom.LocalResponseNorm(size, n.attr("alpha"), n.attr("beta"), n.attr("bias"), name=ctx.name(n))
    return layer(ctx.tensor(n, n.inputs[0]))


# -------------------------------------------------------------- activations
def _activation(ctx: BuildContext, n: Node) -> Any:
    x = n.inputs[0]
    return activation_layer(n.op, dict(n.attrs), ctx.rank(x), ctx.name(n))(ctx.tensor(n, x))


# ------------------------------------------------------------------ pooling
def _pool(ctx: BuildContext, n: Node) -> Any:
    x = n.inputs[0]
    xshape = ctx.shape(x)
    nsp = len(xshape) - 2
    kernel = tuple(int(k) for k in n.attrs["kernel"])
    strides, _, pads = _spatial(n, nsp)
    include_pad = n.op == "avg_pool" and bool(n.attr("count_include_pad"))
    mode = _padding_mode(xshape[1:-1], kernel, strides, (1,) * nsp, pads)
    if include_pad and mode == "same":
        mode = None  # TF's "same" average leaves the padding out of the count
    y = ctx.tensor(n, x)
    if mode is None:
        if n.op == "max_pool":  # padding never wins a max
            y = custom.Pad([(0, 0), *pads, (0, 0)], float("-inf"), name=ctx.helper(n, "pad"))(y)
        else:
            y = _zero_pad(ctx, n, y, pads)
    table = _MAX_POOL if n.op == "max_pool" else _AVG_POOL
    correct = n.op == "avg_pool" and mode is None and not include_pad
    name = ctx.helper(n, "sum") if correct else ctx.name(n)
    y = getattr(keras.layers, table[nsp])(pool_size=kernel, strides=strides, padding=mode or "valid", name=name)(y)
    if correct:
        # The zero-padded average counted the pads; rescale each position by window / real elements.
        ones = np.pad(np.ones(xshape[1:-1], np.float32), pads)
        counts = _window_sums(ones, kernel, strides)
        factor = (float(math.prod(kernel)) / counts)[..., None].astype(np.float32)
        layer = custom.ConstantBinary("mul", factor.shape, name=ctx.name(n))
        y = apply(layer, y, [factor])
    return y


def _window_sums(a: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    win = np.lib.stride_tricks.sliding_window_view(a, kernel)
    win = win[tuple(slice(None, None, s) for s in strides)]
    return win.sum(axis=tuple(range(-len(kernel), 0)))


def _global_pool(ctx: BuildContext, n: Node) -> Any:
    x = n.inputs[0]
    nsp = ctx.rank(x) - 2
    layer = getattr(keras.layers, _GLOBAL[(n.op, nsp)])(keepdims=bool(n.attr("keepdims")), name=ctx.name(n))
    return layer(ctx.tensor(n, x))


# ------------------------------------------------------------------ binaries
_MERGE = {"add": "Add", "sub": "Subtract", "mul": "Multiply", "maximum": "Maximum", "minimum": "Minimum"}


def _binary_tensors(ctx: BuildContext, n: Node, op: str, a: Any, b: Any, name: str) -> Any:
    """``op(a, b)``; ``a``/``b`` are IR value names or already-built Keras tensors."""
    a_const = isinstance(a, str) and ctx.is_const(a)
    b_const = isinstance(b, str) and ctx.is_const(b)
    if a_const and b_const:
        raise IRError(f"node {n.name!r} ({n.op}): both operands are constants; fold them first")
    if a_const or b_const:
        c, other = (a, b) if a_const else (b, a)
        value = ctx.const(c)
        other_t = ctx.tensor(n, other) if isinstance(other, str) else other
        return apply(custom.ConstantBinary(op, value.shape, constant_first=a_const, name=name), other_t, [value])
    ta = ctx.tensor(n, a) if isinstance(a, str) else a
    tb = ctx.tensor(n, b) if isinstance(b, str) else b
    if op in _MERGE and len(ta.shape) == len(tb.shape):
        return getattr(keras.layers, _MERGE[op])(name=name)([ta, tb])
    return custom.Binary(op, name=name)([ta, tb])


def _binary(ctx: BuildContext, n: Node) -> Any:
    return _binary_tensors(ctx, n, n.op, n.inputs[0], n.inputs[1], ctx.name(n))


def _concat(ctx: BuildContext, n: Node) -> Any:
    xs = [ctx.tensor(n, i) for i in n.inputs]
    axis = int(n.attrs["axis"])
    if len(xs) == 1:
        return keras.layers.Identity(name=ctx.name(n))(xs[0])
    return keras.layers.Concatenate(axis=axis, name=ctx.name(n))(xs)


# ------------------------------------------------------------------- shaping
def _flatten(ctx: BuildContext, n: Node) -> Any:
    return keras.layers.Flatten(name=ctx.name(n))(ctx.tensor(n, n.inputs[0]))


def _reshape(ctx: BuildContext, n: Node) -> Any:
    shape = tuple(int(d) for d in n.attrs["shape"])
    return keras.layers.Reshape(shape, name=ctx.name(n))(ctx.tensor(n, n.inputs[0]))


def _transpose(ctx: BuildContext, n: Node) -> Any:
    perm = tuple(int(p) for p in n.attrs["perm"])
    x = ctx.tensor(n, n.inputs[0])
    if perm == tuple(range(len(perm))):
        return keras.layers.Identity(name=ctx.name(n))(x)
    return keras.layers.Permute(perm[1:], name=ctx.name(n))(x)


def _pad(ctx: BuildContext, n: Node) -> Any:
    x = n.inputs[0]
    pads = tuple((int(p[0]), int(p[1])) for p in n.attrs["pads"])
    value = float(n.attr("value"))
    rank = len(pads)
    if value == 0.0 and 3 <= rank <= 5 and pads[-1] == (0, 0):
        padding = pads[1] if rank == 3 else pads[1:-1]
        return getattr(keras.layers, _ZERO_PAD[rank - 2])(padding=padding, name=ctx.name(n))(ctx.tensor(n, x))
    return custom.Pad(pads, value, name=ctx.name(n))(ctx.tensor(n, x))


def _slice(ctx: BuildContext, n: Node) -> Any:
    x = n.inputs[0]
    shape = ctx.shape(x)
    spec = [(a, *slice_bounds(int(shape[a]), b, e, s)) for a, b, e, s in slice_spec(n, len(shape))]
    layer = custom.Slice(*(tuple(t[i] for t in spec) for i in range(4)), name=ctx.name(n))
    return layer(ctx.tensor(n, x))


def _resize(ctx: BuildContext, n: Node) -> Any:
    if n.attr("mode") != "nearest":
        raise IRError(f"node {n.name!r} (resize): only nearest resize is supported, not {n.attr('mode')!r}")
    scales = tuple(int(s) for s in n.attrs["scales"])
    nsp = len(scales)
    size: Any = scales[0] if nsp == 1 else scales
    kwargs = {"interpolation": "nearest"} if nsp == 2 else {}
    return getattr(keras.layers, _UPSAMPLE[nsp])(size=size, name=ctx.name(n), **kwargs)(ctx.tensor(n, n.inputs[0]))


def _fixed_quant(ctx: BuildContext, n: Node) -> Any:
    from tapeout.compiler.fixedpoint.arith import kif_grid
    from tapeout.compiler.ops import fixed_quant_modes

    x, *kif = n.inputs
    rounding, overflow = fixed_quant_modes(n, ctx.graph.constants, "the Keras emitter")
    try:
        grid = kif_grid(*(ctx.graph.constants[c] for c in kif))
    except ValueError as e:
        raise IRError(f"node {n.name!r} (fixed_quant): {e}") from None
    layer = custom.FixedQuant(grid["scale"].shape, rounding, overflow, name=ctx.name(n))
    return apply(layer, ctx.tensor(n, x), [grid[k] for k in custom.FixedQuant.KEYS])


Builder = Callable[[BuildContext, Node], Any]
BUILDERS: dict[str, Builder] = {
    "dense": _dense, "conv": _conv, "matmul": _matmul,
    "batch_norm": _batch_norm, "affine": _affine, "lrn": _lrn,
    **{op: _activation for op in ("identity", "relu", "clip", "leaky_relu", "elu", "sigmoid", "hard_sigmoid",
                                  "tanh", "softmax", "swish", "hard_swish", "gelu", "dropout")},
    "max_pool": _pool, "avg_pool": _pool,
    "global_avg_pool": _global_pool, "global_max_pool": _global_pool,
    **{op: _binary for op in ("add", "sub", "mul", "div", "maximum", "minimum")},
    "concat": _concat,
    "flatten": _flatten, "reshape": _reshape, "transpose": _transpose, "pad": _pad, "resize": _resize,
    "slice": _slice, "fixed_quant": _fixed_quant,
}


# ------------------------------------------------------------------- graph
ValueHook = Callable[[str, Any, Callable[[str], str]], Any]


def graph_to_keras(graph: Graph, *, keep_io_layout: bool = True, value_hook: ValueHook | None = None,
                   node_builders: dict[str, Builder] | None = None, identifiers: bool = False) -> KerasModel:
    """Build a functional Keras model computing ``graph``.

    ``keep_io_layout``: channels-first source inputs/outputs (``graph.io_layouts``) stay
    channels-first at the model boundary (a Permute each); False gives the IR's channels-last.
    ``value_hook(value, tensor, unique)`` returns the tensor that stands for IR value ``value``
    from then on (``unique(base)`` gives a free, valid layer name). ``node_builders`` maps
    node names to builders that replace the op's own for those nodes. ``identifiers``: every
    layer and input name is a C++ identifier (``cpp_identifier``), as hls4ml needs.
    """
    ctx = BuildContext(graph, identifiers)
    inputs, input_names = [], []
    for name in graph.inputs:
        t = graph.type_of(name)
        cf = keep_io_layout and is_channels_first(graph.io_layouts.get(name), t.rank)
        dims = [t.shape[a] for a in to_channels_first(t.rank)] if cf else list(t.shape)
        layer_name = ctx.unique(name)
        inp = keras.Input(shape=tuple(int(d) for d in dims[1:]), name=layer_name, dtype=t.dtype)
        inputs.append(inp)
        input_names.append(layer_name)
        value = inp
        if cf:
            value = keras.layers.Permute(tuple(to_channels_last(t.rank)[1:]),
                                         name=ctx.unique(f"{name}_to_channels_last"))(inp)
        ctx.values[name] = value if value_hook is None else value_hook(name, value, ctx.unique)
    for node in graph.nodes:
        build = (node_builders or {}).get(node.name) or BUILDERS.get(node.op)
        if build is None:
            raise IRError(f"node {node.name!r}: the Keras emitter has no builder for op {node.op!r}")
        out = build(ctx, node)
        value = node.outputs[0]
        ctx.values[value] = out if value_hook is None else value_hook(value, out, ctx.unique)
    outputs = []
    for name in graph.outputs:
        if name in graph.constants:
            raise IRError(f"graph output {name!r} is a constant; a Keras model cannot return one")
        value = ctx.values[name]
        rank = graph.type_of(name).rank
        if keep_io_layout and is_channels_first(graph.io_layouts.get(name), rank):
            value = keras.layers.Permute(tuple(to_channels_first(rank)[1:]),
                                         name=ctx.unique(f"{name}_to_channels_first"))(value)
        outputs.append(value)
    renamed = {k: v for k, v in ctx.layer_names.items() if k != v}
    if renamed:
        ctx.notes.append(f"{len(renamed)} layer name(s) changed for Keras (no '/' allowed), e.g. "
                         f"{next(iter(renamed))!r} -> {next(iter(renamed.values()))!r}")
    model = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                        name=ctx.unique(graph.name or "model"))
    return KerasModel(model, ctx.layer_names, input_names, ctx.notes)
