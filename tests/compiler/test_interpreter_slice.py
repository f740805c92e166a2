"""The IR's ``slice`` op: kernel and shape inference against NumPy indexing and worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import BATCH, Graph, IRError, Node, TensorType
from tapeout.compiler.ops import slice_bounds

RNG = np.random.default_rng(7)
INT64_MAX, INT64_MIN = 2**63 - 1, -2**63


def slice_graph(shape: tuple[int, ...], **attrs) -> Graph:
    g = Graph("slice", ["x"], ["y"])
    g.types["x"] = TensorType((BATCH, *shape[1:]))
    g.nodes.append(Node("slice", "s", ["x"], ["y"], attrs))
    g.infer_shapes()
    g.check()
    return g


def run_slice(x: np.ndarray, **attrs) -> np.ndarray:
    g = slice_graph(x.shape, **attrs)
    y = run(g, {"x": x})["y"]
    assert y.shape[1:] == g.types["y"].shape[1:], "kernel and shape inference disagree"
    return y


@pytest.mark.parametrize("axes,starts,ends,steps,index", [
    ((3,), (0,), (4,), None, np.s_[:, :, :, 0:4]),  # a channel split's first half
    ((3,), (4,), (INT64_MAX,), None, np.s_[:, :, :, 4:]),  # the second half, end clamped
    ((-1,), (-3,), (-1,), None, np.s_[:, :, :, -3:-1]),  # negative axis and indices
    ((1, 2), (1, 0), (5, 7), (2, 3), np.s_[:, 1:5:2, 0:7:3]),  # two axes, steps
    ((2,), (-100,), (100,), None, np.s_[:, :, :]),  # both bounds clamped
    ((3,), (6,), (1,), (-2,), np.s_[:, :, :, 6:1:-2]),  # negative step
    ((1,), (5,), (5,), None, np.s_[:, 5:5]),  # empty
])
def test_slice_matches_numpy(axes, starts, ends, steps, index):
    x = RNG.standard_normal((2, 6, 7, 8)).astype(np.float32)
    y = run_slice(x, axes=axes, starts=starts, ends=ends, steps=steps)
    np.testing.assert_array_equal(y, x[index])


def test_negative_step_to_the_front():
    """End -1 after clamping (e.g. INT64_MIN) with a negative step takes element 0 too: a flip."""
    x = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    y = run_slice(x, axes=(1,), starts=(-1,), ends=(INT64_MIN,), steps=(-1,))
    np.testing.assert_array_equal(y, x[:, ::-1])
    # Python's -1 would mean "the last element"; the IR's clamped -1 does not.
    assert slice_bounds(5, 4, -6, -1) == (4, -1, -1)


def test_slice_bounds_by_hand():
    assert slice_bounds(8, 0, INT64_MAX, 1) == (0, 8, 1)
    assert slice_bounds(8, -3, -1, 1) == (5, 7, 1)
    assert slice_bounds(8, 10, 20, 1) == (8, 8, 1)  # empty, not an error
    assert slice_bounds(8, 100, -100, -1) == (7, -1, -1)  # start clamped to dim - 1
    with pytest.raises(ValueError):
        slice_bounds(8, 0, 1, 0)


def test_slice_keeps_the_batch_dynamic():
    x = RNG.standard_normal((5, 4, 3)).astype(np.float32)
    g = slice_graph(x.shape, axes=(2,), starts=(1,), ends=(3,))
    assert g.types["y"].shape == (BATCH, 4, 2)
    np.testing.assert_array_equal(run(g, {"x": x})["y"], x[:, :, 1:3])


@pytest.mark.parametrize("attrs,needle", [
    ({"axes": (0,), "starts": (0,), "ends": (1,)}, "non-batch axis"),
    ({"axes": (3,), "starts": (0,), "ends": (1,)}, "non-batch axis"),
    ({"axes": (1, -2), "starts": (0, 0), "ends": (1, 1)}, "repeat"),
    ({"axes": (1,), "starts": (0,), "ends": (1,), "steps": (0,)}, "step of 0"),
    ({"axes": (1,), "starts": (0, 1), "ends": (1,)}, "equal length"),
])
def test_bad_slices_are_ir_errors(attrs, needle):
    with pytest.raises(IRError, match=needle):
        slice_graph((2, 4, 3), **attrs)
