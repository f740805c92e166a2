"""Microcontroller output: the .tflite as a C++ byte array (what ``xxd -i`` gives TFLite
Micro users, plus 16-byte alignment) and an estimate of the tensor arena it needs.

Arena estimate (see docs/tflite.md): TFLite Micro keeps every non-constant tensor (graph
inputs, op outputs) in the arena and plans their offsets with a greedy planner: buffers
sorted by size, largest first, each at the lowest 16-byte-aligned offset that does not
collide with a buffer alive at the same time. ``plan_activations`` runs that planner on
the model's own op order and tensors (batch 1); the estimate adds the per-tensor,
per-operator and per-channel bookkeeping TFLite Micro also keeps in the arena.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from tapeout.targets.tflite.flatbuffer import ModelInfo

ALIGNMENT = 16  # TFLite Micro's buffer alignment
TENSOR_OVERHEAD = 16  # a TfLiteEvalTensor (data, dims, type) per tensor, 32-bit MCU, rounded up
OP_OVERHEAD = 64  # node + registration pointer + op user data header per operator
CHANNEL_OVERHEAD = 8  # an int32 multiplier and shift per output channel of an integer conv
FIXED_OVERHEAD = 1024  # interpreter, allocator and planner bookkeeping
_PER_CHANNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D")
_BYTES_PER_LINE = 12  # as xxd -i


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


@dataclass(frozen=True)
class ArenaEstimate:
    activations: int  # peak of the planned activation buffers
    overhead: int  # per-tensor, per-op, per-channel and fixed bookkeeping
    tensors: int  # non-constant tensors planned

    @property
    def total(self) -> int:
        return _align(self.activations + self.overhead)


def lifetimes(info: ModelInfo) -> dict[int, tuple[int, int]]:
    """Non-constant tensor -> (first, last) op index during which it must stay in memory."""
    n_ops = len(info.ops)
    span: dict[int, tuple[int, int]] = {t: (0, 0) for t in info.inputs}
    for j, op in enumerate(info.ops):
        for t in (*op.inputs, *op.outputs):
            if t < 0 or info.tensors[t].constant:
                continue
            first, last = span.get(t, (j, j))
            span[t] = (min(first, j), max(last, j))
    for t in info.outputs:
        first, _ = span.get(t, (0, 0))
        span[t] = (first, max(n_ops - 1, 0))
    return span


def plan_activations(info: ModelInfo) -> int:
    """Peak bytes of a greedy (largest first, lowest offset) plan of the activation buffers."""
    span = lifetimes(info)
    size = {t: _align(info.tensors[t].nbytes) for t in span}
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    for t in sorted(span, key=lambda t: (-size[t], span[t][0], t)):
        first, last = span[t]
        busy = sorted((o, s) for o, s, f, la in placed if f <= last and first <= la)
        offset = 0
        for o, s in busy:
            if offset + size[t] <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, size[t], first, last))
    return max((o + s for o, s, _, _ in placed), default=0)


def estimate_arena(info: ModelInfo) -> ArenaEstimate:
    channels = 0
    for op in info.ops:
        if op.op in _PER_CHANNEL_OPS and op.inputs and info.tensors[op.inputs[0]].dtype in ("INT8", "INT16"):
            out = info.tensors[op.outputs[0]]
            channels += out.shape[-1] if out.shape else 1
    overhead = (TENSOR_OVERHEAD * len(info.tensors) + OP_OVERHEAD * len(info.ops)
                + CHANNEL_OVERHEAD * channels + FIXED_OVERHEAD)
    span = lifetimes(info)
    return ArenaEstimate(plan_activations(info), overhead, len(span))


# ----------------------------------------------------------------- C array
@dataclass(frozen=True)
class ArenaFigures:
    """What model.h says of the tensor arena (docs/tflite.md, "Tensor arena")."""

    measured: int  # the smallest arena TFLite Micro allocated and invoked in, on the build host
    pointer_bytes: int  # the build host's (8 on x86_64)
    headroom: int = 0  # bytes added by request (tflite.arena_headroom)
    cortex_m: int | None = None  # the measured figure corrected to 32-bit pointers
    estimate: int | None = None  # the analytic estimate, a cross-check

    @property
    def constant(self) -> int:
        return _align(self.measured + self.headroom)


def c_identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name, flags=re.ASCII).strip("_").lower() or "model"
    return f"m_{ident}" if ident[0].isdigit() else ident


_HEX = [f"0x{b:02x}" for b in range(256)]
# alignas is C11/C++11; a C99 compiler gets the GNU attribute (gcc, clang, armclang and IAR take it).
_ALIGN16 = """#if defined(__cplusplus) && __cplusplus >= 201103L
#define TAPEOUT_ALIGN16 alignas(16)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#include <stdalign.h>
#define TAPEOUT_ALIGN16 alignas(16)
#else
#define TAPEOUT_ALIGN16 __attribute__((aligned(16)))
#endif"""


def c_source(data: bytes, array: str, header: str, note: str) -> str:
    lines = [
        f"// {note}",
        f"// {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}. Generated by tapeout; do not edit.",
        f'#include "{header}"',
        "",
        "// 16-byte alignment: TFLite Micro reads the flatbuffer in place. C++11, C11 and C99 (GNU attribute).",
        _ALIGN16,
        "",
        f"TAPEOUT_ALIGN16 const unsigned char {array}[] = {{",
    ]
    for i in range(0, len(data), _BYTES_PER_LINE):
        lines.append("  " + ", ".join(map(_HEX.__getitem__, data[i:i + _BYTES_PER_LINE])) + ",")
    lines += ["};", f"const unsigned int {array}_len = {len(data)};  // as xxd -i",
              f"const unsigned int {array}_size = {len(data)};  // as TFLite Micro's generate_cc_arrays", ""]
    return "\n".join(lines)


def c_header(array: str, guard: str, note: str, arena: ArenaFigures | None, size: int | None = None) -> str:
    up = array.upper()
    lines = [f"// {note}", "// Generated by tapeout; do not edit.", f"#ifndef {guard}", f"#define {guard}", ""]
    if size is not None:
        lines += [f"#define {up}_SIZE {size}  // bytes in {array}[]", ""]
    if arena is not None:
        lines += [
            f"// Tensor arena for TFLite Micro (reference kernels): {arena.constant} bytes. Measured, not estimated:",
            f"// TFLite Micro itself allocated and invoked this model in {arena.measured} bytes and failed in fewer,",
            f"// on the {arena.pointer_bytes * 8}-bit build host"
            + (f", plus {arena.headroom} bytes of requested headroom." if arena.headroom else "."),
            "// Declare it 16-byte aligned. Optimized kernels (CMSIS-NN) may ask for scratch buffers the",
            "// reference kernels do not: add them with --target-option tflite.arena_headroom=BYTES.",
            f"#define {up}_ARENA_BYTES {arena.constant}",
        ]
        if arena.cortex_m is not None:
            lines += ["// The same model on a 32-bit Cortex-M: pointer-sized structs shrink (docs/tflite.md).",
                      f"#define {up}_ARENA_BYTES_CORTEX_M {_align(arena.cortex_m + arena.headroom)}"]
        if arena.estimate is not None:
            lines += [f"// tapeout's analytic estimate of the {arena.pointer_bytes * 8}-bit figure, a cross-check.",
                      f"#define {up}_ARENA_BYTES_ESTIMATE {arena.estimate}"]
        lines.append("")
    lines += [f"extern const unsigned char {array}[];", f"extern const unsigned int {array}_len;",
              f"extern const unsigned int {array}_size;", "", f"#endif  // {guard}", ""]
    return "\n".join(lines)


def write_c_array(data: bytes, outdir: Path, array: str, note: str, arena: ArenaFigures | None,
                  stem: str = "model") -> list[str]:
    """Write ``<stem>.cc`` and ``<stem>.h`` into ``outdir``; return their names."""
    header = f"{stem}.h"
    guard = f"TAPEOUT_{array.upper()}_H_"
    (outdir / f"{stem}.cc").write_text(c_source(data, array, header, note))
    (outdir / header).write_text(c_header(array, guard, note, arena, len(data)))
    return [f"{stem}.cc", header]
