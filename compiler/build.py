"""`tapeout build`: every model of a ``tapeout.toml`` project (compiler.project), through the
content-addressed cache, with up to ``jobs`` targets of a model at once.

The project's stamp (``.tapeout/stamp.json`` beside the project file) records, per model, the
input files' hashes and each target's cache key. It is what a build tool depends on (the
depfile's target) and what ``--dry-run`` compares with to say why a target would rebuild. It is
written only when its content changes, and touched otherwise (Make compares its time with the inputs'; the artifacts
themselves keep their files when unchanged, which is what Ninja's ``restat`` looks at).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from tapeout.compiler.staging import write_if_changed
from tapeout.compiler.stages.spec import BuildSpec, Progress, check_jobs, noop

STAMP = ".tapeout/stamp.json"


def _rel(p: Path | None) -> Path | None:
    """A project path (absolute) as the run spells it: relative to the working folder when below
    it, so reports and depfiles of a project inside the working tree hold no absolute paths."""
    if p is None:
        return None
    rel = os.path.relpath(p)
    return Path(p) if rel.startswith("..") else Path(rel)


def spec_of(model: Any, *, timings: bool = True) -> BuildSpec:
    """A project model's build (compiler.project.ModelSpec.build) with its paths as this run spells them."""
    b = model.build
    cal = b.calibration if b.calibration in (None, "synthetic") else str(_rel(Path(b.calibration)))
    return replace(b, model=_rel(b.model), outdir=_rel(b.outdir), weights=_rel(b.weights), eval_data=_rel(b.eval_data),
                   train=_rel(b.train), calibration=cal, timings=timings)


@dataclass
class ModelResult:
    name: str
    spec: BuildSpec
    report: Any  # CompileReport
    targets: dict[str, str]  # "target:variant" -> its cache key (the stamp records them)


@dataclass
class BuildResult:
    project: Path
    stamp: Path
    models: list[ModelResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if all(m.report.passed for m in self.models) else 1

    def files_read(self) -> list[str]:
        seen: dict[str, None] = {}
        for m in self.models:
            for p in m.spec.input_files():
                seen[str(p)] = None
        return list(seen)


def stamp_path(project_path: Path) -> Path:
    return Path(project_path).parent / STAMP


def load(project_file: str | Path, names: Sequence[str] = ()) -> tuple[Any, list[Any]]:
    from tapeout.compiler.project import load_project

    project = load_project(project_file)
    return project, project.select(names)


def build(project_file: str | Path, names: Sequence[str] = (), *, jobs: int = 1, cache: Any = None,
          timings: bool = True, progress: Progress = noop) -> BuildResult:
    """Build the named models (all when none) of the project; write its stamp."""
    from tapeout.compiler.quiet import quiet_environment
    from tapeout.compiler.stages import cached
    from tapeout.compiler.stages.compile import check, compile_checked

    quiet_environment()
    check_jobs(jobs)
    project, models = load(project_file, names)
    checked = [(m.name, check(spec_of(m, timings=timings))) for m in models]  # every model before any work
    result = BuildResult(project.path, stamp_path(project.path))
    for name, c in checked:
        keys = cached.keys(c)
        report = compile_checked(c, lambda step, n=name: progress(f"{n}: {step}"), jobs=jobs, cache=cache,
                                 keys=keys)
        targets = {f"{cls.name}:{v}": k for (cls, v), k in zip(c.chosen, keys.targets)}
        result.models.append(ModelResult(name, c.spec, report, targets))
    _write_stamp(result)
    return result


def _write_stamp(result: BuildResult) -> None:
    from tapeout.compiler.cache import file_sha256

    doc: dict[str, Any] = {"version": 1, "models": {
        m.name: {"outdir": str(m.spec.outdir), "inputs": {str(p): file_sha256(p) for p in m.spec.input_files()},
                 "targets": m.targets}
        for m in result.models}}
    old = _read_stamp(result.stamp)
    if old is not None:  # models not built this time keep their entries
        for name, entry in old.get("models", {}).items():
            doc["models"].setdefault(name, entry)
    doc["models"] = dict(sorted(doc["models"].items()))
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if not write_if_changed(result.stamp, text.encode()):
        # The stamp is the depfile's target: renewed every run, as compile renews report.json, or
        # Make would rerun the build after every touch of an input whose bytes did not change.
        os.utime(result.stamp)


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(Path(path).read_text())
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


@dataclass
class Planned:
    model: str
    target: str
    action: str  # "cached" or "rebuild"
    why: str


def dry_run(project_file: str | Path, names: Sequence[str] = (), *, cache: Any = None) -> list[Planned]:
    """What ``build`` would do, target by target, and why; touches nothing."""
    from tapeout.compiler.cache import file_sha256
    from tapeout.compiler.stages import cached
    from tapeout.compiler.stages.compile import check

    project, models = load(project_file, names)
    old = (_read_stamp(stamp_path(project.path)) or {}).get("models", {})
    plan: list[Planned] = []
    for m in models:
        spec = spec_of(m)
        c = check(spec)
        keys = cached.keys(c)
        before = old.get(m.name, {})
        changed = [p for p, h in before.get("inputs", {}).items() if Path(p).is_file() and file_sha256(p) != h]
        for (cls, variant), key in zip(c.chosen, keys.targets):
            name = f"{cls.name}:{variant}"
            folder = spec.outdir / f"{cls.name}-{variant}"
            if cache is not None and cache.get(key) is not None:
                missing = not (folder.is_dir() and (spec.outdir / "report.json").is_file())
                plan.append(Planned(m.name, name, "cached",
                                    "restore from the cache: outputs missing" if missing else "unchanged"))
                continue
            if name not in before.get("targets", {}):
                why = "never built"
            elif before["targets"][name] == key:  # a changed file this target does not read is no reason
                why = "not in the cache (cleared, pruned or --no-cache)"
            elif changed:
                why = f"changed: {', '.join(changed)}"
            else:
                why = "options, settings or tool versions changed"
            plan.append(Planned(m.name, name, "rebuild", why))
    return plan
