"""Fixed-point types: ``ap_fixed<W,I,Q,O>`` / ``ap_ufixed`` as plain data.

A value of type ``FixedType(W, I)`` is stored as a ``W``-bit integer ``raw`` (two's complement
when signed) and means ``raw * 2**-(W - I)``. Quantization (``Q``) says how extra fractional
bits are dropped, overflow (``O``) what happens to values outside the range. The names and the
default modes (``AP_TRN``, ``AP_WRAP``) are those of Xilinx's ap_types, which hls4ml uses on
every back end it generates C++ for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Quantization modes, as spelled in ap_types.
ROUNDING = ("AP_TRN", "AP_TRN_ZERO", "AP_RND", "AP_RND_ZERO", "AP_RND_MIN_INF", "AP_RND_INF", "AP_RND_CONV")
# Overflow modes supported by the NumPy model (AP_WRAP_SM is not: hls4ml never emits it).
OVERFLOW = ("AP_WRAP", "AP_SAT", "AP_SAT_ZERO", "AP_SAT_SYM")

_TYPE_RE = re.compile(
    r"^\s*ap_(u?)fixed\s*<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*(AP_\w+)\s*)?(?:,\s*(AP_\w+)\s*)?(?:,\s*(\d+)\s*)?>\s*$")
_INT_RE = re.compile(r"^\s*ap_(u?)int\s*<\s*(\d+)\s*>\s*$")


class FixedTypeError(ValueError):
    """A type string or parameters that do not describe a supported fixed-point type."""


@dataclass(frozen=True)
class FixedType:
    width: int
    integer: int  # integer bits, sign bit included when signed (ap_fixed's I)
    signed: bool = True
    rounding: str = "AP_TRN"
    overflow: str = "AP_WRAP"

    def __post_init__(self) -> None:
        if not 1 <= self.width <= 64:
            raise FixedTypeError(f"width {self.width} out of range 1..64")
        if self.rounding not in ROUNDING:
            raise FixedTypeError(f"unknown quantization mode {self.rounding!r}; known: {', '.join(ROUNDING)}")
        if self.overflow not in OVERFLOW:
            raise FixedTypeError(f"unsupported overflow mode {self.overflow!r}; supported: {', '.join(OVERFLOW)}")

    # ------------------------------------------------------------------ views
    @property
    def frac(self) -> int:
        return self.width - self.integer

    @property
    def lsb(self) -> float:
        return 2.0 ** -self.frac

    @property
    def raw_min(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def raw_max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def min(self) -> float:
        return self.raw_min * self.lsb

    @property
    def max(self) -> float:
        return self.raw_max * self.lsb

    @property
    def saturating(self) -> bool:
        return self.overflow != "AP_WRAP"

    def with_modes(self, rounding: str | None = None, overflow: str | None = None) -> "FixedType":
        return FixedType(self.width, self.integer, self.signed, rounding or self.rounding, overflow or self.overflow)

    def __str__(self) -> str:
        """The C++ spelling, shortest form (default modes left out), as hls4ml accepts it."""
        base = f"ap_{'' if self.signed else 'u'}fixed<{self.width},{self.integer}"
        if self.overflow != "AP_WRAP":
            return f"{base},{self.rounding},{self.overflow}>"
        if self.rounding != "AP_TRN":
            return f"{base},{self.rounding}>"
        return base + ">"

    @staticmethod
    def parse(text: str) -> "FixedType":
        """``ap_fixed<16,6>``, ``ap_ufixed<8,0,AP_RND,AP_SAT>``, ``ap_int<8>`` -> FixedType."""
        m = _TYPE_RE.match(text)
        if m:
            uns, w, i, q, o, n = m.groups()
            if n not in (None, "0"):
                raise FixedTypeError(f"{text!r}: saturation bits (N) are not supported")
            return FixedType(int(w), int(i), not uns, q or "AP_TRN", o or "AP_WRAP")
        m = _INT_RE.match(text)
        if m:
            return FixedType(int(m.group(2)), int(m.group(2)), not m.group(1))
        raise FixedTypeError(f"{text!r} is not an ap_fixed<W,I[,Q[,O]]>, ap_ufixed<...> or ap_int<W> type")


def fixed(width: int, integer: int, rounding: str = "AP_TRN", overflow: str = "AP_WRAP",
          signed: bool = True) -> FixedType:
    """Shorthand: ``fixed(16, 6)`` is ``ap_fixed<16,6>``."""
    return FixedType(width, integer, signed, rounding, overflow)
