"""State of one IR -> ONNX lowering: emitted nodes and initializers, names, and the
physical layout of every IR value's ONNX tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tapeout.compiler.ir import Graph
from tapeout.compiler.layout import to_channels_first, to_channels_last
from tapeout.targets.onnx.layout import broadcast_constant


@dataclass(frozen=True)
class Value:
    name: str  # the ONNX tensor holding the IR value
    cf: bool  # stored channels-first (only meaningful for rank >= 3)
    rank: int


class Builder:
    def __init__(self, graph: Graph, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.values: dict[str, Value] = {}
        self.consumers = graph.consumers()
        # A flatten output stored in channels-first element order -> the row order its dense needs.
        self.row_orders: dict[str, np.ndarray] = {}
        self._other_layout: dict[str, str] = {}  # IR value -> ONNX tensor in the other layout
        self._derived: dict[tuple[str, str], str] = {}  # (constant, transform) -> initializer
        self._scalars: dict[float, str] = {}
        self._taken = set(graph.constants) | set(graph.types) | set(graph.inputs)
        self._taken |= {n.name for n in graph.nodes} | {o for n in graph.nodes for o in n.outputs}

    # ------------------------------------------------------------------ names
    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        return name

    # ------------------------------------------------------------------ nodes
    def add(self, op_type: str, inputs: Sequence[str], output: str, name: str, **attrs: Any) -> str:
        # Optional inputs left out at the end are dropped; ONNX marks inner ones by "".
        ins = list(inputs)
        while ins and not ins[-1]:
            ins.pop()
        self.nodes.append(helper.make_node(op_type, ins, [output], name=name, **attrs))
        return output

    def add_aux(self, op_type: str, inputs: Sequence[str], base: str, **attrs: Any) -> str:
        """A helper node whose node and output names both derive from ``base``."""
        name = self.fresh(base)
        return self.add(op_type, inputs, name, name, **attrs)

    # ---------------------------------------------------------- initializers
    def initializer(self, base: str, array: np.ndarray, *, exact_name: bool = False) -> str:
        name = base if exact_name else self.fresh(base)
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32, copy=False)
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def scalar(self, value: float) -> str:
        if value not in self._scalars:
            self._scalars[value] = self.initializer(f"scalar/{value!r}", np.array(value, np.float32))
        return self._scalars[value]

    def int64s(self, base: str, values: Sequence[int]) -> str:
        return self.initializer(base, np.array(list(values), np.int64))

    def derived(self, const: str, key: str, fn: Callable[[np.ndarray], np.ndarray]) -> str:
        """An initializer computed at compile time from IR constant ``const`` (cached per key)."""
        if (const, key) not in self._derived:
            self._derived[(const, key)] = self.initializer(f"{const}/{key}", fn(self.graph.constants[const]))
        return self._derived[(const, key)]

    # ---------------------------------------------------------------- values
    def rank(self, value: str) -> int:
        return self.graph.type_of(value).rank

    def is_cf(self, value: str) -> bool:
        return value in self.values and self.values[value].cf

    def define(self, value: str, onnx_name: str, cf: bool) -> None:
        rank = self.rank(value)
        self.values[value] = Value(onnx_name, cf and rank >= 3, rank)

    def get(self, value: str, cf: bool | None = None) -> str:
        """The ONNX tensor for ``value``; ``cf`` asks for a layout (None: as stored)."""
        if value in self.graph.constants:
            if value not in self.initializers:
                self.initializer(value, self.graph.constants[value], exact_name=True)
            return value
        v = self.values[value]
        if cf is None or v.rank < 3 or v.cf == cf:
            return v.name
        if value not in self._other_layout:
            perm = to_channels_first(v.rank) if cf else to_channels_last(v.rank)
            suffix = "to_channels_first" if cf else "to_channels_last"
            self._other_layout[value] = self.add_aux("Transpose", [v.name], f"{value}/{suffix}", perm=perm)
        return self._other_layout[value]

    def operand(self, value: str, cf: bool, rank: int) -> str:
        """An input of a broadcasting op computed in layout ``cf`` at ``rank``."""
        if value in self.graph.constants and cf:
            return self.derived(value, f"channels_first_r{rank}", lambda a: broadcast_constant(a, rank, True))
        return self.get(value, cf if rank >= 3 else None)

    def common_layout(self, inputs: Sequence[str], rank: int) -> bool:
        """The layout to run an elementwise/concat op in: that of most runtime inputs.

        Channels-last whenever a runtime operand's rank differs from the output's, since
        NumPy broadcasting aligns trailing (channels-last) axes.
        """
        live = [i for i in inputs if i and i not in self.graph.constants]
        if rank < 3 or not live or any(self.rank(i) != rank for i in live):
            return False
        n_cf = sum(self.is_cf(i) for i in live)
        return 2 * n_cf > len(live) or (2 * n_cf == len(live) and self.is_cf(live[0]))

    # ---------------------------------------------------------------- finish
    def rename(self, mapping: dict[str, str]) -> None:
        for node in self.nodes:
            node.input[:] = [mapping.get(i, i) for i in node.input]
            node.output[:] = [mapping.get(o, o) for o in node.output]

    def export_output(self, value: str, cf: bool) -> None:
        """Make the graph output ``value`` an ONNX tensor of that name in layout ``cf``."""
        v = self.values[value]
        if v.rank < 3 or v.cf == cf:
            if v.name != value:
                self.add("Identity", [v.name], value, self.fresh(f"{value}/output"))
            return
        other = self.get(value, cf)
        self.rename({v.name: self.fresh(f"{value}/{'channels_first' if v.cf else 'channels_last'}"), other: value})
