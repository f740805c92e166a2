"""Run passes in order, checking the graph after each and recording what every pass did."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tapeout.compiler.errors import PassFailed
from tapeout.compiler.gc_pause import gc_paused
from tapeout.compiler.ir import Graph
from tapeout.compiler.passes.base import Pass


@dataclass
class PassRecord:
    name: str
    changed: bool
    details: list[str]
    nodes_before: int
    nodes_after: int
    seconds: float  # kept off the JSON report so reports stay deterministic


@dataclass
class PipelineResult:
    graph: Graph
    records: list[PassRecord] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"name": r.name, "changed": r.changed, "details": list(r.details),
                 "nodes_before": r.nodes_before, "nodes_after": r.nodes_after} for r in self.records]


class Pipeline:
    """Passes run in order; the list is repeated while something changes, at most ``max_iterations`` times."""

    def __init__(self, passes: list[Pass], check: bool = True, max_iterations: int = 1) -> None:
        if max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")
        self.passes = list(passes)
        self.check = check
        self.max_iterations = max_iterations

    @classmethod
    def fixed_point(cls, passes: list[Pass], check: bool = True, max_iterations: int = 10) -> "Pipeline":
        """Repeat the whole list until a round changes nothing (bounded by ``max_iterations``)."""
        return cls(passes, check=check, max_iterations=max_iterations)

    def run(self, graph: Graph) -> PipelineResult:
        with gc_paused():  # each pass copies the graph: many objects, no cycles
            return self._run(graph)

    def _run(self, graph: Graph) -> PipelineResult:
        graph = graph.copy()
        if self.check:
            self._validate(graph, "the input graph is invalid before any pass ran", [])
        records: list[PassRecord] = []
        for _ in range(self.max_iterations):
            round_changed = False
            for p in self.passes:
                graph, rec = self._run_one(p, graph, [r.name for r in records])
                records.append(rec)
                round_changed |= rec.changed
            if not round_changed:
                break
        return PipelineResult(graph, records)

    def _run_one(self, p: Pass, graph: Graph, before: list[str]) -> tuple[Graph, PassRecord]:
        start = time.perf_counter()
        reason = p.requires(graph)
        if reason is not None:
            raise PassFailed(f"pass {p.name!r} cannot run: {reason}{_after(before)}")
        try:
            res = p.run(graph)
        except Exception as e:  # any failure inside a pass is an internal error, reported by pass name
            raise PassFailed(f"pass {p.name!r} failed: {type(e).__name__}: {e}{_after(before)}") from e
        if self.check:
            self._validate(res.graph, f"pass {p.name!r} left an invalid graph", before)
        rec = PassRecord(p.name, res.changed, list(res.details), len(graph.nodes), len(res.graph.nodes),
                         time.perf_counter() - start)
        return res.graph, rec

    @staticmethod
    def _validate(graph: Graph, what: str, before: list[str]) -> None:
        try:
            graph.infer_shapes()
            graph.check()
        except Exception as e:
            raise PassFailed(f"{what}: {e}{_after(before)}") from e


def _after(before: list[str]) -> str:
    return f" (after passes: {', '.join(before)})" if before else " (no pass ran before it)"
