"""How an ONNX value is held by an IR value: axis permutations and flattened orders.

ONNX models are mostly channels-first; the IR is channels-last. Rather than
transposing at every op, the importer records per value how the IR tensor relates
to the ONNX one and moves data only where an op cannot absorb the difference:

- ``Layout.perm``: the IR tensor is the ONNX tensor transposed, IR axis ``j``
  holding ONNX axis ``perm[j]`` (the batch, axis 0, never moves).
- ``Layout.flat``: a rank-2 ``[N, K]`` value made by flattening a permuted tensor;
  IR feature ``k`` is ONNX feature ``flat.order[k]``. A following dense layer
  absorbs this by permuting its weight rows.

Everything here is pure (shapes, permutations, NumPy); emitting IR nodes is the
job of ``onnx_context``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from tapeout.compiler.ops import slice_bounds

Perm = tuple[int, ...]
Shape = tuple[int, ...]


def identity(rank: int) -> Perm:
    return tuple(range(rank))


def channels_last(rank: int) -> Perm:
    """The perm that stores an ONNX [N, C, *S] tensor as IR [N, *S, C]."""
    return (0, *range(2, rank), 1) if rank >= 3 else identity(rank)


def to_ir_shape(onnx_shape: Sequence[int], perm: Perm) -> Shape:
    return tuple(onnx_shape[a] for a in perm)


def to_onnx_shape(ir_shape: Sequence, perm: Perm) -> tuple:
    out: list = [None] * len(perm)
    for j, a in enumerate(perm):
        out[a] = ir_shape[j]
    return tuple(out)


def transpose_between(have: Perm, want: Perm) -> Perm:
    """The IR transpose perm taking storage ``have`` to storage ``want``."""
    return tuple(have.index(a) for a in want)


def moves_data(ir_shape: Sequence[int], perm: Perm) -> bool:
    """Whether an IR transpose by ``perm`` reorders any axis longer than 1 (else it is a reshape)."""
    big = [p for p in perm if ir_shape[p] != 1]
    return big != sorted(big)


def after_transpose(perm: Perm, onnx_perm: Sequence[int]) -> Perm:
    """Storage perm of ``Transpose(x, onnx_perm)`` when the IR tensor of x is reused as is."""
    return tuple(list(onnx_perm).index(a) for a in perm)


def compose_onnx_transposes(first: Sequence[int], then: Sequence[int]) -> list[int]:
    """``Transpose(Transpose(x, first), then)`` as one perm over x's axes."""
    return [first[t] for t in then]


# ------------------------------------------------------------------- flatten
@dataclass(frozen=True)
class Flat:
    """A [N, K] IR value that is the row-major flatten of an IR tensor stored with ``perm``.

    ``inner`` is that tensor's IR shape without the batch.
    """

    inner: Shape
    perm: Perm

    @cached_property
    def order(self) -> np.ndarray:
        """For each IR feature k, the ONNX (row-major, ONNX axis order) feature index."""
        onnx_inner = to_onnx_shape((1, *self.inner), self.perm)[1:]
        ids = np.arange(math.prod(onnx_inner)).reshape(onnx_inner)
        return ids.transpose([a - 1 for a in self.perm[1:]]).reshape(-1)


@dataclass(frozen=True)
class Layout:
    perm: Perm
    flat: Flat | None = None

    @staticmethod
    def native(rank: int) -> "Layout":
        return Layout(identity(rank))

    @property
    def rank(self) -> int:
        return len(self.perm)

    @property
    def is_native(self) -> bool:
        return self.flat is None and self.perm == identity(len(self.perm))

    def describe(self) -> str:
        if self.flat is not None:
            return "flattened from a permuted tensor"
        return f"perm {list(self.perm)}"


# ----------------------------------------------------------------- constants
def align_constant(c: np.ndarray, layout: Layout) -> np.ndarray:
    """A constant operand of an elementwise op, brought into ``layout`` for NumPy broadcasting.

    ONNX broadcasting aligns trailing axes; the constant is padded to the value's rank,
    permuted like the value, and its leading unit axes are dropped again. The caller
    has checked that it does not reach the batch axis.
    """
    rank = layout.rank
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if layout.flat is not None:
        if full.shape[-1] != 1:
            full = full[..., layout.flat.order]
    else:
        full = full.transpose(layout.perm)
    lead = 0
    while lead < full.ndim - 1 and full.shape[lead] == 1:
        lead += 1
    return full.reshape(full.shape[lead:])


# ------------------------------------------------------------------- reshape
@dataclass(frozen=True)
class ReshapePlan:
    """Carry out an ONNX reshape on an IR tensor: optionally transpose first, then reshape.

    ``before`` is the storage perm the input must have (None: as it is); ``after`` is the
    storage perm of the result; ``flatten`` is set when the result is better kept
    flattened (a rank-2 result of a permuted tensor, see ``Flat``) than transposed now.
    """

    before: Perm | None
    after: Perm
    flatten: bool = False


def _groups(src: list[tuple[int, int]], dst: list[tuple[int, int]]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of source axes with runs of destination axes of equal element count.

    Both lists hold (axis, size) of the axes longer than 1, in ONNX order.
    """
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        gi, gj = [src[i][0]], [dst[j][0]]
        pi, pj = src[i][1], dst[j][1]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(src[i][0])
                pi *= src[i][1]
                i += 1
            else:
                gj.append(dst[j][0])
                pj *= dst[j][1]
                j += 1
        groups.append((gi, gj))
    return groups


def _place_units(perm: list[int], units: list[int]) -> list[int]:
    """Insert unit axes into a storage perm, each right after its ONNX predecessor."""
    for u in sorted(units):
        perm.insert(perm.index(u - 1) + 1 if u - 1 in perm else 1, u)
    return perm


def plan_reshape(src: Sequence[int], perm: Perm, dst: Sequence[int]) -> ReshapePlan:
    """How to reshape an ONNX value of shape ``src`` held with ``perm`` into shape ``dst``.

    Both shapes carry the batch at axis 0 (equal, checked by the caller). Axes are
    grouped into runs whose element counts match; when each run of source axes is
    contiguous and in ONNX order in the IR storage, a plain IR reshape does it and the
    output keeps the input's run order. Otherwise the runs are brought into order first
    (the only case where data really moves), or, for a rank-2 result, kept flattened.
    """
    big_src = [(a, int(src[a])) for a in range(1, len(src)) if src[a] != 1]
    big_dst = [(a, int(dst[a])) for a in range(1, len(dst)) if dst[a] != 1]
    groups = _groups(big_src, big_dst)
    stored = [a for a in perm[1:] if src[a] != 1]

    def in_order(order: list[int]) -> bool:
        for g_in, _ in groups:
            pos = [order.index(a) for a in g_in]
            if pos != list(range(pos[0], pos[0] + len(pos))):
                return False
        return True

    groups.sort(key=lambda g: min(stored.index(a) for a in g[0]))
    before: Perm | None = None
    if not in_order(stored):
        if len(dst) == 2:
            return ReshapePlan(None, identity(2), flatten=True)
        units_in = [a for a in range(1, len(src)) if src[a] == 1]
        before = tuple(_place_units([0, *(a for g_in, _ in groups for a in g_in)], units_in))
    big_after = [a for _, g_out in groups for a in g_out]
    # Unit axes can go anywhere for free: prefer channels-last storage (what spatial ops read),
    # then ONNX order, when the axes that hold data allow it.
    for candidate in (channels_last(len(dst)), identity(len(dst))):
        if [a for a in candidate[1:] if dst[a] != 1] == big_after:
            return ReshapePlan(before, candidate)
    units_out = [a for a in range(1, len(dst)) if dst[a] == 1]
    return ReshapePlan(before, tuple(_place_units([0, *big_after], units_out)))


def reshape_target(src: Sequence[int], target: Sequence[int], allowzero: bool = False) -> Shape:
    """ONNX Reshape's output shape: 0 copies the input dim (unless allowzero), one -1 is inferred."""
    if not allowzero and any(d == 0 for d in target[len(src):]):
        raise ValueError(f"shape {list(target)} copies (0) a dim past the input's rank {len(src)}")
    out = [int(src[i]) if (d == 0 and not allowzero) else int(d) for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise ValueError(f"shape {list(target)} has more than one -1")
    total = math.prod(int(d) for d in src)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise ValueError(f"cannot reshape {list(src)} to {list(target)}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise ValueError(f"cannot reshape {list(src)} to {list(target)}")
    return tuple(out)


# --------------------------------------------------------------- slice/split
# An end this large means "to the end of the axis" (exporters write INT32_MAX or INT64_MAX).
_OPEN_END = 2**31 - 1


def slice_axes(shape: Sequence[int], axes: Sequence[int], starts: Sequence[int], ends: Sequence[int],
               steps: Sequence[int], batch_fixed: bool = False) -> list[tuple[int, int, int, int]]:
    """ONNX Slice on ``shape`` as the IR slice's (axis, start, end, step), no-op axes left out.

    Bounds come back in range: 0 <= start, end <= dim, except a negative step's end of
    -dim - 1 (through element 0). The batch (axis 0, ``shape[0]`` being the folding batch)
    may only be kept whole: from 0 to an open end, or to its size when ``batch_fixed``.
    Raises ValueError for a zero step, a repeated axis, a batch slice, or an open end with a
    negative step (which the spec and onnxruntime disagree on).
    """
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes {list(axes)} repeat an axis")
    out = []
    for a, b, e, s in zip(axes, starts, ends, steps):
        if s == 0:
            raise ValueError("a step of 0 is not a slice")
        dim = int(shape[a])
        if s < 0 and e >= _OPEN_END:
            # The ONNX spec clamps it to dim - 1 (an empty slice); onnxruntime takes the whole axis.
            raise ValueError(f"end {e} with the negative step {s} is read differently by the ONNX spec (empty) "
                             "and onnxruntime (the whole axis); not supported")
        lo, hi, s = slice_bounds(dim, b, e, s)
        whole = (lo, hi, s) == (0, dim, 1)
        if a == 0:
            if not (whole and (batch_fixed or (b == 0 and e >= _OPEN_END))):
                raise ValueError("slicing the batch axis is not supported")
            continue
        if not whole:
            out.append((a, lo, hi if hi >= 0 else -dim - 1, s))
    return out


def split_sizes(dim: int, sizes: Sequence[int] | None, count: int, uneven: bool = False) -> list[int]:
    """The part sizes of ONNX Split of an axis of length ``dim``.

    ``sizes`` given: checked to add up. Else ``count`` equal parts; with ``uneven`` (Split-18's
    ``num_outputs``) the parts are ceil(dim / count) long and the last one takes the rest.
    """
    if sizes is not None:
        if any(s < 0 for s in sizes) or sum(sizes) != dim:
            raise ValueError(f"split sizes {list(sizes)} do not add up to the axis length {dim}")
        return list(sizes)
    if count < 1:
        raise ValueError(f"cannot split into {count} parts")
    if dim % count == 0:
        return [dim // count] * count
    if not uneven:
        raise ValueError(f"an axis of length {dim} does not split into {count} equal parts")
    part = -(-dim // count)
    sizes = [min(part, max(dim - i * part, 0)) for i in range(count)]
    if sizes[-1] <= 0:
        raise ValueError(f"an axis of length {dim} does not split into {count} parts of {part}")
    return sizes
