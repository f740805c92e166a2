"""`make fuzz`: fuzz every input parser through the CLI and print executions and findings per parser.

Runs tests/fuzz/engine.py once per parser (``--jobs`` at a time), coverage-guided with atheris
when it is installed (structure-aware mutations from tests/fuzz/mutators.py as its custom
mutator), else a seeded mutation loop. A process that hangs past the time limit (libFuzzer's
-timeout, or no progress here) or passes the RSS budget (-rss_limit_mb) is a finding; the
process is restarted for the runs that remain. Exit 1 when anything was found.

    python scripts/fuzz.py --runs 10000            # the acceptance run (docs/security.md)
    python scripts/fuzz.py --runs 200 --parsers onnx data --engine random
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz.harness import MEMORY_BUDGET_MB, TIME_LIMIT_S  # noqa: E402
from tests.fuzz.seeds import PARSERS  # noqa: E402

# Mutated models must not fill the user's build cache.
os.environ["TAPEOUT_NO_CACHE"] = "1"

MAX_RESTARTS = 20
TIMEOUT_EXIT = 70  # libFuzzer's -timeout_exitcode default


class Job:
    def __init__(self, parser: str, args: argparse.Namespace) -> None:
        self.parser, self.args = parser, args
        self.work = args.out / parser
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.codes: Counter = Counter()
        self.findings: Counter = Counter()
        self.executions, self.peak, self.restarts, self.t0 = 0, 0, 0, 0.0
        self.proc: subprocess.Popen | None = None
        self.started = self.last_progress = 0.0
        self.last_count = -1

    def start(self) -> None:
        cmd = [sys.executable, "-m", "tests.fuzz.engine", "--parser", self.parser, "--work", str(self.work),
               "--runs", str(self.args.runs - self.executions), "--engine", self.args.engine,
               "--seed", str(self.restarts), "--time-limit", str(self.args.time_limit)]
        self.t0 = self.t0 or time.monotonic()  # this parser's own wall time, not the queue's
        log = open(self.work / f"log-{self.restarts}.txt", "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.started = self.last_progress = time.monotonic()
        self.last_count = -1

    def _stats(self) -> dict:
        try:
            return json.loads((self.work / "stats.json").read_text())
        except (OSError, ValueError):
            return {}

    def poll(self) -> bool:
        """True when this parser is done."""
        code = self.proc.poll()
        if code is None:
            n = self._stats().get("executions", 0)
            if n != self.last_count:
                self.last_count, self.last_progress = n, time.monotonic()
            # No new stats for a long while: stuck in native code where no alarm reaches.
            elif time.monotonic() - self.last_progress > max(120.0, 10 * self.args.time_limit):
                self.proc.kill()
                self.proc.wait()
                self._finish(-9, stuck=True)
                return self._next()
            return False
        self._finish(code)
        return self._next()

    def _finish(self, code: int, stuck: bool = False) -> None:
        s = self._stats()
        (self.work / "stats.json").unlink(missing_ok=True)
        self.executions += s.get("executions", 0)
        self.codes.update(s.get("codes", {}))
        self.findings.update(s.get("findings", {}))
        self.peak = max(self.peak, s.get("peak_rss_mb", 0))
        if code == 0 and not stuck:
            return
        log = (self.work / f"log-{self.restarts}.txt").read_text(errors="replace")
        # libFuzzer exits 70 on -timeout; its messages may be lost while the CLI captures fd 2.
        kind = ("hang" if stuck or code == TIMEOUT_EXIT or "libFuzzer: timeout" in log else
                "memory" if "out-of-memory" in log or code == -9 else "crash")
        self.findings[kind] += 1
        self.executions += 1  # the input that hung or crashed ran too
        current = self.work / "current.bin"
        if current.exists():
            current.rename(self.work / "findings" / f"{kind}-{self.restarts}.bin")
        self.restarts += 1

    def _next(self) -> bool:
        if self.executions >= self.args.runs or self.restarts > MAX_RESTARTS:
            return True
        self.start()
        return False

    def row(self) -> str:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.codes.items()))
        found = ", ".join(f"{k} {v}" for k, v in sorted(self.findings.items())) or "none"
        return (f"{self.parser:10s} {self.executions:7d} executions  exit codes {{{codes}}}  findings: {found}  "
                f"peak RSS {self.peak} MB  {time.monotonic() - self.t0:.0f} s")


def main() -> int:
    try:
        import atheris  # noqa: F401
        default_engine = "atheris"
    except ImportError:
        default_engine = "random"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10000, help="executions per parser (default 10000)")
    ap.add_argument("--parsers", nargs="+", choices=PARSERS, default=list(PARSERS))
    ap.add_argument("--engine", choices=("atheris", "random"), default=default_engine)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds per execution")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "fuzz")
    args = ap.parse_args()
    args.out = args.out.resolve()
    t0 = time.monotonic()
    pending = [Job(p, args) for p in args.parsers]
    running: list[Job] = []
    done: list[Job] = []
    print(f"fuzzing {', '.join(args.parsers)}: {args.runs} executions each, engine {args.engine}, "
          f"{args.jobs} at a time, limits {args.time_limit:g} s per execution and {MEMORY_BUDGET_MB} MB RSS",
          flush=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            job = pending.pop(0)
            job.start()
            running.append(job)
        time.sleep(1.0)
        for job in list(running):
            if job.poll():
                running.remove(job)
                done.append(job)
                print(job.row(), flush=True)
    total = Counter()
    for job in done:
        total.update(job.findings)
    print(f"total: {sum(j.executions for j in done)} executions in {time.monotonic() - t0:.0f} s, findings: "
          f"{dict(total) or 'none'}; inputs kept under {args.out}/PARSER/findings/")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
