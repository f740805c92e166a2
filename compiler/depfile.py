"""Make-format depfiles (``--depfile FILE``), as ``gcc -MD -MP`` writes them.

The first rule names the build's stamp (``OUTDIR/report.json``) and every file the build read;
then each of those files gets an empty rule of its own, so a deleted or renamed input makes the
stamp out of date instead of stopping Make with "no rule to make target". Paths are written as
the user spelled them: relative ones stay relative, so the depfile is as portable as the
command line. Make, Ninja (``deps = gcc``) and CMake's ``add_custom_command(DEPFILE ...)`` read it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from tapeout.compiler.errors import UsageError

SYNTHETIC = "synthetic"  # --calibration synthetic reads no file
WIDTH = 75  # gcc wraps the first rule near this column


def escape(path: str) -> str:
    """One path in Make syntax, escaped as gcc escapes it.

    Backslashes before a space or tab are doubled, then the blank gets its own backslash; ``$``
    is doubled and ``#`` gets a backslash. A newline cannot be written at all.
    """
    if "\n" in path or "\r" in path:
        raise UsageError(f"--depfile: cannot name {path!r} in a depfile: the path holds a line break")
    out: list[str] = []
    for i, ch in enumerate(path):
        if ch in " \t":
            j = i - 1
            while j >= 0 and path[j] == "\\":
                out.append("\\")
                j -= 1
            out.append("\\" + ch)
        elif ch == "$":
            out.append("$$")
        elif ch == "#":
            out.append("\\#")
        else:
            out.append(ch)
    return "".join(out)


def stamp_of(outdir: str | os.PathLike[str]) -> str:
    """``OUTDIR/report.json`` with OUTDIR spelled as given (``./out`` stays ``./out``)."""
    text = os.fspath(outdir)
    stripped = text.rstrip("/")
    if not stripped:
        return "/report.json" if text else "report.json"
    return stripped + "/report.json"


def files_read(*paths: str | os.PathLike[str] | None) -> list[str]:
    """The input files among ``paths``: None and ``synthetic`` dropped, duplicates once, order kept;
    an ONNX model is followed by the external data files it reads."""
    seen: list[str] = []
    for p in paths:
        if p is None:
            continue
        text = os.fspath(p)
        if not text or text == SYNTHETIC:
            continue
        for f in [text, *onnx_external_files(text)]:
            if f not in seen:
                seen.append(f)
    return seen


def onnx_external_files(model: str) -> list[str]:
    """The external data files of an ``.onnx`` model, spelled from the model's path as given."""
    if not model.lower().endswith(".onnx"):
        return []
    from tapeout.compiler.frontends.onnx_model import _external_location, _graph_tensors, read_model

    try:
        proto = read_model(Path(model))
    except Exception:  # noqa: BLE001 - not readable: the compile has said so already
        return []
    folder = os.path.dirname(model)
    found: list[str] = []
    for tensor in _graph_tensors(proto.graph):
        loc = _external_location(tensor)
        if loc and isinstance(loc, str):
            path = os.path.join(folder, loc) if folder else loc
            if path not in found:
                found.append(path)
    return found


def render(target: str, deps: Sequence[str]) -> str:
    """The depfile's text: ``target: deps`` with continuations, then ``dep:`` for each dependency."""
    lines: list[str] = []
    line = escape(target) + ":"
    for dep in deps:
        word = escape(dep)
        if len(line) + 1 + len(word) > WIDTH and not line.endswith(":"):
            lines.append(line + " \\")
            line = ""
        line += " " + word
    lines.append(line)
    for dep in deps:
        lines += ["", escape(dep) + ":"]
    return "\n".join(lines) + "\n"


def write_depfile(path: str | os.PathLike[str], target: str, deps: Iterable[str]) -> bool:
    """Write the depfile atomically, only when its text changed; True when it was (re)written."""
    from tapeout.compiler.staging import write_if_changed

    text = render(target, list(deps))
    path = Path(path)
    check_depfile(path)
    return write_if_changed(path, text.encode())


def check_depfile(path: str | os.PathLike[str]) -> None:
    """Refuse a depfile path that cannot be written, before any work is done (missing folders are made)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--depfile {path}: is a folder")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"--depfile {path}: {folder} is not a folder")
            break
