"""Errors raised by runners and data loading. NumPy-only, so devices can use them without the compiler.

Each carries the CLI exit code; tapeout.compiler.errors documents the full table.
"""


class RuntimeInputError(Exception):
    """A bad data file, data that does not fit the model, or an unreadable artifact."""

    exit_code = 2


class RuntimeUnavailable(Exception):
    """The package that runs an artifact (onnxruntime, TensorFlow...) is not installed."""

    exit_code = 3


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A library's (often multi-line) exception message as one line of at most ``limit`` characters."""
    text = " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
