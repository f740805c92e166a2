"""compiler.layout: the one channels-first predicate and its perms (issue 16, 'one definition each')."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler import calibration, layout, reference_runner
from tapeout.compiler.layout import channels_last_layout, is_channels_first, to_channels_first, to_channels_last


@pytest.mark.parametrize("source, rank, expected", [
    ("NCHW", 4, True), ("NCW", 3, True), ("NCDHW", 5, True),
    ("NHWC", 4, False), ("NWC", 3, False),
    ("NC", 2, False),  # no spatial axes: nothing to move
    ("NCHW", 2, False),  # a layout that does not fit the rank asked about
    (None, 4, False), ("", 4, False),
])
def test_is_channels_first(source, rank, expected):
    assert is_channels_first(source, rank) is expected


@pytest.mark.parametrize("rank", [3, 4, 5])
def test_perms_are_inverse_and_move_the_channel_axis(rank):
    x = np.zeros((2, *range(3, 3 + rank - 2), 7))  # [N, *S, C] with C = 7
    first = x.transpose(to_channels_first(rank))
    assert first.shape[1] == 7 and first.shape[2:] == x.shape[1:-1]
    assert first.transpose(to_channels_last(rank)).shape == x.shape
    assert channels_last_layout({3: "NCW", 4: "NCHW", 5: "NCDHW"}[rank]) == {3: "NWC", 4: "NHWC", 5: "NDHWC"}[rank]


def test_compiler_and_targets_share_one_definition():
    from tapeout.targets.onnx import layout as onnx_layout

    assert not hasattr(onnx_layout, "is_channels_first")  # importers take it from compiler.layout
    assert onnx_layout.to_channels_first is layout.to_channels_first  # what its own helpers use
    assert calibration.is_channels_first is reference_runner.is_channels_first is layout.is_channels_first
    assert not hasattr(calibration, "_channels_first") and not hasattr(reference_runner, "_channels_first")
