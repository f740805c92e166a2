"""The results file of a sweep: CSV, one row per point, append-only.

Each row is written with one ``write`` on an O_APPEND descriptor and fsynced before the next point
is taken, so a sweep killed at any moment keeps every finished point and no half row. ``read``
refuses (UsageError, exit 2) a file it cannot trust, and never changes it: the user decides.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any, Sequence

from tapeout.compiler.errors import UsageError

HEAD = ("id", "index", "target")  # then the axes, the metrics, and "base" last
METRICS = ("status", "accuracy", "source_accuracy", "agreement", "cosine", "size_bytes", "litert_ms", "dsp", "luts",
           "bram18", "latency_cycles", "latency_ns", "synth_dsp", "synth_luts", "synth_latency_cycles", "build_s",
           "from", "same_as", "host", "error")
NUMERIC = ("accuracy", "source_accuracy", "agreement", "cosine", "size_bytes", "litert_ms", "dsp", "luts", "bram18",
           "latency_cycles", "latency_ns", "synth_dsp", "synth_luts", "synth_latency_cycles", "build_s")
# ok: built and verified; failed: built, verification failed (its numbers are still measured);
# error: the build stopped (the error column says why); crashed: its worker died on every attempt.
STATUSES = ("ok", "failed", "error", "crashed")
_ID = re.compile(r"[0-9a-f]{12}")


def columns(axis_columns: Sequence[str]) -> list[str]:
    # base: a digest of the [base] build and its input files' bytes; --resume refuses rows of another.
    return [*HEAD, *axis_columns, *METRICS, "base"]


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format(v, ".6g")
    return str(v)


class ResultsFile:
    def __init__(self, path: Path, cols: Sequence[str]):
        self.path = Path(path)
        self.columns = list(cols)

    def read(self) -> list[dict[str, str]]:
        """The rows (dicts of text) of an existing file; [] when it is missing or empty.

        UsageError naming the line when the file is not one this sweep wrote: other columns, a row
        of the wrong width, a bad id or status, or a last line cut short."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise UsageError(f"{self.path}: cannot read the results file: {e.strerror}") from None
        if not raw:
            return []

        def bad(line: int | None, why: str) -> UsageError:
            where = f"{self.path}:{line}" if line else str(self.path)
            return UsageError(f"{where}: corrupt results file ({why}); it is left as it is: move it away, "
                              "or choose another --output")

        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise bad(raw.count(b"\n", 0, e.start) + 1, "not UTF-8 text") from None
        if not text.endswith("\n"):
            raise bad(text.count("\n") + 1, "the last line is cut short")
        try:
            records = list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise bad(None, f"not CSV: {e}") from None
        if records[0] != self.columns:
            raise bad(1, "its columns are not this sweep's: it was written by another sweep file")
        rows = []
        for no, rec in enumerate(records[1:], 2):
            if len(rec) != len(self.columns):
                raise bad(no, f"{len(rec)} fields, expected {len(self.columns)}")
            row = dict(zip(self.columns, rec))
            if not _ID.fullmatch(row["id"]):
                raise bad(no, f"bad point id {row['id']!r}")
            if row["status"] not in STATUSES:
                raise bad(no, f"bad status {row['status']!r}")
            for key in NUMERIC:
                if row[key]:
                    try:
                        float(row[key])
                    except ValueError:
                        raise bad(no, f"{key} {row[key]!r} is not a number") from None
            rows.append(row)
        return rows

    def append(self, row: dict[str, Any]) -> None:
        """One row (missing keys empty), the header first when the file is new; on disk on return."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size == 0:
                w.writerow(self.columns)
            w.writerow([_cell(row.get(c)) for c in self.columns])
            data = buf.getvalue().encode("utf-8")
            while data:  # one write in practice; a short write is finished, never interleaved (one writer)
                n = os.write(fd, data)
                data = data[n:]
            os.fsync(fd)
        finally:
            os.close(fd)


def as_number(text: str) -> float | None:
    return float(text) if text not in ("", None) else None
