"""The CLI run in-process, as the tests drive it: (exit code, stdout, stderr)."""

from __future__ import annotations

import io


def run_cli(*argv: object) -> tuple[int, str, str]:
    from tapeout.compiler.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out, err)
    return code, out.getvalue(), err.getvalue()
