"""TensorFlow Lite Micro itself (the ``tflite-micro`` package: Python bindings over the real C++
interpreter, its reference kernels and its allocator): loading a model into an arena, and the
arena a model needs, measured rather than estimated.

TFLite Micro reports failures by printing (MicroPrintf goes to stderr) and returning an error
status, which the bindings turn into a bare RuntimeError. Its messages are caught at the file
descriptor and become the one line a user sees. Nothing here imports the compiler.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from tapeout.runtime.errors import RuntimeInputError, RuntimeUnavailable

ALIGNMENT = 16  # TFLite Micro aligns the arena's start and its buffers to 16 bytes
# Above this an arena is not a microcontroller's: the search gives up (a bound, not a policy).
MAX_ARENA = 1 << 30
# TFLite Micro places its own allocator objects in the arena and crashes (a segfault, not an
# error) when they do not fit: about 450 bytes on this host. Smaller arenas are refused here.
MIN_ARENA = 512

# TFLite Micro's messages for an arena too small (the allocator's and the memory planner's).
_SHORT = re.compile(r"Failed to (allocate|resize)|Too many buffers|available \d+, missing")
# fd 2 is the process's; two captures at once would read each other's text.
_STDERR = threading.Lock()


class TflmError(RuntimeInputError):
    """TFLite Micro refused the model: its own message, as one line."""


def interpreter_module() -> Any:
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise RuntimeUnavailable("running a model in TFLite Micro needs the tflite-micro package: "
                                 "pip install tflite-micro (tapeout pins a dev build in constraints.txt)") from None
    return runtime


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """fd 2 into a temporary file for the duration (TFLite Micro's C++ prints there); the list
    gets the text at exit."""
    sink: list[str] = []
    with _STDERR, tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


_NODE = re.compile(r"^Node (\S+) \(number (\d+)\) failed to (\w+)")


def _reason(text: str) -> str:
    """TFLite Micro's first printed complaint, one line (the later ones repeat its consequence),
    prefixed by the node that made it when TFLite Micro names one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("[RecordingMicroAllocator]")]
    if not lines:
        return "no message"
    node = next((m for m in map(_NODE.match, lines[1:]) if m), None)
    return f"{node.group(0)}: {lines[0]}" if node else lines[0]


def load(data: bytes, arena_size: int) -> Any:
    """A TFLite Micro interpreter over ``data`` with an arena of ``arena_size`` bytes, tensors
    allocated; TflmError with TFLite Micro's reason when it cannot be."""
    rt = interpreter_module()
    if arena_size < MIN_ARENA:
        raise TflmError(f"TFLite Micro: an arena of {arena_size} bytes cannot hold the interpreter itself "
                        f"(at least {MIN_ARENA})")
    with captured_stderr() as err:
        try:
            return rt.Interpreter.from_bytes(bytes(data), arena_size=int(arena_size))
        # The Python wrapper reads some op options itself and raises AttributeError/TypeError on odd ones.
        except (RuntimeError, ValueError, AttributeError, TypeError) as exc:
            failure: Exception = exc
    raise TflmError(f"TFLite Micro: {_reason(err[0]) if err[0].strip() else failure}")


def invoke(interp: Any) -> None:
    with captured_stderr() as err:
        try:
            interp.invoke()
            return
        except (RuntimeError, ValueError) as exc:
            failure: Exception = exc
    raise TflmError(f"TFLite Micro: invoke failed: {_reason(err[0]) if err[0].strip() else failure}")


# ------------------------------------------------------------------ the arena
@dataclass(frozen=True)
class Allocation:
    """One line of the recording allocator's report: bytes used (with alignment), requested, and how many."""

    used: int
    requested: int
    count: int


@dataclass(frozen=True)
class AllocationRecord:
    """What TFLite Micro's RecordingMicroAllocator says it took from the arena.

    ``head``: the planned, non-persistent buffers (activations and kernels' scratch);
    ``tail``: persistent data (eval tensors, node structs, kernels' persistent buffers, and the
    interpreter's own bookkeeping, which the recorder does not itemize)."""

    total: int
    head: int
    tail: int
    kinds: dict[str, Allocation] = field(default_factory=dict)

    @property
    def unitemized(self) -> int:
        """Tail bytes the recorder does not name (subgraph tables, tensor pointer arrays...)."""
        return self.tail - sum(a.used for a in self.kinds.values())

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "head": self.head, "tail": self.tail,
                "kinds": {k: {"used": a.used, "requested": a.requested, "count": a.count}
                          for k, a in sorted(self.kinds.items())},
                "unitemized": self.unitemized}


_TOTAL = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_KIND = re.compile(r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+) ")


def parse_allocations(text: str) -> AllocationRecord:
    totals = {m.group(1): int(m.group(2)) for m in _TOTAL.finditer(text)}
    if set(totals) != {"total", "head", "tail"}:
        raise TflmError(f"TFLite Micro's allocation record has no totals: {_reason(text)}")
    kinds = {m.group(1): Allocation(int(m.group(2)), int(m.group(3)), int(m.group(4))) for m in _KIND.finditer(text)}
    return AllocationRecord(totals["total"], totals["head"], totals["tail"], kinds)


@dataclass(frozen=True)
class Signature:
    """The model's input and output names, in the subgraph's order: the signature's names when it
    has one (what LiteRT calls them), else the tensors' names."""

    inputs: list[str]
    outputs: list[str]


def signature(data: bytes) -> Signature:
    rt = interpreter_module()
    try:
        model = rt.convert_bytearray_to_object(bytearray(data))
        graph = model.subgraphs[0]
        ins, outs = [int(t) for t in graph.inputs], [int(t) for t in graph.outputs]
        names = {i: _text(graph.tensors[i].name) for i in (*ins, *outs)}
    except Exception as exc:  # the generated flatbuffer reader raises anything on a bad file
        raise TflmError(f"not a TFLite flatbuffer ({type(exc).__name__})") from None
    for sig in model.signatureDefs or []:
        if _text(sig.signatureKey) in ("serving_default", "") or len(model.signatureDefs) == 1:
            for t in (*(sig.inputs or []), *(sig.outputs or [])):
                if int(t.tensorIndex) in names:
                    names[int(t.tensorIndex)] = _text(t.name)
            break
    return Signature([names[i] for i in ins], [names[i] for i in outs])


def _text(b: Any) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b or "")


def _allocations(interp: Any) -> str:
    """The recording allocator's account, as TFLite Micro prints it. Every allocation happens when
    the interpreter allocates its tensors (kernels' Prepare included), none in Invoke."""
    with captured_stderr() as out:
        interp.print_allocations()
    return out[0]


def record(data: bytes, arena_size: int) -> AllocationRecord:
    """The recording allocator's account of the model allocated in ``arena_size`` (a child process)."""
    with Session(data, arena_size) as session:
        return parse_allocations(session.allocations)


def allocates(data: bytes, arena_size: int) -> bool:
    try:
        load(data, arena_size)
    except TflmError:
        return False
    return True


@dataclass(frozen=True)
class ArenaMeasurement:
    """The smallest arena TFLite Micro allocates and invokes the model in, on this host.

    ``minimum`` is exact to the byte for this build of TFLite Micro on this machine (64-bit:
    pointers are 8 bytes); ``record`` is the recording allocator's account of it."""

    minimum: int
    record: AllocationRecord
    pointer_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"minimum": self.minimum, "pointer_bytes": self.pointer_bytes, "record": self.record.to_json()}


def measure_arena(data: bytes) -> ArenaMeasurement:
    """The smallest arena that allocates, bisected to the byte, with the allocation record read
    there. Allocation is where TFLite Micro takes all its memory: kernels ask for persistent and
    scratch buffers in Prepare, never in Invoke (the runner's invokes confirm the arena).

    The search runs in a child process: on some too-small arenas TFLite Micro crashes
    (segfaults) in its failure path instead of returning an error (the jet MLP's int8 model at
    3,750 bytes, whose minimum is 4,048). A crash at a size counts as that size failing; the
    search resumes in a fresh child."""
    import struct
    import subprocess
    import sys

    lo, hi = MIN_ARENA - 1, None  # lo fails; hi, once found, allocates
    for _ in range(64):
        cmd = [sys.executable, "-m", "tapeout.runtime.tflm", str(lo)] + ([str(hi)] if hi is not None else [])
        proc = subprocess.run(cmd, input=data, capture_output=True)
        tried = None
        for line in proc.stdout.decode().split():
            verdict, _, n = line.partition("=")
            if verdict == "try":
                tried = int(n)
            elif verdict == "ok":
                hi, tried = int(n), None
            elif verdict == "no":
                lo, tried = max(lo, int(n)), None
            elif verdict == "error":
                raise TflmError(f"TFLite Micro: {bytes.fromhex(n).decode('utf-8', 'replace')}")
        if proc.returncode == 0 and hi is not None and hi - lo <= 1:
            break
        if proc.returncode == 0 or tried is None:
            raise TflmError(f"TFLite Micro's arena search stopped: {_reason(proc.stderr.decode('utf-8', 'replace'))}")
        if hi is None:  # before any size worked: the model itself, not the arena (tried is generous)
            raise TflmError(f"TFLite Micro crashed ({_signal(proc.returncode)}) allocating this model in "
                            f"{tried} bytes of arena, without a message")
        lo = max(lo, tried)  # it crashed trying this size
    else:
        raise TflmError("TFLite Micro's arena search crashed too often to finish")
    return ArenaMeasurement(hi, record(data, hi), struct.calcsize("P"))


class Session:
    """A TFLite Micro interpreter over one model in one arena, in a child process.

    TFLite Micro stops the process (SIGABRT, no message) where its kernels check what they cannot
    handle: an int8 softmax whose exp sum shifts out of range on 512 tied classes aborts in Invoke
    on that input alone. A crash in the child becomes a TflmError here; tapeout goes on."""

    def __init__(self, data: bytes, arena_size: int) -> None:
        import subprocess
        import sys

        interpreter_module()  # RuntimeUnavailable here, not a dead child
        self.arena_size = arena_size
        self._proc = subprocess.Popen([sys.executable, "-m", "tapeout.runtime.tflm", "--serve", str(arena_size)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._send(bytes(data))
        kind, *rest = self._receive("loading the model")
        if kind == "error":
            self.close()
            raise TflmError(rest[0])
        self.inputs, self.outputs, self.allocations = rest

    def run(self, samples: list[list[Any]]) -> list[list[Any]]:
        """Each sample's typed input arrays -> its output arrays, one invoke per sample."""
        self._send(samples)
        kind, payload = self._receive(f"invoking it on {len(samples)} sample(s)")
        if kind == "error":
            raise TflmError(payload)
        return payload

    def _send(self, obj: Any) -> None:
        import pickle

        try:
            pickle.dump(obj, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone: _receive says how

    def _receive(self, doing: str) -> Any:
        import pickle

        try:
            return pickle.load(self._proc.stdout)
        except (EOFError, pickle.UnpicklingError):
            code = self._proc.wait()
            err = self._proc.stderr.read().decode("utf-8", "replace")
            said = f": {_reason(err)}" if err.strip() else ", without a message"
            raise TflmError(f"TFLite Micro crashed ({_signal(code)}) {doing}{said}") from None

    def close(self) -> None:
        if self._proc.poll() is None:
            self._send(None)
            try:
                self._proc.wait(timeout=10)
            except Exception:
                self._proc.kill()
                self._proc.wait()
        for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            f.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(arena_size: int) -> None:
    """The child's half of Session: model bytes in, then batches of samples, pickled both ways.
    The protocol gets stdout's descriptor alone; anything else printed goes to stderr."""
    import os
    import pickle
    import sys

    import numpy as np

    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def reply(obj: Any) -> None:
        pickle.dump(obj, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    data = pickle.load(inp)
    try:
        interp = load(data, arena_size)
    except TflmError as e:
        reply(("error", str(e)))
        return
    sig = signature(data)
    ins = [interp.get_input_details(i) for i in range(len(sig.inputs))]
    outs = [interp.get_output_details(i) for i in range(len(sig.outputs))]
    reply(("ready", ins, outs, _allocations(interp)))
    while (samples := pickle.load(inp)) is not None:
        results = []
        try:
            for arrays in samples:
                for i, a in enumerate(arrays):
                    interp.set_input(a, i)
                invoke(interp)
                # get_output is a view into the arena: copied before the next invoke overwrites it.
                results.append([np.array(interp.get_output(i)) for i in range(len(outs))])
        except TflmError as e:
            reply(("error", str(e)))
            continue
        reply(("ok", results))


def _signal(returncode: int) -> str:
    import signal

    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"exit status {returncode}"


def _search(data: bytes, lo: int, hi: int | None) -> None:
    """The child's half of measure_arena: prints try=N before each attempt and ok=N / no=N after,
    so the parent knows which size a crash happened at."""
    import sys

    def attempt(n: int, growing: bool = False) -> bool:
        print(f"try={n}", flush=True)
        try:
            load(data, n)
        except TflmError as e:
            # Below a size that worked, any failure is the arena's. Before one, only a shortage
            # message is: anything else (an op or type TFLite Micro lacks) ends the search.
            if growing and not _SHORT.search(str(e)):
                print(f"error={str(e).removeprefix('TFLite Micro: ').encode().hex()}", flush=True)
                sys.exit(0)
            print(f"no={n}", flush=True)
            return False
        print(f"ok={n}", flush=True)
        return True

    if hi is None:
        size = max(lo + 1, len(data) * 4, 1 << 16)
        while not attempt(size, growing=True):
            if size >= MAX_ARENA:
                print(f"error={b'no arena up to 1 GiB is enough'.hex()}", flush=True)
                sys.exit(0)
            size = min(size * 4, MAX_ARENA)
        hi = size
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]))
    else:
        _search(sys.stdin.buffer.read(), int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
