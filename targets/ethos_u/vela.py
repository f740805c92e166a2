"""Arm's Vela compiler as the ethos-u target uses it: its accelerator configs and ini files
(checked before any model loads), one run on an int8 .tflite, and what its CSVs and output say.

Vela runs in a subprocess (``python -m ethosu.vela``), not through ``ethosu.vela.main``: its
C++ core (Regor) prints straight to file descriptor 1, which only a process of its own can
capture without swallowing other threads' output under ``-j``; ``main`` also sets the
process's recursion limit and reports bad options with ``sys.exit``.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import csv
import importlib.util
import io
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tapeout.compiler.errors import InternalError, UsageError

# Vela 5.2's accelerator configs, used only when Vela is not installed: `-t ethos-u:u65-256` must
# then say "pip install" (exit 3), not "no such variant". A test checks it against Vela's enum.
_WITHOUT_VELA = ("u55-32", "u55-64", "u55-128", "u55-256", "u65-256", "u65-512", "u85-128", "u85-256",
                 "u85-512", "u85-1024", "u85-2048")
SYSTEM, MEMORY = "System_Config.", "Memory_Mode."


def package_dir() -> Path | None:
    """The installed ``ethosu`` folder (Vela and its config files), found without importing Vela."""
    spec = importlib.util.find_spec("ethosu")  # a namespace package: finding it runs no code
    for where in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(where) / "vela" / "architecture_features.py").is_file():
            return Path(where)
    return None


def accelerators() -> tuple[str, ...]:
    """Vela's accelerator configs without the "ethos-" prefix ("u55-128", ...), in its order.

    Read from the source of its ``Accelerator`` enum: importing Vela (numpy, flatbuffers, its op
    tables) costs about 0.1 s, which every `tapeout` command would pay through the registry.
    """
    pkg = package_dir()
    if pkg is None:
        return _WITHOUT_VELA
    tree = ast.parse((pkg / "vela" / "architecture_features.py").read_text())
    enum = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Accelerator")
    return tuple(s.value.value.removeprefix("ethos-") for s in enum.body
                 if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))


def arm_ini() -> Path | None:
    """The vela.ini Arm ships with Vela (what `vela` reads without --config)."""
    pkg = package_dir()
    return None if pkg is None else pkg / "config_files" / "Arm" / "vela.ini"


def read_ini(path: Path) -> configparser.ConfigParser:
    """``path`` parsed as Vela parses it (a default ConfigParser); a bad file is one UsageError line."""
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"ethos-u: option config: {path}: {e.strerror if isinstance(e, OSError) else e}") from None
    except configparser.Error as e:
        raise UsageError(f"ethos-u: option config: {path} is not a valid Vela .ini: {_one_line(e)}") from None
    return parser


def sections(parser: configparser.ConfigParser, prefix: str) -> list[str]:
    return [s.removeprefix(prefix) for s in parser.sections() if s.startswith(prefix)]


@dataclass(frozen=True)
class Setup:
    """What Vela compiles for: the accelerator and the resolved system config and memory mode."""

    accelerator: str  # "ethos-u55-128"
    system_config: str
    memory_mode: str
    optimise: str
    arena_cache_size: int | None  # bytes, when given
    config: str | None  # the user's .ini (read instead of Arm's, as `vela --config` does)


def check(variant: str, system_config: str | None, memory_mode: str | None, arena_cache_size: int | None,
          config: str | None) -> tuple[str, str] | None:
    """The system config and memory mode Vela will use, after its own checks of them against its ini
    (Arm's vela.ini, or ``config``); a bad value is one UsageError line naming the valid ones.
    None when Vela is not installed (the build then stops with exit 3)."""
    ini = arm_ini()
    if ini is None:
        return None
    if arena_cache_size is not None and arena_cache_size < 0:
        raise UsageError(f"ethos-u: option arena_cache_size: expected bytes >= 0, not {arena_cache_size}")
    if config is not None:
        ini = Path(config)
        if ini.suffix != ".ini":
            raise UsageError(f"ethos-u: option config: {ini}: Vela reads .ini files only")
    parser = read_ini(ini)
    where = f"{ini}" if config is not None else "Vela's vela.ini"
    systems, modes = sections(parser, SYSTEM), sections(parser, MEMORY)
    if config is not None and (system_config is None or memory_mode is None):
        # Vela applies its defaults only to its own ini.
        raise UsageError(f"ethos-u: option config needs system_config and memory_mode too; {where} defines "
                         f"system configs {_listed(systems)} and memory modes {_listed(modes)}")
    # A config file replaces Arm's vela.ini (as `vela --config` does), so say where a name is missing from.
    alone = " (it is read instead of Arm's vela.ini, as vela --config does)" if config is not None else ""
    for key, value, valid in (("system_config", system_config, systems), ("memory_mode", memory_mode, modes)):
        if value is not None and value not in valid:
            known = f"one of {', '.join(valid)}" if valid else f"it defines none{alone}"
            raise UsageError(f"ethos-u: option {key}: {value!r} is not in {where}; {known}")
    # Vela's own checks of the combination (memory ports, arena bounds) and its defaults: pure
    # Python that only prints, so it runs here, before the model loads.
    from ethosu.vela.architecture_features import ArchitectureFeatures
    from ethosu.vela.errors import VelaError

    default = ArchitectureFeatures.DEFAULT_CONFIG
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            arch = ArchitectureFeatures(
                vela_config_files=[str(ini)] if config is not None else None, accelerator_config=f"ethos-{variant}",
                system_config=system_config or default, memory_mode=memory_mode or default,
                max_blockdep=ArchitectureFeatures.MAX_BLOCKDEP, verbose_config=False,
                arena_cache_size=arena_cache_size)
    except VelaError as e:
        raise UsageError(f"ethos-u: Vela refuses {_pair(variant, system_config, memory_mode)} from {where}: "
                         f"{_one_line(e.error_msg)}") from None
    except (ValueError, KeyError, configparser.Error) as e:  # a value Vela cannot read (core_clock=fast)
        raise UsageError(f"ethos-u: Vela cannot read {_pair(variant, system_config, memory_mode)} from {where}: "
                         f"{type(e).__name__} {_one_line(e)}") from None
    return arch.system_config, arch.memory_mode


def _pair(variant: str, system_config: str | None, memory_mode: str | None) -> str:
    default = f"(Vela's default for {variant})"
    return f"system config {system_config or default} with memory mode {memory_mode or default}"


# ------------------------------------------------------------------------ the run
@dataclass
class Layer:
    """One row of Vela's per-layer CSV: an operator as Vela lowered it, and where it runs."""

    original: str  # the TFLite operator ("Conv2D", "Softmax")
    op: str  # Vela's operator ("Conv2D", "Relu", "LUT", "Passthrough")
    target: str  # "NPU" or "CPU"
    name: str  # its output tensor
    cycles: int


@dataclass
class Result:
    """One Vela run: its artifacts (names in the output folder) and what it said."""

    optimized: str  # model_vela.tflite
    summary_csv: str
    per_layer_csv: str
    summary: dict[str, Any]  # the summary CSV's one row, typed
    layers: list[Layer]
    reasons: dict[str, str]  # output tensor -> why Vela left the op on the CPU
    log: str = field(repr=False, default="")

    @property
    def cpu(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.target == "CPU"]

    @property
    def npu(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.target == "NPU"]


def compile_model(model: Path, outdir: Path, setup: Setup) -> Result:
    """Run Vela on ``model`` and move its .tflite and CSVs into ``outdir`` (Vela's names)."""
    cmd = [sys.executable, "-m", "ethosu.vela", model.name, "--accelerator-config", setup.accelerator,
           "--system-config", setup.system_config, "--memory-mode", setup.memory_mode,
           "--optimise", setup.optimise, "--verbose-performance"]
    if setup.config is not None:
        cmd += ["--config", str(Path(setup.config).resolve())]
    if setup.arena_cache_size is not None:
        cmd += ["--arena-cache-size", str(setup.arena_cache_size)]
    with tempfile.TemporaryDirectory(prefix="tapeout-vela-") as tmp:
        # Relative paths: nothing of this machine's folders reaches Vela's outputs.
        shutil.copyfile(model, Path(tmp) / model.name)
        r = subprocess.run([*cmd, "--output-dir", "out"], cwd=tmp, capture_output=True, text=True)
        log = r.stdout + r.stderr
        if r.returncode != 0:
            why = _last_line(r.stderr) or _last_line(r.stdout) or f"exit status {r.returncode}"
            err = UsageError if setup.config is not None else InternalError
            raise err(f"ethos-u: Vela failed on {model.name} ({setup.accelerator}, {setup.system_config}, "
                      f"{setup.memory_mode}): {why}")
        out = Path(tmp) / "out"
        stem = model.stem
        names = {"optimized": f"{stem}_vela.tflite", "summary_csv": f"{stem}_summary_{setup.system_config}.csv",
                 "per_layer_csv": f"{stem}_per-layer.csv"}
        for name in names.values():
            if not (out / name).is_file():
                raise InternalError(f"ethos-u: Vela wrote no {name} (it wrote {sorted(p.name for p in out.iterdir())})")
            shutil.move(out / name, outdir / name)
    return Result(**names, summary=read_summary(outdir / names["summary_csv"]),
                  layers=read_layers(outdir / names["per_layer_csv"]), reasons=cpu_reasons(r.stdout), log=log)


def read_summary(path: Path) -> dict[str, Any]:
    """Vela's summary CSV (one header row, one row): numbers as numbers."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1:
        raise InternalError(f"ethos-u: {path.name} holds {len(rows)} rows, not Vela's one")
    return {k: _number(v) for k, v in rows[0].items()}


def read_layers(path: Path) -> list[Layer]:
    with open(path, newline="") as f:
        return [Layer(r["Original Operator"], r["NNG Operator"], r["Target"], r["Name"], int(float(r["Op Cycles"])))
                for r in csv.DictReader(f)]


def cpu_reasons(stdout: str) -> dict[str, str]:
    """Output tensor -> reason, from the blocks Vela prints for each operator it cannot place on
    the NPU (its supported-operator checks; Vela writes them nowhere else):

        Warning (supported operators) operator: QUANTIZE, ofm: 'name'
        Reason: Operation has tensor with unsupported DataType Float32 (input)
        Feature-map dataTypes must be one of {...}
        <blank line>
    """
    reasons: dict[str, str] = {}
    head = "Warning (supported operators) operator: "
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith(head) or ", ofm: '" not in line:
            continue
        ofm = line[len(head):].partition(", ofm: '")[2]
        text: list[str] = []
        for more in lines[i + 1:]:
            if not more.strip() or more.startswith(head):
                break
            text.append(more.strip().removeprefix("Reason: "))
        reason = "; ".join(text) or "Vela gave no reason"
        name = ofm.removesuffix("'")
        reasons[name] = f"{reasons[name]}; {reason}" if name in reasons else reason
    return reasons


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _listed(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def _one_line(e: object) -> str:
    return " ".join(str(e).split())


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
