"""Pass protocol plus the small graph-editing helpers the rewrite passes share.

Passes are pure: ``run`` returns a new graph and never mutates the one it got. Constant
arrays are shared between the two graphs, so a pass replaces them and never writes into one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from tapeout.compiler.ir import Graph, Node


@dataclass
class PassResult:
    graph: Graph
    changed: bool
    details: list[str] = field(default_factory=list)


class Pass:
    """A graph-to-graph transformation; subclasses set ``name`` and implement ``run``."""

    name: ClassVar[str]

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


class CompositePass(Pass):
    """Runs its sub-passes in order, repeating the list until none changes anything (bounded)."""

    passes: ClassVar[tuple[type[Pass], ...]]
    max_rounds: ClassVar[int] = 10

    def run(self, graph: Graph) -> PassResult:
        details: list[str] = []
        for _ in range(self.max_rounds):
            round_changed = False
            for cls in self.passes:
                res = cls().run(graph)
                graph = res.graph
                round_changed |= res.changed
                details.extend(res.details)
            if not round_changed:
                break
        return PassResult(graph, bool(details), details)


# ------------------------------------------------------------------ helpers
def sole_consumer(graph: Graph, value: str) -> Node | None:
    """The only node reading ``value`` (counting graph outputs as readers), else None."""
    if value in graph.outputs:
        return None
    users = graph.consumers().get(value, [])
    if len(users) != 1 or users[0].inputs.count(value) != 1:
        return None
    return users[0]


def rename_value(graph: Graph, old: str, new: str) -> None:
    """Rename a node output everywhere it is produced, read or typed."""
    for n in graph.nodes:
        n.outputs = [new if o == old else o for o in n.outputs]
    graph.replace_uses(old, new)
    if old in graph.types:
        graph.types[new] = graph.types.pop(old)


def bypass(graph: Graph, node: Node) -> bool:
    """Remove a node whose single output equals its first input; False when that is not possible.

    Graph output names stay stable: when the node's output is a graph output, the value
    feeding it is renamed to that output instead of the output being renamed.
    """
    src, out = node.inputs[0], node.outputs[0]
    if out in graph.outputs:
        if src in graph.inputs or src in graph.constants or src in graph.outputs:
            return False
        graph.nodes.remove(node)
        rename_value(graph, src, out)
        return True
    graph.nodes.remove(node)
    graph.replace_uses(out, src)
    return True


def absorb_into_producer(graph: Graph, producer: Node, node: Node) -> None:
    """Remove ``node`` (which reads ``producer``'s output); the producer takes ``node``'s output name."""
    graph.nodes.remove(node)
    old = producer.outputs[0]
    producer.outputs[0] = node.outputs[0]
    graph.types.pop(old, None)
