"""Axis bookkeeping between the IR's channels-last tensors and ONNX's channels-first ones.

A tensor of rank >= 3 is stored in ONNX either as the IR has it ("channels-last",
[N, *S, C]) or channels-first ([N, C, *S]). ``physical_axes(rank, cf)[j]`` is the
IR (logical) axis held by physical axis ``j``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tapeout.compiler.layout import to_channels_first


def physical_axes(rank: int, cf: bool) -> list[int]:
    return to_channels_first(rank) if cf and rank >= 3 else list(range(rank))


def physical_axis(axis: int, rank: int, cf: bool) -> int:
    """Where logical ``axis`` (negative allowed) lives in the physical tensor."""
    return physical_axes(rank, cf).index(axis % rank)


def physical_shape(shape: Sequence, cf: bool) -> list:
    return [shape[a] for a in physical_axes(len(shape), cf)]


def broadcast_constant(array: np.ndarray, rank: int, cf: bool) -> np.ndarray:
    """A constant operand of a broadcasting op, brought to ``rank`` and to the physical layout."""
    full = array.reshape((1,) * (rank - array.ndim) + array.shape)
    return full.transpose(physical_axes(rank, cf)) if cf else full


def flatten_row_order(spatial_and_channels: Sequence[int]) -> np.ndarray:
    """For each element of a channels-first flatten, its index in the channels-last flatten.

    Permuting a dense layer's weight rows by this makes it consume the channels-first
    flatten directly, so no Transpose is needed before Flatten.
    """
    dims = tuple(spatial_and_channels)
    ids = np.arange(int(np.prod(dims))).reshape(dims)
    return ids.transpose(len(dims) - 1, *range(len(dims) - 1)).reshape(-1)
