"""The few Keras layers the IR needs beyond Keras's own: ops Keras has no layer for.

Everything the emitter can express with a built-in layer uses one (hls4ml and TFLite
recognise those); these cover constant operands, division, general clipping, padding
with a value or on any axis, activation variants Keras fixes a parameter of, and LRN. Each
is registered under the ``tapeout`` package so an emitted model can be saved and loaded
again (``keras.saving.load_model``) once this module has been imported. Constants are
non-trainable weights, so they travel in the weights file, not in the config.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops

PACKAGE = "tapeout"

_BINARY = {
    "add": ops.add, "sub": ops.subtract, "mul": ops.multiply, "div": ops.divide,
    "maximum": ops.maximum, "minimum": ops.minimum, "matmul": ops.matmul,
}


def _check_op(op: str) -> str:
    if op not in _BINARY:
        raise ValueError(f"unknown binary op {op!r}; known: {', '.join(sorted(_BINARY))}")
    return op


@keras.saving.register_keras_serializable(package=PACKAGE)
class Binary(keras.layers.Layer):
    """``op(a, b)`` of two runtime tensors with NumPy broadcasting (Keras's merge layers
    only cover equal ranks and have no division or matmul)."""

    def __init__(self, op: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.op = _check_op(op)

    def call(self, inputs: Sequence[Any]) -> Any:
        a, b = inputs
        return _BINARY[self.op](a, b)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "op": self.op}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConstantBinary(keras.layers.Layer):
    """``op(x, c)`` (or ``op(c, x)`` with ``constant_first``) for a constant ``c``."""

    def __init__(self, op: str, constant_shape: Sequence[int], constant_first: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.op = _check_op(op)
        self.constant_shape = tuple(int(d) for d in constant_shape)
        self.constant_first = bool(constant_first)
        self.constant = self.add_weight(shape=self.constant_shape, initializer="zeros", trainable=False,
                                        name="constant")

    def call(self, x: Any) -> Any:
        c = ops.cast(self.constant, x.dtype)
        return _BINARY[self.op](c, x) if self.constant_first else _BINARY[self.op](x, c)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "op": self.op, "constant_shape": list(self.constant_shape),
                "constant_first": self.constant_first}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Affine(keras.layers.Layer):
    """``x * scale + shift`` with constant, broadcasting ``scale`` and ``shift``."""

    def __init__(self, scale_shape: Sequence[int], shift_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale_shape = tuple(int(d) for d in scale_shape)
        self.shift_shape = tuple(int(d) for d in shift_shape)
        self.scale = self.add_weight(shape=self.scale_shape, initializer="ones", trainable=False, name="scale")
        self.shift = self.add_weight(shape=self.shift_shape, initializer="zeros", trainable=False, name="shift")

    def call(self, x: Any) -> Any:
        return x * ops.cast(self.scale, x.dtype) + ops.cast(self.shift, x.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale_shape": list(self.scale_shape), "shift_shape": list(self.shift_shape)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Clip(keras.layers.Layer):
    """``clip(x, min, max)``; either bound may be None (open)."""

    def __init__(self, min: float | None = None, max: float | None = None, **kwargs: Any) -> None:  # noqa: A002
        super().__init__(**kwargs)
        self.min = None if min is None else float(min)
        self.max = None if max is None else float(max)

    def call(self, x: Any) -> Any:
        if self.min is not None:
            x = ops.maximum(x, ops.cast(self.min, x.dtype))
        if self.max is not None:
            x = ops.minimum(x, ops.cast(self.max, x.dtype))
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "min": self.min, "max": self.max}


@keras.saving.register_keras_serializable(package=PACKAGE)
class HardSigmoid(keras.layers.Layer):
    """``max(0, min(1, alpha * x + beta))`` for any alpha, beta (Keras's fixes 1/6 and 0.5)."""

    def __init__(self, alpha: float, beta: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, x: Any) -> Any:
        return ops.clip(x * ops.cast(self.alpha, x.dtype) + ops.cast(self.beta, x.dtype), 0.0, 1.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Gelu(keras.layers.Layer):
    """GELU with the tanh approximation chosen (``Activation("gelu")`` is the exact one)."""

    def __init__(self, approximate: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.approximate = bool(approximate)

    def call(self, x: Any) -> Any:
        return keras.activations.gelu(x, approximate=self.approximate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "approximate": self.approximate}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Pad(keras.layers.Layer):
    """Constant padding on any non-batch axis with any value (ZeroPadding is spatial and zero only)."""

    def __init__(self, pads: Sequence[Sequence[int]], value: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pads = tuple((int(a), int(b)) for a, b in pads)
        self.value = float(value)

    def call(self, x: Any) -> Any:
        return ops.pad(x, self.pads, constant_values=self.value)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pads": [list(p) for p in self.pads], "value": self.value}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Slice(keras.layers.Layer):
    """``x[start:end:step]`` along non-batch axes (Keras has no slicing layer; Cropping is spatial only).

    Bounds are in range (``ops.slice_bounds``); an end of -1 with a negative step means through
    element 0. TensorFlow lowers the indexing to one StridedSlice.
    """

    def __init__(self, axes: Sequence[int], starts: Sequence[int], ends: Sequence[int], steps: Sequence[int],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axes, self.starts, self.ends, self.steps = (tuple(int(v) for v in a) for a in (axes, starts, ends, steps))

    def call(self, x: Any) -> Any:
        index = [slice(None)] * len(x.shape)
        for axis, start, end, step in zip(self.axes, self.starts, self.ends, self.steps):
            index[axis] = slice(start, None if end < 0 else end, step)
        return x[tuple(index)]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axes": list(self.axes), "starts": list(self.starts),
                "ends": list(self.ends), "steps": list(self.steps)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class FixedQuant(keras.layers.Layer):
    """The IR's ``fixed_quant``: each element on its fixed-point grid (``fixedpoint.arith.kif_grid``'s
    constants, non-trainable weights), rounded and fitted by ap_types' modes, in float ops that give
    the kernel's float32 result exactly (kif_grid says why)."""

    # Powers of two only (hi is top - 1 at run time): a float16 copy of them (tflite:fp16 stores every
    # constant so) stays exact for |f| <= 15 and widths <= 15 bits.
    KEYS = ("scale", "step", "lo", "top", "modulus")

    def __init__(self, grid_shape: Sequence[int], rounding: str = "AP_TRN", overflow: str = "AP_WRAP",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grid_shape = tuple(int(d) for d in grid_shape)
        self.rounding, self.overflow = str(rounding), str(overflow)
        self.grid = {k: self.add_weight(shape=self.grid_shape, initializer="zeros", trainable=False, name=k)
                     for k in self.KEYS}

    def call(self, x: Any) -> Any:
        g = {k: ops.cast(w, x.dtype) for k, w in self.grid.items()}
        v = x * g["scale"]
        q = ops.floor(v)
        d = v - q
        qb, rest, neg = d >= 0.5, ops.logical_and(d != 0.0, d != 0.5), x < 0
        inc = {"AP_TRN": None, "AP_RND": qb, "AP_RND_ZERO": ops.logical_and(qb, ops.logical_or(neg, rest)),
               "AP_RND_MIN_INF": ops.logical_and(qb, rest),
               "AP_RND_INF": ops.logical_and(qb, ops.logical_or(ops.logical_not(neg), rest)),
               "AP_RND_CONV": ops.logical_and(qb, ops.logical_or(q - 2.0 * ops.floor(q * 0.5) != 0.0, rest)),
               "AP_TRN_ZERO": ops.logical_and(neg, ops.logical_or(qb, rest))}[self.rounding]
        raw = q if inc is None else q + ops.cast(inc, x.dtype)
        lo, top = g["lo"], g["top"]
        # float32 at run time (exact, or rounded as the kernel's float32 output rounds it); built on
        # the input, a converter cannot fold it into a constant that tflite:fp16 would store in float16.
        hi = (ops.zeros_like(raw) + top) - 1.0
        out = ops.logical_or(raw < lo, raw >= top)
        if self.overflow == "AP_WRAP":
            m = g["modulus"]
            r = raw - m * ops.floor(raw / m)
            r = ops.where(ops.logical_and(lo < 0, r >= top), r - m, r)  # signed: into [lo, top)
            raw = ops.where(out, r, raw)
        elif self.overflow == "AP_SAT":
            raw = ops.minimum(ops.maximum(raw, lo), hi)
        elif self.overflow == "AP_SAT_SYM":
            raw = ops.minimum(ops.maximum(raw, ops.where(lo < 0, -hi, lo)), hi)
        else:  # AP_SAT_ZERO
            raw = ops.where(out, ops.zeros_like(raw), raw)
        return raw * g["step"]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "grid_shape": list(self.grid_shape), "rounding": self.rounding,
                "overflow": self.overflow}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LocalResponseNorm(keras.layers.Layer):
    """ONNX LRN of an odd ``size`` over the last axis, as ``tf.nn.local_response_normalization``
    (TFLite's LOCAL_RESPONSE_NORMALIZATION): radius (size - 1) / 2, and alpha per element, so
    ONNX's alpha / size. That op takes 4D input alone: other ranks run as [N, S, 1, C]."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(size) % 2 == 0:
            raise ValueError(f"LRN size {size} is even; TensorFlow's window is symmetric (odd sizes only)")
        self.size, self.alpha, self.beta, self.bias = int(size), float(alpha), float(beta), float(bias)

    def call(self, x: Any) -> Any:
        import tensorflow as tf

        shape = tuple(x.shape)
        y = x if len(shape) == 4 else ops.reshape(x, (-1, math.prod(shape[1:-1]), 1, shape[-1]))
        y = tf.nn.local_response_normalization(y, depth_radius=(self.size - 1) // 2, bias=self.bias,
                                               alpha=self.alpha / self.size, beta=self.beta)
        return y if len(shape) == 4 else ops.reshape(y, (-1, *shape[1:]))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size, "alpha": self.alpha, "beta": self.beta, "bias": self.bias}


CUSTOM_LAYERS = (Binary, ConstantBinary, Affine, Clip, HardSigmoid, Gelu, Pad, Slice, FixedQuant, LocalResponseNorm)
