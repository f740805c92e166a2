"""The fixed_quant op (QAT front ends' quantizers): per-element kif grids, every rounding and
overflow mode, against the scalar ap_fixed model (compiler.fixedpoint.arith.quantize)."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.fixedpoint.arith import quantize, quantize_kif
from tapeout.compiler.fixedpoint.types import ROUNDING, FixedType, FixedTypeError
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import BATCH, Graph, Node, TensorType

RNG = np.random.default_rng(3)


@pytest.mark.parametrize("rounding", ROUNDING)
@pytest.mark.parametrize("overflow", ["AP_WRAP", "AP_SAT", "AP_SAT_SYM", "AP_SAT_ZERO"])
@pytest.mark.parametrize("kif", [(1, 2, 3), (0, 3, 2), (1, 0, 5), (1, 4, -1), (0, 0, 1)])
def test_scalar_kif_is_ap_fixed(rounding: str, overflow: str, kif: tuple[int, int, int]) -> None:
    k, i, f = kif
    x = np.concatenate([RNG.normal(0, 6, 500), np.arange(-40, 40) / 8.0])  # ties on every grid
    t = FixedType(k + i + f, k + i, bool(k), rounding, overflow)
    np.testing.assert_array_equal(quantize_kif(x, k, i, f, rounding, overflow), quantize(x, t))


def test_per_element_grids_and_zero_width() -> None:
    x = np.array([[1.3, -2.7, 5.55, 0.9]])
    k = np.array([1, 1, 0, 1])
    i = np.array([1, 2, 2, 0])
    f = np.array([1, 0, 2, -1])  # the last has k+i+f = 0 bits: pruned to 0
    got = quantize_kif(x, k, i, f, "AP_RND", "AP_SAT")
    np.testing.assert_array_equal(got, [[1.5, -3.0, 3.75, 0.0]])  # 5.55 saturates at ap_ufixed<4,2>'s 3.75


def test_unknown_mode_refused() -> None:
    with pytest.raises(FixedTypeError, match="AP_FOO"):
        quantize_kif(np.zeros(2), 1, 1, 1, "AP_FOO")
    with pytest.raises(FixedTypeError, match="overflow"):
        quantize_kif(np.zeros(2), 1, 1, 1, "AP_TRN", "AP_BAR")


def test_interpreter_runs_fixed_quant() -> None:
    g = Graph("q", ["x"], ["y"])
    g.types["x"] = TensorType((BATCH, 3))
    g.constants.update(k=np.ones(3, np.int8), i=np.array([0, 1, 2], np.int8), f=np.int8(2))
    g.nodes.append(Node("fixed_quant", "q", ["x", "k", "i", "f"], ["y"], {"rounding": "AP_RND_CONV",
                                                                          "overflow": "AP_SAT"}))
    g.infer_shapes()
    g.check()
    x = np.array([[0.6, 0.625, -9.0], [1.9, -3.0, 3.1]], np.float32)
    y = run(g, {"x": x})["y"]
    assert y.dtype == np.float32 and y.shape == x.shape
    # ap_fixed<3,1> spans [-1, 0.75]; <4,2> [-2, 1.75]; <5,3> [-4, 3.75]; ties to even on a 0.25 grid.
    np.testing.assert_array_equal(y, [[0.5, 0.5, -4.0], [0.75, -2.0, 3.0]])
