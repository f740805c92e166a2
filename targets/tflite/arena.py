"""The tensor arena TensorFlow Lite Micro needs for a model, worked out from the model alone.

TFLite Micro takes all its memory from one arena: a *head* growing up from the start (the planned
activation buffers and kernels' scratch buffers) and a *tail* growing down from the end
(persistent data: the allocator's own objects, one TfLiteEvalTensor per tensor, one node struct
per operator, each operator's parsed options, each kernel's OpData and the buffers its Prepare
asks for, TfLiteTensor structs for the graph's inputs and outputs). ``estimate_arena`` replays,
allocation by allocation and with each one's alignment, what the pinned build does
(``tflite-micro`` 0.dev20261023182759: MicroInterpreter over the RecordingMicroAllocator the
Python binding uses, reference kernels, compression support compiled in), transient moments
included: the temporary TfLiteTensor structs kernels take during Prepare, and planning, which
needs an AllocationInfo per tensor and the greedy planner's per-buffer scratch while the tail is
nearly complete. The arena must hold the largest moment; for small models that is planning.

Struct sizes come from field lists (``STRUCTS``, the one table) laid out by C's rules for a
pointer width: 8 for the 64-bit host that ``runtime.tflm`` measures on, 4 for a 32-bit Cortex-M
(doubles 8-byte aligned, as in the Arm AAPCS). Sources, all in tensorflow/tflite-micro:
tensorflow/lite/core/c/common.h (TfLiteTensor and TfLiteNode under TF_LITE_STATIC_MEMORY,
TfLiteEvalTensor), micro/micro_allocator.{h,cc}, micro/recording_micro_allocator.h,
micro/arena_allocator/single_arena_buffer_allocator.{h,cc},
micro/memory_planner/greedy_memory_planner.{h,cc}, micro/micro_allocation_info.cc,
micro/micro_interpreter.cc, and the kernels named beside their entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from tapeout.targets.tflite.flatbuffer import ModelInfo, OpInfo, TensorInfo, read_model, schema

ALIGNMENT = 16  # MicroArenaBufferAlignment(): planned buffers and kernels' persistent buffers
MAX_SCRATCH_PER_OP = 12  # kMaxScratchBuffersPerOp (micro_allocator.cc): request slots kept free in the head
SOFTMAX_INT16_LUT = 513  # kInt16LUTArraySize (softmax_common.cc): two int16 tables per int16 softmax
# GreedyMemoryPlanner::per_buffer_size(): BufferRequirements (4 ints), sorted size and id, a
# ListEntry (3 ints) and the offset; all int, so the same on every target.
PLANNER_BYTES_PER_BUFFER = 40

# ------------------------------------------------------------------ struct layouts
# Field codes: p pointer-sized (pointers, size_t, intptr_t, vtable pointers), i 4-byte
# (int, float, enum), h int16, b bool/int8, d double; "i5" is an array of five; "@Name" embeds
# another entry (a member struct, or a base class first).
STRUCTS: dict[str, str] = {
    "TfLiteQuantization": "i p",  # common.h: type, params*
    "TfLiteQuantizationParams": "i i",  # common.h: scale (float), zero_point
    "TfLitePaddingValues": "i i i i",  # common.h: width, height, width_offset, height_offset
    # common.h, TF_LITE_STATIC_MEMORY: quantization, params, data*, dims*, bytes, type,
    # allocation_type, is_variable.
    "TfLiteTensor": "@TfLiteQuantization @TfLiteQuantizationParams p p p i i b",
    "TfLiteEvalTensor": "p p i",  # common.h: data*, dims*, type
    # common.h, TF_LITE_STATIC_MEMORY: inputs*, outputs*, intermediates*, user_data*,
    # builtin_data*, custom_initial_data*, custom_initial_data_size.
    "TfLiteNode": "p p p p p p i",
    "NodeAndRegistration": "@TfLiteNode p",  # micro_allocator.h: the node and its registration*
    "TfLiteAffineQuantization": "p p i",  # common.h: scale*, zero_point*, quantized_dimension
    "SubgraphAllocations": "p p",  # micro_allocator.h: node_and_registrations*, tensors*
    "ScratchBufferRequest": "p i i",  # micro_allocator.h: bytes, node_idx, subgraph_idx
    "ScratchBufferHandle": "p",  # micro_allocator.h: data*
    # micro_allocation_info.h: bytes, output_ptr, first_created, last_used, offline_offset, needs_allocating.
    "AllocationInfo": "p p i i i b",
    # single_arena_buffer_allocator.h: two interface vtables, buffer_head_, buffer_tail_, head_,
    # tail_, temp_, temp_buffer_ptr_check_sum_ (intptr_t), temp_buffer_count_.
    "SingleArenaBufferAllocator": "p p p p p p p p i",
    # recording_single_arena_buffer_allocator.h adds requested head and tail bytes, used, count.
    "RecordingSingleArenaBufferAllocator": "@SingleArenaBufferAllocator p p p p",
    # greedy_memory_planner.h: vtable, max_buffer_count_, buffer_count_, requirements_*,
    # buffer_sizes_sorted_*, buffer_ids_sorted_*, buffers_sorted_by_offset_*, next_free_entry_,
    # first_entry_index_, buffer_offsets_*, need_to_calculate_offsets_.
    "GreedyMemoryPlanner": "p i i p p p p i i p b",
    # micro_allocator.h: vtable, the two buffer allocators*, builtin_data_allocator_*,
    # memory_planner_*, model_is_allocating_, scratch_buffer_request_count_, scratch_buffer_head_*,
    # max_head_buffer_usage_.
    "MicroAllocator": "p p p p p b p p p",
    # recording_micro_allocator.h adds recording_memory_allocator_* and seven RecordedAllocation
    # {requested_bytes, used_bytes, count}.
    "RecordedAllocation": "p p p",  # recording_micro_allocator.h: requested_bytes, used_bytes, count
    "RecordingMicroAllocator": "@MicroAllocator p" + " @RecordedAllocation" * 7,
    "MicroBuiltinDataAllocator": "p p",  # micro_allocator.cc: vtable, persistent allocator*
    # Measured, not derived: the pinned build's fixed tail is 32 bytes over the objects above (a
    # one-op RELU model: 488 unitemized bytes against 456). Taken as four pointers: compression
    # support, compiled in, widens the allocator's objects.
    "unlisted": "p p p p",
    # Kernels' OpData, allocated in Init with context->AllocatePersistentBuffer (16-byte aligned).
    # kernels/conv.h (depthwise_conv uses it too): padding {width, height, width_offset,
    # height_offset}, input/filter/output zero points, output_multiplier, output_shift,
    # per_channel_output_multiplier*, per_channel_output_shift*, activation min/max,
    # filter_buffer_index, and (USE_TFLM_COMPRESSION) weights and bias scratch indices.
    "OpDataConv": "@TfLitePaddingValues i i i i i p p i i i i i",
    # kernels/fully_connected.h: output_multiplier, output_shift, activation min/max,
    # input_quantized_index, three zero points, filter_buffer_index, per-channel multiplier* and
    # shift*, is_per_channel, two compression scratch indices.
    "OpDataFullyConnected": "i i i i i i i i i p p b i i",
    "OpDataPooling": "@TfLitePaddingValues i i i i",  # kernels/pooling.h: padding, activation min/max (int, float)
    # kernels/reduce.h lists nine 4-byte fields; the pinned build's is 44 bytes (measured: the
    # recorder's requested bytes for the digits CNN are 8 over nine fields), so eleven here.
    "OpDataReduce": "i i i i i i i i i i i",
    # kernels/internal/types.h SoftmaxParams: beta (double), input_multiplier, input_left_shift,
    # reverse_scaling_divisor, reverse_scaling_right_shift, diff_min, zero_point, scale, then
    # table*, exp_lut*, one_over_one_plus_x_lut*, uint8_table1*, uint8_table2*.
    "SoftmaxParams": "d i i i i i i i p p p p p",
    # kernels/quantize.h: QuantizationParams {zero_point, scale (double)}, requantize multiplier,
    # shift, input_zero_point.
    "QuantizationParams": "i d",  # kernels/internal/types.h: zero_point, scale (double)
    "OpDataQuantizeReference": "@QuantizationParams i i i",
    "DequantizationParams": "d i",  # kernels/internal/types.h: scale (double), zero_point
    "DequantizeOpData": "@DequantizationParams i i i",  # kernels/dequantize.h: + multiplier, shift, zero point
    # kernels/internal/types.h StridedSliceParams: three (int8 count, int32[5]) groups, five
    # int16 masks, bool offset.
    "StridedSliceParams": "b i5 b i5 b i5 h h h h h b",
    # Builtin options (core/c/builtin_op_data.h), parsed into the tail by MicroBuiltinDataAllocator.
    "TfLiteConvParams": "i i i i i i i",  # padding, stride w/h, activation, dilation w/h, quantized_bias_type
    "TfLiteDepthwiseConvParams": "i i i i i i i",  # padding, strides, depth_multiplier, activation, dilations
    # activation, weights_format, keep_num_dims, asymmetric_quantize_inputs, quantized_bias_type;
    # plus 16 bytes the pinned build takes per FULLY_CONNECTED and the recorder does not name
    # (measured on one-op models: 32 unitemized bytes per op, not 16), counted here.
    "TfLiteFullyConnectedParams": "i i b b i i i i i",
    "TfLitePoolParams": "i i i i i i @TfLitePaddingValues",  # padding, strides, filter w/h, activation, computed
    "TfLiteReducerParams": "b",  # keep_dims
    "TfLiteSoftmaxParams": "i",  # beta (float)
    "TfLiteReshapeParams": "i8 i",  # shape[8], num_dimensions
    "TfLiteShapeParams": "i",  # out_type
    "TfLiteStridedSliceParams": "i i i i i b",  # five masks, offset
    "TfLitePackParams": "i i",  # values_count, axis
}

_FIELD = {"i": (4, 4), "h": (2, 2), "b": (1, 1), "d": (8, 8)}


def struct_size(name: str, pointer_bytes: int = 8) -> tuple[int, int]:
    """(sizeof, alignof) of ``STRUCTS[name]`` for a pointer width, by C's layout rules."""
    offset, align = 0, 1
    for f in STRUCTS[name].split():
        if f[0] == "@":
            size, a = struct_size(f[1:], pointer_bytes)
            count = 1
        else:
            code, count = f[0], int(f[1:] or 1)
            size, a = (pointer_bytes, pointer_bytes) if code == "p" else _FIELD[code]
        offset = _up(offset, a) + size * count
        align = max(align, a)
    return _up(offset, align), align


def struct_table() -> list[dict[str, Any]]:
    """Every struct of ``STRUCTS`` with its 64-bit and 32-bit size (docs and the correction)."""
    return [{"struct": n, "bytes_64": struct_size(n, 8)[0], "bytes_32": struct_size(n, 4)[0]} for n in STRUCTS]


def _up(n: int, a: int) -> int:
    return -(-n // a) * a


def _down(n: int, a: int) -> int:
    return n // a * a


# ------------------------------------------------------------------ per-op knowledge
@dataclass(frozen=True)
class _Op:
    params: str | None  # builtin options struct its parser allocates (None: none)
    op_data: str | None  # OpData its kernel's Init allocates (None: no Init)


_OPS: dict[str, _Op] = {
    "CONV_2D": _Op("TfLiteConvParams", "OpDataConv"),  # kernels/conv_common.cc
    "DEPTHWISE_CONV_2D": _Op("TfLiteDepthwiseConvParams", "OpDataConv"),  # kernels/depthwise_conv_common.cc
    "FULLY_CONNECTED": _Op("TfLiteFullyConnectedParams", "OpDataFullyConnected"),  # kernels/fully_connected.cc
    "MAX_POOL_2D": _Op("TfLitePoolParams", "OpDataPooling"),  # kernels/pooling_common.cc
    "AVERAGE_POOL_2D": _Op("TfLitePoolParams", "OpDataPooling"),
    "MEAN": _Op("TfLiteReducerParams", "OpDataReduce"),  # kernels/reduce_common.cc
    "SUM": _Op("TfLiteReducerParams", "OpDataReduce"),
    "SOFTMAX": _Op("TfLiteSoftmaxParams", "SoftmaxParams"),  # kernels/softmax_common.cc
    "QUANTIZE": _Op(None, "OpDataQuantizeReference"),  # kernels/quantize_common.cc
    "DEQUANTIZE": _Op(None, "DequantizeOpData"),  # kernels/dequantize_common.cc
    "RESHAPE": _Op("TfLiteReshapeParams", None),  # kernels/reshape.cc
    "EXPAND_DIMS": _Op(None, None),  # kernels/expand_dims.cc
    "SHAPE": _Op("TfLiteShapeParams", None),  # kernels/shape.cc
    "STRIDED_SLICE": _Op("TfLiteStridedSliceParams", "StridedSliceParams"),  # kernels/strided_slice.cc
    "PACK": _Op("TfLitePackParams", None),  # kernels/pack.cc
}
# Ops not modelled get conv's structs, a generous guess; ArenaEstimate.assumed_ops names them.
_ASSUMED = _Op("TfLiteConvParams", "OpDataConv")


# ------------------------------------------------------------------ the model's facts
@dataclass(frozen=True)
class _Facts:
    quant: dict[int, int]  # tensor -> number of quantization scales (quantized tensors only)
    variables: frozenset[int] = frozenset()


def quantization(data: bytes) -> dict[int, int]:
    """Tensor index -> number of quantization scales, for the tensors TFLite Micro treats as
    quantized (scale and zero_point both non-empty: micro_allocator.cc)."""
    return _read_facts(data).quant


def _read_facts(data: bytes) -> _Facts:
    model = schema().Model.GetRootAs(bytearray(data), 0)
    sub = model.Subgraphs(0)
    quant, variables = {}, set()
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        q = t.Quantization()
        if q is not None and q.ScaleLength() > 0 and q.ZeroPointLength() > 0:
            quant[i] = q.ScaleLength()
        if t.IsVariable():
            variables.add(i)
    return _Facts(quant, frozenset(variables))


def assumed_quantization(info: ModelInfo) -> dict[int, int]:
    """Without the file: every integer tensor quantized per-tensor, except conv, depthwise and
    fully connected weights and biases, per output channel (the converters' default)."""
    out = {i: 1 for i, t in enumerate(info.tensors) if t.dtype in ("INT8", "INT16", "INT4")}
    for op in info.ops:
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op.inputs) > 1:
            w = info.tensors[op.inputs[1]]
            if w.dtype in ("INT8", "INT4") and w.shape:
                channels = w.shape[3 if op.op == "DEPTHWISE_CONV_2D" else 0]
                out.update({t: channels for t in op.inputs[1:3] if t >= 0})
    return out


# ------------------------------------------------------------------ the planner
def planned_buffers(info: ModelInfo, scratch: Iterable[tuple[int, int]] = (),
                    variables: Iterable[int] = ()) -> list[tuple[int, int, int]]:
    """(bytes, first, last) of each buffer TFLite Micro plans, in its insertion order
    (micro_allocation_info.cc): non-constant tensors by index, then kernels' scratch buffers
    ((node, bytes) pairs). Graph inputs are created at scope 0, operator i runs at scope i + 1,
    graph outputs live to the last scope; variable tensors are not planned (they are persistent)."""
    first: dict[int, int] = {t: 0 for t in (*info.inputs, *info.outputs)}
    last: dict[int, int] = dict(first)
    for i, op in enumerate(info.ops, start=1):
        for t in op.outputs:
            first[t] = last[t] = i
        for t in op.inputs:
            if t >= 0:
                last[t] = i
    for t in info.outputs:
        last[t] = len(info.ops)
    skip = set(variables)
    out = [(ti.nbytes, first[t], last[t]) for t, ti in enumerate(info.tensors)
           if t in first and not ti.constant and ti.nbytes and t not in skip]
    return out + [(nbytes, node + 1, node + 1) for node, nbytes in scratch]


def plan(buffers: list[tuple[int, int, int]]) -> int:
    """Peak of TFLite Micro's greedy plan (greedy_memory_planner.cc): sizes rounded up to 16, a
    stable sort largest first, each buffer in the first gap, among the buffers live at the same
    time, that holds it, else after the last of them."""
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    for k in sorted(range(len(buffers)), key=lambda k: -_up(buffers[k][0], ALIGNMENT)):
        size, first, last = _up(buffers[k][0], ALIGNMENT), buffers[k][1], buffers[k][2]
        offset = 0
        for o, s, f, la in sorted(placed):
            if f > last or la < first:
                continue
            if o - offset >= size:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, first, last))
    return max((o + s for o, s, _, _ in placed), default=0)


# ------------------------------------------------------------------ the allocator, replayed
class _Arena:
    """SingleArenaBufferAllocator over an arena whose start is 16-byte aligned and whose end is
    ``end`` modulo 16: the tail as bytes used below the end, head and temporaries as offsets
    from the start, and ``need``, the smallest arena in which every step so far succeeds."""

    def __init__(self, pointer_bytes: int, end: int = 0) -> None:
        self.p = pointer_bytes
        self.end = end
        self.tail = self.head = self.temp = self.need = 0
        self.need_at = ""
        self.used: dict[str, int] = {}
        self.count: dict[str, int] = {}

    def _needs(self, n: int, where: str) -> None:
        if n > self.need:
            self.need, self.need_at = n, where

    def persistent(self, size: int, align: int, part: str, where: str) -> int:
        """AllocatePersistentBuffer: aligned down from the tail; checked against the head only
        (not against live temporaries). Returns the bytes it took, padding included."""
        before = self.tail
        self.tail = self.end - _down(self.end - self.tail - size, align)
        self.used[part] = self.used.get(part, 0) + self.tail - before
        self.count[part] = self.count.get(part, 0) + 1
        self._needs(self.head + self.tail, where)
        return self.tail - before

    def struct(self, name: str, part: str, where: str, n: int = 1) -> int:
        size, align = struct_size(name, self.p)
        return self.persistent(size * n, align, part, where)

    def resize_head(self, size: int, where: str) -> None:
        self.head = self.temp = size
        self._needs(size + self.tail, where)

    def temporary(self, size: int, align: int, where: str) -> None:
        self.temp = _up(self.temp, align) + size
        self._needs(self.temp + self.tail, where)

    def planner_scratch(self, nbytes: int, where: str) -> None:
        # GetAvailableMemory(16): from the temp end aligned up to the tail aligned down.
        tail = self.end - _down(self.end - self.tail, ALIGNMENT)
        self._needs(_up(self.temp, ALIGNMENT) + nbytes + tail, where)


# ------------------------------------------------------------------ the estimate
# The recording allocator's names for what it counts (RecordingMicroAllocator::PrintAllocations).
EVAL_TENSORS = "TfLiteEvalTensor data"
NODES = "NodeAndRegistration struct"
PERSISTENT_TENSORS = "Persistent TfLiteTensor data"
PERSISTENT_QUANTIZATION = "Persistent TfLiteTensor quantization data"
PERSISTENT_BUFFERS = "Persistent buffer data"
VARIABLE_BUFFERS = "TfLiteTensor variable buffer data"

# The parts of an estimate, in the order the docs and the report list them.
PARTS = ("activations", "eval_tensors", "node_registrations", "persistent_tensors",
         "persistent_quantization", "persistent_buffers", "variables", "op_params", "fixed", "transient")


@dataclass(frozen=True)
class ArenaEstimate:
    """TFLite Micro's arena for one model, in parts (bytes; alignment padding is counted in the
    part whose allocation needed it). ``total`` is the arena to give MicroInterpreter: the
    largest moment, a multiple of 16, equal to ``sum(parts)``."""

    pointer_bytes: int
    recording: bool  # the RecordingMicroAllocator's objects (the Python binding), or a plain MicroAllocator's
    total: int
    activations: int  # the planned head: activation buffers and kernels' scratch buffers
    kernel_scratch: int  # of which kernels' scratch buffers (sizes rounded to 16)
    eval_tensors: int  # one TfLiteEvalTensor per tensor of the subgraph
    node_registrations: int  # one NodeAndRegistration per operator
    persistent_tensors: int  # TfLiteTensor structs of the graph's inputs and outputs
    persistent_quantization: int  # their quantization: TfLiteAffineQuantization and zero points
    persistent_buffers: int  # kernels' OpData and Prepare buffers, the interpreter's I/O pointer arrays
    variables: int  # variable tensors' buffers (persistent, not planned)
    op_params: int  # each operator's parsed builtin options
    fixed: int  # allocator, planner and subgraph table objects, scratch buffer handles
    transient: int  # what the largest moment (planning or a Prepare) needs beyond head + tail, and the round-up to 16
    peak_at: str  # that moment: "invoke", "planning" or "prepare <OP> #<index>"
    counts: dict[str, int] = field(default_factory=dict)  # structs counted, by the recorder's names
    persistent_buffers_by_op: dict[str, int] = field(default_factory=dict)
    assumed_ops: tuple[str, ...] = ()  # op types whose kernel data is guessed, not modelled

    @property
    def tail(self) -> int:
        return sum(getattr(self, p) for p in PARTS if p not in ("activations", "transient"))

    def parts(self) -> dict[str, int]:
        return {p: getattr(self, p) for p in PARTS}

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "pointer_bytes": self.pointer_bytes, "recording": self.recording,
                "peak_at": self.peak_at, **self.parts(), "kernel_scratch": self.kernel_scratch,
                "tail": self.tail, "counts": dict(sorted(self.counts.items())),
                "persistent_buffers_by_op": dict(sorted(self.persistent_buffers_by_op.items())),
                "assumed_ops": list(self.assumed_ops)}


def estimate_arena(model: ModelInfo | bytes, pointer_bytes: int = 8, recording: bool = True) -> ArenaEstimate:
    """The arena TFLite Micro needs for ``model``: the .tflite bytes, or its ModelInfo (then
    quantization is assumed as ``assumed_quantization`` says and no tensor is a variable).
    ``pointer_bytes`` 8: the 64-bit host ``runtime.tflm`` measures on; 4: a 32-bit Cortex-M.
    ``recording``: the Python binding's RecordingMicroAllocator (what is measured); False: a
    plain MicroInterpreter's allocator, as on a device (smaller)."""
    if pointer_bytes not in (4, 8):
        raise ValueError(f"pointer_bytes must be 4 or 8, not {pointer_bytes}")
    if isinstance(model, ModelInfo):
        return _replay(model, _Facts(assumed_quantization(model)), pointer_bytes, recording)
    data = bytes(model)
    return _replay(read_model(data), _read_facts(data), pointer_bytes, recording)


def _replay(info: ModelInfo, facts: _Facts, p: int, recording: bool = True, end: int = 0) -> ArenaEstimate:
    """Replay MicroInterpreter::AllocateTensors with an arena end ``end`` modulo 16 (0 gives a
    total that is a multiple of 16; ``runtime.tflm``'s minimum may end elsewhere)."""
    a = _Arena(p, end)
    tensors, quant = info.tensors, facts.quant
    ops = [_OPS.get(op.op, _ASSUMED) for op in info.ops]
    # MicroAllocator::Create (RecordingMicroAllocator::Create): buffer allocator, planner, allocator.
    prefix = "Recording" if recording else ""
    for name in (f"{prefix}SingleArenaBufferAllocator", "GreedyMemoryPlanner", f"{prefix}MicroAllocator"):
        a.struct(name, "fixed", "create")
    # StartModelAllocation: the builtin data allocator, the scratch request slots (head), the
    # subgraph table, eval tensors, node structs.
    a.struct("MicroBuiltinDataAllocator", "fixed", "start")
    a.struct("unlisted", "fixed", "start")
    request = struct_size("ScratchBufferRequest", p)[0]
    a.resize_head(request * MAX_SCRATCH_PER_OP, "start")
    a.struct("SubgraphAllocations", "fixed", "start")
    a.struct("TfLiteEvalTensor", "eval_tensors", "start", len(tensors))
    if info.ops:
        a.struct("NodeAndRegistration", "node_registrations", "start", len(info.ops))
    # PrepareNodeAndRegistrationDataFromFlatbuffer: each operator's options, in order.
    for op, m in zip(info.ops, ops):
        if m.params:
            a.struct(m.params, "op_params", f"parse {op.op}")
    by_op: dict[str, int] = {}

    def buffer(nbytes: int, op: str, where: str) -> None:
        taken = a.persistent(nbytes, ALIGNMENT, "persistent_buffers", where)
        by_op[op] = by_op.get(op, 0) + taken

    # InitSubgraphs: each kernel's OpData.
    for i, (op, m) in enumerate(zip(info.ops, ops)):
        if m.op_data:
            buffer(struct_size(m.op_data, p)[0], op.op, f"init {op.op} #{i}")
    # PrepareSubgraphs: temporaries, persistent buffers and scratch requests, node by node; the
    # temporaries are freed and the head regrown to hold 12 more requests after each node.
    scratch: list[tuple[int, int]] = []
    for i, op in enumerate(info.ops):
        where = f"prepare {op.op} #{i}"
        for step, arg in _prepare_steps(op, tensors, quant):
            if step == "temp":
                _temp_tensor(a, arg, quant, where)
            elif step == "buffer":
                buffer(arg, op.op, where)
            else:
                scratch.append((i, arg))
        a.resize_head(request * (len(scratch) + MAX_SCRATCH_PER_OP), where)
    # FinishModelAllocation: scratch handles, variable buffers, then CommitStaticMemoryPlan with
    # its temporaries (a size_t per subgraph, an AllocationInfo per tensor and scratch buffer,
    # the planner's scratch), and the head set to the plan.
    if scratch:
        a.struct("ScratchBufferHandle", "fixed", "finish", len(scratch))
    for t in sorted(facts.variables):
        a.persistent(tensors[t].nbytes, ALIGNMENT, "variables", "finish")
    a.temporary(p, p, "planning")
    size, align = struct_size("AllocationInfo", p)
    a.temporary(size * (len(tensors) + len(scratch)), align, "planning")
    buffers = planned_buffers(info, scratch, facts.variables)
    a.planner_scratch(PLANNER_BYTES_PER_BUFFER * len(buffers), "planning")
    head = plan(buffers)
    a.resize_head(head, "invoke")
    # MicroInterpreter::AllocateTensors: pointer arrays and TfLiteTensor structs for the
    # inputs, then the outputs; a quantized one also gets its quantization persistently.
    for group in (info.inputs, info.outputs):
        buffer(p * len(group), "(interpreter)", "invoke")
        for t in group:
            a.struct("TfLiteTensor", "persistent_tensors", "invoke")
            if t in quant:
                a.struct("TfLiteAffineQuantization", "persistent_quantization", "invoke")
                a.persistent(4 + 4 * quant[t], 4, "persistent_quantization", "invoke")
    final = head + a.tail
    total = _up(max(a.need, final), ALIGNMENT)
    u = a.used
    counts = {EVAL_TENSORS: len(tensors), NODES: len(info.ops),
              PERSISTENT_TENSORS: len(info.inputs) + len(info.outputs),
              PERSISTENT_BUFFERS: a.count.get("persistent_buffers", 0)}
    for part, name in (("persistent_quantization", PERSISTENT_QUANTIZATION), ("variables", VARIABLE_BUFFERS)):
        if a.count.get(part):
            counts[name] = a.count[part]
    return ArenaEstimate(
        pointer_bytes=p, recording=recording, total=total, activations=head,
        kernel_scratch=sum(_up(n, ALIGNMENT) for _, n in scratch),
        eval_tensors=u.get("eval_tensors", 0), node_registrations=u.get("node_registrations", 0),
        persistent_tensors=u.get("persistent_tensors", 0),
        persistent_quantization=u.get("persistent_quantization", 0),
        persistent_buffers=u.get("persistent_buffers", 0), variables=u.get("variables", 0),
        op_params=u.get("op_params", 0),
        fixed=u.get("fixed", 0), transient=total - final,
        peak_at=a.need_at if a.need > final else "invoke", counts=counts,
        persistent_buffers_by_op=by_op, assumed_ops=tuple(sorted({o.op for o in info.ops} - set(_OPS))))


def _temp_tensor(a: _Arena, t: int, quant: Mapping[int, int], where: str) -> None:
    """AllocateTempTfLiteTensor: the struct, and for a quantized tensor its quantization and a
    zero-point array, all temporary (freed when the node's Prepare ends)."""
    size, align = struct_size("TfLiteTensor", a.p)
    a.temporary(size, align, where)
    if t in quant:
        size, align = struct_size("TfLiteAffineQuantization", a.p)
        a.temporary(size, align, where)
        a.temporary(4 + 4 * quant[t], 4, where)


def _elements(t: TensorInfo) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n


def _prepare_steps(op: OpInfo, tensors: list[TensorInfo], quant: Mapping[int, int]) -> Iterable[tuple[str, int]]:
    """What a kernel's Prepare takes from the arena, in order: ("temp", tensor) a temporary
    TfLiteTensor, ("buffer", bytes) a persistent buffer, ("scratch", bytes) a scratch request.
    Ops not listed take a temporary TfLiteTensor per input and output."""
    ins = [t for t in op.inputs if t >= 0]
    outs = list(op.outputs)
    dtype = tensors[ins[0]].dtype if ins else "FLOAT32"
    integer = dtype in ("INT8", "INT16", "UINT8")
    if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(ins) >= 2 and outs:
        # conv_common.cc ConvPrepare: output, input, filter; per-channel multiplier and shift
        # (int32 per output channel, float models too); CalculateOpDataConv then takes input,
        # filter, bias and output again before the first three are freed.
        shape = tensors[ins[1]].shape
        channels = (shape[3] if op.op == "DEPTHWISE_CONV_2D" else shape[0]) if shape else 1
        yield from (("temp", outs[0]), ("temp", ins[0]), ("temp", ins[1]))
        yield from (("buffer", 4 * channels), ("buffer", 4 * channels))
        yield from (("temp", t) for t in (*ins, outs[0]))
        return
    yield from (("temp", t) for t in (*ins, *outs))
    if op.op == "FULLY_CONNECTED" and len(ins) >= 2 and integer and quant.get(ins[1], 0) > 1:
        # fully_connected_common.cc: per-channel multiplier and shift when the filter has a
        # scale per output channel.
        yield from (("buffer", 4 * quant[ins[1]]), ("buffer", 4 * quant[ins[1]]))
    elif op.op == "SOFTMAX" and dtype == "INT16":
        yield from (("buffer", 2 * SOFTMAX_INT16_LUT), ("buffer", 2 * SOFTMAX_INT16_LUT))  # exp and 1/(1+x)
    elif op.op in ("MEAN", "SUM") and outs:
        # reduce_common.cc: an int32 accumulator per output element for integer types; every
        # type then an int per input dimension and per reduced axis (measured: the pinned
        # build's float MEAN plans 32 more head bytes and 16 bytes of handles: two requests).
        if integer:
            yield ("scratch", 4 * _elements(tensors[outs[0]]))
        yield ("scratch", 4 * len(tensors[ins[0]].shape))
        yield ("scratch", 4 * (_elements(tensors[ins[1]]) if len(ins) > 1 else 1))


# ------------------------------------------------------------------ 64-bit host -> 32-bit Cortex-M
@dataclass(frozen=True)
class PointerCorrection:
    """Bytes a 32-bit build needs fewer than the 64-bit host, part by part (the struct table's
    size differences times the model's counts, alignment included)."""

    parts: dict[str, int]
    total: int  # of the arena totals (parts of moments other than the largest do not add up to it)

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "parts": dict(self.parts)}


def cortex_m_correction(model: ModelInfo | bytes, recording: bool = True) -> PointerCorrection:
    """The correction from the 64-bit host's arena to a 32-bit Cortex-M's, for the same build."""
    e64, e32 = estimate_arena(model, 8, recording), estimate_arena(model, 4, recording)
    return PointerCorrection({k: e64.parts()[k] - e32.parts()[k] for k in PARTS}, e64.total - e32.total)


def cortex_m_arena(measured_64: int, model: ModelInfo | bytes) -> int:
    """A 32-bit Cortex-M figure from the measured 64-bit minimum: the minimum less the pointer
    correction, rounded up to 16 (same build: the recording allocator, compression compiled in;
    a plain MicroInterpreter needs ``recording_overhead(4)`` bytes fewer)."""
    return _up(measured_64 - cortex_m_correction(model).total, ALIGNMENT)


def recording_overhead(pointer_bytes: int = 8) -> int:
    """Bytes the recording allocator's objects take over a plain MicroInterpreter's."""
    def size(name: str) -> int:
        s, a = struct_size(name, pointer_bytes)
        return _up(s, a)
    return (size("RecordingSingleArenaBufferAllocator") - size("SingleArenaBufferAllocator")
            + size("RecordingMicroAllocator") - size("MicroAllocator"))


# The recorder's itemized kinds and the struct each counts (one per item).
RECORDED_STRUCTS = {EVAL_TENSORS: "TfLiteEvalTensor", NODES: "NodeAndRegistration",
                    PERSISTENT_TENSORS: "TfLiteTensor"}


def record_correction(counts: Mapping[str, int]) -> int:
    """The part of the 64 -> 32-bit correction read off a recording allocator's counts alone
    (kind name -> count): (size64 - size32) x count for each struct it itemizes. The rest
    (pointers inside OpData, the allocator's objects, planning's AllocationInfo array) needs
    the model: ``cortex_m_correction``."""
    return sum((struct_size(s, 8)[0] - struct_size(s, 4)[0]) * counts.get(kind, 0)
               for kind, s in RECORDED_STRUCTS.items())
