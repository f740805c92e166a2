"""The ``tapeout.toml`` project file read by `tapeout build` (issue 16), parsed with the standard library's tomllib.

Schema::

    [defaults]                      # optional; every model gets these unless it sets the key itself
    calibration = "samples/digits_cnn/calibration.npz"   # a data file, or "synthetic"
    eval = "samples/digits_cnn/eval.npz"
    targets = ["onnx"]              # may be shared too
    atol = 1e-4                     # also: rtol, calibration_method, percentile, io_layout, verify, ...

    [defaults.options.tflite]       # target options: by target name, or "name:variant" (which wins)
    c_array = true

    [models.digits]                 # one table per model; NAME: letters, digits, '_', '-', '.'
    path = "samples/digits_cnn/model.keras"   # required (here or through extends)
    targets = ["onnx", "tflite:int8", "hls4ml"]   # required (here, through extends or in [defaults]); not empty
    outdir = "build/digits"         # default "build/NAME"; never inherited

    [models.digits.options."tflite:int8"]
    io = "int8"

    [models.digits_fp]
    extends = "digits"              # inherit every key of another model but outdir (a cycle is an error)
    targets = ["onnx"]

Keys of a model table (all but path/weights/outdir/extends may go in [defaults] too):

    path, weights, calibration, eval, train      file paths (str); calibration may be "synthetic"
    outdir                                       folder (str)
    extends                                      another model's NAME
    targets                                      list of "TARGET[:VARIANT]" strings, no repeats
    atol, rtol, percentile, learning_rate, max_accuracy_drop   numbers (>= 0)
    epochs                                       integer >= 1
    calibration_method                           "minmax" | "percentile" | "entropy"
    io_layout                                    "source" | "channels-last"
    keep_float, prune_exclude                    lists of strings
    prune                                        string (the --prune SPEC)
    fallback, verify, bias_correction            booleans (verify and bias_correction default to true)
    options                                      table: TARGET[:VARIANT] -> table of option values

They mirror `tapeout compile`'s flags (``eval`` is --eval, ``verify = false`` is --no-verify,
``options`` is --target-option): ``ModelSpec.build`` is the ``BuildSpec`` the flags would make.
Merging: [defaults], then the ``extends`` chain from its root down, then the model's own table;
a later scalar or list replaces an earlier one; options merge per target key, then per option key.

Paths are relative to the project file's folder. ``ModelSpec.build`` holds them absolute; ``ModelSpec`` keeps
the spelled form in ``ModelSpec.spelled`` (for reports and depfiles). Checked at load: unknown
keys (with their line and a did-you-mean), types, empty targets, extends cycles and unknown
parents, and that every named input file (model, weights, data) exists. Target names and option
values are the targets' business and are checked when the targets are built.
Every error is a one-line UsageError "FILE:LINE: message".
"""

from __future__ import annotations

import copy
import datetime
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tapeout.compiler.errors import UsageError
from tapeout.compiler.schemes import IO_LAYOUTS, METHODS
from tapeout.compiler.stages.spec import BuildSpec
from tapeout.compiler.tomlfile import LineErrors, did_you_mean, read_toml

__all__ = ["ModelSpec", "Project", "load_project"]

_FILE_KEYS = ("path", "weights", "calibration", "eval", "train")
_CHOICES = {"calibration_method": METHODS, "io_layout": IO_LAYOUTS}
_NUMBERS = ("atol", "rtol", "percentile", "learning_rate", "max_accuracy_drop")
_STR_LISTS = ("keep_float", "prune_exclude")
_MODEL_KEYS = ("path", "weights", "outdir", "extends", "targets", "calibration", "eval", "train", "atol", "rtol",
               "calibration_method", "percentile", "io_layout", "keep_float", "prune", "prune_exclude", "epochs",
               "learning_rate", "max_accuracy_drop", "fallback", "verify", "bias_correction", "options")
_MODEL_ONLY = ("path", "weights", "outdir", "extends")
_DEFAULT_KEYS = tuple(k for k in _MODEL_KEYS if k not in _MODEL_ONLY)
_TOP_KEYS = ("defaults", "models")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_TARGET = re.compile(r"[a-z0-9_]+(:[a-z0-9_]+)?")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the project with [defaults] and ``extends`` applied: its build, the same
    ``BuildSpec`` `tapeout compile` makes of the equivalent flags (paths absolute here)."""

    name: str
    build: BuildSpec
    extends: str | None = None
    spelled: dict[str, str] = field(default_factory=dict)  # path key -> as written ("outdir" always present)
    line: int | None = None  # line of the model's table in the project file

    def input_files(self) -> dict[str, Path]:
        """role -> absolute path of every file a build of this model reads, in a fixed order:
        model, weights, calibration, eval, train (absent ones and "synthetic" left out)."""
        b = self.build
        cal = None if b.calibration in (None, "synthetic") else Path(b.calibration)
        out = {"model": b.model, "weights": b.weights, "calibration": cal, "eval": b.eval_data, "train": b.train}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Project:
    """A loaded project: ``path`` absolute, ``spelled`` as given to load_project, ``models`` in file order."""

    path: Path
    spelled: str
    models: dict[str, ModelSpec]

    @property
    def root(self) -> Path:
        """The folder project paths are relative to."""
        return self.path.parent

    def select(self, names: Iterable[str] = ()) -> list[ModelSpec]:
        """The named models in the order given (repeats dropped), or every model when ``names`` is empty."""
        names = list(dict.fromkeys(names))
        if not names:
            return list(self.models.values())
        for n in names:
            if n not in self.models:
                raise UsageError(f"{self.spelled}: no model named {n!r}{did_you_mean(n, self.models)} "
                                 f"(models: {', '.join(self.models)})")
        return [self.models[n] for n in names]


def load_project(path: str | os.PathLike[str]) -> Project:
    """Read and check a project file; UsageError (one line, with the line number where known) on any problem."""
    f = read_toml(path, "project file")
    return Loader(f.spelled, f.abspath, f.text).load(f.doc)


# ---------------------------------------------------------------- loading
class Loader(LineErrors):
    def __init__(self, spelled: str, abspath: Path, text: str):
        super().__init__(spelled, text)
        self.abspath = abspath

    def load(self, doc: dict[str, Any]) -> Project:
        self._check_keys(doc, (), _TOP_KEYS, "at the top level")
        defaults = doc.get("defaults", {})
        if not isinstance(defaults, dict):
            raise self.fail(("defaults",), f"defaults: expected a table, got {_describe(defaults)}")
        for k in _MODEL_ONLY:
            if k in defaults:
                raise self.fail(("defaults", k), f"key {k!r} belongs in [models.NAME], not in [defaults]")
        self._check_table(defaults, ("defaults",), _DEFAULT_KEYS)
        models = doc.get("models")
        if models is None:
            raise self.fail((), "no models: add a [models.NAME] table with path and targets")
        if not isinstance(models, dict) or not models:
            raise self.fail(("models",), "models: expected [models.NAME] tables, one per model")
        for name, table in models.items():
            if not _NAME.fullmatch(name):
                raise self.fail(("models", name), f"model name {name!r}: use letters, digits, '_', '-' and '.'")
            if not isinstance(table, dict):
                raise self.fail(("models", name), f"models.{name}: expected a table, got {_describe(table)}")
            self._check_table(table, ("models", name), _MODEL_KEYS)
        specs = {name: self._resolve(name, models, defaults) for name in models}
        return Project(self.abspath, self.spelled, specs)

    def _check_keys(self, table: Mapping[str, Any], where: tuple[str, ...], allowed: Sequence[str], what: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(where + (key,), f"unknown key {key!r} {what}{did_you_mean(key, allowed)}")

    def _check_table(self, table: Mapping[str, Any], where: tuple[str, ...], allowed: Sequence[str]) -> None:
        # [models.digits] or [defaults], as the user would write the header.
        self._check_keys(table, where, allowed, f"in [{'.'.join(_quote(p) for p in where)}]")
        for key, value in table.items():
            self._check_value(key, value, where + (key,))

    def _check_value(self, key: str, value: Any, where: tuple[str, ...]) -> None:
        dotted = ".".join(_quote(p) for p in where)

        def bad(expected: str) -> UsageError:
            return self.fail(where, f"{dotted}: expected {expected}, got {_describe(value)}")

        if key in _FILE_KEYS or key in ("outdir", "extends", "prune"):
            if not isinstance(value, str) or not value.strip():
                raise bad("a non-empty string")
        elif key == "targets":
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise bad('a list of strings such as ["onnx", "tflite:int8"]')
            if not value:
                raise self.fail(where, f"{dotted} is empty: name at least one target")
            for t in value:
                if not _TARGET.fullmatch(t):
                    raise self.fail(where, f"{dotted}: {t!r} is not TARGET or TARGET:VARIANT")
            dups = sorted({t for t in value if value.count(t) > 1})
            if dups:
                raise self.fail(where, f"{dotted}: {dups[0]!r} is listed twice")
        elif key in _NUMBERS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
                raise bad("a number >= 0")
        elif key == "epochs":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad("an integer >= 1")
        elif key in _CHOICES:
            if value not in _CHOICES[key]:
                raise bad("one of " + ", ".join(repr(c) for c in _CHOICES[key]))
        elif key in _STR_LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise bad("a list of strings")
        elif key in ("fallback", "verify", "bias_correction"):
            if not isinstance(value, bool):
                raise bad("true or false")
        elif key == "options":
            if not isinstance(value, dict):
                raise bad('a table such as [....options."tflite:int8"]')
            for target, opts in value.items():
                here = where + (target,)
                if not _TARGET.fullmatch(target):
                    raise self.fail(here, f"{dotted}: {target!r} is not TARGET or TARGET:VARIANT")
                if not isinstance(opts, dict):
                    raise self.fail(here, f"{dotted}.{_quote(target)}: expected a table of options, "
                                          f"got {_describe(opts)}")
                for k, v in opts.items():
                    if not _plain(v):
                        raise self.fail(here + (k,), f"{dotted}.{_quote(target)}.{_quote(k)}: dates and times "
                                                     "are not option values")

    def _chain(self, name: str, models: Mapping[str, dict[str, Any]]) -> list[str]:
        """name, its parent, the parent's parent, ... (UsageError on an unknown parent or a cycle)."""
        chain = [name]
        while (parent := models[chain[-1]].get("extends")) is not None:
            if parent not in models:
                raise self.fail(("models", chain[-1], "extends"),
                                f"models.{_quote(chain[-1])}.extends: no model named {parent!r}"
                                f"{did_you_mean(parent, models)} (models: {', '.join(models)})")
            if parent in chain:
                cycle = chain[chain.index(parent):] + [parent]
                raise self.fail(("models", cycle[0], "extends"),
                                f"models {' -> '.join(cycle)} extend each other in a cycle")
            chain.append(parent)
        return chain

    def _resolve(self, name: str, models: Mapping[str, dict[str, Any]], defaults: Mapping[str, Any]) -> ModelSpec:
        # Each value remembers the table it came from, so errors point at the line that wrote it.
        values: dict[str, tuple[Any, tuple[str, ...]]] = {}
        options: dict[str, dict[str, Any]] = {}
        layers = [(("defaults",), defaults)] + [(("models", m), models[m]) for m in reversed(self._chain(name, models))]
        for where, table in layers:
            for key, value in table.items():
                if key == "options":
                    for target, opts in value.items():
                        options.setdefault(target, {}).update(opts)
                elif key not in ("outdir", "extends") or where == ("models", name):
                    values[key] = (value, where + (key,))
        here = ("models", name)
        for key in ("path", "targets"):
            if key not in values:
                how = "the model file" if key == "path" else 'a list such as ["onnx"]'
                raise self.fail(here, f"models.{_quote(name)}: no {key!r} ({how})")
        spelled: dict[str, str] = {}
        paths: dict[str, Any] = {}
        for key in _FILE_KEYS:
            if key not in values:
                continue
            text, where = values[key]
            spelled[key] = text
            if key == "calibration" and text == "synthetic":
                paths[key] = "synthetic"
                continue
            p = self._abs(text)
            if not p.exists():
                raise self.fail(where, f"{'.'.join(_quote(w) for w in where)}: {text} does not exist")
            if not p.is_file():
                raise self.fail(where, f"{'.'.join(_quote(w) for w in where)}: {text} is not a file")
            paths[key] = p
        spelled["outdir"] = values["outdir"][0] if "outdir" in values else f"build/{name}"

        def get(key: str, default: Any = None) -> Any:
            return values[key][0] if key in values else default

        def num(key: str) -> float | None:
            v = get(key)
            return None if v is None else float(v)

        calibration = paths.get("calibration")
        build = BuildSpec(
            model=paths["path"], targets=tuple(get("targets")), outdir=self._abs(spelled["outdir"]),
            weights=paths.get("weights"), calibration=None if calibration is None else str(calibration),
            eval_data=paths.get("eval"), train=paths.get("train"), atol=num("atol"), rtol=num("rtol"),
            calibration_method=get("calibration_method", "minmax"), percentile=num("percentile"),
            io_layout=get("io_layout"), keep_float=tuple(get("keep_float", ())), prune=get("prune"),
            prune_exclude=tuple(get("prune_exclude", ())), epochs=get("epochs"), learning_rate=num("learning_rate"),
            max_accuracy_drop=num("max_accuracy_drop"), fallback=get("fallback", False), verify=get("verify", True),
            bias_correction=get("bias_correction", True),
            target_options=copy.deepcopy(options), options_base=self.abspath.parent)
        return ModelSpec(name, build, extends=models[name].get("extends"), spelled=spelled,
                         line=self.lines.find(here))

    def _abs(self, text: str) -> Path:
        return Path(os.path.normpath(self.abspath.parent / os.path.expanduser(text)))


def _plain(v: Any) -> bool:
    """True when a TOML value maps to JSON (no dates or times), so options can enter a cache key."""
    if isinstance(v, (datetime.date, datetime.time)):
        return False
    if isinstance(v, list):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(_plain(x) for x in v.values())
    return not (isinstance(v, float) and v != v)


def _quote(part: str) -> str:
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else '"' + part.replace('"', '\\"') + '"'


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
