"""What every back end is: a small class with a name, variants, options, emit() and a runner.

Target modules import their heavy tools (onnx, tensorflow, hls4ml, tensorrt) inside
methods, never at module level, so the registry can be imported by `tapeout --help`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Self

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Graph
from tapeout.runtime.compare import Tolerance
from tapeout.runtime.protocol import Runner

if TYPE_CHECKING:  # not imported at run time: targets stay light
    from tapeout.compiler.fixedpoint.precision import PrecisionRequest
    from tapeout.compiler.stages.data import BuildData

# Quantized artifacts are judged like a classifier's user would judge them (cosine and top-1
# agreement with the source), not elementwise: int8 rounding moves every logit a little.
# Agreement 0.98, not 0.99: the trained jet tagger (78% accurate) flips 1.7% of its top-1s in
# int8, exactly as TensorFlow's own converter does, while its accuracy rises (docs/quantization.md).
QUANTIZED_TOLERANCE = Tolerance(min_cosine=0.99, min_top1_agreement=0.98)


# ------------------------------------------------------------------ target options
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class TargetOptions:
    """A target's options: subclasses are frozen dataclasses whose fields are the option names.

    Field types say how values are read: int, float, bool, str, ``Literal[...]`` (or
    ``field(metadata={"choices": (...)})``), ``X | None`` and ``tuple[str, ...]`` (a single value
    is a one-item tuple). Values come typed (Python, a TOML file) or as CLI text ("18", "false"),
    and both spellings give equal objects, so ``normalized()`` can key the build cache.
    """

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, target: str, variant: str | None = None) -> Self:
        """Check and convert ``values`` (unknown key or bad value: UsageError naming ``target``)."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                known = f"options: {', '.join(names)}" if names else f"{target} takes no options"
                raise UsageError(f"{target}: unknown option {key!r}{hint}; {known}")
        raw = cls.prepare(dict(values), target)
        hints = typing.get_type_hints(cls)
        converted = {f.name: _convert(target, f.name, hints[f.name], f.metadata.get("choices"), raw[f.name])
                     for f in dataclasses.fields(cls) if f.name in raw}
        return cls(**converted).checked(target, variant)

    @classmethod
    def path_fields(cls) -> tuple[str, ...]:
        """The options that name a file or folder (``field(metadata={"path": True})``): a project
        file's are relative to its folder."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("path"))

    @classmethod
    def prepare(cls, values: dict[str, Any], target: str) -> dict[str, Any]:
        """Hook: rewrite the given (known, unconverted) values, e.g. fill them from a config file."""
        return values

    def checked(self, target: str, variant: str | None) -> Self:
        """Hook: checks across fields and for ``variant``; may return a copy with dependent defaults filled."""
        return self

    def normalized(self) -> dict[str, Any]:
        """Every option, defaults filled, as plain JSON types with sorted keys (the build cache hashes it)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in sorted(dataclasses.asdict(self).items())}


def _convert(target: str, key: str, hint: Any, choices: Any, value: Any) -> Any:
    """``value`` (typed, or CLI text) as the field's type; a one-line UsageError when it is not one."""
    def bad(expected: str) -> UsageError:
        return UsageError(f"{target}: option {key}: expected {expected}, not {value!r}")

    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: repeatable text values
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return tuple(_convert(target, key, args[0], choices, v) for v in items)
    if typing.get_origin(hint) is Literal:
        choices, hint = args, type(args[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise bad("true or false")
    if hint is int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise bad("an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        out: Any = value
    elif hint is float:
        num: Any = value
        if isinstance(value, str):
            try:
                num = float(value.strip())
            except ValueError:
                raise bad("a number") from None
        if isinstance(num, bool) or not isinstance(num, (int, float)) or not math.isfinite(num):
            raise bad("a number")
        out = float(num)
    elif hint is str:
        # The CLI reads VALUE as JSON first, so `array_name=123` arrives as a number.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad("text")
        out = str(value)
    else:  # a field type this machinery does not know: a bug in the target, not the user's
        raise TypeError(f"{target}: option {key} has unsupported type {hint!r}")
    if choices is not None and out not in choices:
        raise bad(f"one of {', '.join(map(str, choices))}")
    return out


@dataclass(frozen=True)
class EmitContext:
    """What a target may use besides the graph: the one interface between the build and emit."""

    outdir: Path  # an empty folder to write the artifacts into (staged; moved into place later)
    # The build's data (calibration / eval Datasets, each file read once); None when emitting
    # outside a build (tests, scripts): targets then synthesize inputs.
    data: BuildData | None = None
    build_outdir: Path | None = None  # the build's final OUTDIR (tensorrt keeps its timing cache there)
    pass_records: tuple[Mapping[str, Any], ...] = ()  # the passes that ran (tensorrt lists their fusions)


@dataclass
class EmitResult:
    artifacts: list[str]  # paths relative to the variant's output folder
    notes: list[str] = field(default_factory=list)  # what the emitter decided, for the report
    extra: dict[str, Any] = field(default_factory=dict)  # target-specific report fields
    # The artifacts the report's size_bytes counts (None: all); e.g. not a C copy of the model.
    size_artifacts: list[str] | None = None
    # How this artifact is verified when no --atol/--rtol is given; None: default_tolerance(variant).
    # Emitters that judge from the graph (tensorrt:fp16 of a softmax classifier) or from their
    # options (hls4ml's --min-agreement) set it.
    tolerance: Tolerance | None = None
    # What this target's confirm() needs from its emit (hls4ml: its layer names in the project);
    # never written to the report.
    confirm_state: Any = None


class Target:
    name: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]
    default_variant: ClassVar[str]
    # Python modules the target needs to emit / to run its artifact.
    requires: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    # I/O layouts the emitter can present (targets.io): "source" always; and the one used when
    # --io-layout is not given (tflite: "channels-last", what its users feed).
    # False: emit builds Keras/TensorFlow objects, which take their names from process-global
    # counters, so two such emits at once (-j) would name tensors differently from run to run.
    # The build runs these one at a time; their verification still runs in parallel.
    parallel_emit: ClassVar[bool] = True
    io_layouts: ClassVar[tuple[str, ...]] = ("source",)
    default_io_layout: ClassVar[str] = "source"
    # Why a target has no float form, when it has none (ethos-u: Vela compiles only fully
    # quantized models); the calibration refusal says it.
    quantized_only: ClassVar[str | None] = None
    # The options this target takes (a TargetOptions dataclass); the base takes none.
    Options: ClassVar[type[TargetOptions]] = TargetOptions

    def __init__(self, variant: str | None = None, **options: Any) -> None:
        self.variant = variant or self.default_variant
        # Checked here, before any model loads: a bad option is a usage error before any work.
        self.opts = self.Options.from_mapping(options, target=self.name, variant=self.variant)
        self.options = self.opts.normalized()
        self.io_layout = self.default_io_layout

    def set_io_layout(self, layout: str | None) -> str | None:
        """Use ``layout`` (--io-layout) when the target can; returns a note when it cannot."""
        if layout is None or layout == self.io_layout:
            return None
        if layout not in self.io_layouts:
            return f"--io-layout {layout}: {self.name} keeps the {self.io_layout} layout at its inputs and outputs"
        self.io_layout = layout
        return None

    @classmethod
    def quant_scheme(cls, variant: str) -> str | None:
        """The quantization scheme ``variant`` consumes ("int8", "int16x8", "fp16"), None for float.

        The compiler runs the quantize pass with it (calibrating first when activations are
        quantized) and hands ``emit`` the annotated graph; see docs/quantization.md.
        """
        return None

    @classmethod
    def default_tolerance(cls, variant: str) -> Tolerance | None:
        """How ``variant``'s artifact is verified when the user gives no --atol/--rtol; None: elementwise defaults."""
        return QUANTIZED_TOLERANCE if cls.quant_scheme(variant) in ("int8", "int16x8") else None

    def precision_request(self) -> PrecisionRequest | None:
        """The fixed-point precision search this target's emit needs (hls4ml); the build runs it
        (compiler.fixedpoint.precision.PrecisionSearch) and hands emit the annotated graph. None: none."""
        return None

    @classmethod
    def missing_requirements(cls) -> list[str]:
        return [m for m in cls.requires if importlib.util.find_spec(m) is None]

    def emit(self, graph: Graph, ctx: EmitContext) -> EmitResult:
        """Write this variant's artifacts for ``graph`` into ``ctx.outdir`` (an empty folder)."""
        raise NotImplementedError

    def runner(self, outdir: Path) -> Runner:
        """A runner executing the artifact written into ``outdir``."""
        raise NotImplementedError

    def cross_runners(self, outdir: Path, extra: Mapping[str, Any]) -> list[Runner]:
        """Other runtimes the artifact in ``outdir`` must also pass in, judged as ``runner``'s is
        (tflite: TFLite Micro, in the arena its model.h declares). ``extra``: this target's report
        entry as written (``EmitResult.extra``). None here."""
        return []

    def confirm(self, graph: Graph, outdir: Path, data: BuildData, emitted: EmitResult,
                report: dict[str, Any], notes: list[str]) -> None:
        """The verify stage's hook for what only this target can check of its own artifacts
        (hls4ml: its C simulation against the fixed-point NumPy model, bit for bit, and each
        layer's error). It adds to its ``report`` entry (``emitted.extra``'s, as written) and
        ``notes``. Runs after emit, only when verifying; none here."""
