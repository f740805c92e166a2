"""The IR op set: one schema per op (inputs, attributes with defaults, shape inference, MACs).

Semantics, briefly (the reference interpreter is the precise definition):

dense(x[..., K], w[K, M], b[M]?)            y = act(x @ w + b) over the last axis
matmul(a, b)                                 NumPy matmul of two tensors
conv(x[N, *S, C], w[*K, C/groups, F], b[F]?) grouped, strided, dilated conv, explicit pads,
                                             then act; depthwise is groups == C
batch_norm(x, scale, bias, mean, var)        over the last (channel) axis
affine(x, scale, shift)                      y = x * scale + shift (broadcast)
lrn(x)                                       ONNX LRN over the last (channel) axis: x / (bias + alpha / size *
                                             sum of x**2 over channels [c - (size-1)//2, c + size//2]) ** beta
relu clip leaky_relu elu sigmoid hard_sigmoid tanh softmax swish hard_swish gelu identity dropout
max_pool / avg_pool(x)                       kernel, strides, explicit pads; avg counts padding
                                             only when count_include_pad
global_avg_pool / global_max_pool(x)         over spatial dims; keepdims gives [N, 1.., C]
add sub mul div maximum minimum(a, b)        NumPy broadcasting
concat(*xs)                                  along axis
flatten(x)                                   [N, prod(rest)] in channels-last element order
reshape(x)                                   batch kept, the rest becomes ``shape`` (one -1 allowed)
transpose(x)                                 perm over all axes, perm[0] == 0
pad(x)                                       constant pad, pads per axis (before, after)
resize(x)                                    nearest-neighbour upsampling by integer scales per spatial dim
fixed_quant(x, k, i, f)                      x on a fixed-point grid per element (HGQ's kif): k signed, i integer
                                             bits without sign, f fractional bits (constants broadcasting
                                             against x[0]); ap_fixed<k+i+f, k+i> with the rounding and
                                             overflow attrs (ap_types' names); 0 where k+i+f <= 0. QAT front
                                             ends (HGQ2, QONNX) write it.
slice(x)                                     x[starts:ends:steps] along non-batch axes, ONNX Slice's clamping
                                             (negative indices count from the end, out-of-range ends clamp)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from tapeout.compiler.ir import LINEAR, Activation, Graph, IRError, Node, TensorType

InferFn = Callable[[Node, list[TensorType | None]], list[TensorType]]
MacsFn = Callable[[Node, list[TensorType | None], list[TensorType]], int]


@dataclass(frozen=True)
class OpSchema:
    name: str
    min_inputs: int
    max_inputs: int | None  # None: variadic
    defaults: dict[str, Any]
    required: tuple[str, ...]
    infer: InferFn
    macs: MacsFn = field(default=lambda n, i, o: 0)
    doc: str = ""


SCHEMAS: dict[str, OpSchema] = {}

# Unary activations that may also be fused into dense/conv through ``Activation``.
ACTIVATION_OPS = (
    "identity", "relu", "clip", "leaky_relu", "elu", "sigmoid", "hard_sigmoid",
    "tanh", "softmax", "swish", "hard_swish", "gelu",
)


def get_schema(op: str) -> OpSchema:
    try:
        return SCHEMAS[op]
    except KeyError:
        raise IRError(f"unknown op {op!r}; the op set is: {', '.join(sorted(SCHEMAS))}") from None


def supported_ops() -> list[str]:
    return sorted(SCHEMAS)


def _register(name: str, infer: InferFn, *, inputs: tuple[int, int | None] = (1, 1),
              defaults: dict[str, Any] | None = None, required: Sequence[str] = (),
              macs: MacsFn | None = None, doc: str = "") -> None:
    SCHEMAS[name] = OpSchema(name, inputs[0], inputs[1], dict(defaults or {}), tuple(required),
                             infer, macs or (lambda n, i, o: 0), doc)


def check_node_attrs(node: Node) -> None:
    s = get_schema(node.op)
    n_in = len(node.inputs)
    if n_in < s.min_inputs or (s.max_inputs is not None and n_in > s.max_inputs):
        want = f"{s.min_inputs}" if s.max_inputs == s.min_inputs else f"{s.min_inputs}..{s.max_inputs or 'n'}"
        raise IRError(f"node {node.name!r} ({node.op}) has {n_in} inputs, expected {want}")
    allowed = set(s.defaults) | set(s.required)
    for k in node.attrs:
        if k not in allowed:
            raise IRError(f"node {node.name!r} ({node.op}) has unknown attribute {k!r}; allowed: {sorted(allowed)}")
    for k in s.required:
        if k not in node.attrs:
            raise IRError(f"node {node.name!r} ({node.op}) lacks required attribute {k!r}")
    act = node.attrs.get("activation")
    if act is not None:
        if not isinstance(act, Activation) or act.op not in ACTIVATION_OPS:
            raise IRError(f"node {node.name!r} has a bad fused activation {act!r}")


def infer_node(node: Node, in_types: list[TensorType | None], graph: Graph | None = None) -> list[TensorType]:
    s = get_schema(node.op)
    try:
        return s.infer(node, in_types)
    except IRError:
        raise
    except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError) as e:
        shapes = ", ".join(str(t) for t in in_types)
        raise IRError(f"node {node.name!r} ({node.op}): cannot infer shapes from ({shapes}): {e}") from None


def ends_in_softmax(node: Node) -> bool:
    """The node's output is a softmax: the op itself, or a conv/dense with softmax fused in."""
    return node.op == "softmax" or (node.op in ("conv", "dense") and node.attr("activation").op == "softmax")


def node_macs(node: Node, graph: Graph) -> int:
    in_types = [graph.type_of(i) if i else None for i in node.inputs]
    out_types = [graph.type_of(o) for o in node.outputs]
    return int(get_schema(node.op).macs(node, in_types, out_types))


# ------------------------------------------------------------------ helpers
def _fail(node: Node, msg: str) -> IRError:
    return IRError(f"node {node.name!r} ({node.op}): {msg}")


def _same(node: Node, ins: list[TensorType | None]) -> list[TensorType]:
    return [ins[0]]


def _static_prod(dims: Sequence[Any]) -> int:
    out = 1
    for d in dims:
        if not isinstance(d, int):
            raise ValueError(f"dimension {d!r} is not static")
        out *= d
    return out


def broadcast_shapes(a: Sequence[Any], b: Sequence[Any]) -> tuple[Any, ...]:
    """NumPy broadcasting on shapes that may hold symbolic dims."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ValueError(f"shapes {tuple(a)} and {tuple(b)} do not broadcast")
    return tuple(reversed(out))


def conv_out_dim(size: int, k: int, stride: int, dilation: int, pad_before: int, pad_after: int) -> int:
    eff = (k - 1) * dilation + 1
    out = (size + pad_before + pad_after - eff) // stride + 1
    if out < 1:
        raise ValueError(f"window {eff} does not fit input {size} with pads ({pad_before}, {pad_after})")
    return out


def same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow/Keras 'same' padding (extra pixel after), as explicit (before, after)."""
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


# ------------------------------------------------------------- dense/matmul
def _infer_dense(n: Node, ins):
    x, w = ins[0], ins[1]
    if w.rank != 2:
        raise _fail(n, f"weights must be rank 2 [K, M], got {w}")
    if x.shape[-1] != w.shape[0]:
        raise _fail(n, f"input {x} does not match weights {w}")
    if len(ins) > 2 and ins[2] is not None and tuple(ins[2].shape) != (w.shape[1],):
        raise _fail(n, f"bias {ins[2]} does not match weights {w}")
    return [TensorType(x.shape[:-1] + (w.shape[1],), x.dtype)]


def _macs_dense(n, ins, outs):
    return _static_prod(outs[0].shape[1:]) * ins[1].shape[0]


_register("dense", _infer_dense, inputs=(2, 3), defaults={"activation": LINEAR}, macs=_macs_dense)


def _infer_matmul(n: Node, ins):
    a, b = ins
    if a.rank < 2 or b.rank < 2 or a.shape[-1] != b.shape[-2]:
        raise _fail(n, f"cannot multiply {a} by {b}")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return [TensorType(batch + (a.shape[-2], b.shape[-1]), a.dtype)]


_register("matmul", _infer_matmul, inputs=(2, 2),
          macs=lambda n, i, o: _static_prod(o[0].shape[1:]) * i[0].shape[-1])


# --------------------------------------------------------------------- conv
def _spatial_attrs(n: Node, nsp: int, kernel: Sequence[int]):
    strides = tuple(n.attrs.get("strides") or (1,) * nsp)
    dil = tuple(n.attrs.get("dilations") or (1,) * nsp)
    pads = tuple(tuple(p) for p in (n.attrs.get("pads") or ((0, 0),) * nsp))
    if not (len(strides) == len(dil) == len(pads) == len(kernel) == nsp):
        raise _fail(n, f"strides {strides}, dilations {dil}, pads {pads} and kernel {tuple(kernel)} "
                       f"must each have {nsp} spatial entries")
    return strides, dil, pads


def _infer_conv(n: Node, ins):
    x, w = ins[0], ins[1]
    nsp = x.rank - 2
    if nsp < 1 or w.rank != nsp + 2:
        raise _fail(n, f"input {x} and weights {w} do not form a 1D/2D/3D conv")
    groups = n.attrs.get("groups", 1)
    c = x.shape[-1]
    if c % groups or w.shape[-2] * groups != c or w.shape[-1] % groups:
        raise _fail(n, f"channels {c}, groups {groups} and weights {w} disagree")
    strides, dil, pads = _spatial_attrs(n, nsp, w.shape[:nsp])
    sp = tuple(conv_out_dim(x.shape[1 + i], w.shape[i], strides[i], dil[i], *pads[i]) for i in range(nsp))
    if len(ins) > 2 and ins[2] is not None and tuple(ins[2].shape) != (w.shape[-1],):
        raise _fail(n, f"bias {ins[2]} does not match weights {w}")
    return [TensorType((x.shape[0],) + sp + (w.shape[-1],), x.dtype)]


def _macs_conv(n, ins, outs):
    w = ins[1]
    return _static_prod(outs[0].shape[1:]) * _static_prod(w.shape[:-1])


_register("conv", _infer_conv, inputs=(2, 3),
          defaults={"strides": None, "dilations": None, "pads": None, "groups": 1, "activation": LINEAR},
          macs=_macs_conv)


# --------------------------------------------------------- normalisation etc.
def _infer_bn(n: Node, ins):
    x = ins[0]
    for t in ins[1:]:
        if tuple(t.shape) != (x.shape[-1],):
            raise _fail(n, f"parameter {t} does not match channels of {x}")
    return [x]


_register("batch_norm", _infer_bn, inputs=(5, 5), defaults={"epsilon": 1e-3},
          macs=lambda n, i, o: _static_prod(o[0].shape[1:]))


def _infer_affine(n: Node, ins):
    x = ins[0]
    shape = broadcast_shapes(broadcast_shapes(x.shape, ins[1].shape), ins[2].shape)
    if tuple(shape) != tuple(x.shape):
        raise _fail(n, f"scale {ins[1]} / shift {ins[2]} must broadcast to the input {x}")
    return [x]


_register("affine", _infer_affine, inputs=(3, 3), macs=lambda n, i, o: _static_prod(o[0].shape[1:]))


def lrn_window(size: int) -> tuple[int, int]:
    """The channels (before, after) channel c that ONNX LRN sums over: an even ``size`` reaches
    one further after than before."""
    return (size - 1) // 2, size // 2


def _infer_lrn(n: Node, ins):
    x = ins[0]
    if x.rank < 2:
        raise _fail(n, f"needs [N, ..., C], got {x}")
    if int(n.attrs["size"]) < 1:
        raise _fail(n, f"size {n.attrs['size']} must be at least 1")
    return [x]


_register("lrn", _infer_lrn, defaults={"alpha": 1e-4, "beta": 0.75, "bias": 1.0}, required=("size",),
          macs=lambda n, i, o: _static_prod(o[0].shape[1:]) * int(n.attrs["size"]))

# ---------------------------------------------------------------- activations
_ACT_DEFAULTS: dict[str, dict[str, Any]] = {
    "identity": {}, "relu": {}, "sigmoid": {}, "tanh": {}, "swish": {}, "hard_swish": {},
    "clip": {"min": None, "max": None},
    "leaky_relu": {"alpha": 0.3},
    "elu": {"alpha": 1.0},
    "hard_sigmoid": {"alpha": 1.0 / 6.0, "beta": 0.5},
    "softmax": {"axis": -1},
    "gelu": {"approximate": False},
}
for _op, _d in _ACT_DEFAULTS.items():
    _register(_op, _same, defaults=_d)
_register("dropout", _same, defaults={"rate": 0.0})


# ------------------------------------------------------------------- pooling
def _infer_pool(n: Node, ins):
    x = ins[0]
    nsp = x.rank - 2
    kernel = tuple(n.attrs["kernel"])
    strides, dil, pads = _spatial_attrs(n, nsp, kernel)
    sp = tuple(conv_out_dim(x.shape[1 + i], kernel[i], strides[i], 1, *pads[i]) for i in range(nsp))
    return [TensorType((x.shape[0],) + sp + (x.shape[-1],), x.dtype)]


def _macs_pool(n, ins, outs):
    return _static_prod(outs[0].shape[1:]) * _static_prod(n.attrs["kernel"])


_register("max_pool", _infer_pool, defaults={"strides": None, "pads": None}, required=("kernel",), macs=_macs_pool)
_register("avg_pool", _infer_pool, defaults={"strides": None, "pads": None, "count_include_pad": False},
          required=("kernel",), macs=_macs_pool)


def _infer_global_pool(n: Node, ins):
    x = ins[0]
    if x.rank < 3:
        raise _fail(n, f"needs [N, *spatial, C], got {x}")
    if n.attrs.get("keepdims", False):
        return [TensorType((x.shape[0],) + (1,) * (x.rank - 2) + (x.shape[-1],), x.dtype)]
    return [TensorType((x.shape[0], x.shape[-1]), x.dtype)]


for _op in ("global_avg_pool", "global_max_pool"):
    _register(_op, _infer_global_pool, defaults={"keepdims": False},
              macs=lambda n, i, o: _static_prod(i[0].shape[1:]))


# ------------------------------------------------------------------ binaries
def _infer_binary(n: Node, ins):
    a, b = ins
    return [TensorType(broadcast_shapes(a.shape, b.shape), a.dtype)]


for _op in ("add", "sub", "mul", "div", "maximum", "minimum"):
    _register(_op, _infer_binary, inputs=(2, 2))


def _infer_concat(n: Node, ins):
    axis = n.attrs["axis"]
    r = ins[0].rank
    ax = axis % r
    if ax == 0:
        raise _fail(n, "cannot concatenate along the batch axis")
    total = 0
    for t in ins:
        if t.rank != r or any(t.shape[i] != ins[0].shape[i] for i in range(r) if i != ax):
            raise _fail(n, f"inputs {[str(t) for t in ins]} differ outside axis {axis}")
        total += t.shape[ax]
    shape = list(ins[0].shape)
    shape[ax] = total
    return [TensorType(tuple(shape), ins[0].dtype)]


_register("concat", _infer_concat, inputs=(1, None), required=("axis",))


# ------------------------------------------------------------------- shaping
def _infer_flatten(n: Node, ins):
    x = ins[0]
    return [TensorType((x.shape[0], _static_prod(x.shape[1:])), x.dtype)]


_register("flatten", _infer_flatten)


def _infer_reshape(n: Node, ins):
    x = ins[0]
    target = [int(d) for d in n.attrs["shape"]]
    total = _static_prod(x.shape[1:])
    if target.count(-1) > 1:
        raise _fail(n, f"at most one -1 in shape {target}")
    if -1 in target:
        known = _static_prod([d for d in target if d != -1])
        if known == 0 or total % known:
            raise _fail(n, f"cannot reshape {x} to {target}")
        target[target.index(-1)] = total // known
    if _static_prod(target) != total:
        raise _fail(n, f"cannot reshape {x} to [batch, {', '.join(map(str, target))}]")
    return [TensorType((x.shape[0],) + tuple(target), x.dtype)]


_register("reshape", _infer_reshape, required=("shape",))


def _infer_transpose(n: Node, ins):
    x = ins[0]
    perm = tuple(n.attrs["perm"])
    if sorted(perm) != list(range(x.rank)) or perm[0] != 0:
        raise _fail(n, f"perm {perm} must permute all {x.rank} axes and keep the batch first")
    return [TensorType(tuple(x.shape[p] for p in perm), x.dtype)]


_register("transpose", _infer_transpose, required=("perm",))


def _infer_pad(n: Node, ins):
    x = ins[0]
    pads = [tuple(p) for p in n.attrs["pads"]]
    if len(pads) != x.rank or tuple(pads[0]) != (0, 0):
        raise _fail(n, f"pads {pads} must give (before, after) for all {x.rank} axes and not pad the batch")
    shape = (x.shape[0],) + tuple(x.shape[i] + pads[i][0] + pads[i][1] for i in range(1, x.rank))
    return [TensorType(shape, x.dtype)]


_register("pad", _infer_pad, defaults={"value": 0.0}, required=("pads",))


def _infer_resize(n: Node, ins):
    x = ins[0]
    scales = tuple(int(s) for s in n.attrs["scales"])
    if len(scales) != x.rank - 2:
        raise _fail(n, f"scales {scales} must have one entry per spatial axis of {x}")
    return [TensorType((x.shape[0],) + tuple(x.shape[1 + i] * s for i, s in enumerate(scales)) + (x.shape[-1],),
                       x.dtype)]


_register("resize", _infer_resize, defaults={"mode": "nearest"}, required=("scales",))


def slice_bounds(dim: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    """ONNX Slice's clamping: ``range(start, end, step)`` lists exactly the elements taken.

    Negative indices count from the end; then a positive step clamps both to [0, dim], a
    negative one clamps start to [0, dim - 1] and end to [-1, dim - 1] (-1: through element 0).
    """
    if step == 0:
        raise ValueError("slice step 0")
    start, end = int(start), int(end)
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim), step
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step


def slice_spec(n: Node, rank: int) -> list[tuple[int, int, int, int]]:
    """A slice node's (IR axis, start, end, step) per sliced axis, axes normalized, indices as given."""
    axes, starts, ends = (list(n.attrs[k]) for k in ("axes", "starts", "ends"))
    steps = list(n.attrs.get("steps") or [1] * len(axes))
    if not (len(axes) == len(starts) == len(ends) == len(steps)) or not axes:
        raise _fail(n, f"axes {axes}, starts {starts}, ends {ends} and steps {steps} must be non-empty and "
                       "of equal length")
    norm = []
    for a in axes:
        if not -rank <= int(a) < rank or int(a) % rank == 0:
            raise _fail(n, f"axis {a} is not a non-batch axis of a rank-{rank} tensor")
        norm.append(int(a) % rank)
    if len(set(norm)) != len(norm):
        raise _fail(n, f"axes {axes} repeat an axis")
    if any(int(s) == 0 for s in steps):
        raise _fail(n, "a step of 0")
    return [(a, int(b), int(e), int(s)) for a, b, e, s in zip(norm, starts, ends, steps)]


def _infer_slice(n: Node, ins):
    x = ins[0]
    shape = list(x.shape)
    for axis, start, end, step in slice_spec(n, x.rank):
        dim = shape[axis]
        if not isinstance(dim, int):
            raise _fail(n, f"axis {axis} of {x} is not static")
        shape[axis] = len(range(*slice_bounds(dim, start, end, step)))
    return [TensorType(tuple(shape), x.dtype)]


_register("slice", _infer_slice, defaults={"steps": None}, required=("axes", "starts", "ends"))


_register("fixed_quant", _same, inputs=(4, 4), defaults={"rounding": "AP_TRN", "overflow": "AP_WRAP"})


def fixed_quant_modes(n: Node, constants: Mapping[str, Any], who: str) -> tuple[str, str]:
    """A fixed_quant an emitter lowers to float ops: constant k, i and f (``who``, the emitter, says it
    needs them) and ap_fixed rounding/overflow modes; its (rounding, overflow), else IRError."""
    from tapeout.compiler.fixedpoint.types import OVERFLOW, ROUNDING

    if not all(c in constants for c in n.inputs[1:]):
        raise _fail(n, f"{who} needs constant k, i and f")
    rounding, overflow = n.attr("rounding"), n.attr("overflow")
    if rounding not in ROUNDING or overflow not in OVERFLOW:
        raise _fail(n, f"unknown mode {rounding}/{overflow}")
    return rounding, overflow


def graph_macs(graph: Graph) -> int:
    return sum(node_macs(n, graph) for n in graph.nodes)


def graph_params(graph: Graph) -> int:
    return int(sum(math.prod(c.shape) for c in graph.constants.values()))
