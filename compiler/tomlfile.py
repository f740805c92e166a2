"""What the TOML files of `tapeout build` (tapeout.toml, compiler.project) and `tapeout sweep`
(compiler.sweep.spec) share: the read (one-line errors for a missing, unreadable, non-UTF-8 or
invalid file), errors that name the line of a key, and the did-you-mean hint.

Imports no framework: a no-op `tapeout build` loads it.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapeout.compiler.errors import UsageError

__all__ = ["KeyLines", "LineErrors", "TomlFile", "did_you_mean", "read_toml"]


@dataclass(frozen=True)
class TomlFile:
    spelled: str  # as given (errors name it so)
    abspath: Path
    text: str
    doc: dict[str, Any]


def read_toml(path: str | os.PathLike[str], what: str) -> TomlFile:
    """Read and parse a TOML file; UsageError "FILE: message" when it cannot be (``what``: "project file"),
    "FILE:LINE: invalid TOML: ..." for a syntax error."""
    spelled = os.fspath(path)
    abspath = Path(os.path.abspath(spelled))
    try:
        raw = abspath.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{spelled}: no such {what}") from None
    except IsADirectoryError:
        raise UsageError(f"{spelled}: is a folder, not a {what}") from None
    except OSError as e:
        raise UsageError(f"{spelled}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{spelled}: not UTF-8 text (byte {e.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        where = f"{spelled}:{m.group(1)}" if m else spelled
        raise UsageError(f"{where}: invalid TOML: {e}") from None
    return TomlFile(spelled, abspath, text, doc)


class LineErrors:
    """Errors about a key of one TOML file: "FILE:LINE: message", or "FILE: message" when no line is found."""

    def __init__(self, spelled: str, text: str):
        self.spelled = spelled
        self.lines = KeyLines(text)

    def fail(self, where: Sequence[str], msg: str) -> UsageError:
        line = self.lines.find(tuple(where))
        return UsageError(f"{self.spelled}:{line}: {msg}" if line else f"{self.spelled}: {msg}")


def did_you_mean(word: str, choices: Iterable[str], *, prefix: bool = False) -> str:
    """" (did you mean 'X'?)" for the closest choice, else "". ``prefix``: a choice that starts with
    ``word`` comes first (the sweep file's axes and options: 'reuse' finds 'reuse_factor')."""
    choices = list(choices)
    close = [c for c in choices if c.startswith(word)][:1] if prefix else []
    close = close or difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------- line numbers
_BARE = re.compile(r"[A-Za-z0-9_-]+")


class KeyLines:
    """Where each key path is first written in the TOML text.

    tomllib returns plain dicts with no positions, so errors about a key would have no line; this
    scans the text for table headers and `key = value` lines (dotted and quoted keys, one level of
    inline table), which is enough to point at a user's mistake. Not a TOML parser: a miss only
    costs the line number (the longest known prefix of the path is used instead).
    """

    def __init__(self, text: str):
        self.first: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        open_string: str | None = None
        for no, line in enumerate(text.splitlines(), 1):
            if open_string:  # inside a multi-line string: only look for its end
                if line.count(open_string) % 2 == 1:
                    open_string = None
                continue
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            if s.startswith("["):
                inner = 2 if s.startswith("[[") else 1
                parts, _ = _read_key(s, inner)
                if parts:
                    table = tuple(parts)
                    self._note(table, no)
                continue
            parts, end = _read_key(s, 0)
            if not parts or not s[end:].lstrip().startswith("="):
                continue
            full = table + tuple(parts)
            self._note(full, no)
            rest = s[end:].lstrip()[1:]
            for delim in ('"""', "'''"):
                if rest.count(delim) % 2 == 1:
                    open_string = delim
            if rest.lstrip().startswith("{"):  # inline table: its keys are on this line
                for m in re.finditer(r'[{,]\s*([A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')\s*=', rest):
                    self._note(full + (m.group(1).strip("\"'"),), no)

    def _note(self, path: tuple[str, ...], no: int) -> None:
        for i in range(1, len(path) + 1):
            self.first.setdefault(path[:i], no)

    def find(self, path: tuple[str, ...]) -> int | None:
        for i in range(len(path), 0, -1):
            if path[:i] in self.first:
                return self.first[path[:i]]
        return None


def _read_key(s: str, i: int) -> tuple[list[str], int]:
    """A dotted key starting at s[i] (whitespace allowed around dots): (parts, index after it); ([], i) if none."""
    parts: list[str] = []
    while True:
        while i < len(s) and s[i] in " \t":
            i += 1
        if i < len(s) and s[i] in "\"'":
            q = s[i]
            j = i + 1
            buf = []
            while j < len(s) and s[j] != q:
                if q == '"' and s[j] == "\\" and j + 1 < len(s):
                    j += 1
                buf.append(s[j])
                j += 1
            if j >= len(s):
                return [], i
            parts.append("".join(buf))
            i = j + 1
        else:
            m = _BARE.match(s, i)
            if not m:
                return ([], i) if not parts else (parts, i)
            parts.append(m.group(0))
            i = m.end()
        k = i
        while k < len(s) and s[k] in " \t":
            k += 1
        if k < len(s) and s[k] == ".":
            i = k + 1
            continue
        return parts, i
