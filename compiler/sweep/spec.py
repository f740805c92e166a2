"""The sweep file of `tapeout sweep` (issue 19): a base build plus axes, parsed with tomllib.

Schema::

    [base]                          # a [models.NAME] table of tapeout.toml (compiler.project): same keys,
    path = "model.keras"            # same checks, paths relative to this file; no outdir or extends
    targets = ["hls4ml"]            # several targets: each is its own point (an implicit targets axis)
    calibration = "calibration.npz"
    eval = "eval.npz"
    [base.options.hls4ml]
    io_type = "parallel"

    [axes]                          # name = [values]; the grid is their product, in file order
    targets = ["onnx", "tflite:int8"]
    prune = [0, 0.5]                # a fraction (magnitude:F; 0 = unpruned) or a --prune SPEC string
    calibration_method = ["minmax", "percentile"]   # also spelled calibration-method
    percentile = [99.9, 99.99]
    bias_correction = [true, false] # int8/int16x8 only (--no-bias-correction)
    "hls4ml.precision" = ["auto", "ap_fixed<16,6>"] # TARGET.OPTION: any option of that target
    "hls4ml.reuse_factor" = [1, 2, 4]

    [[points]]                      # mode = "list": explicit points, each setting some axes
    "hls4ml.reuse_factor" = 2

    [sweep]
    mode = "grid"                   # "grid" (default), "random" (samples, seed) or "list" ([[points]])
    samples = 20
    seed = 0
    output = "build/sweep"          # default build/sweep-STEM beside the sweep file
    objectives = ["accuracy", "dsp", "latency_ns"]  # Pareto objectives (default: every measured one)
    cpus_per_point = 1              # Ray: num_cpus of a point
    synth_resource = "vivado"       # Ray: custom resource (1) a synthesis point (hls4ml synth = true) holds
    max_retries = 2                 # a point whose worker dies is retried this many times

Every point builds exactly one target. An axis that does not apply to a point's target (another
target's option; the calibration method or bias correction of an unquantized target; the percentile of a
non-percentile calibration) is left out of that point, and points that come out equal are one point.
Each point's id hashes its target and settings, so it survives edits that reorder or extend the file.
Every error is a one-line UsageError "FILE[:LINE]: message".
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tapeout.compiler.errors import UsageError
from tapeout.compiler.project import Loader
from tapeout.compiler.schemes import CALIBRATED_SCHEMES, METHODS
from tapeout.compiler.stages.spec import BuildSpec
from tapeout.compiler.tomlfile import LineErrors, did_you_mean, read_toml

__all__ = ["Point", "Sweep", "load_sweep", "OBJECTIVES", "MAX_GRID"]

MODES = ("grid", "random", "list")
BUILD_AXES = ("targets", "prune", "calibration_method", "percentile", "bias_correction")
_ALIASES = {"calibration-method": "calibration_method"}
# Pareto objectives: result column -> direction. Accuracy and agreement are maximized, costs minimized.
OBJECTIVES = {"accuracy": "max", "agreement": "max", "size_bytes": "min", "litert_ms": "min", "dsp": "min",
              "luts": "min", "latency_ns": "min", "latency_cycles": "min", "bram18": "min", "synth_dsp": "min",
              "synth_luts": "min", "synth_latency_cycles": "min"}
DEFAULT_OBJECTIVES = ("accuracy", "size_bytes", "litert_ms", "dsp", "luts", "latency_ns")
MAX_GRID = 100_000  # points a grid may enumerate; beyond it, mode = "random"
_SWEEP_KEYS = ("mode", "samples", "seed", "output", "objectives", "cpus_per_point", "synth_resource", "max_retries")
_TOP_KEYS = ("base", "axes", "points", "sweep")


@dataclass(frozen=True)
class Point:
    """One build of the sweep: its target and the axis values that apply to it (in axis order)."""

    index: int
    id: str
    target: str
    settings: dict[str, Any]
    spec: BuildSpec  # the base build with the settings applied; outdir filled in by the runner

    @property
    def synthesis(self) -> bool:
        """An hls4ml point that runs the vendor tool (--synth): it holds the synthesis resource."""
        if not self.target.startswith("hls4ml"):
            return False
        opts = {k: v for key, o in self.spec.target_options.items() for k, v in o.items()}
        return opts.get("synth") in (True, "true", "True", 1)

    def label(self) -> str:
        return " ".join([self.target] + [f"{k}={_show(v)}" for k, v in self.settings.items()])


@dataclass(frozen=True)
class Sweep:
    path: Path
    spelled: str
    base: BuildSpec
    axes: dict[str, list[Any]]  # every axis named, targets first
    points: list[Point]
    mode: str
    output: Path
    objectives: tuple[str, ...]
    cpus_per_point: float = 1.0
    synth_resource: str = "vivado"
    max_retries: int = 2
    notes: list[str] = field(default_factory=list)

    @property
    def axis_columns(self) -> list[str]:
        """The result columns of the axes (targets is the ``target`` column)."""
        return [a for a in self.axes if a != "targets"]


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


class _BaseLoader(Loader):
    """The project loader reading [base] as the model table [models.base]: errors name [base] and its lines."""

    def fail(self, where, msg):  # type: ignore[override]
        where = tuple(where)
        if where[:2] == ("models", "base"):
            where = ("base",) + where[2:]
        msg = msg.replace("[models.base]", "[base]").replace("models.base", "base")
        return super().fail(where, msg)


def load_sweep(path: str | os.PathLike[str], *, output: str | os.PathLike[str] | None = None) -> Sweep:
    """Read and check a sweep file and enumerate its points; UsageError (one line) on any problem.

    ``output``: the results folder as given on the command line (else [sweep] output, relative to the
    sweep file, else build/sweep-STEM beside it)."""
    f = read_toml(path, "sweep file")
    return _SweepReader(f.spelled, f.abspath, f.text).read(f.doc, output)


class _SweepReader(LineErrors):
    def __init__(self, spelled: str, abspath: Path, text: str):
        super().__init__(spelled, text)
        self.abspath = abspath
        self.text = text

    # ------------------------------------------------------------ reading
    def read(self, doc: dict[str, Any], output: str | os.PathLike[str] | None) -> Sweep:
        for key in doc:
            if key not in _TOP_KEYS:
                raise self.fail((key,), f"unknown table {key!r}{did_you_mean(key, _TOP_KEYS, prefix=True)}; "
                                        f"a sweep file has {', '.join(_TOP_KEYS)}")
        conf = self._table(doc, "sweep")
        for key in conf:
            if key not in _SWEEP_KEYS:
                raise self.fail(("sweep", key), f"unknown key {key!r} in [sweep]"
                                                f"{did_you_mean(key, _SWEEP_KEYS, prefix=True)}")
        raw_axes = self._table(doc, "axes")
        raw_points = doc.get("points")
        mode = conf.get("mode", "list" if raw_points is not None else "grid")
        if mode not in MODES:
            raise self.fail(("sweep", "mode"), f"sweep.mode: expected one of {', '.join(map(repr, MODES))}, "
                                               f"got {mode!r}")
        if mode == "list" and raw_points is None:
            raise self.fail(("sweep", "mode"), 'mode "list" takes [[points]] tables, and there are none')
        if mode != "list" and raw_points is not None:
            raise self.fail(("points",), f'[[points]] are for mode = "list", not {mode!r}')
        if mode == "list" and raw_axes:
            raise self.fail(("axes",), 'mode "list" takes its values from [[points]]: drop [axes]')

        base_table = self._table(doc, "base")
        for key in ("outdir", "extends"):
            if key in base_table:
                raise self.fail(("base", key), f"[base] takes no {key!r}: each point's output goes under the "
                                               "sweep's output folder")
        axes = self._axes(raw_axes) if mode != "list" else {}
        points_in: list[dict[str, Any]] = []
        if mode == "list":
            if not isinstance(raw_points, list) or not all(isinstance(p, dict) for p in raw_points):
                raise self.fail(("points",), "points: expected [[points]] tables")
            if not raw_points:
                raise self.fail(("points",), "points: the list is empty: nothing to sweep")
            for k, p in enumerate(raw_points):
                points_in.append({self._axis_name(name, ("points", name)): v for name, v in p.items()})
            for p in points_in:  # an axis of the list: every value any point gives it
                for name, v in p.items():
                    axes.setdefault(name, [])
                    if v not in axes[name]:
                        axes[name].append(v)
            for name, values in axes.items():
                self._check_values(name, values, ("points", name))

        if "targets" in axes and "targets" in base_table:
            raise self.fail(("base", "targets"), "targets are given in [base] and as an axis: keep one")
        if "targets" in axes:  # the loader wants targets; the axis's stand in (each is checked there)
            base_table = {**base_table, "targets": list(dict.fromkeys(axes["targets"]))}
        base = self._base(base_table).build
        if "targets" not in axes:
            axes = {"targets": list(base.targets), **axes}
        else:
            axes = {"targets": axes["targets"], **{k: v for k, v in axes.items() if k != "targets"}}

        objectives = tuple(conf.get("objectives", DEFAULT_OBJECTIVES))
        for o in objectives:
            if o not in OBJECTIVES:
                raise self.fail(("sweep", "objectives"), f"sweep.objectives: unknown objective {o!r}"
                                f"{did_you_mean(o, OBJECTIVES, prefix=True)}; known: {', '.join(OBJECTIVES)}")
        if len(objectives) < 2:
            raise self.fail(("sweep", "objectives"), "sweep.objectives: name at least two (a front is a pair)")
        cpus = self._number(conf, "cpus_per_point", 1.0, minimum=0.0)
        retries = int(self._number(conf, "max_retries", 2, integer=True, minimum=0))
        synth = conf.get("synth_resource", "vivado")
        if not isinstance(synth, str) or not synth:
            raise self.fail(("sweep", "synth_resource"), "sweep.synth_resource: expected a resource name")

        notes: list[str] = []
        if mode == "list":
            points = _unique([self._combo_point(c, base) for c in points_in])
        elif mode == "grid":
            total = _product(axes)
            if total > MAX_GRID:
                raise self.fail(("axes",), f"the grid has {total:,} points (more than {MAX_GRID:,}): "
                                           'use mode = "random" with samples = N')
            points = _unique([self._combo_point(c, base) for c in _combos(axes)])
        else:
            samples = int(self._number(conf, "samples", None, integer=True, minimum=1))
            seed = int(self._number(conf, "seed", 0, integer=True))
            points = self._sample(axes, base, samples, seed, notes)
        if not points:
            raise self.fail(("axes",), "no point applies: every combination was skipped")
        points = [replace(p, index=i) for i, p in enumerate(points)]
        out = Path(output) if output is not None else (
            self.abspath.parent / conf["output"] if isinstance(conf.get("output"), str) and conf["output"]
            else self.abspath.parent / "build" / f"sweep-{self.abspath.stem}")
        if "output" in conf and not (isinstance(conf["output"], str) and conf["output"]):
            raise self.fail(("sweep", "output"), "sweep.output: expected a folder name")
        return Sweep(self.abspath, self.spelled, base, axes, points, mode, out, objectives, cpus, synth, retries,
                     notes)

    def _table(self, doc: dict[str, Any], key: str) -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise self.fail((key,), f"{key}: expected a table [{key}]")
        return value

    def _number(self, conf: dict[str, Any], key: str, default: Any, *, integer: bool = False,
                minimum: float | None = None) -> float:
        if key not in conf:
            if default is None:
                raise self.fail(("sweep",), f'mode "random" needs sweep.{key} (how many points to draw)')
            return default
        v = conf[key]
        ok = not isinstance(v, bool) and isinstance(v, int if integer else (int, float))
        if not ok or (minimum is not None and v < minimum):
            what = "an integer" if integer else "a number"
            raise self.fail(("sweep", key), f"sweep.{key}: expected {what}"
                                            + (f" >= {minimum:g}" if minimum is not None else "") + f", got {v!r}")
        return v

    def _base(self, table: dict[str, Any]) -> Any:
        loader = _BaseLoader(self.spelled, self.abspath, self.text)
        if "path" not in table:
            raise self.fail(("base",), "[base] needs path = the model file (and targets, here or as an axis)")
        return loader.load({"models": {"base": table}}).models["base"]

    # --------------------------------------------------------------- axes
    def _axis_name(self, name: str, where: tuple[str, ...]) -> str:
        from tapeout.targets.registry import TARGETS

        name = _ALIASES.get(name, name)
        if name in BUILD_AXES:
            return name
        target, dot, option = name.partition(".")
        if dot and target in TARGETS:
            fields = [f.name for f in dataclasses.fields(TARGETS[target].Options)]
            if option in fields:
                return name
            raise self.fail(where, f"unknown axis {name!r}: target {target} has no option {option!r}"
                                   f"{did_you_mean(option, fields, prefix=True)}; its options: {', '.join(fields)}")
        known = list(BUILD_AXES) + [f"{t}.{f.name}" for t, cls in sorted(TARGETS.items())
                                    for f in dataclasses.fields(cls.Options)]
        raise self.fail(where, f"unknown axis {name!r}{did_you_mean(name, known, prefix=True)}; axes: "
                               f"{', '.join(BUILD_AXES)} and TARGET.OPTION (e.g. hls4ml.reuse_factor)")

    def _axes(self, raw: dict[str, Any]) -> dict[str, list[Any]]:
        axes: dict[str, list[Any]] = {}
        for name, values in raw.items():
            where = ("axes", name)
            axis = self._axis_name(name, where)
            if axis in axes:
                raise self.fail(where, f"axis {axis!r} is given twice")
            if not isinstance(values, list):
                raise self.fail(where, f"axes.{name}: expected a list of values, got {values!r}")
            if not values:
                raise self.fail(where, f"axis {name!r} has no values: the grid is empty")
            self._check_values(axis, values, where)
            axes[axis] = values
        return axes

    def _check_values(self, axis: str, values: list[Any], where: tuple[str, ...]) -> None:
        from tapeout.targets.registry import parse_target

        for v in values:
            if isinstance(v, (dict, list)) or not _plain(v):
                raise self.fail(where, f"axis {axis!r}: {v!r} is not a value (a string, number or boolean)")
            if axis == "targets":
                if not isinstance(v, str):
                    raise self.fail(where, f"axis targets: {v!r} is not TARGET[:VARIANT]")
                try:
                    parse_target(v)
                except UsageError as e:
                    raise self.fail(where, f"axis targets: {e}") from None
            elif axis == "prune":
                if isinstance(v, bool) or not (isinstance(v, str) or (isinstance(v, (int, float)) and 0 <= v < 1)):
                    raise self.fail(where, f"axis prune: {v!r}: give a fraction 0 <= F < 1 (magnitude pruning) "
                                           "or a --prune SPEC such as 'channels:0.25'")
            elif axis == "calibration_method":
                if v not in METHODS:
                    raise self.fail(where, f"axis calibration_method: {v!r} is not one of {', '.join(METHODS)}")
            elif axis == "percentile":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 100:
                    raise self.fail(where, f"axis percentile: {v!r} is not a number in (0, 100]")
            elif axis == "bias_correction":
                if not isinstance(v, bool):
                    raise self.fail(where, f"axis bias_correction: {v!r} is not true or false")
        if len({json.dumps(v) for v in values}) != len(values):
            raise self.fail(where, f"axis {axis!r} lists a value twice")

    # ------------------------------------------------------------- points
    def _combo_point(self, combo: dict[str, Any], base: BuildSpec) -> Point:
        """The point of one combination of axis values, the axes that do not apply left out."""
        from tapeout.targets.registry import parse_target

        target = combo.get("targets", base.targets[0] if len(base.targets) == 1 else None)
        if target is None:  # a list point naming no target while the base has several
            raise self.fail(("points",), "a point names no target and [base] lists several: set targets = "
                                         "\"TARGET\" in each [[points]]")
        cls, variant = parse_target(target)
        full = f"{cls.name}:{variant}"
        method = combo.get("calibration_method", base.calibration_method)
        settings: dict[str, Any] = {}
        for axis, value in combo.items():
            if axis == "targets":
                continue
            if (axis in ("calibration_method", "percentile", "bias_correction")
                    and cls.quant_scheme(variant) not in CALIBRATED_SCHEMES):
                continue
            if axis == "percentile" and method != "percentile":
                continue
            if "." in axis and axis.partition(".")[0] != cls.name:
                continue
            settings[axis] = value
        # Target options for this target only (an option of another target is not this point's error).
        options = {k: dict(v) for k, v in base.target_options.items() if k in (cls.name, full)}
        changes: dict[str, Any] = {"targets": (full,)}
        for axis, value in settings.items():
            if axis == "prune":
                changes["prune"] = value if isinstance(value, str) else (None if value == 0 else f"magnitude:{value:g}")
            elif axis in ("calibration_method", "percentile", "bias_correction"):
                changes[axis] = float(value) if axis == "percentile" else value
            else:  # the variant's key wins over the target's in the build: the axis sets it there
                options.setdefault(full, {})[axis.partition(".")[2]] = value
        changes["target_options"] = options
        spec = replace(base, **changes)
        ident = hashlib.sha256(json.dumps({"target": full, **settings}, sort_keys=True).encode()).hexdigest()[:12]
        return Point(0, ident, full, settings, spec)

    def _sample(self, axes: dict[str, list[Any]], base: BuildSpec, n: int, seed: int, notes: list[str]) -> list[Point]:
        """``n`` distinct points drawn with ``seed``: from the enumerated grid when it is small enough,
        else by drawing combinations (mixed-radix indices) until ``n`` distinct points are found."""
        rng = random.Random(seed)
        total = _product(axes)
        if total <= MAX_GRID:
            grid = _unique([self._combo_point(c, base) for c in _combos(axes)])
            if n >= len(grid):
                notes.append(f"samples = {n}: the grid has {len(grid)} distinct points; all are run")
                return grid
            return [grid[i] for i in sorted(rng.sample(range(len(grid)), n))]
        names = list(axes)
        found: dict[str, tuple[int, Point]] = {}
        for _ in range(n * 50):
            k = rng.randrange(total)
            combo = {}
            for name in reversed(names):
                k, r = divmod(k, len(axes[name]))
                combo[name] = axes[name][r]
            p = self._combo_point({name: combo[name] for name in names}, base)
            if p.id not in found:
                found[p.id] = (len(found), p)
            if len(found) == n:
                break
        return [p for _, p in sorted(found.values(), key=lambda t: t[0])]


def _combos(axes: dict[str, list[Any]]):
    names = list(axes)
    for values in itertools.product(*(axes[n] for n in names)):
        yield dict(zip(names, values))


def _product(axes: dict[str, list[Any]]) -> int:
    total = 1
    for values in axes.values():
        total *= len(values)
    return total


def _unique(points: list[Point]) -> list[Point]:
    seen: dict[str, Point] = {}
    for p in points:
        seen.setdefault(p.id, p)
    return list(seen.values())


def _plain(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) and not (isinstance(v, float) and v != v)
