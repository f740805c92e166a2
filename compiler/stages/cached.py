"""Restoring and storing a build's targets in the content-addressed cache (compiler.cache).

Two kinds of entry per build:
- one per target: the target's output folder and its report entry. Its key hashes the input files'
  bytes, the spelled paths the report records, the settings every target shares
  (``BuildSpec.shared_settings``), the target, its normalized options and the tool versions.
- one per model: the report's shared part (source, graph, passes, data, notes, pruning), so a
  build whose targets all hit never loads the model.

A hit restores the same bytes the build wrote: report.json is byte-identical with and without the
cache (with --no-timings; with timings each target says where it came from).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tapeout.compiler.cache import Cache, CorruptEntry, Entry, build_fingerprint, cache_key, file_sha256, tool_versions
from tapeout.compiler.report import CompileReport, TargetReport
from tapeout.compiler.version import __version__


@dataclass
class Keys:
    model: str
    targets: list[str]


def keys(c: Any) -> Keys:
    """The model's key and each chosen target's (``c``: stages.compile.Checked)."""
    spec = c.spec
    from tapeout.compiler.schemes import CALIBRATED_SCHEMES

    inputs = {"model": spec.model, "weights": spec.weights, "eval": spec.eval_data, "train": spec.train,
              "calibration": None if spec.calibration in (None, "synthetic") else Path(spec.calibration)}
    schemes = sorted({s for cls, v in c.chosen if (s := cls.quant_scheme(v))})
    shared = {# The report records these as spelled; the same bytes under another name are another report.
              "spelled": {k: None if v is None else str(v) for k, v in inputs.items()},
              # --fallback judges every scheme together: each one's layers depend on the others.
              "schemes": schemes if spec.fallback else None}
    tools = tool_versions()

    def key(scheme: str | None, extra: dict[str, Any], reads_calibration: bool = True) -> str:
        # Under --fallback any target's scheme may read the others' settings: all of them count.
        settings = spec.shared_settings() if spec.fallback and scheme is not None else \
            spec.settings_for(scheme, scheme in CALIBRATED_SCHEMES)
        files, spelled = inputs, shared
        if not reads_calibration:
            files = {**inputs, "calibration": None}
            spelled = {**shared, "spelled": {**shared["spelled"], "calibration": None}}
        return cache_key(inputs=files, options={**settings, **spelled, **extra}, tools=tools,
                         tapeout_version=build_fingerprint())

    def target_key(cls: Any, variant: str, target: Any) -> str:
        scheme = cls.quant_scheme(variant)
        # The calibration file doubles as the verification data unless --eval is given; then only
        # the calibrated schemes and a precision search (hls4ml) read it.
        reads = spec.eval_data is None or spec.fallback or scheme in CALIBRATED_SCHEMES or \
            target.precision_request() is not None
        return key(scheme, {"entry": "target", "target": f"{cls.name}:{variant}", "io_layout": target.io_layout,
                            "options": target.opts.normalized(), "option_files": option_files(target)}, reads)

    return Keys(key(None, {"entry": "model"}), [target_key(cls, variant, target)
                                                for (cls, variant), target in zip(c.chosen, c.built)])


def option_files(target: Any) -> dict[str, str]:
    """The bytes of the files a target's options name (ethos-u.config, a Vela .ini): an edited file
    is another build, though its path is the same."""
    paths = {name: getattr(target.opts, name) for name in target.Options.path_fields()}
    return {name: file_sha256(p) for name, p in sorted(paths.items()) if isinstance(p, str) and os.path.isfile(p)}


@dataclass
class Lookup:
    model: CompileReport | None = None
    targets: dict[int, Entry] = field(default_factory=dict)

    def restore(self, i: int, staging: Path, outdir: Path) -> TargetReport:
        """Target ``i`` into ``staging``; files ``outdir`` already holds are linked, not copied."""
        entry = self.targets[i]
        tr = TargetReport.from_json(entry.meta["report"])
        entry.restore(staging / tr.folder, reuse=outdir / tr.folder)
        tr.source = "cache"
        return tr


def lookup(cache: Cache, k: Keys) -> Lookup:
    found = Lookup()
    for i, key in enumerate(k.targets):
        entry = cache.get(key)
        if entry is not None and "report" in entry.meta:
            found.targets[i] = entry
    if len(found.targets) == len(k.targets):
        entry = cache.get(k.model)
        if entry is not None and "report" in entry.meta:
            found.model = _report_from(entry.meta["report"])
    return found


def _report_from(d: dict[str, Any]) -> CompileReport:
    return CompileReport(source=d["source"], graph=d["graph"], passes=d["passes"], data=d["data"],
                         notes=list(d.get("notes", [])), pruning=d.get("pruning"),
                         tapeout_version=d.get("tapeout_version", __version__))


def store(cache: Cache, k: Keys, report: CompileReport, built: dict[int, TargetReport], staging: Path) -> None:
    """Put each target built in this run, and the model's entry."""
    for i, tr in built.items():
        cache.put(k.targets[i], staging / tr.folder, {"report": tr.to_json(timings=False)})
    shared = {key: v for key, v in report.to_json(timings=False).items() if key not in ("targets", "passed")}
    with tempfile.TemporaryDirectory(dir=staging) as empty:
        cache.put(k.model, empty, {"report": shared})


__all__ = ["CorruptEntry", "Keys", "Lookup", "keys", "lookup", "store"]
