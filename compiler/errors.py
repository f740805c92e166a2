"""User-facing errors. Each carries the CLI exit code documented in docs/cli.md.

0 ok, 1 verification failed, 2 bad input or usage, 3 missing tool, 4 internal error.
"""


class TapeoutError(Exception):
    """Base of every error the CLI reports as one line (no traceback)."""

    exit_code = 2


class UsageError(TapeoutError):
    """A bad flag, a bad combination of flags, a missing file."""


class FrontendError(TapeoutError):
    """A model file that cannot be read or holds something the IR cannot express.

    Unsupported ops name the node, the op and the supported list.
    """


class DataError(TapeoutError):
    """Input data (.npz/.npy) that does not fit the model."""


class MissingToolError(TapeoutError):
    """A back end's tool or Python package is not installed."""

    exit_code = 3


class VerificationFailed(TapeoutError):
    exit_code = 1


class PassFailed(TapeoutError):
    """A compiler pass broke; names the pass and those that ran before it. Internal error."""

    exit_code = 4


class InternalError(TapeoutError):
    """tapeout produced something broken (e.g. generated C++ that does not compile): a bug in
    tapeout, reported as one line with the first thing that went wrong."""

    exit_code = 4
