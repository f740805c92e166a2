"""TFLite Micro's coverage of a .tflite model, known at compile time.

Three checks, for the ``tflite`` target's microcontroller option:

* ``unsupported_ops``: the model's operators that the pinned TFLite Micro build has no kernel for,
  all named at once, from the checked-in sets below (fast; nothing runs).
* ``known_aborts``: ops whose quantization parameters make TFLite Micro abort the process (no
  message, no error status): an int8 softmax whose input scale is too small, or whose every
  input ties 512 classes.
* ``tflm_refusal``: the model given to the real TFLite Micro interpreter (allocation, which runs
  every kernel's Prepare, then one invoke): TFLite Micro's own reason when it refuses. This
  catches what the op list cannot: kernels that exist only for some tensor types (hybrid
  dynamic-range models, fp16 weights).

``TFLM_BUILTINS`` and ``TFLM_CUSTOM_OPS`` are not written from memory: ``probe()`` asks the real
interpreter about every BuiltinOperator code of TFLite Micro's schema (and a few custom names),
one tiny model each. Regenerate them when the pin moves::

    python -m tapeout.targets.tflite.mcu --probe

tests/targets/tflite/test_mcu_ops.py reruns the probe and compares.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

# tflite_micro._version.__version__ of the build the sets were probed from (constraints.txt pins it).
TFLM_VERSION = "0.dev20261023182759-g8f6596d"

# BuiltinOperator names with a registration in TFLite Micro's op resolver (probe()).
TFLM_BUILTINS: frozenset[str] = frozenset({
    "ABS", "ADD", "ADD_N", "ARG_MAX", "ARG_MIN", "ASSIGN_VARIABLE", "AVERAGE_POOL_2D",
    "BATCH_MATMUL", "BATCH_TO_SPACE_ND", "BROADCAST_ARGS", "BROADCAST_TO", "CALL_ONCE", "CAST",
    "CEIL", "CONCATENATION", "CONV_2D", "COS", "CUMSUM", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE",
    "DEQUANTIZE", "DIV", "DYNAMIC_UPDATE_SLICE", "ELU", "EMBEDDING_LOOKUP", "EQUAL", "EXP",
    "EXPAND_DIMS", "FILL", "FLOOR", "FLOOR_DIV", "FLOOR_MOD", "FULLY_CONNECTED", "GATHER",
    "GATHER_ND", "GREATER", "GREATER_EQUAL", "HARD_SWISH", "IF", "L2_NORMALIZATION", "L2_POOL_2D",
    "LEAKY_RELU", "LESS", "LESS_EQUAL", "LOG", "LOGICAL_AND", "LOGICAL_NOT", "LOGICAL_OR",
    "LOGISTIC", "LOG_SOFTMAX", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MIRROR_PAD", "MUL",
    "NEG", "NOT_EQUAL", "PACK", "PAD", "PADV2", "PRELU", "QUANTIZE", "READ_VARIABLE",
    "REDUCE_ALL", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "REVERSE_V2", "ROUND", "RSQRT", "SELECT_V2", "SHAPE", "SIN",
    "SLICE", "SOFTMAX", "SPACE_TO_BATCH_ND", "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT",
    "SQUARE", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SVDF", "TANH",
    "TRANSPOSE", "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM", "UNPACK", "VAR_HANDLE",
    "WHILE", "ZEROS_LIKE",
})

# Custom-op names with a registration (probe(); the host build has no ETHOSU kernel).
TFLM_CUSTOM_OPS: frozenset[str] = frozenset({
    "SignalDelay", "SignalEnergy", "SignalFftAutoScale", "SignalFilterBank", "SignalFilterBankLog",
    "SignalFilterBankSpectralSubtraction", "SignalFilterBankSquareRoot", "SignalFramer",
    "SignalIrfft", "SignalOverlapAdd", "SignalPCAN", "SignalRfft", "SignalStacker", "SignalWindow",
    "TFLM_DECODE", "TFLite_Detection_PostProcess",
})


# ------------------------------------------------------------------ the static check
def model_op_counts(data: bytes) -> dict[str, int]:
    """Operator name -> count over every subgraph (a WHILE's body is code on the device too);
    custom ops as "CUSTOM:<name>", codes newer than the schema as their number."""
    from tapeout.targets.tflite.flatbuffer import schema

    s = schema()
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}
    if bytes(data[4:8]) != b"TFL3":  # the identifier every TFLite writer puts there
        raise ValueError("not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        model = s.Model.GetRootAs(bytearray(data), 0)
        codes = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            # Codes above 127 live in BuiltinCode; DeprecatedBuiltinCode keeps old readers working.
            value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = names.get(value, str(value))
            custom = (code.CustomCode() or b"").decode("utf-8", "replace")
            codes.append(f"CUSTOM:{custom}" if name == "CUSTOM" else name)
        counts: dict[str, int] = {}
        for g in range(model.SubgraphsLength()):
            graph = model.Subgraphs(g)
            for j in range(graph.OperatorsLength()):
                op = codes[graph.Operators(j).OpcodeIndex()]
                counts[op] = counts.get(op, 0) + 1
    except Exception as exc:  # the generated reader raises anything on a bad file
        raise ValueError(f"not a TFLite flatbuffer ({type(exc).__name__})") from None
    return dict(sorted(counts.items()))


def supported(op: str) -> bool:
    if op.startswith("CUSTOM:"):
        return op[len("CUSTOM:"):] in TFLM_CUSTOM_OPS
    return op in TFLM_BUILTINS


def unsupported_ops(data: bytes) -> list[str]:
    """Every distinct op of the model that TFLite Micro has no kernel for, sorted, with its
    count: ["TILE x2", "TOPK_V2 x1"]. Empty when TFLite Micro has them all."""
    return [f"{op} x{n}" for op, n in model_op_counts(data).items() if not supported(op)]


# Two TFLITE_CHECKs of TFLite Micro's int8 softmax abort the process (SIGABRT, no message, no
# error status); LiteRT's int8 softmax (a lookup table) has neither.
# - Prepare (SOFTMAX and LOG_SOFTMAX): input differences are scaled by beta * input_scale * 2^26
#   (PreprocessSoftmaxScaling, kScaledDiffIntegerBits = 5), and QuantizeMultiplierGreaterThanOne
#   checks that this is above 1: an input scale under 2^-26, i.e. logits spanning under about
#   3.8e-6, as a dead or vanishing network's do (random-weight MobileNetV2).
# - Eval (reference_ops::Softmax): the row's sum of exp(x - max), in Q12.19, must stay under
#   2^(output bits + 1) (512 for an int8 output): the check on the output shift. So 512 or more
#   classes tied at the maximum abort every invoke that ties them.
# TensorFlow's own converter writes such models too (a representative dataset gives the same
# near-empty ranges).
SOFTMAX_DIFF_SCALE = float(1 << 26)
_OUT_BITS = {"INT8": 8, "INT16": 16}


@dataclass(frozen=True)
class QuantizedSoftmax:
    kind: str  # "SOFTMAX" or "LOG_SOFTMAX"
    name: str  # its output tensor's
    scale: float  # the input's
    beta: float
    depth: int  # classes (the input's last dimension)
    out_bits: int | None  # 8 or 16; None for another output type

    @property
    def multiplier(self) -> float:
        """Prepare's beta * scale * 2^26, in double as TFLite Micro computes it."""
        return self.beta * self.scale * SOFTMAX_DIFF_SCALE

    @property
    def sum_limit(self) -> float | None:
        """The sum of exponentials at which Eval aborts (SOFTMAX only)."""
        return float(2 ** (self.out_bits + 1)) if self.kind == "SOFTMAX" and self.out_bits else None


def quantized_softmaxes(data: bytes) -> list[QuantizedSoftmax]:
    """The model's SOFTMAX and LOG_SOFTMAX ops with an int8 input, every subgraph."""
    from tapeout.targets.tflite.flatbuffer import schema

    s = schema()
    model = s.Model.GetRootAs(bytearray(data), 0)
    kinds = {s.BuiltinOperator.SOFTMAX: "SOFTMAX", s.BuiltinOperator.LOG_SOFTMAX: "LOG_SOFTMAX"}
    types = {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    out = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for j in range(graph.OperatorsLength()):
            op = graph.Operators(j)
            kind = kinds.get(codes[op.OpcodeIndex()])
            if kind is None or op.InputsLength() < 1 or op.OutputsLength() < 1:
                continue
            x, y = graph.Tensors(int(op.Inputs(0))), graph.Tensors(int(op.Outputs(0)))
            q = x.Quantization()
            if x.Type() != s.TensorType.INT8 or q is None or q.ScaleLength() == 0 or x.ShapeLength() == 0:
                continue
            beta = 1.0  # LOG_SOFTMAX's is fixed; SOFTMAX's is its option (0 when absent, as TFLite Micro parses it)
            if kind == "SOFTMAX":
                table, beta = op.BuiltinOptions(), 0.0
                if table is not None and op.BuiltinOptionsType() == s.BuiltinOptions.SoftmaxOptions:
                    opts = s.SoftmaxOptions()
                    opts.Init(table.Bytes, table.Pos)
                    beta = float(opts.Beta())
            name = (y.Name() or b"").decode("utf-8", "replace")
            depth = int(x.Shape(x.ShapeLength() - 1))
            bits = _OUT_BITS.get(types.get(y.Type(), ""))
            out.append(QuantizedSoftmax(kind, name, float(q.Scale(0)), beta, depth, bits))
    return out


def known_aborts(data: bytes) -> list[str]:
    """The ops on which TFLite Micro certainly aborts: while allocating, or at every invoke
    whatever the input; one line each, empty when none. Read from quantization parameters."""
    import math

    out = []
    for sm in quantized_softmaxes(data):
        what = f"int8 {sm.kind} {sm.name!r}"
        if not sm.multiplier > 1.0:
            out.append(f"{what} aborts in Prepare: input scale {sm.scale:.3g} x beta {sm.beta:g} x 2^26 = "
                       f"{sm.multiplier:.3g}, not above 1 as its kernel requires (the logits span under "
                       f"{255 / SOFTMAX_DIFF_SCALE / max(sm.beta, 1e-30):.2g}: dead or vanishing layers)")
            continue
        limit = sm.sum_limit
        span = 255 * sm.scale * sm.beta  # the widest difference to the row's maximum
        # 1% margin: the kernel's fixed-point exponentials are not exact
        if limit is not None and sm.depth * math.exp(-span) >= 1.01 * limit:
            out.append(f"{what} aborts at every invoke: its logits over {sm.depth} classes span at most "
                       f"{span:.2g} (input scale {sm.scale:.3g}), so their exponentials sum to at least "
                       f"{sm.depth * math.exp(-span):.0f}, and its kernel aborts from {limit:g}")
    return out


def invoke_abort_risks(data: bytes) -> list[str]:
    """The ops on which TFLite Micro aborts for some inputs: int8 SOFTMAX over 512 or more
    classes (with an int8 output) aborts whenever that many tie at the maximum, as they do
    on a flat input. Running such a model belongs in a child process."""
    return [f"int8 SOFTMAX {sm.name!r} over {sm.depth} classes aborts on any input that ties "
            f"{sm.sum_limit:g} of them at the maximum"
            for sm in quantized_softmaxes(data) if sm.sum_limit is not None and sm.depth >= sm.sum_limit]


# ------------------------------------------------------------------ the real interpreter's verdict
def tflm_refusal(data: bytes) -> str | None:
    """TFLite Micro's own reason (one line) when it will not run the model, None when it
    allocates and invokes it (some kernels check types only in Eval). The same search as the
    arena measurement (runtime.tflm.measure_arena: a child process, the arena grown while TFLite
    Micro says it is short), so a large model's activations are never taken for a refusal."""
    from tapeout.runtime import tflm

    try:
        tflm.measure_arena(data)
    except tflm.TflmError as e:
        return str(e).removeprefix("TFLite Micro: ")
    return None


def mcu_problem(data: bytes) -> str | None:
    """The one line a microcontroller build is refused with, None when TFLite Micro runs it:
    every missing op at once when there are any (the interpreter would name only the first),
    then the op it would abort on (it says nothing itself), else the interpreter's own reason."""
    missing = unsupported_ops(data)
    if missing:
        return (f"TFLite Micro ({TFLM_VERSION}) has no kernel for {len(missing)} op"
                f"{'s' if len(missing) > 1 else ''} of this model: {', '.join(missing)}")
    aborts = known_aborts(data)
    if aborts:
        more = f" (and {len(aborts) - 1} more)" if len(aborts) > 1 else ""
        return f"TFLite Micro ({TFLM_VERSION}) aborts on this model: {aborts[0]}{more}"
    reason = tflm_refusal(data)
    return None if reason is None else f"TFLite Micro ({TFLM_VERSION}) refuses this model: {reason}"


# ------------------------------------------------------------------ the probe
# A builtin code beyond every schema: TFLite Micro's lookup says "Op builtin_code out of range: N".
# It follows the probed op, so reaching it means the probed op's lookup succeeded; and as every
# lookup comes before any kernel's Init or Prepare, no kernel runs on the empty probe model.
SENTINEL = 99999
PROBE_ARENA = 1 << 16
# Custom names asked about besides those found in the library (ETHOSU: Vela's NPU op).
CUSTOM_CANDIDATES = ("ETHOSU",)
_LIB_CUSTOM = re.compile(rb"(?<=\x00)(Signal[A-Z]\w+|TFLM_[A-Z0-9_]+|TFLite_\w+)(?=\x00)")


class ProbeError(RuntimeError):
    pass


def _tflm_schema() -> Any:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


def probe_model(builtin: int, custom: str | None = None) -> bytes:
    """A model whose only subgraph holds the probed op, then the sentinel; no tensors."""
    import flatbuffers

    s = _tflm_schema()

    def opcode(code: int, custom_code: str | None) -> Any:
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        oc.customCode = custom_code
        return oc

    graph = s.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [], [], [], []
    for i in range(2):
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = i, [], []
        if i == 0 and builtin == s.BuiltinOperator.VAR_HANDLE:
            # the Python wrapper reads every VAR_HANDLE's shared name before TFLite Micro starts
            op.builtinOptionsType = s.BuiltinOptions.VarHandleOptions
            op.builtinOptions = s.VarHandleOptionsT()
            op.builtinOptions.sharedName = "probe"
        graph.operators.append(op)
    model = s.ModelT()
    model.version, model.buffers, model.subgraphs = 3, [s.BufferT()], [graph]
    model.operatorCodes = [opcode(builtin, custom), opcode(SENTINEL, None)]
    fb = flatbuffers.Builder(1024)
    fb.Finish(model.Pack(fb), file_identifier=b"TFL3")
    return bytes(fb.Output())


def _candidates() -> list[tuple[str, int, str | None]]:
    """(name, builtin code, custom name): every BuiltinOperator of TFLite Micro's schema but
    CUSTOM, then custom names: those spelled in the library's binary like its custom ops, and
    CUSTOM_CANDIDATES."""
    from tflite_micro.python.tflite_micro import _runtime

    s = _tflm_schema()
    builtins = sorted((v, k) for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_"))
    out: list[tuple[str, int, str | None]] = [(k, v, None) for v, k in builtins if k != "CUSTOM"]
    with open(_runtime.__file__, "rb") as f:
        found = {m.decode() for m in _LIB_CUSTOM.findall(f.read())}
    out += [(f"CUSTOM:{c}", s.BuiltinOperator.CUSTOM, c) for c in sorted(found | set(CUSTOM_CANDIDATES))]
    return out


def _probe_one(builtin: int, custom: str | None) -> str:
    """'present' or 'missing', from TFLite Micro's printed lookup failures."""
    from tapeout.runtime import tflm

    rt = tflm.interpreter_module()
    with tflm.captured_stderr() as err:
        try:
            rt.Interpreter.from_bytes(probe_model(builtin, custom), arena_size=PROBE_ARENA)
        except RuntimeError:
            pass
    text = err[0]
    if f"out of range: {SENTINEL}" in text:
        return "present"
    label = "CUSTOM" if custom is not None else _tflm_schema_name(builtin)
    if f"Failed to get registration from op code {label}" in text:
        return "missing"
    raise ProbeError(f"unexpected answer for {custom or label}: {text.strip()!r}")


def _tflm_schema_name(builtin: int) -> str:
    return next(k for k, v in vars(_tflm_schema().BuiltinOperator).items() if v == builtin and not k.startswith("_"))


def _child() -> None:
    """Probe the candidates read from stdin, one JSON line each, flushed (a crash loses none)."""
    for name, builtin, custom in json.load(sys.stdin):
        try:
            verdict = _probe_one(builtin, custom)
        except ProbeError as exc:
            verdict = f"error: {exc}"
        print(json.dumps([name, verdict]), flush=True)


def probe(timeout: float = 120.0) -> dict[str, str]:
    """Candidate name -> 'present' | 'missing' | 'crashed' | 'error: ...', asked of the real
    interpreter in a child process (a TFLite Micro segfault would take the caller with it). A
    crash marks that candidate and the child restarts after it."""
    pending = _candidates()
    verdicts: dict[str, str] = {}
    while pending:
        proc = subprocess.run([sys.executable, "-m", "tapeout.targets.tflite.mcu", "--probe-child"],
                              input=json.dumps(pending), capture_output=True, text=True, timeout=timeout)
        done = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("[")]
        verdicts.update((name, verdict) for name, verdict in done)
        pending = pending[len(done):]
        if pending:
            if proc.returncode == 0:
                raise ProbeError(f"probe child stopped early: {proc.stderr.strip()[-500:]}")
            verdicts[pending[0][0]] = "crashed"
            pending = pending[1:]
    return verdicts


def probed_sets(verdicts: dict[str, str]) -> tuple[frozenset[str], frozenset[str]]:
    """(builtins, custom names) that TFLite Micro registers; ProbeError on any unclear verdict."""
    unclear = {k: v for k, v in verdicts.items() if v not in ("present", "missing")}
    if unclear:
        raise ProbeError(f"the probe could not tell for {len(unclear)}: {sorted(unclear.items())[:5]}")
    present = [k for k, v in verdicts.items() if v == "present"]
    return (frozenset(k for k in present if not k.startswith("CUSTOM:")),
            frozenset(k[len("CUSTOM:"):] for k in present if k.startswith("CUSTOM:")))


def installed_version() -> str:
    from tflite_micro.python.tflite_micro import _version

    return str(_version.__version__)


def _main(argv: list[str]) -> int:
    if argv == ["--probe-child"]:
        _child()
        return 0
    if argv != ["--probe"]:
        print("usage: python -m tapeout.targets.tflite.mcu --probe", file=sys.stderr)
        return 2
    builtins, custom = probed_sets(probe())
    print(f"TFLM_VERSION = {installed_version()!r}")
    print(f"TFLM_BUILTINS ({len(builtins)}):", " ".join(sorted(builtins)))
    print(f"TFLM_CUSTOM_OPS ({len(custom)}):", " ".join(sorted(custom)))
    same = builtins == TFLM_BUILTINS and custom == TFLM_CUSTOM_OPS and installed_version() == TFLM_VERSION
    for label, new, old in (("builtins", builtins, TFLM_BUILTINS), ("custom", custom, TFLM_CUSTOM_OPS)):
        if new != old:
            print(f"{label} differ from the checked-in set: added {sorted(new - old)}, gone {sorted(old - new)}",
                  file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
