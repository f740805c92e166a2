"""The emit stage: build each chosen target from its options, and write its artifacts for the
(annotated) graph into its staged folder through one interface (``targets.base.EmitContext``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Graph
from tapeout.compiler.report import TargetReport
from tapeout.targets.base import EmitContext, EmitResult, Target


def build_targets(chosen: Sequence[tuple[type[Target], str]],
                  options: Mapping[str, Mapping[str, Any]], base: Path | None = None) -> list[Target]:
    """Each (class, variant) built with its options (the variant's win over the target's); a bad
    option is a usage error here, before any model loads. Path options are made absolute against
    ``base`` (the project file's folder), else the working folder, so the CLI and the project
    file spell one build the same way."""
    names = {cls.name for cls, _ in chosen} | {f"{cls.name}:{v}" for cls, v in chosen}
    unused = sorted(k for k in options if k not in names)
    if unused:
        raise UsageError(f"options given for {', '.join(unused)}, which is not among the chosen targets")
    built = []
    for cls, variant in chosen:
        opts = {**options.get(cls.name, {}), **options.get(f"{cls.name}:{variant}", {})}
        for name in cls.Options.path_fields():
            if isinstance(opts.get(name), str) and opts[name]:
                opts[name] = os.path.normpath((base or Path.cwd()) / os.path.expanduser(opts[name]))
        built.append(cls(variant, **opts))
    return built


def io_report(tdir: Path, graph: Graph) -> dict[str, Any]:
    """Each input/output of the artifact: its name there, layout and shape (tapeout_io.json, which the
    target wrote; a target writing none keeps the source's names and layouts)."""
    from tapeout.runtime.io_map import IOMap
    from tapeout.targets.io import io_map

    found = IOMap.load(tdir) or io_map(graph, graph)
    return {"inputs": [p.to_json() for p in found.inputs], "outputs": [p.to_json() for p in found.outputs]}


def dir_size(folder: Path, files: Sequence[str]) -> int:
    return sum((folder / f).stat().st_size for f in files)


def emit(target: Target, graph: Graph, ctx: EmitContext) -> tuple[TargetReport, EmitResult]:
    """Write ``target``'s artifacts into ``ctx.outdir``; the report entry, before verification."""
    import time

    t0 = time.perf_counter()
    emitted = target.emit(graph, ctx)
    seconds = time.perf_counter() - t0
    folder = f"{target.name}-{target.variant}"
    size = dir_size(ctx.outdir, emitted.size_artifacts or emitted.artifacts)
    tr = TargetReport(target.name, target.variant, [f"{folder}/{a}" for a in emitted.artifacts], size, seconds,
                      list(emitted.notes), extra=dict(emitted.extra), interface=io_report(ctx.outdir, graph))
    return tr, emitted
