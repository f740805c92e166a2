"""Counting whole-graph scans: the operation count behind the linear-time tests (issue 14, finding 5).

A pass that rescans ``graph.nodes`` once per node is quadratic. ``count_node_scans`` makes every
``Graph.nodes`` list count its traversals (iteration, ``reversed``, ``in``, ``index``, ``remove``,
``count``), whatever code does them, so a test can assert the count does not grow with the
graph: it is a count, not a timing, and so is the same on every machine.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from tapeout.compiler.ir import Graph


class _Counter:
    scans = 0


class _CountingList(list):
    def __iter__(self) -> Iterator[Any]:
        _Counter.scans += 1
        return super().__iter__()

    def __reversed__(self) -> Iterator[Any]:
        _Counter.scans += 1
        return super().__reversed__()

    def __contains__(self, x: object) -> bool:
        _Counter.scans += 1
        return super().__contains__(x)

    def index(self, *args: Any) -> int:
        _Counter.scans += 1
        return super().index(*args)

    def remove(self, x: Any) -> None:
        _Counter.scans += 1
        super().remove(x)

    def count(self, x: Any) -> int:
        _Counter.scans += 1
        return super().count(x)


def _get(self: Graph) -> list:
    d = self.__dict__
    if "_counted_nodes" not in d:  # a graph made before counting started
        d["_counted_nodes"] = _CountingList(d.pop("nodes", []))
    return d["_counted_nodes"]


def _set(self: Graph, nodes: list) -> None:
    self.__dict__["_counted_nodes"] = nodes if isinstance(nodes, _CountingList) else _CountingList(nodes)


def count_node_scans(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], Any]], int]:
    """Install the counting node lists (for this test); returns ``scans(fn)``: the scans ``fn`` made."""
    monkeypatch.setattr(Graph, "nodes", property(_get, _set), raising=False)

    def scans(fn: Callable[[], Any]) -> int:
        before = _Counter.scans
        fn()
        return _Counter.scans - before

    return scans
