"""Errors raised by runners and data loading. NumPy-only, so devices can use them without the compiler.

Each carries the CLI exit code; tapeout.compiler.errors documents the full table.
"""


class RuntimeInputError(Exception):
    """A bad data file, data that does not fit the model, or an unreadable artifact."""

    exit_code = 2


class RuntimeUnavailable(Exception):
    """The package that runs an artifact (onnxruntime, TensorFlow...) is not installed."""

    exit_code = 3
