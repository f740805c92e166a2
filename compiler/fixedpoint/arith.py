"""Bit-accurate ap_fixed arithmetic on NumPy arrays of raw integers.

A fixed-point array is an int64 array of raw values plus the number of fractional bits
they carry (``raw * 2**-frac``). ``requantize`` is the one conversion every ap_fixed
assignment performs: drop fractional bits by the target's quantization mode, then fit the
integer part by its overflow mode, in that order (the carry of a rounding can overflow).
The rules follow ap_fixed_base's ``quantization_adjust`` and ``overflow_adjust``.

Raw values must fit in int64 with headroom: every kernel keeps operand widths so that
products and sums stay below 2**62 and raises ``FixedTypeError`` otherwise.
"""

from __future__ import annotations

import numpy as np

from tapeout.compiler.fixedpoint.types import FixedType, FixedTypeError

INT = np.int64
_MAX_SHIFT = 62  # deleting more bits than this leaves only sign bits: same result as 62


def _round_increment(q: np.ndarray, qb: np.ndarray, rest: np.ndarray, neg: np.ndarray, mode: str) -> np.ndarray:
    """The +1 (as int) that ``mode`` adds to the floor ``q`` given the first dropped bit ``qb``,
    whether any lower dropped bit is set (``rest``) and the sign of the source (``neg``)."""
    if mode == "AP_TRN":
        return np.zeros_like(q)
    if mode == "AP_RND":
        inc = qb
    elif mode == "AP_RND_ZERO":
        inc = qb & (neg | rest)
    elif mode == "AP_RND_MIN_INF":
        inc = qb & rest
    elif mode == "AP_RND_INF":
        inc = qb & (~neg | rest)
    elif mode == "AP_RND_CONV":
        inc = qb & ((q & 1).astype(bool) | rest)
    elif mode == "AP_TRN_ZERO":
        inc = neg & (qb | rest)
    else:  # pragma: no cover - FixedType validates modes
        raise FixedTypeError(f"unknown quantization mode {mode!r}")
    return inc.astype(INT)


def overflow(raw: np.ndarray, t: FixedType) -> np.ndarray:
    """Fit integer raw values (already on ``t``'s grid) into ``t``'s width by its overflow mode."""
    raw = np.asarray(raw, dtype=INT)
    lo, hi = t.raw_min, t.raw_max
    if t.overflow == "AP_WRAP":
        mask = (1 << t.width) - 1
        if t.width >= 63:
            return raw
        return ((raw - lo) & mask) + lo
    if t.overflow == "AP_SAT":
        return np.clip(raw, lo, hi)
    if t.overflow == "AP_SAT_ZERO":
        return np.where((raw < lo) | (raw > hi), 0, raw).astype(INT)
    if t.overflow == "AP_SAT_SYM":
        return np.clip(raw, -hi if t.signed else 0, hi)
    raise FixedTypeError(f"unsupported overflow mode {t.overflow!r}")  # pragma: no cover


def requantize(raw: np.ndarray, frac: int, t: FixedType) -> np.ndarray:
    """Assign fixed-point values (``raw`` with ``frac`` fractional bits) to type ``t``; raw of ``t``."""
    raw = np.asarray(raw, dtype=INT)
    shift = frac - t.frac
    if shift <= 0:
        if -shift > _MAX_SHIFT:
            raise FixedTypeError(f"cannot widen by {-shift} fractional bits in int64")
        return overflow(raw << INT(-shift), t)
    s = min(shift, _MAX_SHIFT)
    q = raw >> INT(s)
    dropped = raw - (q << INT(s))  # in [0, 2**s)
    half = INT(1) << INT(s - 1)
    qb = dropped >= half
    rest = (dropped & (half - 1)) != 0
    return overflow(q + _round_increment(q, qb, rest, raw < 0, t.rounding), t)


def from_float(x: np.ndarray | float, t: FixedType) -> np.ndarray:
    """Convert floats to ``t`` as ap_fixed's double constructor does (exact value, then Q, then O)."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    v = np.ldexp(np.where(finite, x, 0.0), t.frac)  # exact: scaling by a power of two
    q = np.floor(v)
    d = v - q  # exact, in [0, 1)
    qb = d >= 0.5
    rest = (d != 0.0) & (d != 0.5)
    # Values far outside int64 only matter through wrap/saturation: reduce them first.
    big = np.abs(q) >= 2.0**_MAX_SHIFT
    if np.any(big):
        if t.overflow == "AP_WRAP":
            q = np.where(big, np.mod(q, 2.0**t.width), q)  # fmod is exact on integral floats
        else:
            q = np.clip(q, -(2.0**_MAX_SHIFT), 2.0**_MAX_SHIFT)
    qi = q.astype(INT)
    raw = overflow(qi + _round_increment(qi, qb, rest, x < 0, t.rounding), t)
    if not np.all(finite):
        # +-inf behaves like an enormous value: saturates, or wraps to zero (its low bits are 0).
        sat_hi = t.raw_max if t.saturating and t.overflow != "AP_SAT_ZERO" else 0
        sat_lo = (t.raw_min if t.overflow == "AP_SAT" else -t.raw_max if t.signed else 0) \
            if t.saturating and t.overflow != "AP_SAT_ZERO" else 0
        raw = np.where(np.isposinf(x), sat_hi, np.where(np.isneginf(x), sat_lo, np.where(finite, raw, 0)))
    return raw.astype(INT)


def to_float(raw: np.ndarray, t: FixedType | int) -> np.ndarray:
    """Raw values of ``t`` (or raw values with ``t`` fractional bits) as float64, exactly."""
    frac = t.frac if isinstance(t, FixedType) else int(t)
    return np.ldexp(np.asarray(raw, dtype=np.float64), -frac)


def quantize(x: np.ndarray | float, t: FixedType) -> np.ndarray:
    """Float in, float out: ``x`` rounded and fitted to ``t`` (float64, exact)."""
    return to_float(from_float(x, t), t)


def check_headroom(bits: int, what: str) -> None:
    """Raise when an intermediate of ``bits`` bits cannot be held exactly in int64."""
    if bits > _MAX_SHIFT:
        raise FixedTypeError(f"{what} needs {bits} bits, more than the NumPy model holds exactly (62)")


def quantize_kif(x: np.ndarray, k: np.ndarray, i: np.ndarray, f: np.ndarray, rounding: str = "AP_TRN",
                 overflow_mode: str = "AP_WRAP") -> np.ndarray:
    """Float in, float64 out: each element of ``x`` on its own fixed-point grid, HGQ's "kif" form.

    ``k`` (1: signed), ``i`` (integer bits, sign excluded) and ``f`` (fractional bits, may be
    negative) broadcast against ``x``; the element's type is ``ap_[u]fixed<k+i+f, k+i>`` with the
    given modes. An element with ``k+i+f <= 0`` bits is 0. The IR's ``fixed_quant`` op."""
    x = np.asarray(x, dtype=np.float64)
    k, i, f = (np.broadcast_to(np.asarray(a, dtype=INT), x.shape) for a in (k, i, f))
    if rounding not in ("AP_TRN", "AP_RND", "AP_RND_ZERO", "AP_RND_MIN_INF", "AP_RND_INF", "AP_RND_CONV",
                        "AP_TRN_ZERO"):
        raise FixedTypeError(f"unknown quantization mode {rounding!r}")
    width = k + i + f
    if np.any(width > _MAX_SHIFT) or np.any(np.abs(f) > 1000):
        raise FixedTypeError("fixed_quant: more than 62 bits per element")
    v = np.ldexp(np.where(np.isfinite(x), x, 0.0), f.astype(np.int32))
    q = np.floor(v)
    d = v - q
    qi = np.clip(q, -(2.0**_MAX_SHIFT), 2.0**_MAX_SHIFT).astype(INT)
    raw = qi + _round_increment(qi, d >= 0.5, (d != 0.0) & (d != 0.5), x < 0, rounding)
    w = np.maximum(width, 1)
    signed = k > 0
    lo = np.where(signed, -(INT(1) << (w - 1)), 0)
    hi = np.where(signed, (INT(1) << (w - 1)) - 1, (INT(1) << w) - 1)
    if overflow_mode == "AP_WRAP":
        raw = ((raw - lo) & ((INT(1) << w) - 1)) + lo
    elif overflow_mode == "AP_SAT":
        raw = np.clip(raw, lo, hi)
    elif overflow_mode == "AP_SAT_SYM":
        raw = np.clip(raw, np.where(signed, -hi, 0), hi)
    elif overflow_mode == "AP_SAT_ZERO":
        raw = np.where((raw < lo) | (raw > hi), 0, raw)
    else:
        raise FixedTypeError(f"unsupported overflow mode {overflow_mode!r}")
    raw = np.where(width > 0, raw, 0)
    return np.ldexp(raw.astype(np.float64), -f.astype(np.int32))


def kif_grid(k: np.ndarray, i: np.ndarray, f: np.ndarray) -> dict[str, np.ndarray]:
    """The constants a float32 implementation of ``quantize_kif`` needs (the ONNX and Keras lowerings),
    each of the broadcast shape of ``k, i, f``, float64: ``scale`` 2**f, ``step`` 2**-f (0 where the
    width is <= 0: the element is pruned), raw bounds ``lo``/``hi``, ``top`` = hi + 1 (a power of
    two, exact in float32 where hi is not), ``lo_sym`` (AP_SAT_SYM's lower bound) and ``modulus``
    2**width (AP_WRAP). Every step of the float implementation is exact: x * 2**f and its floor are
    float32 values, an integer beyond 2**24 has no fraction to round, bounds are compared as powers
    of two, a saturated bound that float32 rounds rounds as the kernel's float32 output does, and a
    wrapped value is reduced with ``r = raw - m * floor(raw / m)`` only where it overflows."""
    k, i, f = np.broadcast_arrays(*(np.asarray(a, dtype=INT) for a in (k, i, f)))
    width = k + i + f
    if np.any(width > _MAX_SHIFT) or np.any(np.abs(f) > 100):
        raise FixedTypeError("fixed_quant: at most 62 bits per element and |f| <= 100")
    w = np.maximum(width, 1)
    signed = k > 0
    top = np.where(signed, 2.0 ** (w - 1), 2.0**w)
    e = f.astype(np.int32)
    return {"scale": np.ldexp(1.0, e), "step": np.where(width > 0, np.ldexp(1.0, -e), 0.0),
            "lo": np.where(signed, -(2.0 ** (w - 1)), 0.0), "hi": top - 1, "top": top,
            "lo_sym": np.where(signed, -(top - 1), 0.0), "modulus": 2.0**w}
