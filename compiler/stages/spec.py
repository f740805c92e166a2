"""The build description: everything one compile of one model depends on, as typed data.

``tapeout compile``'s flags (``from_cli`` in compiler/cli.py) and a ``tapeout.toml`` model table
(compiler/project.py) both become a ``BuildSpec``; ``compile_model``'s keyword arguments are its
fields. The content-addressed cache hashes ``normalized()`` (with the files' bytes), so two
spellings of the same build share their cache entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tapeout.compiler.errors import UsageError

Progress = Callable[[str], None]


def noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class BuildSpec:
    model: Path
    targets: tuple[str, ...] = ("onnx",)
    outdir: Path = Path("out")
    weights: Path | None = None
    calibration: str | None = None  # a data file, or "synthetic"
    eval_data: Path | None = None
    atol: float | None = None
    rtol: float | None = None
    calibration_method: str = "minmax"
    percentile: float | None = None
    keep_float: tuple[str, ...] = ()
    bias_correction: bool = True  # int8/int16x8: biases absorb the mean offset of rounded weights
    prune: str | None = None
    prune_exclude: tuple[str, ...] = ()
    train: Path | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    # target name ("tflite") or one variant ("tflite:int8") -> that target's options; the variant's win.
    target_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The folder a relative path in a target option (hls4ml.config, tensorrt.cache_dir) is read
    # from: the project file's for `tapeout build`; None: the working folder.
    options_base: Path | None = None
    max_accuracy_drop: float | None = None
    fallback: bool = False
    io_layout: str | None = None
    verify: bool = True
    timings: bool = True
    trace: bool = False

    @classmethod
    def of(cls, model: str | Path, targets: Sequence[str] = ("onnx",), outdir: str | Path = "out",
           **kwargs: Any) -> "BuildSpec":
        """From ``compile_model``'s arguments (paths as str or Path, sequences as lists)."""
        names = {f.name for f in fields(cls)}
        aliases = {"verify_artifacts": "verify"}
        values: dict[str, Any] = {}
        for key, value in kwargs.items():
            key = aliases.get(key, key)
            if key not in names:
                raise TypeError(f"unknown build setting {key!r}")
            values[key] = value
        for key in ("weights", "eval_data", "train"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        if values.get("calibration") is not None:
            values["calibration"] = str(values["calibration"])
        for key in ("keep_float", "prune_exclude"):
            if key in values:
                values[key] = tuple(values[key] or ())
        values["target_options"] = {k: dict(v) for k, v in (values.get("target_options") or {}).items()}
        return cls(Path(model), tuple(targets), Path(outdir), **values)

    def data_files(self) -> list[Path]:
        """The data files this build reads (a depfile's and the cache key's inputs)."""
        found = [Path(self.calibration)] if self.calibration not in (None, "synthetic") else []
        return found + [p for p in (self.eval_data, self.train) if p is not None]

    def input_files(self) -> list[Path]:
        return [self.model, *([self.weights] if self.weights else []), *self.data_files()]

    def shared_settings(self) -> dict[str, Any]:
        """The settings every target's bytes and report may depend on (not the target list, the
        outdir or the target options): part of each target's cache key."""
        skip = {"model", "weights", "eval_data", "train", "calibration", "targets", "outdir", "target_options",
                "options_base", "timings"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out["calibration"] = "synthetic" if self.calibration == "synthetic" else (
            None if self.calibration is None else "file")
        out["eval_data"] = self.eval_data is not None
        out["train"] = self.train is not None
        return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(out.items())}

    def settings_for(self, scheme: str | None, calibrated: bool) -> dict[str, Any]:
        """``shared_settings`` less those a target of quantization ``scheme`` never reads (None: a
        float target or the report's shared part; ``calibrated``: the scheme calibrates, int8 and
        int16x8): --no-bias-correction must not rebuild a float target."""
        drop = set() if calibrated else set(CALIBRATION_SETTINGS)
        if scheme is None:
            drop |= set(QUANTIZE_SETTINGS)
        return {k: v for k, v in self.shared_settings().items() if k not in drop}


# Settings only the quantize stage reads: of every quantized scheme, and of the calibrated ones alone.
QUANTIZE_SETTINGS = ("keep_float",)
CALIBRATION_SETTINGS = ("calibration_method", "percentile", "bias_correction")


def check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise UsageError(f"-j must be at least 1, got {jobs}")


def check_outdir(outdir: Path) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"{outdir}: exists and is not a folder")
