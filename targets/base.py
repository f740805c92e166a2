"""What every back end is: a small class with a name, variants, options, emit() and a runner.

Target modules import their heavy tools (onnx, tensorflow, hls4ml, tensorrt) inside
methods, never at module level, so the registry can be imported by `tapeout --help`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tapeout.compiler.ir import Graph
from tapeout.runtime.compare import Tolerance
from tapeout.runtime.protocol import Runner

# Quantized artifacts are judged like a classifier's user would judge them (cosine and top-1
# agreement with the source), not elementwise: int8 rounding moves every logit a little.
# Agreement 0.98, not 0.99: the trained jet tagger (78% accurate) flips 1.7% of its top-1s in
# int8, exactly as TensorFlow's own converter does, while its accuracy rises (docs/quantization.md).
QUANTIZED_TOLERANCE = Tolerance(min_cosine=0.99, min_top1_agreement=0.98)


@dataclass
class EmitResult:
    artifacts: list[str]  # paths relative to the variant's output folder
    notes: list[str] = field(default_factory=list)  # what the emitter decided, for the report
    extra: dict[str, Any] = field(default_factory=dict)  # target-specific report fields
    # The artifacts the report's size_bytes counts (None: all); e.g. not a C copy of the model.
    size_artifacts: list[str] | None = None


class Target:
    name: ClassVar[str]
    variants: ClassVar[tuple[str, ...]]
    default_variant: ClassVar[str]
    # Python modules the target needs to emit / to run its artifact.
    requires: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    # I/O layouts the emitter can present (targets.io): "source" always; and the one used when
    # --io-layout is not given (tflite: "channels-last", what its users feed).
    io_layouts: ClassVar[tuple[str, ...]] = ("source",)
    default_io_layout: ClassVar[str] = "source"

    def __init__(self, variant: str | None = None, **options: Any) -> None:
        self.variant = variant or self.default_variant
        self.options = options
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

    @classmethod
    def missing_requirements(cls) -> list[str]:
        return [m for m in cls.requires if importlib.util.find_spec(m) is None]

    def emit(self, graph: Graph, outdir: Path) -> EmitResult:
        """Write this variant's artifacts for ``graph`` into ``outdir`` (an empty folder)."""
        raise NotImplementedError

    def runner(self, outdir: Path) -> Runner:
        """A runner executing the artifact written into ``outdir``."""
        raise NotImplementedError
