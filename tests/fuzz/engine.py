"""One fuzzing process for one parser: coverage-guided (atheris, libFuzzer) or a seeded mutation loop.

    python -m tests.fuzz.engine --parser keras3 --runs 10000 --work out/fuzz/keras3 [--engine random]

Runs the CLI in-process (framework imports once), writes ``stats.json`` (executions, exit-code
histogram, findings by kind, peak RSS) every 50 executions and at the end, and keeps every input
that breaks a property under ``findings/``. scripts/fuzz.py runs one per parser and sums them.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tests.fuzz.harness import TIME_LIMIT_S, Sandbox, peak_rss_mb  # noqa: E402
from tests.fuzz.mutators import mutate_case  # noqa: E402
from tests.fuzz.seeds import PARSERS, decode, encode, seeds  # noqa: E402

# Imported under atheris's instrumentation: every tapeout module a parser's CLI path runs.
TAPEOUT_MODULES = ("tapeout.compiler.cli", "tapeout.compiler.api", "tapeout.compiler.frontends.loader",
                   "tapeout.compiler.frontends.onnx", "tapeout.compiler.frontends.keras",
                   "tapeout.runtime.model_files", "tapeout.runtime.data", "tapeout.runtime.runners.select")


class Tally:
    def __init__(self, parser: str, work: Path, target: int) -> None:
        self.parser, self.work, self.target = parser, work, target
        self.codes: Counter = Counter()
        self.findings: Counter = Counter()
        self.executions, self.slowest, self.t0 = 0, 0.0, time.perf_counter()
        (work / "findings").mkdir(parents=True, exist_ok=True)

    def add(self, data: bytes, outcome) -> None:
        self.executions += 1
        self.codes[str(outcome.code)] += 1
        self.slowest = max(self.slowest, outcome.seconds)
        if outcome.problems:
            self.findings[outcome.kind] += 1
            name = f"{outcome.kind}-{hashlib.sha256(data).hexdigest()[:12]}"
            (self.work / "findings" / f"{name}.bin").write_bytes(data)
            (self.work / "findings" / f"{name}.txt").write_text("\n".join(outcome.problems) + "\n")
        if self.executions % 50 == 0 or self.executions >= self.target:
            self.write()

    def write(self) -> None:
        stats = {"parser": self.parser, "executions": self.executions, "codes": dict(sorted(self.codes.items())),
                 "findings": dict(self.findings), "peak_rss_mb": round(peak_rss_mb()),
                 "slowest_s": round(self.slowest, 2), "seconds": round(time.perf_counter() - self.t0, 1)}
        tmp = self.work / "stats.json.tmp"
        tmp.write_text(json.dumps(stats) + "\n")
        os.replace(tmp, self.work / "stats.json")


def _warm(sandbox: Sandbox, parser: str) -> None:
    """Imports and once-per-process files (onnxruntime's telemetry file in TMPDIR) before any check."""
    for case in seeds(parser):
        sandbox.run(parser, case)


def run_random(parser: str, runs: int, work: Path, seed: int, limit: float) -> Tally:
    sandbox = Sandbox(work / "sandbox")
    _warm(sandbox, parser)
    tally, rng, pool = Tally(parser, work, runs), random.Random(seed), list(seeds(parser))
    while tally.executions < runs:
        case = rng.choice(pool)
        for _ in range(rng.randint(1, 3)):
            case = mutate_case(parser, rng, case)
        data = encode(case)
        (work / "current.bin").write_bytes(data)  # what a hang in native code was working on
        outcome = sandbox.run(parser, case, time_limit=limit)
        tally.add(data, outcome)
        if outcome.code == 0 and len(pool) < 64 and rng.random() < 0.2:
            pool.append(case)  # accepted mutants seed further mutations
    tally.write()
    return tally


def run_atheris(parser: str, runs: int, work: Path, limit: float) -> None:
    import atheris

    with atheris.instrument_imports(include=["tapeout"]):
        for name in TAPEOUT_MODULES:
            __import__(name)
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(seeds(parser)):
        (corpus / f"seed-{i}").write_bytes(encode(case))
    sandbox = Sandbox(work / "sandbox")
    _warm(sandbox, parser)
    tally = Tally(parser, work, runs)

    def test_one(data: bytes) -> None:
        (work / "current.bin").write_bytes(data)  # what a hang in native code was working on
        tally.add(data, sandbox.run(parser, decode(parser, data), time_limit=None))  # libFuzzer times it

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.1:
            return atheris.Mutate(data, max_size)
        if rng.random() < 0.3:  # back to a valid seed now and then: most corpus entries are refused early
            data = encode(rng.choice(seeds(parser)))
        try:
            out = encode(mutate_case(parser, rng, decode(parser, data)))
        except Exception:  # noqa: BLE001 - a mutator's own failure is no finding: plain byte mutation
            return atheris.Mutate(data, max_size)
        return out if len(out) <= max_size else atheris.Mutate(data, max_size)

    argv = [sys.argv[0], f"-runs={runs}", f"-timeout={int(limit)}", "-rss_limit_mb=2048", "-max_len=4000000",
            f"-artifact_prefix={work}/findings/", "-print_final_stats=1", str(corpus)]
    atheris.Setup(argv, test_one, custom_mutator=mutator)
    atheris.Fuzz()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parser", choices=PARSERS, required=True)
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--engine", choices=("atheris", "random"), default="atheris")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=TIME_LIMIT_S)
    a = ap.parse_args()
    a.work = a.work.resolve()
    # `kill -USR1 PID` writes every thread's Python stack to WORK/stacks.txt, even from inside native
    # code (fd 2 is the CLI's capture file while it runs).
    faulthandler.register(signal.SIGUSR1, file=open(a.work / "stacks.txt", "w"), all_threads=True)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.engine == "atheris":
        run_atheris(a.parser, a.runs, a.work, a.time_limit)
    else:
        run_random(a.parser, a.runs, a.work, a.seed, a.time_limit)


if __name__ == "__main__":
    main()
