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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tapeout.compiler.errors import UsageError
from tapeout.compiler.stages.spec import BuildSpec, Progress, noop

STAMP = ".tapeout/stamp.json"


def _rel(p: Path | str | None) -> Path | None:
    """A project path as the run spells it: relative to the working folder when below it (reports
    and depfiles hold no absolute paths for a project inside the working tree)."""
    if p is None:
        return None
    rel = os.path.relpath(p)
    return Path(rel) if not rel.startswith("..") or not os.path.isabs(str(p)) else Path(p)


def spec_of(model: Any, *, timings: bool = True, trace: bool = False) -> BuildSpec:
    """A project model (compiler.project.ModelSpec) as a BuildSpec: the same build `tapeout compile`
    runs with the equivalent flags."""
    kw = model.compile_kwargs()
    for key in ("model", "outdir", "weights", "eval_data", "train"):
        kw[key] = _rel(kw[key])
    if kw.get("calibration") not in (None, "synthetic"):
        kw["calibration"] = str(_rel(kw["calibration"]))
    return BuildSpec.of(kw.pop("model"), kw.pop("targets"), kw.pop("outdir"), timings=timings, trace=trace, **kw)


@dataclass
class ModelResult:
    name: str
    spec: BuildSpec
    report: Any  # CompileReport


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


def check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise UsageError(f"-j must be at least 1, got {jobs}")


def build(project_file: str | Path, names: Sequence[str] = (), *, jobs: int = 1, cache: Any = None,
          timings: bool = True, progress: Progress = noop) -> BuildResult:
    """Build the named models (all when none) of the project; write its stamp."""
    from tapeout.compiler.stages.compile import compile_spec

    check_jobs(jobs)
    project, models = load(project_file, names)
    specs = [(m.name, spec_of(m, timings=timings)) for m in models]
    result = BuildResult(project.path, stamp_path(project.path))
    for name, spec in specs:
        report = compile_spec(spec, lambda step, n=name: progress(f"{n}: {step}"), jobs=jobs, cache=cache)
        result.models.append(ModelResult(name, spec, report))
    _write_stamp(result, cache)
    return result


def _stamp_doc(specs: Sequence[tuple[str, BuildSpec]], cache: Any) -> dict[str, Any]:
    from tapeout.compiler.cache import file_sha256
    from tapeout.compiler.stages import cached
    from tapeout.compiler.stages.compile import check

    doc: dict[str, Any] = {"version": 1, "models": {}}
    for name, spec in specs:
        c = check(spec)
        keys = cached.keys(c)
        doc["models"][name] = {
            "outdir": str(spec.outdir),
            "inputs": {str(p): file_sha256(p) for p in spec.input_files()},
            "targets": {f"{cls.name}:{v}": k for (cls, v), k in zip(c.chosen, keys.targets)},
        }
    return doc


def _write_stamp(result: BuildResult, cache: Any) -> None:
    doc = _stamp_doc([(m.name, m.spec) for m in result.models], cache)
    old = _read_stamp(result.stamp)
    if old is not None:  # models not built this time keep their entries
        for name, entry in old.get("models", {}).items():
            doc["models"].setdefault(name, entry)
    doc["models"] = dict(sorted(doc["models"].items()))
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if not write_if_changed(result.stamp, text):
        # The stamp is the depfile's target: renewed every run, as compile renews report.json, or
        # Make would rerun the build after every touch of an input whose bytes did not change.
        os.utime(result.stamp)


def write_if_changed(path: Path, text: str) -> bool:
    """Atomically replace ``path`` with ``text`` unless it holds it already (its mtime then stays)."""
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a stamp is an ordinary output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


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
            elif changed:
                why = f"changed: {', '.join(changed)}"
            elif before["targets"][name] != key:
                why = "options, settings or tool versions changed"
            else:
                why = "not in the cache (cleared, pruned or --no-cache)"
            plan.append(Planned(m.name, name, "rebuild", why))
    return plan
