"""The NumPy ap_fixed model: unit tests, and every quantization/overflow mode against ap_types in C++."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.fixedpoint import FixedType, FixedTypeError, fixed, from_float, quantize, requantize
from tapeout.compiler.fixedpoint import layers as L
from tapeout.compiler.fixedpoint.types import OVERFLOW, ROUNDING


def test_parse_and_print_round_trip():
    for text in ("ap_fixed<16,6>", "ap_ufixed<8,0,AP_RND,AP_SAT>", "ap_fixed<10,4,AP_RND_CONV>",
                 "ap_fixed<12,-2,AP_TRN,AP_SAT_SYM>"):
        assert str(FixedType.parse(text)) == text
    assert FixedType.parse("ap_int<8>") == fixed(8, 8)
    with pytest.raises(FixedTypeError):
        FixedType.parse("float")
    with pytest.raises(FixedTypeError):
        FixedType.parse("ap_fixed<8,3,AP_RND,AP_WRAP_SM>")


def test_rounding_modes_on_ties():
    x = np.array([0.25, -0.25, 0.75, -0.75, 0.3, -0.3])  # on a 0.5 grid: ties, ties, non-ties
    t = lambda q: quantize(x, fixed(8, 7, q))  # noqa: E731
    np.testing.assert_array_equal(t("AP_TRN"), [0, -0.5, 0.5, -1, 0, -0.5])
    np.testing.assert_array_equal(t("AP_TRN_ZERO"), [0, 0, 0.5, -0.5, 0, 0])
    np.testing.assert_array_equal(t("AP_RND"), [0.5, 0, 1, -0.5, 0.5, -0.5])
    np.testing.assert_array_equal(t("AP_RND_ZERO"), [0, 0, 0.5, -0.5, 0.5, -0.5])
    np.testing.assert_array_equal(t("AP_RND_MIN_INF"), [0, -0.5, 0.5, -1, 0.5, -0.5])
    np.testing.assert_array_equal(t("AP_RND_INF"), [0.5, -0.5, 1, -1, 0.5, -0.5])
    np.testing.assert_array_equal(t("AP_RND_CONV"), [0, 0, 1, -1, 0.5, -0.5])


def test_overflow_modes():
    x = np.array([7.5, 8.0, 9.0, -8.0, -9.0])
    np.testing.assert_array_equal(quantize(x, fixed(5, 4)), [7.5, -8, -7, -8, 7])  # wraps
    np.testing.assert_array_equal(quantize(x, fixed(5, 4, overflow="AP_SAT")), [7.5, 7.5, 7.5, -8, -8])
    np.testing.assert_array_equal(quantize(x, fixed(5, 4, overflow="AP_SAT_ZERO")), [7.5, 0, 0, -8, 0])
    np.testing.assert_array_equal(quantize(x, fixed(5, 4, overflow="AP_SAT_SYM")), [7.5, 7.5, 7.5, -7.5, -7.5])
    np.testing.assert_array_equal(quantize(np.array([-1.0, 300.0]), FixedType(8, 8, False, "AP_TRN", "AP_SAT")),
                                  [0, 255])


def test_requantize_matches_float_path():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 20, 2000)
    src = fixed(40, 20)
    raw = from_float(x, src)
    for q in ROUNDING:
        for o in OVERFLOW:
            t = fixed(9, 4, q, o)
            np.testing.assert_array_equal(requantize(raw, src.frac, t), from_float(quantize(x, src), t))


def test_dense_accumulates_in_accum_type():
    # Products 0.75 * 0.75 = 0.5625 need 4 fractional bits; a 2-bit accumulator truncates each to 0.5.
    x = L.Fx.of(np.array([[0.75, 0.75]]), fixed(8, 2))
    w = L.Fx.of(np.array([[0.75], [0.75]]), fixed(8, 2))
    y = L.dense(x, w, None, fixed(10, 8), fixed(16, 8))
    assert y.to_float().tolist() == [[1.0]]
    y = L.dense(x, w, None, fixed(16, 8), fixed(16, 8))
    assert y.to_float().tolist() == [[1.125]]


def test_saturating_accumulator_adds_in_order():
    x = L.Fx.of(np.array([[3.0, 3.0, -3.0]]), fixed(8, 4))
    w = L.Fx.of(np.ones((3, 1)), fixed(8, 4))
    # 3 + 3 saturates at 3.875 in ap_fixed<6,3,AP_TRN,AP_SAT>, then -3 gives 0.875; summing first gives 3.
    y = L.dense(x, w, None, fixed(6, 3, overflow="AP_SAT"), fixed(16, 8))
    assert y.to_float().tolist() == [[0.875]]
    y = L.dense(x, w, None, fixed(6, 3), fixed(16, 8))  # wrapping is order-free: 3 + 3 - 3 = 3
    assert y.to_float().tolist() == [[3.0]]


# ---------------------------------------------------------- against C++ ap_types
_MODE_TYPES = [fixed(9, 4, q, o) for q in ROUNDING for o in OVERFLOW] + [
    FixedType(7, 2, False, "AP_RND", "AP_SAT"), FixedType(7, 2, False, "AP_TRN", "AP_WRAP"),
    fixed(6, -1, "AP_RND_CONV", "AP_SAT"), fixed(10, 12, "AP_RND", "AP_WRAP")]


def _ap_types_dir() -> Path | None:
    try:
        import hls4ml  # noqa: F401  (only to locate its bundled headers)
    except ImportError:
        return None
    d = Path(hls4ml.__file__).parent / "templates/vivado/ap_types"
    return d if d.is_dir() else None


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")
def test_every_mode_matches_ap_types(tmp_path):
    inc = _ap_types_dir()
    if inc is None:
        pytest.skip("hls4ml (which bundles ap_types) is not installed")
    rng = np.random.default_rng(1)
    xs = np.concatenate([rng.normal(0, 12, 300), np.arange(-40, 40) / 8 + 1 / 64, np.arange(-40, 40) / 4,
                         [0.0, -0.0, 1e-9, -1e-9, 15.96875, -16.0, 1e6, -1e6]])
    src = "ap_fixed<40,20>"
    lines = ['#include <cstdio>', '#include <cmath>', '#include "ap_fixed.h"', 'int main() {',
             f'  static const double xs[] = {{{", ".join(repr(float(v)) for v in xs)}}};',
             f'  const int n = {len(xs)};']
    for k, t in enumerate(_MODE_TYPES):
        lines.append(f'  for (int i = 0; i < n; i++) {{ {t} a = xs[i]; {src} s = xs[i]; {t} b = s;'
                     f' printf("%d %.0f %.0f\\n", {k}, std::ldexp(a.to_double(), {t.frac}),'
                     f' std::ldexp(b.to_double(), {t.frac})); }}')
    lines += ["  return 0;", "}"]
    (tmp_path / "m.cpp").write_text("\n".join(lines))
    subprocess.run(["g++", "-O0", "-std=c++14", f"-I{inc}", "m.cpp", "-o", "m"], cwd=tmp_path, check=True,
                   capture_output=True)
    out = np.loadtxt(subprocess.run(["./m"], cwd=tmp_path, check=True, capture_output=True, text=True)
                     .stdout.splitlines())
    wide = fixed(40, 20)
    wide_raw = from_float(xs, wide)
    for k, t in enumerate(_MODE_TYPES):
        rows = out[out[:, 0] == k]
        np.testing.assert_array_equal(from_float(xs, t), rows[:, 1], err_msg=f"double -> {t}")
        np.testing.assert_array_equal(requantize(wide_raw, wide.frac, t), rows[:, 2], err_msg=f"{wide} -> {t}")
