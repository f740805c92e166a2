"""The compile report: what report.json holds, as typed objects.

Later issues add fields; they never rename or remove these. ``seconds`` are the
only fields that vary between identical runs; ``timings=False`` writes them as
null so two reports of the same build are byte-identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tapeout.compiler.version import __version__


def _round(x: float | None, digits: int = 9) -> float | None:
    if x is None:
        return None
    return float(f"{x:.{digits}g}")


@dataclass
class Verification:
    passed: bool
    runner: str
    samples: int
    data: str  # "eval", "calibration" or "synthetic"
    max_abs_err: float | None
    mean_abs_err: float | None
    cosine: float | None
    top1_agreement: float | None
    atol: float
    rtol: float
    accuracy: dict[str, float] | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the artifact could not be run at all
    max_accuracy_drop: float | None = None  # --max-accuracy-drop: judged on accuracy, not cosine/agreement

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Verification":
        return cls(d["passed"], d["runner"], d["samples"], d["data"], d.get("max_abs_err"), d.get("mean_abs_err"),
                   d.get("cosine"), d.get("top1_agreement"), d["atol"], d["rtol"], d.get("accuracy"),
                   list(d.get("outputs", [])), d.get("error"), d.get("max_accuracy_drop"))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "passed": self.passed, "runner": self.runner, "samples": self.samples, "data": self.data,
            "max_abs_err": _round(self.max_abs_err), "mean_abs_err": _round(self.mean_abs_err),
            "cosine": _round(self.cosine), "top1_agreement": _round(self.top1_agreement),
            "atol": self.atol, "rtol": self.rtol, "outputs": self.outputs,
        }
        if self.accuracy is not None:
            d["accuracy"] = {k: _round(v) for k, v in self.accuracy.items()}
        if self.error:
            d["error"] = self.error
        if self.max_accuracy_drop is not None:
            d["max_accuracy_drop"] = self.max_accuracy_drop
        return d


@dataclass
class TargetReport:
    target: str
    variant: str
    artifacts: list[str]  # relative to the output folder
    size_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    verification: Verification | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The artifact's inputs and outputs: source name, the artifact's own name, layout and shape
    # (tapeout_io.json, runtime.io_map).
    interface: dict[str, Any] | None = None

    # Where this run got the target from: "built", or "cache" when the content-addressed cache
    # restored it (compiler.cache). Provenance of the run, like seconds: report.json carries it
    # only with timings, so a --no-timings report is the same bytes either way.
    source: str = "built"
    # The artifact verified in the target's other runtimes too (tflite: TFLite Micro), each judged
    # as ``verification`` is; the target passes only when every one does.
    cross_checks: list[Verification] = field(default_factory=list)

    # The keys to_json writes itself; every other key of an entry is an ``extra`` field.
    FIELDS: ClassVar[frozenset[str]] = frozenset({"target", "variant", "artifacts", "size_bytes", "seconds", "notes",
                                                  "verification", "interface", "from", "cross_checks"})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TargetReport":
        """The inverse of to_json (a cached target's entry)."""
        v = d.get("verification")
        return cls(d["target"], d["variant"], list(d["artifacts"]), int(d["size_bytes"]), float(d.get("seconds") or 0.0),
                   list(d.get("notes", [])), None if v is None else Verification.from_json(v),
                   {k: val for k, val in d.items() if k not in cls.FIELDS}, d.get("interface"),
                   cross_checks=[Verification.from_json(c) for c in d.get("cross_checks", [])])

    @property
    def folder(self) -> str:
        return f"{self.target}-{self.variant}"

    @property
    def passed(self) -> bool:
        return (self.verification is None or self.verification.passed) and all(c.passed for c in self.cross_checks)

    def to_json(self, timings: bool = True) -> dict[str, Any]:
        d = {
            "target": self.target, "variant": self.variant, "artifacts": self.artifacts,
            "size_bytes": self.size_bytes, "seconds": round(self.seconds, 3) if timings else None,
            "notes": self.notes,
            "verification": self.verification.to_json() if self.verification else None,
        }
        if self.cross_checks:
            d["cross_checks"] = [c.to_json() for c in self.cross_checks]
        if self.interface is not None:
            d["interface"] = self.interface
        if timings:
            d["from"] = self.source
        d.update(self.extra)
        return d


@dataclass
class CompileReport:
    source: dict[str, Any]
    graph: dict[str, Any]
    passes: list[dict[str, Any]]
    data: dict[str, Any]
    targets: list[TargetReport] = field(default_factory=list)
    outdir: str = ""
    notes: list[str] = field(default_factory=list)  # what the front end decided (batch, layouts, ...)
    pruning: dict[str, Any] | None = None  # --prune: spec, per-layer sparsity, params and MACs before/after
    tapeout_version: str = __version__

    @property
    def passed(self) -> bool:
        # A fine-tuning budget the training missed fails the build as a verification does.
        budget = ((self.pruning or {}).get("fine_tuning") or {}).get("budget") or {}
        return all(t.passed for t in self.targets) and budget.get("met") is not False

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_json(self, timings: bool = True) -> dict[str, Any]:
        return {
            "tapeout_version": self.tapeout_version,
            "source": self.source,
            "graph": self.graph,
            "passes": self.passes,
            **({"pruning": self.pruning} if self.pruning is not None else {}),
            "notes": self.notes,
            "data": self.data,
            "targets": [t.to_json(timings) for t in self.targets],
            "passed": self.passed,
        }

    def dumps(self, timings: bool = True) -> str:
        return json.dumps(self.to_json(timings), indent=2, sort_keys=False) + "\n"

    def write(self, path: Path, timings: bool = True) -> None:
        path.write_text(self.dumps(timings))
