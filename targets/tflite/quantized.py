"""The integer variants (int8, int16x8), built from the IR's quantization annotations alone.

The annotated graph (``graph.quant``, written by the quantize pass from one calibration) is
the single source of truth; TensorFlow's converter must not calibrate again. So the Keras
model carries the annotations the way quantization-aware training does:

- every annotated activation (graph inputs and node outputs) goes through a FakeQuant
  layer whose [min, max] is exactly the annotation's integer grid,
  ``[(qmin - zp) * scale, (qmax - zp) * scale]`` (num_bits 8 or 16, not narrow);
- annotated constants other than biases are replaced by their fake-quantized values
  (``fake_quantize``), so the converter's per-channel symmetric weight scale,
  ``max|w_c| / 127``, is the annotation's and the stored integers are the annotation's;
- biases stay float: the converter quantizes them with input scale x weight scale, which
  is how the annotation defines them.

The converter then runs in its quantization-aware mode (no representative dataset, so no
calibration). For int16x8 that mode stores conv/fully-connected biases as int32, which
LiteRT's int16 kernels compute wrong with (every digits sample came out class 8);
``widen_int16_biases`` rewrites them as the int64 the 16x8 scheme (and the annotation)
specifies, repacking the flatbuffer with 16-byte aligned buffers. It derives each scale from the FakeQuant range in floating point, which can
land one float32 ulp away from the annotation; ``align`` reads every quantized tensor of the
result, matches it to the annotation it came from, writes the annotation's exact float32
scale in place and refuses the model when any activation's parameters are not one of the
annotations (that would be a range the IR does not hold).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tapeout.compiler.ir import Graph, TensorQuant
from tapeout.compiler.passes.quantize import FIXED_OUTPUTS, fake_quantize
from tapeout.targets.tflite.flatbuffer import schema

IO_TYPES = {"int8": ("float", "int8", "uint8"), "int16x8": ("float", "int16")}
REL_TOL = 1e-5  # a scale this close to an annotation's is that annotation after float rounding
# TensorFlow's quantizer widens an activation range narrower than about 1e-6 (it cannot
# quantize a near-empty range); such tensors (dead layers of untrained models) end up at
# most this wide instead of carrying the annotation.
NEAR_ZERO_RANGE = 1e-6
WIDENED_MAX = 4e-6


class FakeQuant(keras.layers.Layer):
    """``tf.quantization.fake_quant_with_min_max_vars`` with a fixed range (TensorFlow only)."""

    def __init__(self, min_value: float, max_value: float, num_bits: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_value, self.max_value, self.num_bits = float(min_value), float(max_value), int(num_bits)

    def call(self, x: Any) -> Any:
        return tf.quantization.fake_quant_with_min_max_vars(x, self.min_value, self.max_value,
                                                            num_bits=self.num_bits, narrow_range=False)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "min_value": self.min_value, "max_value": self.max_value,
                "num_bits": self.num_bits}


def float_barrier(x: Any) -> Any:
    """``sign(x) * abs(x)``: exactly x, but SIGN has no integer kernel, so TensorFlow's quantizer
    dequantizes there and what reads the result runs on a float input, in float."""
    return tf.sign(x) * tf.abs(x)


class FloatBarrier(keras.layers.Layer):
    """Each quantized input and the quantized output of a node kept float (--keep-float,
    --fallback). Without them TensorFlow's quantizer quantizes the node anyway when a neighbour's
    FakeQuant range reaches it: a concat takes one quantized input's or its output's scale for
    every input and its output ("same scale"), and a conv reading a quantized value is quantized
    with it (zoo SqueezeNet with 8 layers kept float came out all int8, its kept convs at a
    concat's scale: cosine 0.51 where the simulation read 0.99)."""

    def call(self, x: Any) -> Any:
        return float_barrier(x)


class FloatOnly(keras.layers.Layer):
    """softmax / sigmoid / tanh kept in float. TensorFlow's quantizer gives SOFTMAX, LOGISTIC
    and TANH a fixed integer output range whenever their input is quantized (even rebuilt from
    exp and sum, which it fuses back), so the input first goes through ``float_barrier``."""

    def __init__(self, op: str, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.op, self.axis = op, int(axis)

    def call(self, x: Any) -> Any:
        x = float_barrier(x)
        if self.op == "softmax":
            return tf.nn.softmax(x, axis=self.axis)
        return tf.sigmoid(x) if self.op == "sigmoid" else tf.tanh(x)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "op": self.op, "axis": self.axis}


FLOAT_ONLY_OPS = ("softmax", "sigmoid", "tanh")


def float_builders(graph: Graph) -> dict[str, Any]:
    """Builders for the kept-float nodes TensorFlow's quantizer would otherwise quantize: softmax,
    sigmoid and tanh as FloatOnly; every other op its own builder, each quantized input through a
    FloatBarrier first (fixed_quant excepted: a QAT quantizer is float by design and sets the
    scales of what it feeds)."""
    from tapeout.compiler.keras_model import BUILDERS

    assert graph.quant is not None
    tensors = graph.quant.tensors

    def activation(ctx: Any, node: Any) -> Any:
        axis = int(node.attrs.get("axis", -1)) if node.op == "softmax" else -1
        return FloatOnly(node.op, axis, name=ctx.name(node))(ctx.tensor(node, node.inputs[0]))

    def barred(ctx: Any, node: Any) -> Any:
        saved = {}
        for v in dict.fromkeys(node.inputs):
            tq = tensors.get(v)
            if v in ctx.values and tq is not None and tq.role == "activation" and tq.is_integer:
                saved[v] = ctx.values[v]
                ctx.values[v] = FloatBarrier(name=ctx.unique(f"{v}_float"))(saved[v])
        try:
            out = BUILDERS[node.op](ctx, node)
        finally:
            ctx.values.update(saved)
        tq = tensors.get(node.outputs[0])
        if tq is not None and tq.role == "activation" and tq.is_integer:
            # Its reader is integer (a FakeQuant follows): bar the scale coming back too.
            out = FloatBarrier(name=ctx.unique(f"{node.outputs[0]}_from_float"))(out)
        return out

    kept = set(graph.quant.float_nodes)
    return {n.name: activation if n.op in FLOAT_ONLY_OPS else barred for n in graph.nodes
            if n.name in kept and n.op != "fixed_quant" and (n.op in FLOAT_ONLY_OPS or n.op in BUILDERS)}


def grid_range(tq: TensorQuant) -> tuple[float, float]:
    """The float range whose FakeQuant grid is exactly the annotation's."""
    scale, zp = float(tq.scale[0]), int(tq.zero_point[0])
    return (tq.qmin - zp) * scale, (tq.qmax - zp) * scale


def on_grid(graph: Graph) -> Graph:
    """A copy whose annotated constants (biases excepted) hold their fake-quantized values, and whose
    biases are never one value repeated (``not_splat``)."""
    assert graph.quant is not None
    g = graph.copy()
    for name, tq in graph.quant.tensors.items():
        if name not in g.constants or not tq.is_integer:
            continue
        if tq.role == "bias":
            g.constants[name] = not_splat(np.asarray(g.constants[name]))
        else:
            g.constants[name] = fake_quantize(np.asarray(g.constants[name], np.float32), tq).astype(np.float32)
    return g


def not_splat(bias: np.ndarray) -> np.ndarray:
    """``bias`` with its last element one float32 ulp nearer zero when every element is the same
    nonzero value. TensorFlow's converter folds such a bias into a splat constant and quantizes
    the splat once, with the first output channel's scale, storing that one integer for every
    channel: channel c then adds bias * scale_0 / scale_c (a conv + clip(0, 1) from a folded hard
    sigmoid, whose bias is 0.5 everywhere, lost 0.60 cosine). One ulp (about 1e-8 of an int32
    bias step here) changes no stored integer."""
    b = np.asarray(bias, np.float32)
    if b.size < 2 or not b.flat[0] or not np.all(b == b.flat[0]):
        return bias
    b = b.copy()
    b.flat[-1] = np.nextafter(b.flat[-1], np.float32(0))
    return b


def fake_quant_hook(graph: Graph):
    """The emitter's value hook: a FakeQuant layer after every annotated integer activation."""
    assert graph.quant is not None
    tensors = graph.quant.tensors

    def hook(value: str, tensor: Any, unique: Any) -> Any:
        tq = tensors.get(value)
        if tq is None or tq.role != "activation" or not tq.is_integer:
            return tensor
        lo, hi = grid_range(tq)
        bits = 8 if tq.dtype == "int8" else 16
        hook.count += 1
        return FakeQuant(lo, hi, bits, name=unique(f"{value}_quant"))(tensor)

    hook.count = 0  # FakeQuant layers made (convert.Traced.fake_quants)
    return hook


def configure(converter: Any, scheme: str, io: str) -> None:
    """Quantization-aware conversion: ranges from the FakeQuant ops, no representative data."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if scheme == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    io_type = {"float": tf.float32, "int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16}[io]
    converter.inference_input_type = io_type
    converter.inference_output_type = io_type


# ---------------------------------------------------------- int16 biases
class _AlignedBuffer:
    """Packs a BufferT with its data 16-byte aligned (the generated Pack aligns bytes to 1)."""

    def __init__(self, s: Any, buf: Any) -> None:
        self.s, self.buf = s, buf

    def Pack(self, builder: Any) -> int:  # noqa: N802 - the flatbuffers object API's name
        s, buf, data = self.s, self.buf, None
        if buf.data is not None:
            raw = np.asarray(buf.data, np.uint8).tobytes()
            builder.StartVector(1, len(raw), 16)
            builder.head = builder.head - len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            data = builder.EndVector()
        s.BufferStart(builder)
        if data is not None:
            s.BufferAddData(builder, data)
        s.BufferAddOffset(builder, buf.offset)
        s.BufferAddSize(builder, buf.size)
        return s.BufferEnd(builder)


def widen_int16_biases(data: bytes) -> tuple[bytes, int]:
    """int32 biases of ops reading int16 activations -> int64; returns the model and how many."""
    import flatbuffers

    s = schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    widened: set[int] = set()
    for sub in model.subgraphs or []:
        for op in sub.operators or []:
            ins = list(op.inputs) if op.inputs is not None else []
            if len(ins) < 3 or ins[0] < 0 or ins[2] < 0:
                continue
            x, bias = sub.tensors[ins[0]], sub.tensors[ins[2]]
            if x.type != s.TensorType.INT16 or bias.type != s.TensorType.INT32:
                continue
            buf = model.buffers[bias.buffer]
            if bias.buffer not in widened and buf.data is not None:
                values = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), "<i4")
                buf.data = np.frombuffer(values.astype("<i8").tobytes(), np.uint8)
                widened.add(bias.buffer)
            bias.type = s.TensorType.INT64
    if not widened:
        return data, 0
    model.buffers = [_AlignedBuffer(s, b) for b in model.buffers]
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), len(widened)


# ------------------------------------------------------------- alignment
@dataclass
class Alignment:
    activations: int = 0  # quantized activation tensors, each matched to an annotation
    constants: int = 0  # quantized weight/bias/constant tensors matched
    exact_set: int = 0  # scales rewritten to the annotation's exact float32 value
    float_ops: list[str] = field(default_factory=list)  # compute ops the converter left in float
    widened: list[str] = field(default_factory=list)  # near-empty annotated ranges the converter widened
    fixed: list[str] = field(default_factory=list)  # kept-float softmax/sigmoid/tanh outputs TFLite quantized
    unmatched: list[str] = field(default_factory=list)  # activations whose parameters the IR does not hold


_COMPUTE_EXEMPT = {"QUANTIZE", "DEQUANTIZE", "SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE"}
_INT_TYPES = {"INT8": "int8", "UINT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64"}


def _candidates(graph: Graph) -> dict[str, list[TensorQuant]]:
    assert graph.quant is not None
    out: dict[str, list[TensorQuant]] = {}
    for tq in graph.quant.tensors.values():
        if tq.is_integer:
            out.setdefault(tq.dtype, []).append(tq)
    return out


def _match(scales: np.ndarray, zps: np.ndarray, dtype: str, cands: list[TensorQuant]) -> TensorQuant | None:
    best, err = None, REL_TOL
    for tq in cands:
        if len(tq.scale) != len(scales) or tq.dtype != dtype:
            continue
        if len(tq.zero_point) == len(zps) and list(tq.zero_point) != [int(z) for z in zps]:
            continue
        want = np.asarray(tq.scale, np.float64)
        e = float(np.max(np.abs(scales - want) / np.maximum(np.abs(want), 1e-30)))
        if e <= err:
            best, err = tq, e
    return best


def align(data: bytes, graph: Graph) -> tuple[bytes, Alignment]:
    """Match every quantized tensor to its annotation and write the annotation's exact scales."""
    from tapeout.targets.tflite.lowering import lower_channel_scales

    graph = lower_channel_scales(graph)  # the graph convert traced: its depthwise weights and biases
    s = schema()
    buf = bytearray(data)
    model = s.Model.GetRootAs(buf, 0)
    sub = model.Subgraphs(0)
    types = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    cands = _candidates(graph)
    tiny = any(tq.role == "activation" and (tq.qmax - tq.qmin) * tq.scale[0] < NEAR_ZERO_RANGE
               for tqs in cands.values() for tq in tqs)
    scheme = graph.quant.scheme if graph.quant is not None else "int8"
    fixed = {(np.float32(v[scheme][0]).tobytes(), v[scheme][1]) for v in FIXED_OUTPUTS.values()}
    result = Alignment()
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        q = t.Quantization()
        tname = types.get(t.Type(), "")
        if q is None or q.ScaleLength() == 0 or tname not in _INT_TYPES:
            continue
        scales = q.ScaleAsNumpy()  # a view into buf: writing it edits the model in place
        zps = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(len(scales), np.int64)
        if tname == "UINT8":  # uint8 I/O is the int8 annotation shifted by 128
            zps = zps - 128
        buffer = model.Buffers(t.Buffer())
        constant = buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1)
        dtype = _INT_TYPES[tname]
        pool = [tq for tq in cands.get(dtype, []) if (tq.role == "activation") != constant]
        tq = _match(np.asarray(scales, np.float64), np.asarray(zps), dtype, pool)
        if tq is None:
            if not constant:
                name = (t.Name() or b"").decode("utf-8", "replace")
                width = (255 if dtype == "int8" else 65535) * float(scales[0])
                what = f"{name} ({tname}, scale {float(scales[0]):.6g}, zero point {int(zps[0])})"
                if tiny and width <= WIDENED_MAX:
                    result.widened.append(what)
                elif (np.float32(scales[0]).tobytes(), int(zps[0])) in fixed:
                    result.fixed.append(what)  # the converter's fixed softmax/sigmoid/tanh output range
                else:
                    result.unmatched.append(what)
            continue
        exact = np.asarray(tq.scale, np.float32)
        if not np.array_equal(scales, exact):
            scales[:] = exact
            result.exact_set += 1
        if constant:
            result.constants += 1
        else:
            result.activations += 1
    ops = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    for j in range(sub.OperatorsLength()):
        op = sub.Operators(j)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = ops.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        outs = [sub.Tensors(int(k)) for k in op.OutputsAsNumpy()] if op.OutputsLength() else []
        if name not in _COMPUTE_EXEMPT and any(types.get(o.Type()) == "FLOAT32" for o in outs):
            result.float_ops.append(name)
    return bytes(buf), result
