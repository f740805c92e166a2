"""The tflite target's TFLite Micro step: run the emitted bytes in TFLite Micro itself
(``runtime.tflm``), measure the smallest arena it allocates and invokes in, and, with
``tflite.mcu``, refuse a model TFLite Micro cannot run.

The measured arena goes into model.h (``microcontroller.ArenaFigures``); TFLite Micro
verifies the artifact in that arena (``TfliteTarget.cross_runners``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tapeout.compiler.errors import UsageError
from tapeout.targets.tflite.microcontroller import ArenaFigures


@dataclass(frozen=True)
class MicroResult:
    figures: ArenaFigures | None  # None: TFLite Micro could not run the model
    record: dict[str, Any] | None = None  # the recording allocator's account at the minimum
    refused: str | None = None  # TFLite Micro's reason, when it could not
    missing_tool: str | None = None  # tflite-micro is not installed

    def to_json(self) -> dict[str, Any]:
        if self.figures is None:
            return {"refused": self.refused or self.missing_tool}
        f = self.figures
        out: dict[str, Any] = {"arena_bytes": f.constant, "measured_minimum": f.measured,
                               "pointer_bytes": f.pointer_bytes, "headroom": f.headroom}
        if f.cortex_m is not None:
            out["cortex_m_arena_bytes"] = f.cortex_m
        if f.estimate is not None:
            out["estimate_bytes"] = f.estimate
        out["record"] = self.record
        return out

    def note(self) -> str:
        if self.figures is None:
            what = self.refused or self.missing_tool
            return f"not run in TFLite Micro, no arena in model.h: {what}"
        f = self.figures
        check = "" if f.estimate is None else (
            "; the analytic estimate agrees to the byte" if f.estimate == f.measured else
            f"; the analytic estimate is {f.estimate} ({(f.estimate - f.measured) / f.measured:+.1%})")
        return (f"TFLite Micro allocates it in {f.measured} bytes of arena and no fewer ({f.pointer_bytes * 8}-bit "
                f"host); model.h declares {f.constant}" + (f" (+{f.headroom} headroom)" if f.headroom else "")
                + ("" if f.cortex_m is None else f", {f.cortex_m} on a 32-bit Cortex-M") + check)


# No microcontroller holds a larger model (their flash is a few MiB): beyond it TFLite Micro is
# not run unless tflite.mcu asks (a VGG-sized model would take minutes to bisect an arena for).
MICRO_MAX_BYTES = 32 << 20


def measure(data: bytes, variant: str, opts: Any, estimate: int | None) -> MicroResult:
    """TFLite Micro on ``data``; a UsageError when ``opts.mcu`` and it cannot run the model."""
    from tapeout.runtime import tflm
    from tapeout.runtime.errors import RuntimeUnavailable

    if len(data) > MICRO_MAX_BYTES and not opts.mcu:
        return MicroResult(None, refused=f"the model ({len(data) / (1 << 20):.0f} MiB) is larger than any "
                                         f"microcontroller's flash ({MICRO_MAX_BYTES >> 20} MiB here); "
                                         "--target-option tflite.mcu=true runs it anyway")

    try:
        tflm.interpreter_module()
    except RuntimeUnavailable as e:
        if opts.mcu:
            raise
        return MicroResult(None, missing_tool=str(e))
    if opts.mcu:  # every op TFLite Micro has no kernel for, named at once (the interpreter names the first)
        from tapeout.targets.tflite.mcu import TFLM_VERSION, unsupported_ops

        missing = unsupported_ops(data)
        if missing:
            why = ("; SIGN is how the layers kept float (--keep-float, --fallback) stay float, which TFLite "
                   "Micro cannot run" if any(m.split()[0] == "SIGN" for m in missing) else "")
            raise UsageError(f"tflite:{variant} with tflite.mcu: TFLite Micro ({TFLM_VERSION}) has no kernel for "
                             f"{', '.join(missing)}{why}")
    from tapeout.targets.tflite.mcu import known_aborts

    aborts = known_aborts(data)  # checks TFLite Micro makes by stopping the process, named beforehand
    if aborts:
        reason = f"TFLite Micro aborts on this model: {aborts[0]}"
        if opts.mcu:
            raise UsageError(f"tflite:{variant} with tflite.mcu: {reason}")
        return MicroResult(None, refused=reason)
    try:
        m = tflm.measure_arena(data)
    except tflm.TflmError as e:
        reason = str(e).removeprefix("TFLite Micro: ")
        if opts.mcu:
            raise UsageError(f"tflite:{variant} with tflite.mcu: TFLite Micro cannot run this model: {reason}") from None
        return MicroResult(None, refused=reason)
    from tapeout.targets.tflite.arena import cortex_m_arena

    figures = ArenaFigures(m.minimum, m.pointer_bytes, opts.arena_headroom, cortex_m=cortex_m_arena(m.minimum, data),
                           estimate=estimate)
    return MicroResult(figures, m.record.to_json())
