"""Quantization: annotate the IR with the scheme a target asks for (docs/quantization.md).

The annotations (``Graph.quant``: a ``TensorQuant`` per value and constant) are the single
source of truth for every quantized back end, so the TFLite, ONNX-QDQ and TensorRT
artifacts of one model share one calibration and one set of scales.

Schemes:
- ``int8`` (TFLite's full-integer scheme): activations int8 per-tensor asymmetric from the
  calibrated range (widened to hold 0); conv/dense weights int8 symmetric per output
  channel in [-127, 127]; biases int32 with scale input_scale * weight_scale[c], zero point 0.
- ``int16x8``: activations int16 symmetric (zero point 0), weights as int8, biases int64.
- ``fp16``: every float constant stored as float16; activations stay float32 (no calibration).

Order in the compiler: ``SplitActivations`` -> calibration -> ``Quantize(scheme)`` -> emit.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from tapeout.compiler import interpreter
from tapeout.compiler.ir import Activation, Graph, Node, Quantization, TensorQuant
from tapeout.compiler.ops import get_schema
from tapeout.compiler.passes.base import Editor, Pass, PassResult, RewritePass

SCHEMES = ("int8", "int16x8", "fp16")
from tapeout.compiler.schemes import CALIBRATED_SCHEMES  # noqa: E402  (re-exported)

# Fused activations an integer conv/dense applies as a clamp of its quantized output; any
# other fused activation is split off (SplitActivations) so that the linear result, which
# an integer kernel writes, gets a calibrated range of its own.
CLAMP_ACTIVATIONS = ("relu", "clip")
LINEAR_OPS = ("conv", "dense")

# Data movement / max-like ops whose output keeps its input's scale and zero point: TFLite
# requires it of them, and onnxruntime drops the Q/DQ pair around them only then.
SAME_SCALE_OPS = ("max_pool", "avg_pool", "global_max_pool", "reshape", "flatten", "transpose", "pad",
                  "dropout", "identity", "resize", "slice")

# Outputs with a fixed quantization in TFLite's kernels (scale, zero point, float range).
FIXED_OUTPUTS: dict[str, dict[str, tuple[float, int, tuple[float, float]]]] = {
    "softmax": {"int8": (1 / 256, -128, (0.0, 1.0)), "int16x8": (1 / 32768, 0, (0.0, 1.0))},
    "sigmoid": {"int8": (1 / 256, -128, (0.0, 1.0)), "int16x8": (1 / 32768, 0, (0.0, 1.0))},
    "tanh": {"int8": (1 / 128, 0, (-1.0, 1.0)), "int16x8": (1 / 32768, 0, (-1.0, 1.0))},
}

# Ops kept float32 in every scheme. LRN: no integer kernel in TFLite or onnxruntime (it runs between a
# dequantize and a quantize anyway, so the simulation should too), and its sum of squares overflows
# float16 (65504) once |x| nears 256, inside the op where fp16 emulation cannot see it (tensorrt pins it).
ALWAYS_FLOAT_OPS = ("lrn",)


def always_float_nodes(graph: Graph) -> list[str]:
    """The nodes every scheme keeps float for their op (ALWAYS_FLOAT_OPS), in graph order."""
    return [n.name for n in graph.nodes if n.op in ALWAYS_FLOAT_OPS]

FEW_STEPS = 16  # a fixed-scale output using fewer quantization steps than this is warned about

_INT_RANGE = {"int8": (-128, 127), "int16": (-32768, 32767), "int32": (-2**31, 2**31 - 1),
              "int64": (-2**63, 2**63 - 1)}
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127  # symmetric int8 weights never use -128 (TFLite, ORT)


# ------------------------------------------------------------------ params
def round_half_away(x: np.ndarray | float) -> np.ndarray:
    """Round half away from zero, as TFLite (std::round) does; NumPy's round is half-to-even."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def asymmetric(lo: float, hi: float, dtype: str = "int8", role: str = "activation") -> TensorQuant:
    """Per-tensor asymmetric params for range [lo, hi] (widened to hold 0, so 0 is exact)."""
    qmin, qmax = _INT_RANGE[dtype]
    a, b = min(lo, 0.0), max(hi, 0.0)
    scale = (b - a) / (qmax - qmin) if b > a else 1.0
    zp = int(min(qmax, max(qmin, round_half_away(qmin - a / scale))))
    return TensorQuant(dtype, role, (float(scale),), (zp,), None, qmin, qmax, (float(lo),), (float(hi),))


def symmetric(lo: float, hi: float, dtype: str = "int16", role: str = "activation") -> TensorQuant:
    """Per-tensor symmetric params (zero point 0): scale = max(|lo|, |hi|) / qmax."""
    qmin, qmax = _INT_RANGE[dtype]
    amax = max(abs(lo), abs(hi))
    scale = amax / qmax if amax > 0 else 1.0
    return TensorQuant(dtype, role, (float(scale),), (0,), None, qmin, qmax, (float(lo),), (float(hi),))


def per_channel_weights(w: np.ndarray, axis: int) -> TensorQuant:
    """Symmetric int8 per-channel weight params along ``axis`` (the output channels)."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    w64 = w.astype(np.float64)
    lo, hi = w64.min(axis=other), w64.max(axis=other)
    amax = np.maximum(np.abs(lo), np.abs(hi))
    scale = np.where(amax > 0, amax / WEIGHT_QMAX, 1.0)
    return TensorQuant("int8", "weight", tuple(float(s) for s in scale), (0,) * scale.size, axis,
                       WEIGHT_QMIN, WEIGHT_QMAX, tuple(float(v) for v in lo), tuple(float(v) for v in hi))


def _fixed(op: str, scheme: str) -> TensorQuant:
    scale, zp, (lo, hi) = FIXED_OUTPUTS[op][scheme]
    dtype = "int8" if scheme == "int8" else "int16"
    qmin, qmax = _INT_RANGE[dtype]
    return TensorQuant(dtype, "activation", (scale,), (zp,), None, qmin, qmax, (lo,), (hi,))


def _broadcast(values: tuple, tq: TensorQuant, ndim: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if tq.axis is None:
        return arr.reshape(())
    shape = [1] * ndim
    shape[tq.axis % ndim] = arr.size
    return arr.reshape(shape)


def quantize_array(a: np.ndarray, tq: TensorQuant) -> np.ndarray:
    """Float -> the integers a back end stores (``tq.dtype``), rounding half away from zero."""
    if not tq.is_integer:
        return np.asarray(a).astype(tq.dtype)
    a = np.asarray(a, dtype=np.float64)
    q = round_half_away(a / _broadcast(tq.scale, tq, a.ndim)) + _broadcast(tq.zero_point, tq, a.ndim)
    return np.clip(q, tq.qmin, tq.qmax).astype(tq.dtype)


def dequantize_array(q: np.ndarray, tq: TensorQuant, dtype: str = "float32") -> np.ndarray:
    if not tq.is_integer:
        return np.asarray(q).astype(dtype)
    q = np.asarray(q, dtype=np.float64)
    return ((q - _broadcast(tq.zero_point, tq, q.ndim)) * _broadcast(tq.scale, tq, q.ndim)).astype(dtype)


def fake_quantize(a: np.ndarray, tq: TensorQuant) -> np.ndarray:
    """What a quantized back end computes with in place of ``a``: quantize, then dequantize."""
    a = np.asarray(a)
    return dequantize_array(quantize_array(a, tq), tq, str(a.dtype))


def simulate(graph: Graph, feeds: Mapping[str, np.ndarray], *, keep_intermediates: bool = False
             ) -> dict[str, np.ndarray]:
    """Run an annotated graph as its quantized artifacts compute: constants replaced by their
    dequantized values, every annotated value rounded onto its grid as soon as it is produced.

    ``feeds`` are in the IR's layout, as for ``interpreter.run``.
    """
    if graph.quant is None:
        raise ValueError("graph has no quantization annotations (run the quantize pass)")
    tensors = graph.quant.tensors
    g = graph.copy()
    for name, tq in tensors.items():
        if name in g.constants:
            g.constants[name] = fake_quantize(g.constants[name], tq)
    activations = {k: v for k, v in tensors.items() if v.role == "activation"}

    def hook(name: str, a: np.ndarray) -> np.ndarray:
        tq = activations.get(name)
        return a if tq is None else fake_quantize(a, tq)

    return interpreter.run(g, dict(feeds), keep_intermediates=keep_intermediates, value_hook=hook)


# ------------------------------------------------------------------ passes
def _split_candidates(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if n.op in LINEAR_OPS and not n.attr("activation").is_identity
            and n.attr("activation").op not in CLAMP_ACTIVATIONS]


def integer_graph(graph: Graph) -> tuple[Graph, list[str]]:
    """The graph the integer schemes calibrate and annotate, and what made it: activations split
    off their conv/dense (SplitActivations) and per-channel norms distributed over the concats
    they read (compiler.passes.distribute). Compile, trace and ``tapeout verify`` all build it here."""
    from tapeout.compiler.passes.distribute import DistributeNorms
    from tapeout.compiler.passes.pipeline import Pipeline

    res = Pipeline([SplitActivations(), DistributeNorms()]).run(graph)
    summary = [f"{r.name}: {len(r.details)} rewrite(s), e.g. {r.details[0]}" for r in res.records if r.details]
    return res.graph, summary


class SplitActivations(RewritePass):
    """Move fused activations other than clamps (relu, clip) out of conv/dense into their own node.

    Runs before calibration for int8/int16x8: an integer conv/dense writes its linear result
    in int8, which needs a range of its own before, say, a sigmoid reads it. The graph's
    output names stay; the linear result is ``<output>/linear`` and the new node
    ``<node>/<activation>`` (as the ONNX back end names them).
    """

    name = "split-activations"

    def rewrite(self, graph: Graph) -> list[str]:
        details = []
        candidates = _split_candidates(graph)
        if not candidates:
            return details
        with Editor(graph) as ed:
            for n in candidates:
                act = n.attr("activation")
                if act.op == "hard_sigmoid" and self._hard_sigmoid_as_clamp(ed, n, act):
                    details.append(f"folded hard_sigmoid of {n.op} {n.name!r} into its weights as clip(0, 1)")
                    continue
                out = n.outputs[0]
                pre = ed.unique_name(f"{out}/linear")
                act_node = Node(act.op, ed.unique_name(f"{n.name}/{act.op}"), [pre], [out], act.attr_dict())
                ed.set_output(n, 0, pre)
                del n.attrs["activation"]
                graph.types[pre] = graph.types[out]
                ed.insert_after(n, act_node)
                details.append(f"split {act.op} out of {n.op} {n.name!r}")
        return details


    @staticmethod
    def _hard_sigmoid_as_clamp(ed: Editor, n: Node, act) -> bool:
        """hard_sigmoid(Wx + b) = clip(alpha Wx + alpha b + beta, 0, 1): a clamp stays fused. Split
        off, a hard sigmoid has no integer kernel in TFLite (its squeeze-excite gates ran in float
        between a DEQUANTIZE and a QUANTIZE, 10 of them in MobileNetV3-small) nor in onnxruntime."""
        graph = ed.graph
        params = [i for i in n.inputs[1:] if i]
        if not all(i in graph.constants for i in params):
            return False
        w = graph.constants[n.inputs[1]]
        b = graph.constants[n.inputs[2]] if len(n.inputs) > 2 and n.inputs[2] else np.zeros(w.shape[-1], w.dtype)
        attrs = {**get_schema("hard_sigmoid").defaults, **act.attr_dict()}
        alpha, beta = float(attrs["alpha"]), float(attrs["beta"])
        # The output channel is the last weight axis for conv [*K, Cg, F] and dense [K, M].
        weights = ed.add_constant(f"{n.name}_w", (w.astype(np.float64) * alpha).astype(w.dtype))
        bias = ed.add_constant(f"{n.name}_b", (b.astype(np.float64) * alpha + beta).astype(w.dtype))
        ed.set_inputs(n, [n.inputs[0], weights, bias])
        n.attrs["activation"] = Activation.of("clip", min=0.0, max=1.0)
        return True


def is_excluded(node_name: str, exclude: Iterable[str]) -> bool:
    """A node kept float by name: the named layer and the nodes split off it (``name/...``)."""
    return any(node_name == e or node_name.startswith(e + "/") for e in exclude)


class Quantize(Pass):
    """Annotate every value and constant the scheme quantizes; nodes named in ``exclude`` stay float.

    A value is annotated when a quantized node produces or reads it; a float node reads
    dequantized inputs and its output is quantized only where a quantized node reads it.
    """

    name = "quantize"

    def __init__(self, scheme: str = "int8", exclude: Iterable[str] = ()) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {scheme!r}; one of {', '.join(SCHEMES)}")
        self.scheme = scheme
        self.exclude = tuple(exclude)
        self._warnings: list[str] = []

    def requires(self, graph: Graph) -> str | None:
        names = {n.name for n in graph.nodes}
        unknown = [e for e in self.exclude if e not in names and not any(is_excluded(n, [e]) for n in names)]
        if unknown:
            return f"no node named {', '.join(map(repr, unknown))} to keep in float"
        if self.scheme not in CALIBRATED_SCHEMES:
            return None
        if graph.calibration is None:
            return f"scheme {self.scheme} quantizes activations and the graph is not calibrated"
        fused = [n.name for n in _split_candidates(graph) if not is_excluded(n.name, self.exclude)]
        if fused:
            return (f"node(s) {', '.join(map(repr, fused))} have a fused activation an integer kernel cannot "
                    f"apply; run split-activations before calibrating")
        return None

    def run(self, graph: Graph) -> PassResult:
        g = graph.copy()
        # A QAT quantizer (fixed_quant) computes in float32, between its dequantized input and its output
        # (int8, int16x8), or pinned to float32 (fp16: float16 holds integers exactly only up to 2**11).
        always = set(always_float_nodes(g))
        float_nodes = tuple(n.name for n in g.nodes if is_excluded(n.name, self.exclude) or n.op == "fixed_quant"
                            or n.name in always)
        self._warnings = []
        if self.scheme == "fp16":
            tensors = self._fp16(g, set(float_nodes))
        else:
            tensors = self._integer(g, set(float_nodes))
        g.quant = Quantization(self.scheme, tensors, float_nodes)
        counts: dict[str, int] = {}
        for tq in tensors.values():
            counts[tq.role] = counts.get(tq.role, 0) + 1
        plural = {"activation": "activations", "weight": "weights", "bias": "biases", "constant": "constants"}
        what = ", ".join(f"{counts[r]} {r if counts[r] == 1 else plural[r]}" for r in plural if r in counts)
        details = [f"{self.scheme}: {what or 'nothing to quantize'}"]
        if g.calibration is not None and self.scheme in CALIBRATED_SCHEMES:
            details[0] += f" (calibration: {g.calibration.describe()})"
        if float_nodes:
            details.append(f"kept float: {', '.join(float_nodes)}")
        return PassResult(g, True, details, list(self._warnings))

    # ----------------------------------------------------------- schemes
    def _fp16(self, g: Graph, float_nodes: set[str]) -> dict[str, TensorQuant]:
        tensors: dict[str, TensorQuant] = {}
        for n in g.nodes:
            if n.op == "fixed_quant" and not fp16_grid(g, n):
                self._warnings.append(f"fixed_quant {n.name!r}: its grid (|f| > 15 or more than 15 bits) needs "
                                      "constants float16 does not hold exactly; a back end that stores every constant "
                                      "in float16 (tflite:fp16) will not reproduce it")
            if n.name in float_nodes:
                continue
            for pos, c in enumerate(n.inputs):
                if c in g.constants and c not in tensors and g.constants[c].dtype.kind == "f":
                    a = g.constants[c]
                    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
                    tensors[c] = TensorQuant("float16", _role(n, pos), rmin=(lo,), rmax=(hi,))
        return tensors

    def _integer(self, g: Graph, float_nodes: set[str]) -> dict[str, TensorQuant]:
        assert g.calibration is not None
        ranges = g.calibration.ranges
        act_dtype = "int8" if self.scheme == "int8" else "int16"
        const_dtype = act_dtype
        consumers = g.consumers()
        producers = g.producers()

        def quantized_node(n: Node) -> bool:
            return n.name not in float_nodes

        def needs(v: str) -> bool:
            p = producers.get(v)
            if p is not None and quantized_node(p):
                return True
            return any(quantized_node(c) for c in consumers.get(v, []))

        def from_range(v: str) -> TensorQuant:
            if v not in ranges:
                raise ValueError(f"value {v!r} has no calibrated range (calibrate the graph the pass runs on)")
            lo, hi = ranges[v]
            return asymmetric(lo, hi, act_dtype) if act_dtype == "int8" else symmetric(lo, hi, act_dtype)

        tensors: dict[str, TensorQuant] = {}
        for v in g.inputs:
            if _is_float(g, v) and needs(v):
                tensors[v] = from_range(v)
        for n in g.nodes:
            for v in n.outputs:
                if not (_is_float(g, v) and needs(v)):
                    continue
                if quantized_node(n) and n.op in SAME_SCALE_OPS and n.inputs[0] in tensors:
                    tensors[v] = tensors[n.inputs[0]]
                elif quantized_node(n) and n.op in FIXED_OUTPUTS:
                    tensors[v] = _fixed(n.op, self.scheme)
                    self._check_fixed(n, v, tensors[v], ranges.get(v))
                elif n.op == "fixed_quant" and (grid := trained_grid(g, n, act_dtype)) is not None:
                    tensors[v] = grid  # the user trained this grid: its scale, not a calibrated one
                else:
                    tensors[v] = from_range(v)
        for n in g.nodes:
            if not quantized_node(n):
                continue
            for pos, c in enumerate(n.inputs):
                if c not in g.constants or g.constants[c].dtype.kind != "f":
                    continue
                tq = self._constant(g, n, pos, tensors, const_dtype)
                if c in tensors and tensors[c] != tq:
                    raise ValueError(f"constant {c!r} is shared by nodes that quantize it differently")
                tensors[c] = tq
        return tensors

    def _check_fixed(self, n: Node, v: str, tq: TensorQuant, observed: tuple[float, float] | None) -> None:
        """Warn when a fixed output scale leaves the observed values only a few steps (e.g. a
        1000-class softmax of an untrained model, whose int8 output would be mostly zeros)."""
        if observed is None:
            return
        span = max(abs(observed[0]), abs(observed[1]))
        if span < FEW_STEPS * tq.scale[0]:
            self._warnings.append(
                f"{n.op} {n.name!r} output reaches only {span:.3g}, under {FEW_STEPS} steps of its fixed "
                f"{tq.dtype} scale {tq.scale[0]:.3g}; most of it will quantize to zero (keep it float by name "
                f"to avoid that)")

    def _constant(self, g: Graph, n: Node, pos: int, tensors: dict[str, TensorQuant], dtype: str) -> TensorQuant:
        a = g.constants[n.inputs[pos]]
        role = _role(n, pos)
        if role == "weight" and n.op in LINEAR_OPS:
            return per_channel_weights(a, a.ndim - 1)
        if role == "bias":
            x, w = tensors.get(n.inputs[0]), self._constant(g, n, 1, tensors, dtype)
            if x is None:
                raise ValueError(f"node {n.name!r}: its input {n.inputs[0]!r} is not quantized")
            bias_dtype = "int32" if self.scheme == "int8" else "int64"
            qmin, qmax = _INT_RANGE[bias_dtype]
            scale = tuple(x.scale[0] * s for s in w.scale)
            b = a.astype(np.float64).reshape(-1)
            return TensorQuant(bias_dtype, "bias", scale, (0,) * len(scale), 0, qmin, qmax,
                               tuple(float(v) for v in b), tuple(float(v) for v in b))
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if role == "weight":  # a matmul's constant operand: per-tensor symmetric int8
            amax = max(abs(lo), abs(hi))
            return TensorQuant("int8", "weight", (amax / WEIGHT_QMAX if amax > 0 else 1.0,), (0,), None,
                               WEIGHT_QMIN, WEIGHT_QMAX, (lo,), (hi,))
        return asymmetric(lo, hi, dtype, "constant") if dtype == "int8" else symmetric(lo, hi, dtype, "constant")


def fp16_grid(g: Graph, n: Node) -> bool:
    """Whether a fixed_quant's float lowering (powers of two 2**f, 2**-f, 2**width) survives its
    constants stored as float16 (exact powers of two from 2**-24 to 2**15)."""
    k, i, f = np.broadcast_arrays(*(np.asarray(g.constants.get(c, 0), np.int64) for c in n.inputs[1:]))
    live = (k + i + f) > 0
    return bool(np.all(~live | ((np.abs(f) <= 15) & (k + i + f <= 15))))


def trained_grid(g: Graph, n: Node, dtype: str) -> TensorQuant | None:
    """A fixed_quant's grid as the annotation of its output, where ``dtype`` holds it exactly: one
    grid per tensor, scale 2**-f, zero point 0, at most 8 bits (int8; 16 for int16) with the sign."""
    from tapeout.compiler.fixedpoint.qat import tensor_kif

    # A runtime (or non-integer) k, i or f has no one trained grid: calibrated.
    if not all(c in g.constants and np.asarray(g.constants[c]).dtype.kind in "iu" for c in n.inputs[1:]):
        return None
    kif = tensor_kif(g, n)
    if kif is None:
        return None
    k, i, f = kif
    width = k + i + f
    qmin, qmax = _INT_RANGE[dtype]
    top = (1 << (width - k)) - 1 if width > 0 else 0
    if width <= 0 or top > qmax:
        return None
    scale = 2.0**-f
    lo = -(top + 1) * scale if k else 0.0
    return TensorQuant(dtype, "activation", (scale,), (0,), None, qmin, qmax, (lo,), (top * scale,))


def _role(n: Node, pos: int) -> str:
    if n.op in LINEAR_OPS or n.op == "matmul":
        return {1: "weight", 2: "bias"}.get(pos, "constant")
    return "constant"


def _is_float(g: Graph, v: str) -> bool:
    return np.dtype(g.type_of(v).dtype).kind == "f"


def ranges_equal(a: TensorQuant, b: TensorQuant) -> bool:
    """Same dtype, scales (compared as the float32 every artifact stores) and zero points."""
    return (a.dtype == b.dtype and a.zero_point == b.zero_point and a.axis == b.axis
            and np.array_equal(np.float32(a.scale), np.float32(b.scale)))


__all__ = ["SCHEMES", "CALIBRATED_SCHEMES", "Quantize", "SplitActivations", "asymmetric", "symmetric",
           "per_channel_weights", "quantize_array", "dequantize_array", "fake_quantize", "simulate",
           "round_half_away", "is_excluded", "ranges_equal"]
