"""Conversion state shared by the ONNX op handlers: bound values, IR emission, layout moves.

Every ONNX value is bound either to a NumPy array (a constant) or to a ``Value``: an
IR value plus the ``Layout`` relating it to the ONNX tensor. Handlers ask for inputs
in the layout they need (``with_perm``, ``native``, ``channels_last``); only those
calls emit IR ``transpose`` nodes, and only when data really moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tapeout.compiler.errors import FrontendError
from tapeout.compiler.frontends.onnx_layout import (
    Flat, Layout, Perm, channels_last, identity, moves_data, to_ir_shape, to_onnx_shape, transpose_between)
from tapeout.compiler.ir import Graph, IRError, Node, fresh_name
from tapeout.compiler.ops import infer_node


@dataclass(frozen=True)
class Value:
    """A runtime ONNX value: the IR value holding it and how (``layout``)."""

    ir: str
    layout: Layout


Bound = Value | np.ndarray


@dataclass
class OnnxNode:
    """An ONNX node as handlers see it: names, plain-Python attributes (tensors as NumPy)."""

    op: str
    name: str
    inputs: list[str | None]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or (self.outputs[0] if self.outputs else "?")

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def input(self, i: int) -> str | None:
        return self.inputs[i] if i < len(self.inputs) and self.inputs[i] else None


Handler = Callable[["Context", OnnxNode], list[Bound]]


def registrar(table: dict[str, Handler]) -> Callable[..., Callable[[Handler], Handler]]:
    """A decorator ``@handles("Op", ...)`` that enters a handler into ``table``."""

    def handles(*ops: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            for op in ops:
                table[op] = fn
            return fn

        return deco

    return handles


class Context:
    def __init__(self, graph: Graph, path: Path, opset: int, batch: int, fixed_batch: int | None,
                 uses: dict[str, int]) -> None:
        self.graph = graph
        self.path = path
        self.opset = opset
        self.batch = batch  # the concrete batch shapes were folded with
        self.fixed_batch = fixed_batch
        self.uses = uses  # ONNX value -> readers (graph outputs count)
        self.values: dict[str, Bound] = {}
        self.notes: list[str] = []
        self.tied_batch = False  # set when the model's semantics need its fixed batch (Flatten axis 0)
        self.node: OnnxNode | None = None
        self.producer: dict[str, Node] = {}  # IR value -> the IR node that computes it
        # (IR value, storage perm) -> the value moved there, so each move is made once.
        self._moved: dict[tuple[str, Perm], Value] = {}
        self._ordered: dict[str, Value] = {}  # flattened IR value -> its ONNX-order copy
        self.readers: dict[str, int] = {}  # IR value -> IR nodes reading it so far
        self.aliases: dict[str, list[str]] = {}  # IR value -> the ONNX values bound to it
        # Node names and outputs so far, so a fresh name costs O(1), not a scan of the graph
        # (nodes are added only by emit; outputs change only by rename).
        self._node_names: set[str] = {n.name for n in graph.nodes}
        self._outputs: set[str] = {o for n in graph.nodes for o in n.outputs}

    # ------------------------------------------------------------- errors
    def fail(self, why: str) -> FrontendError:
        n = self.node
        where = f"node {n.label!r} ({n.op})" if n is not None else "model"
        return FrontendError(f"{self.path}: {where}: {why}")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # ------------------------------------------------------------- values
    def bind(self, name: str, b: Bound) -> None:
        """Bind ONNX value ``name`` to a constant or an IR value."""
        self.values[name] = b
        if isinstance(b, Value):
            self.aliases.setdefault(b.ir, []).append(name)

    def read_once(self, ir: str) -> bool:
        """Whether the node being converted is the only reader of IR value ``ir`` (its aliases included)."""
        if self.readers.get(ir, 0):
            return False
        return sum(self.uses.get(a, 0) for a in self.aliases.get(ir, ())) == 1

    def rename(self, old: str, new: str) -> None:
        """Rename IR value ``old`` everywhere: the graph and every binding and cache of it."""
        from tapeout.compiler.passes.base import rename_value

        rename_value(self.graph, old, new)
        if old in self._outputs:
            self._outputs.discard(old)
            self._outputs.add(new)

        def fix(b: Any) -> Any:
            return Value(new, b.layout) if isinstance(b, Value) and b.ir == old else b

        self.values = {k: fix(b) for k, b in self.values.items()}
        self._moved = {(new if ir == old else ir, p): fix(v) for (ir, p), v in self._moved.items()}
        self._ordered = {new if ir == old else ir: fix(v) for ir, v in self._ordered.items()}
        for table in (self.producer, self.readers, self.aliases):
            if old in table:
                table[new] = table.pop(old)  # type: ignore[attr-defined]

    def bound(self, name: str) -> Bound:
        try:
            return self.values[name]
        except KeyError:
            raise self.fail(f"reads {name!r}, which nothing produces before it") from None

    def const(self, i: int) -> np.ndarray | None:
        """Input ``i`` of the current node as an array, or None (absent or computed at run time)."""
        name = self.node.input(i) if self.node else None
        if name is None:
            return None
        b = self.bound(name)
        return b if isinstance(b, np.ndarray) else None

    def need_const(self, i: int, what: str) -> np.ndarray:
        c = self.const(i)
        if c is None:
            raise self.fail(f"{what} (input {i}) must be a constant")
        return c

    def value(self, i: int = 0) -> Value:
        """Input ``i`` of the current node as a runtime value."""
        name = self.node.input(i) if self.node else None
        if name is None:
            raise self.fail(f"input {i} is missing")
        b = self.bound(name)
        if isinstance(b, np.ndarray):
            raise self.fail(f"input {i} ({name!r}) is a constant here; only its data input may be computed "
                            "from the model input")
        return b

    def has(self, i: int) -> bool:
        return self.node is not None and self.node.input(i) is not None

    # ------------------------------------------------------------- shapes
    def ir_shape(self, v: Value) -> tuple:
        return self.graph.type_of(v.ir).shape

    def onnx_shape(self, v: Value) -> tuple[int, ...]:
        """The ONNX shape of ``v`` with the batch as the concrete folding batch."""
        shape = self.ir_shape(v)
        onnx = shape if v.layout.flat is not None else to_onnx_shape(shape, v.layout.perm)
        return (self.batch, *(int(d) for d in onnx[1:]))

    def axis(self, axis: int, rank: int) -> int:
        """A possibly negative ONNX axis, normalized."""
        if not -rank <= axis < rank:
            raise self.fail(f"axis {axis} is out of range for rank {rank}")
        return axis % rank

    # ----------------------------------------------------------- emitting
    def _taken(self, name: str) -> bool:
        g = self.graph  # the names Graph.unique_name counts
        return (name in g.constants or name in g.types or name in self._node_names or name in self._outputs
                or name in g.inputs)

    def unique_name(self, base: str) -> str:
        """``Graph.unique_name`` without its scan of the graph."""
        return fresh_name(base, self._taken)

    def emit(self, op: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        g = self.graph
        name = self.unique_name(name)
        node = Node(op, name, list(inputs), [name], attrs)
        try:
            g.types[name] = infer_node(node, [g.type_of(i) for i in inputs], g)[0]
        except IRError as e:
            raise self.fail(f"cannot be expressed in the IR: {e}") from None
        g.nodes.append(node)
        self._node_names.add(name)
        self._outputs.add(name)
        self.producer[name] = node
        for i in inputs:
            self.readers[i] = self.readers.get(i, 0) + 1
        return name

    def add_const(self, base: str, array: np.ndarray) -> str:
        return self.add_constant(base, np.asarray(array, dtype=np.float32))

    def add_constant(self, base: str, array: np.ndarray) -> str:
        """``Graph.add_constant`` without its scan of the graph."""
        name = self.unique_name(base)
        self.graph.constants[name] = np.ascontiguousarray(array)
        return name

    # ------------------------------------------------------------ layouts
    def with_perm(self, v: Value, perm: Perm) -> Value:
        """``v`` stored with ``perm``: an IR transpose if data moves, a reshape if only unit axes do."""
        v = self.unflat(v)
        if v.layout.perm == perm:
            return v
        key = (v.ir, perm)
        if key not in self._moved:
            shape = self.ir_shape(v)
            move = transpose_between(v.layout.perm, perm)
            if moves_data(shape, move):
                out = self.emit("transpose", [v.ir], f"{v.ir}/perm", perm=move)
            else:
                new_shape = [shape[m] for m in move]
                out = self.emit("reshape", [v.ir], f"{v.ir}/perm", shape=tuple(int(d) for d in new_shape[1:]))
            self._moved[key] = Value(out, Layout(perm))
        return self._moved[key]

    def native(self, v: Value) -> Value:
        return self.with_perm(v, identity(v.layout.rank))

    def channels_last(self, v: Value) -> Value:
        return self.with_perm(v, channels_last(v.layout.rank))

    def unflat(self, v: Value) -> Value:
        """``v`` with its features in ONNX order (a ``Flat`` value is reordered, others returned as is).

        The flattened value is reshaped back to the permuted tensor it came from (free),
        transposed into ONNX order and flattened again.
        """
        flat = v.layout.flat
        if flat is None:
            return v
        if v.ir not in self._ordered:
            inner = self.emit("reshape", [v.ir], f"{v.ir}/unflatten", shape=tuple(flat.inner))
            ordered = self.with_perm(Value(inner, Layout(flat.perm)), identity(len(flat.perm)))
            out = self.emit("flatten", [ordered.ir], f"{v.ir}/onnx_order")
            self._ordered[v.ir] = Value(out, Layout(identity(2)))
        return self._ordered[v.ir]

    def flatten(self, v: Value, name: str) -> Value:
        """An IR flatten of ``v``'s storage, remembering the feature order when it is not ONNX's."""
        out = self.emit("flatten", [v.ir], name)
        inner = tuple(int(d) for d in self.ir_shape(v)[1:])
        flat = Flat(inner, v.layout.perm)
        keep = None if np.array_equal(flat.order, np.arange(flat.order.size)) else flat
        return Value(out, Layout(identity(2), keep))

    def reshape_to(self, v: Value, perm: Perm, onnx_shape: Sequence[int], name: str) -> Value:
        """An IR reshape producing the ONNX shape ``onnx_shape`` stored with ``perm``."""
        ir_shape = to_ir_shape(onnx_shape, perm)
        if tuple(ir_shape[1:]) == tuple(self.ir_shape(v)[1:]):
            return Value(v.ir, Layout(perm))
        if len(ir_shape) == 2:  # [N, K]: a flatten, which back ends lower without moving data
            return Value(self.emit("flatten", [v.ir], name), Layout(perm))
        out = self.emit("reshape", [v.ir], name, shape=tuple(int(d) for d in ir_shape[1:]))
        return Value(out, Layout(perm))
