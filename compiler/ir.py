"""The tapeout IR: plain, typed graph data.

Conventions (every front end converts into these, every emitter lowers out of them):
- Tensors are channels-last: images are [N, H, W, C], sequences [N, W, C].
- Dimension 0 of every activation tensor is the batch; it is symbolic (a str,
  normally ``BATCH``), every other dimension is a static int.
- Weights are constants (NumPy arrays in ``Graph.constants``) fed to nodes as
  ordinary inputs, so folding and fusion work on them like on any other value.
- Nodes are kept in topological order.

What each op means is defined by the reference interpreter
(``tapeout.compiler.interpreter``); ``tapeout.compiler.ops`` holds the op
schemas (attributes, defaults, shape inference, MAC counting).
"""

from __future__ import annotations

import copy as _copy
from dataclasses import dataclass, field
from dataclasses import replace as _dc_replace
from typing import Any, Callable, Iterator

import numpy as np

Dim = int | str
BATCH = "N"


class IRError(Exception):
    """A graph is malformed (bad wiring, shapes that do not agree, unknown op)."""


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Activation:
    """An activation fused into a dense or conv node.

    ``op`` is the name of a unary activation op of the op set ("relu", "clip",
    "leaky_relu", ...); ``attrs`` are that op's attributes as sorted pairs so the
    object stays hashable and compares by value.
    """

    op: str = "identity"
    attrs: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def of(op: str, **attrs: Any) -> "Activation":
        return Activation(op, tuple(sorted(attrs.items())))

    @property
    def is_identity(self) -> bool:
        return self.op == "identity"

    def attr_dict(self) -> dict[str, Any]:
        return dict(self.attrs)

    def __str__(self) -> str:
        if not self.attrs:
            return self.op
        return f"{self.op}({', '.join(f'{k}={v}' for k, v in self.attrs)})"


LINEAR = Activation()


@dataclass(frozen=True)
class TensorQuant:
    """How one value or constant is quantized: written by the quantize pass, read by every
    quantized back end (TFLite, ONNX QDQ, TensorRT, hls4ml), so they all share one calibration.

    Integer dtypes: ``real = (q - zero_point) * scale`` with ``q`` clamped to ``[qmin, qmax]``.
    ``scale``/``zero_point`` hold one entry (per-tensor) or one per channel along ``axis``
    (an axis of the IR's channels-last tensor). ``rmin``/``rmax`` are the float range the
    parameters came from (per channel when per-channel). "float16" has no scale: the value is
    stored in half precision. See docs/quantization.md.
    """

    dtype: str  # "int8", "int16", "int32"/"int64" (biases), "float16"
    role: str  # "activation", "weight", "bias" or "constant" (another constant operand)
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis: int | None = None
    qmin: int = 0
    qmax: int = 0
    rmin: tuple[float, ...] = ()
    rmax: tuple[float, ...] = ()

    @property
    def is_integer(self) -> bool:
        return self.dtype.startswith("int")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def __str__(self) -> str:
        if not self.is_integer:
            return f"{self.role} {self.dtype} range=[{_g(min(self.rmin, default=0))}, {_g(max(self.rmax, default=0))}]"
        if self.per_channel:
            return (f"{self.role} {self.dtype}[{self.qmin}, {self.qmax}] per-channel axis={self.axis} "
                    f"({len(self.scale)} scales in [{_g(min(self.scale))}, {_g(max(self.scale))}])")
        return (f"{self.role} {self.dtype}[{self.qmin}, {self.qmax}] scale={_g(self.scale[0])} "
                f"zero_point={self.zero_point[0]} range=[{_g(self.rmin[0])}, {_g(self.rmax[0])}]")


@dataclass
class Quantization:
    """The quantize pass's annotations for one scheme ("int8", "int16x8", "fp16")."""

    scheme: str
    tensors: dict[str, TensorQuant] = field(default_factory=dict)  # value or constant name -> params
    float_nodes: tuple[str, ...] = ()  # nodes kept in float (excluded by name)

    def of(self, name: str) -> TensorQuant | None:
        return self.tensors.get(name)


@dataclass
class Calibration:
    """Activation ranges measured by ``tapeout.compiler.calibration`` on calibration data."""

    method: str  # "minmax", "percentile" or "entropy"
    data: str  # "calibration" (the user's file) or "synthetic"
    samples: int
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # value -> (min, max) chosen
    percentile: float | None = None  # for method "percentile"

    def describe(self) -> str:
        how = f"percentile {self.percentile:g}" if self.method == "percentile" else self.method
        return f"{how} on {self.samples} {self.data} samples"


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def attr(self, key: str) -> Any:
        """The attribute, or the op schema's default for it."""
        if key in self.attrs:
            return self.attrs[key]
        from tapeout.compiler.ops import get_schema

        return get_schema(self.op).defaults[key]


@dataclass
class Graph:
    name: str
    inputs: list[str]
    outputs: list[str]
    nodes: list[Node] = field(default_factory=list)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    # Type of every graph input and node output (constants carry their own).
    types: dict[str, TensorType] = field(default_factory=dict)
    # Layout of each graph input/output in the *source* model ("NHWC", "NCHW",
    # "NWC", "NCW", "NC", ...), so artifacts can keep the user's I/O convention.
    io_layouts: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    # Activation ranges from calibration; None until calibrated (tapeout.compiler.calibration).
    calibration: Calibration | None = None
    # Quantization annotations; None until the quantize pass ran (tapeout.compiler.passes.quantize).
    quant: Quantization | None = None
    # Per-layer fixed-point types (compiler.fixedpoint.precision.FixedPrecision); None until the
    # precision search ran for a fixed-point back end. Shared by copies: nothing edits it after.
    fixed: Any = None

    # ----------------------------------------------------------------- queries
    def type_of(self, value: str) -> TensorType:
        if value in self.constants:
            c = self.constants[value]
            return TensorType(tuple(int(d) for d in c.shape), str(c.dtype))
        try:
            return self.types[value]
        except KeyError:
            raise IRError(f"value {value!r} has no type (run infer_shapes)") from None

    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    users.setdefault(i, []).append(n)
        return users

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def is_constant(self, value: str) -> bool:
        return value in self.constants

    def names(self) -> set[str]:
        """Every name in use: constants, typed values, node names and outputs, graph inputs."""
        taken = set(self.constants) | set(self.types) | {n.name for n in self.nodes}
        taken |= {o for n in self.nodes for o in n.outputs} | set(self.inputs)
        return taken

    def unique_name(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``, ... whichever is free first.

        One scan of the graph per call: code minting many names keeps its own set
        (``fresh_name`` over ``names()``) or a ``passes.base.Editor``.
        """
        return fresh_name(base, self.names().__contains__)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    # ----------------------------------------------------------------- editing
    def copy(self) -> "Graph":
        """A deep copy; constant arrays are shared (passes replace, never mutate, them)."""
        return Graph(
            name=self.name,
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            nodes=[Node(n.op, n.name, list(n.inputs), list(n.outputs), _copy_attrs(n.attrs)) for n in self.nodes],
            constants=dict(self.constants),
            types=dict(self.types),
            io_layouts=dict(self.io_layouts),
            metadata=dict(self.metadata),
            calibration=None if self.calibration is None else _dc_replace(
                self.calibration, ranges=dict(self.calibration.ranges)),
            quant=None if self.quant is None else _dc_replace(self.quant, tensors=dict(self.quant.tensors)),
            fixed=self.fixed,
        )

    def add_constant(self, base: str, array: np.ndarray) -> str:
        name = self.unique_name(base)
        self.constants[name] = np.ascontiguousarray(array)
        return name

    def replace_uses(self, old: str, new: str) -> None:
        """Point every consumer (and graph output) of ``old`` at ``new``."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]

    def topo_sort(self) -> None:
        """Order nodes so producers come first (depth-first, inputs in order; stable for sorted graphs)."""
        produced = {out: n for n in self.nodes for out in n.outputs}
        order: list[Node] = []
        state: dict[str, int] = {}  # 1: on the current path, 2: placed
        # An explicit stack, not recursion: a chain of many thousand nodes is as deep.
        for root in self.nodes:
            if state.get(root.name) == 2:
                continue
            state[root.name] = 1
            stack: list[tuple[Node, Iterator[str]]] = [(root, iter(root.inputs))]
            while stack:
                n, pending = stack[-1]
                for i in pending:
                    p = produced.get(i)
                    if p is None:
                        continue
                    s = state.get(p.name)
                    if s == 1:
                        raise IRError(f"cycle through node {p.name!r}")
                    if s is None:
                        state[p.name] = 1
                        stack.append((p, iter(p.inputs)))
                        break
                else:
                    stack.pop()
                    state[n.name] = 2
                    order.append(n)
        self.nodes = order

    def remove_unused_constants(self) -> None:
        used = {i for n in self.nodes for i in n.inputs} | set(self.outputs)
        self.constants = {k: v for k, v in self.constants.items() if k in used}
        live = used | {o for n in self.nodes for o in n.outputs} | set(self.inputs)
        self.types = {k: v for k, v in self.types.items() if k in live}
        if self.quant is not None:
            self.quant.tensors = {k: v for k, v in self.quant.tensors.items() if k in live}

    # -------------------------------------------------------- shapes and checks
    def infer_shapes(self) -> None:
        """Recompute the type of every node output from the graph inputs."""
        from tapeout.compiler.ops import infer_node

        for n in self.nodes:
            in_types = [self.type_of(i) if i else None for i in n.inputs]
            out_types = infer_node(n, in_types, self)
            for o, t in zip(n.outputs, out_types):
                self.types[o] = t

    def check(self) -> None:
        """Validate wiring, op names, attributes and shapes; raise IRError on the first problem."""
        from tapeout.compiler.ops import check_node_attrs, infer_node

        names: set[str] = set()
        defined: set[str] = set(self.constants)
        # Each value's type as inferred from the inputs: nodes are checked against these, not
        # against the stored types, which are what is being checked (and may be missing).
        inferred: dict[str, TensorType] = {}
        for i in self.inputs:
            if i not in self.types:
                raise IRError(f"graph input {i!r} has no type")
            if not self.types[i].shape or not isinstance(self.types[i].shape[0], str):
                raise IRError(f"graph input {i!r} must have a symbolic batch dimension, got {self.types[i]}")
            defined.add(i)
            inferred[i] = self.types[i]
        for n in self.nodes:
            if n.name in names:
                raise IRError(f"duplicate node name {n.name!r}")
            names.add(n.name)
            for i in n.inputs:
                if i and i not in defined:
                    raise IRError(f"node {n.name!r} ({n.op}) reads {i!r}, which is not defined before it")
            check_node_attrs(n)
            in_types = [(inferred[i] if i in inferred else self.type_of(i)) if i else None for i in n.inputs]
            expected = infer_node(n, in_types, self)
            for o, t in zip(n.outputs, expected):
                if o in defined:
                    raise IRError(f"value {o!r} is defined twice (again by node {n.name!r})")
                have = self.types.get(o)
                if have is not None and have != t:
                    raise IRError(f"node {n.name!r} ({n.op}) output {o!r} is typed {have} but infers to {t}")
                defined.add(o)
                inferred[o] = t
        for o in self.outputs:
            if o not in defined:
                raise IRError(f"graph output {o!r} is not produced by any node")
        if self.quant is not None:
            for name in self.quant.tensors:
                if name not in defined:
                    raise IRError(f"quantization annotation for {name!r}, which is not a value of the graph")
            for name in self.quant.float_nodes:
                if name not in names:
                    raise IRError(f"node {name!r} is marked float but is not in the graph")

    # ------------------------------------------------------------------- dumps
    def dump(self) -> str:
        """A readable text form, one line per node."""
        lines = [f"graph {self.name}("]
        for i in self.inputs:
            lay = self.io_layouts.get(i, "")
            lines.append(f"    {i}: {self.types.get(i)}{'  # source layout ' + lay if lay else ''}")
        lines.append(") {")
        for n in self.nodes:
            args = ", ".join(_fmt_input(self, i) for i in n.inputs)
            attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in sorted(n.attrs.items()))
            outs = ", ".join(f"{o}: {self.types.get(o)}" for o in n.outputs)
            lines.append(f"    {outs} = {n.op}({args}){' {' + attrs + '}' if attrs else ''}  # {n.name}")
        lines.append(f"    return {', '.join(self.outputs)}")
        lines.append("}")
        if self.calibration is not None:
            lines.append(f"calibration: {self.calibration.describe()}")
        if self.quant is not None:
            lines.extend(_dump_quant(self))
        return "\n".join(lines)


# Attribute values deepcopy would return as they are: copying skips it for them (a copy per
# node per pass is most of Graph.copy's time on long graphs).
_IMMUTABLE = (int, float, str, bool, type(None), Activation)


def _copy_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if type(v) in _IMMUTABLE or (type(v) is tuple and all(type(x) in _IMMUTABLE for x in v)):
            out[k] = v
        else:
            out[k] = _copy.deepcopy(v)
    return out


def fresh_name(base: str, taken: Callable[[str], bool]) -> str:
    """``base`` when ``taken(base)`` is false, else the first free ``base_1``, ``base_2``, ..."""
    if not taken(base):
        return base
    i = 1
    while taken(f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


def _fmt_input(g: Graph, name: str) -> str:
    if name in g.constants:
        c = g.constants[name]
        return f"%{name}<{c.dtype}{list(c.shape)}>"
    return name


def _fmt_attr(v: Any) -> str:
    return str(v) if isinstance(v, Activation) else repr(v)


def _g(x: float) -> str:
    return f"{x:.6g}"


def _dump_quant(g: Graph) -> list[str]:
    """The annotations in graph order: inputs, then each node's constants and outputs."""
    q = g.quant
    assert q is not None
    order = list(g.inputs) + [v for n in g.nodes for v in [*n.inputs, *n.outputs] if v]
    seen: set[str] = set()
    lines = [f"quant {q.scheme} {{"]
    for name in order:
        if name in seen or name not in q.tensors:
            continue
        seen.add(name)
        lines.append(f"    {name}: {q.tensors[name]}")
    if q.float_nodes:
        lines.append(f"    kept float: {', '.join(q.float_nodes)}")
    lines.append("}")
    return lines
