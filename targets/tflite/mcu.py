"""TFLite Micro's coverage of a .tflite model, known at compile time.

Two checks, for the ``tflite`` target's microcontroller option:

* ``unsupported_ops``: the model's operators that the pinned TFLite Micro build has no kernel for,
  all named at once, from the checked-in sets below (fast; nothing runs).
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
    else the interpreter's own reason."""
    missing = unsupported_ops(data)
    if missing:
        return (f"TFLite Micro ({TFLM_VERSION}) has no kernel for {len(missing)} op"
                f"{'s' if len(missing) > 1 else ''} of this model: {', '.join(missing)}")
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
