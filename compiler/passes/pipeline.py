"""Run passes in order, checking the graph after each and recording what every pass did.

A ``Pipeline`` is itself a pass, so pipelines nest (canonicalize and fuse are pipelines of
smaller passes run to a fixed point). A nested pipeline's record holds what all its passes
did (``details``, ``warnings``) and, under ``passes``, one record per inner pass with its
rounds merged; failures name an inner pass by its path ("fuse/fuse-activation").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tapeout.compiler.errors import PassFailed
from tapeout.compiler.gc_pause import gc_paused
from tapeout.compiler.ir import Graph
from tapeout.compiler.passes.base import Pass, PassResult


@dataclass
class PassRecord:
    name: str
    changed: bool
    details: list[str]
    nodes_before: int
    nodes_after: int
    seconds: float  # kept off the JSON report so reports stay deterministic
    warnings: list[str] = field(default_factory=list)
    # A nested pipeline's passes, one record each (its rounds merged); empty for a plain pass.
    passes: list[PassRecord] = field(default_factory=list)
    rounds: int = 0  # how often a nested pipeline ran its list; 0 for a plain pass

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "changed": self.changed, "details": list(self.details),
                               "nodes_before": self.nodes_before, "nodes_after": self.nodes_after}
        if self.warnings:  # only where there are some, so the report stays short
            out["warnings"] = list(self.warnings)
        if self.rounds:
            out["rounds"] = self.rounds
            out["passes"] = [p.to_json() for p in self.passes]
        return out

    def merged(self, later: PassRecord) -> PassRecord:
        """This record and the same pass's record from a later round, as one: the node count
        before its first run, changed by what its runs removed or added (not by other passes)."""
        after = self.nodes_after + later.nodes_after - later.nodes_before
        return PassRecord(self.name, self.changed or later.changed, self.details + later.details,
                          self.nodes_before, after, self.seconds + later.seconds,
                          self.warnings + later.warnings,
                          [a.merged(b) for a, b in zip(self.passes, later.passes)] or later.passes,
                          self.rounds + later.rounds)


@dataclass
class PipelineResult(PassResult):
    """A pass result whose ``records`` say what each pass of the pipeline did, in order."""

    records: list[PassRecord] = field(default_factory=list)
    rounds: int = 1

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.records]


class Pipeline(Pass):
    """Passes run in order; the list is repeated while something changes, at most ``max_iterations`` times.

    With ``check``, the graph is validated before the first pass and after every pass
    (inner passes of nested pipelines included): stored types must match what inference
    gives, then types are inferred afresh.
    """

    name = "pipeline"

    def __init__(self, passes: list[Pass], check: bool = True, max_iterations: int = 1,
                 name: str | None = None) -> None:
        if max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")
        self.passes = list(passes)
        self.check = check
        self.max_iterations = max_iterations
        if name is not None:
            self.name = name

    @classmethod
    def fixed_point(cls, passes: list[Pass], check: bool = True, max_iterations: int = 10,
                    name: str | None = None) -> Pipeline:
        """Repeat the whole list until a round changes nothing (bounded by ``max_iterations``)."""
        return cls(passes, check=check, max_iterations=max_iterations, name=name)

    def run(self, graph: Graph) -> PipelineResult:
        with gc_paused():  # each pass copies the graph: many objects, no cycles
            graph = graph.copy()  # validation types values in place: keep the caller's graph as it was
            if self.check:
                _validate(graph, "the input graph is invalid before any pass ran", [])
            return self._execute(graph, "", [], self.check)

    def _execute(self, graph: Graph, path: str, before: list[str], check: bool) -> PipelineResult:
        """Run the list on ``graph``; ``path`` prefixes inner pass names, ``before`` collects
        the names of the passes that ran (for failure messages)."""
        rounds: list[list[PassRecord]] = []
        for _ in range(self.max_iterations):
            records = []
            for p in self.passes:
                graph, rec = self._run_one(p, graph, path, before, check)
                records.append(rec)
            rounds.append(records)
            if not any(r.changed for r in records):
                break
        merged = rounds[0]
        for later in rounds[1:]:
            merged = [a.merged(b) for a, b in zip(merged, later)]
        return PipelineResult(graph, any(r.changed for r in merged), [d for r in merged for d in r.details],
                              [w for r in merged for w in r.warnings], merged, len(rounds))

    @staticmethod
    def _run_one(p: Pass, graph: Graph, path: str, before: list[str], check: bool) -> tuple[Graph, PassRecord]:
        start = time.perf_counter()
        name = path + p.name
        if isinstance(p, Pipeline):
            # Its passes were each checked; once it finished, failures after it name it whole.
            mark = len(before)
            res = p._execute(graph, name + "/", before, check)
            del before[mark:]
            before.append(name)
            rec = PassRecord(p.name, res.changed, list(res.details), len(graph.nodes), len(res.graph.nodes),
                             time.perf_counter() - start, list(res.warnings), res.records, res.rounds)
            return res.graph, rec
        reason = p.requires(graph)
        if reason is not None:
            raise PassFailed(f"pass {name!r} cannot run: {reason}{_after(before)}")
        try:
            res = p.run(graph)
        except Exception as e:  # any failure inside a pass is an internal error, reported by pass name
            raise PassFailed(f"pass {name!r} failed: {type(e).__name__}: {e}{_after(before)}") from e
        if check:
            _validate(res.graph, f"pass {name!r} left an invalid graph", before)
        before.append(name)
        rec = PassRecord(p.name, res.changed, list(res.details), len(graph.nodes), len(res.graph.nodes),
                         time.perf_counter() - start, list(res.warnings))
        return res.graph, rec


def _validate(graph: Graph, what: str, before: list[str]) -> None:
    # Check before inferring: inference overwrites the stored types, so a pass that typed a
    # value wrongly would go unnoticed if the types were inferred first.
    try:
        graph.check()
        graph.infer_shapes()
    except Exception as e:
        raise PassFailed(f"{what}: {e}{_after(before)}") from e


def _after(before: list[str]) -> str:
    names = list(dict.fromkeys(before))
    return f" (after passes: {', '.join(names)})" if names else " (no pass ran before it)"
