"""Run one fuzz input through the real CLI (tapeout.compiler.cli.main, in-process) and check its properties.

Properties: the exit code is 0, 1, 2 or 3 (never 4); no traceback on stderr and a failure is one
line; nothing is written or left outside the output folder (an audit hook sees every Python-level
write, a listing of the sandbox, its temp folder and the input folder sees what is left); the
run ends within a time limit; the process's peak RSS stays under a budget.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.seeds import DATA_MODEL, data_model

MEMORY_BUDGET_MB = 2048
TIME_LIMIT_S = 20.0
OK_CODES = (0, 1, 2, 3)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITE_EVENTS = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate",
                 "shutil.copyfile", "shutil.copytree", "shutil.move", "shutil.rmtree")


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so the CLI's `except Exception` cannot turn it into exit 4."""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Outcome:
    code: int | None
    stderr: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The finding class: exit4, traceback, hang, escape, memory; '' when every property holds."""
        return self.problems[0].split(":", 1)[0] if self.problems else ""


class _Audit:
    """Records Python-level writes outside the allowed folders while armed (hooks cannot be removed)."""

    def __init__(self) -> None:
        self.allowed: tuple[str, ...] = ()
        self.armed = False
        self.seen: list[str] = []
        sys.addaudithook(self)

    def _check(self, path: object, dir_fd: object = None) -> None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return
        base = os.getcwd()
        if isinstance(dir_fd, int) and dir_fd >= 0:  # relative to an open folder (shutil.rmtree's unlinks)
            try:
                base = os.readlink(f"/proc/self/fd/{dir_fd}")
            except OSError:
                return
        p = os.path.normpath(os.path.join(base, os.fspath(path)))
        if p != os.devnull and not any(p == a or p.startswith(a + os.sep) for a in self.allowed):
            self.seen.append(p)

    def __call__(self, event: str, args: tuple) -> None:
        if not self.armed:
            return
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[:3]
            writes = (isinstance(flags, int) and flags & _WRITE_FLAGS) or \
                     (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writes:
                self._check(path)
        elif event in ("os.remove", "os.rmdir"):  # (path, dir_fd)
            self._check(args[0], args[1] if len(args) > 1 else None)
        elif event == "os.mkdir":  # (path, mode, dir_fd)
            self._check(args[0], args[2] if len(args) > 2 else None)
        elif event == "os.rename":  # (src, dst, src_dir_fd, dst_dir_fd)
            self._check(args[0], args[2] if len(args) > 2 else None)
            self._check(args[1], args[3] if len(args) > 3 else None)
        elif event in _WRITE_EVENTS:
            for a in args[:2]:
                self._check(a)


def _listing(folder: Path) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        found.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return found


class Sandbox:
    """A work folder per fuzzing process: inputs in case/, output in out/, TMPDIR in tmp/, cwd at the root."""

    _audit: _Audit | None = None

    def __init__(self, root: Path, memory_budget_mb: float = MEMORY_BUDGET_MB) -> None:
        self.root = Path(root).resolve()
        self.memory_budget_mb = memory_budget_mb
        self.case, self.out, self.tmp = self.root / "case", self.root / "out", self.root / "tmp"
        for d in (self.root, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / DATA_MODEL).write_bytes(data_model())
        os.environ["TMPDIR"] = str(self.tmp)
        tempfile.tempdir = str(self.tmp)
        os.chdir(self.root)
        if Sandbox._audit is None:
            Sandbox._audit = _Audit()

    def argv(self, parser: str, files: list[str]) -> list[str]:
        c = self.case
        if parser == "json":
            return ["inspect", str(c / "arch.json"), "--weights", str(c / "weights.h5")]
        if parser == "data":
            model = str(self.root / DATA_MODEL)
            return ["verify", model, model, "--data", str(c / files[0])]
        return ["inspect", str(c / files[0])]

    def run(self, parser: str, case: dict[str, bytes], time_limit: float | None = TIME_LIMIT_S) -> Outcome:
        """Write ``case`` to case/, run the CLI on it, and check every property."""
        from tapeout.compiler.cli import main

        shutil.rmtree(self.case, ignore_errors=True)
        shutil.rmtree(self.out, ignore_errors=True)
        self.case.mkdir()
        for name, data in case.items():
            (self.case / name).write_bytes(data)
        before = _listing(self.root)
        audit = Sandbox._audit
        audit.allowed, audit.seen, audit.armed = (str(self.out), str(self.tmp)), [], True
        err = io.StringIO()
        code: int | None = None
        hung = False
        alarm = time_limit is not None and hasattr(signal, "setitimer")
        if alarm:
            old = signal.signal(signal.SIGALRM, _raise_hang)
            signal.setitimer(signal.ITIMER_REAL, time_limit)
        t0 = time.perf_counter()
        try:
            code = main(self.argv(parser, list(case)), io.StringIO(), err)
        except Hang:
            hung = True
        except SystemExit as e:  # argparse: usage errors exit 2 through SystemExit
            code = e.code if isinstance(e.code, int) else 2
        finally:
            seconds = time.perf_counter() - t0
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
            audit.armed = False
        return Outcome(code, err.getvalue(), seconds, self._problems(code, err.getvalue(), seconds, hung,
                                                                       before, time_limit))

    def _problems(self, code: int | None, stderr: str, seconds: float, hung: bool, before: set[str],
                  time_limit: float | None) -> list[str]:
        problems = []
        if hung or (time_limit is not None and seconds > time_limit):
            problems.append(f"hang: {seconds:.1f} s")
        elif code not in OK_CODES:
            problems.append(f"exit{code}: {stderr.strip()[:300]}")
        if "Traceback" in stderr:
            problems.append(f"traceback: {stderr[-300:]}")
        elif code in (2, 3) and len(stderr.strip().splitlines()) != 1:
            problems.append(f"traceback: not one line: {stderr[:300]!r}")
        left = {p for p in _listing(self.root) - before
                if not p.startswith(str(self.out) + os.sep) and p != str(self.out)}
        written = sorted(set(Sandbox._audit.seen))
        if left or written:
            problems.append(f"escape: left {sorted(left)[:5]} written {written[:5]}")
        if peak_rss_mb() > self.memory_budget_mb:
            problems.append(f"memory: peak RSS {peak_rss_mb():.0f} MB")
        return problems


def _raise_hang(signum: int, frame: object) -> None:
    raise Hang()
