"""Pass protocol plus the graph editor the rewrite passes share.

Passes are pure: ``run`` returns a new graph and never mutates the one it got. Constant
arrays are shared between the two graphs, so a pass replaces them and never writes into one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tapeout.compiler.ir import Graph, Node, fresh_name


@dataclass
class PassResult:
    graph: Graph
    changed: bool
    details: list[str] = field(default_factory=list)
    # What the user should know about the result (e.g. an output quantized too coarsely),
    # kept apart from ``details`` so reports list them without parsing lines.
    warnings: list[str] = field(default_factory=list)


class Pass:
    """A graph-to-graph transformation; subclasses set ``name`` and implement ``run``."""

    name: str  # a class attribute; a Pipeline may also take its name per instance

    def requires(self, graph: Graph) -> str | None:
        """Precondition hook: a reason this pass cannot run on ``graph``, or None when it can."""
        return None

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError


class RewritePass(Pass):
    """A pass that edits a private copy of the graph in place; ``rewrite`` returns its detail lines."""

    def run(self, graph: Graph) -> PassResult:
        g = graph.copy()
        details = self.rewrite(g)
        if details:
            g.remove_unused_constants()
            # Drop types of values that no longer exist, then retype what the rewrite touched.
            live = set(g.inputs) | {o for n in g.nodes for o in n.outputs}
            g.types = {k: v for k, v in g.types.items() if k in live}
            g.infer_shapes()
        return PassResult(g, bool(details), details)

    def rewrite(self, graph: Graph) -> list[str]:
        raise NotImplementedError


# ------------------------------------------------------------------- editor
class Editor:
    """In-place edits of a graph, each O(1) in the graph's size.

    Built once per rewrite (one scan), it keeps the producer and the readers of every value
    and the node names current through its edits, so a rewrite that touches every node stays
    linear; rescanning the graph per node (``Graph.producers``, ``consumers``,
    ``unique_name``, ``list.remove``) made long chains quadratic. Removed nodes stay in
    ``graph.nodes`` until ``close`` (the end of a ``with`` block); ``alive`` tells them apart.
    All node and output edits during a rewrite must go through the editor; constants and
    types are read from the graph directly and may be edited there.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.producer: dict[str, Node] = {}
        self._by_name: dict[str, Node] = {}
        # value -> id(node) -> [node, number of its input slots reading the value]
        self._readers: dict[str, dict[int, list]] = {}
        self._removed: set[int] = set()
        self._after: dict[int, list[Node]] = {}  # id(node) -> nodes inserted right after it
        self._inputs = set(graph.inputs)
        self._outputs = set(graph.outputs)
        for n in graph.nodes:
            self._index(n)

    def __enter__(self) -> "Editor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write the node list back: removed nodes out, inserted nodes in."""
        if not self._removed and not self._after:
            return
        nodes: list[Node] = []
        for n in self.graph.nodes:
            if id(n) not in self._removed:
                nodes.append(n)
            stack = list(reversed(self._after.pop(id(n), ())))
            while stack:  # inserted nodes can have insertions of their own
                m = stack.pop()
                if id(m) not in self._removed:
                    nodes.append(m)
                stack.extend(reversed(self._after.pop(id(m), ())))
        self.graph.nodes = nodes
        self._removed.clear()

    # ----------------------------------------------------------- queries
    def alive(self, node: Node) -> bool:
        return id(node) not in self._removed

    def consumers(self, value: str) -> list[Node]:
        """The nodes reading ``value``, each once."""
        return [entry[0] for entry in self._readers.get(value, {}).values()]

    def sole_consumer(self, value: str) -> Node | None:
        """The only node reading ``value`` (counting graph outputs as readers), else None."""
        if value in self._outputs:
            return None
        users = self._readers.get(value)
        if not users or len(users) != 1:
            return None
        ((node, count),) = users.values()
        return node if count == 1 else None

    def taken(self, name: str) -> bool:
        """Whether ``name`` is in use (as ``Graph.unique_name`` counts names)."""
        g = self.graph
        return (name in g.constants or name in g.types or name in self._by_name or name in self.producer
                or name in self._inputs)

    def unique_name(self, base: str) -> str:
        return fresh_name(base, self.taken)

    # ----------------------------------------------------------- edits
    def add_constant(self, base: str, array: np.ndarray) -> str:
        name = self.unique_name(base)
        self.graph.constants[name] = np.ascontiguousarray(array)
        return name

    def remove(self, node: Node) -> None:
        self._removed.add(id(node))
        self._read(node, -1)
        for o in node.outputs:
            if self.producer.get(o) is node:
                del self.producer[o]
        if self._by_name.get(node.name) is node:
            del self._by_name[node.name]

    def insert_after(self, anchor: Node, node: Node) -> None:
        """Add ``node`` right after ``anchor`` (after nodes inserted there before it)."""
        self._after.setdefault(id(anchor), []).append(node)
        self._index(node)

    def set_inputs(self, node: Node, inputs: list[str]) -> None:
        self._read(node, -1)
        node.inputs[:] = inputs
        self._read(node, +1)

    def set_input(self, node: Node, pos: int, value: str) -> None:
        inputs = list(node.inputs)
        inputs[pos] = value
        self.set_inputs(node, inputs)

    def set_output(self, node: Node, pos: int, value: str) -> None:
        old = node.outputs[pos]
        if self.producer.get(old) is node:
            del self.producer[old]
        node.outputs[pos] = value
        self.producer[value] = node

    def replace_uses(self, old: str, new: str) -> None:
        """Point every reader (and graph output) of ``old`` at ``new``."""
        for n in self.consumers(old):
            self.set_inputs(n, [new if i == old else i for i in n.inputs])
        if old in self._outputs:
            self.graph.outputs = [new if o == old else o for o in self.graph.outputs]
            self._outputs = set(self.graph.outputs)

    def rename_value(self, old: str, new: str) -> None:
        """Rename a node output everywhere it is produced, read or typed."""
        p = self.producer.get(old)
        if p is not None:
            for k, o in enumerate(p.outputs):
                if o == old:
                    self.set_output(p, k, new)
        self.replace_uses(old, new)
        g = self.graph
        if old in g.types:
            g.types[new] = g.types.pop(old)

    def bypass(self, node: Node) -> bool:
        """Remove a node whose single output equals its first input; False when that is not possible.

        Graph output names stay stable: when the node's output is a graph output, the value
        feeding it is renamed to that output instead of the output being renamed.
        """
        src, out = node.inputs[0], node.outputs[0]
        if out in self._outputs:
            if src in self._inputs or src in self.graph.constants or src in self._outputs:
                return False
            self.remove(node)
            self.rename_value(src, out)
            return True
        self.remove(node)
        self.replace_uses(out, src)
        return True

    def absorb_into_producer(self, producer: Node, node: Node) -> None:
        """Remove ``node`` (which reads ``producer``'s output); the producer takes ``node``'s output name."""
        self.remove(node)
        old = producer.outputs[0]
        self.set_output(producer, 0, node.outputs[0])
        self.graph.types.pop(old, None)

    # ----------------------------------------------------------- index
    def _index(self, node: Node) -> None:
        self._by_name[node.name] = node
        for o in node.outputs:
            self.producer[o] = node
        self._read(node, +1)

    def _read(self, node: Node, step: int) -> None:
        key = id(node)
        for i in node.inputs:
            if not i:
                continue
            users = self._readers.setdefault(i, {})
            entry = users.setdefault(key, [node, 0])
            entry[1] += step
            if entry[1] == 0:
                del users[key]
                if not users:
                    del self._readers[i]


# ------------------------------------------------------------------ helpers
# One-off edits outside a rewrite; each builds an editor, so each costs one scan of the graph.
def sole_consumer(graph: Graph, value: str) -> Node | None:
    """The only node reading ``value`` (counting graph outputs as readers), else None."""
    return Editor(graph).sole_consumer(value)


def rename_value(graph: Graph, old: str, new: str) -> None:
    """Rename a node output everywhere it is produced, read or typed."""
    with Editor(graph) as ed:
        ed.rename_value(old, new)


def bypass(graph: Graph, node: Node) -> bool:
    """``Editor.bypass`` as a one-off edit."""
    with Editor(graph) as ed:
        return ed.bypass(node)


def absorb_into_producer(graph: Graph, producer: Node, node: Node) -> None:
    """``Editor.absorb_into_producer`` as a one-off edit."""
    with Editor(graph) as ed:
        ed.absorb_into_producer(producer, node)
