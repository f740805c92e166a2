"""Channels-first source layouts against the IR's channels-last tensors: one definition each.

The IR stores every tensor with spatial axes channels-last ([N, *S, C]); ``graph.io_layouts``
records the source model's layout of each input and output ("NCHW" for most ONNX models).
Calibration, the reference runner and the targets all ask the same questions of it.
"""

from __future__ import annotations


def is_channels_first(layout: str | None, rank: int) -> bool:
    """True for source layouts such as "NCHW"/"NCW" (channel axis 1) on tensors that have spatial axes."""
    return rank >= 3 and bool(layout) and len(layout or "") >= 3 and (layout or "")[1] == "C"


def to_channels_first(rank: int) -> list[int]:
    """Transpose perm [N, *S, C] -> [N, C, *S]."""
    return [0, rank - 1, *range(1, rank - 1)]


def to_channels_last(rank: int) -> list[int]:
    """Transpose perm [N, C, *S] -> [N, *S, C]."""
    return [0, *range(2, rank), 1]


def channels_last_layout(layout: str) -> str:
    """"NCHW" -> "NHWC", "NCW" -> "NWC": the same axes with the channels moved last."""
    return layout[0] + layout[2:] + layout[1]
