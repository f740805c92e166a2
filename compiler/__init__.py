"""tapeout.compiler: IR, front ends, passes, reference interpreter and the CLI driver."""

from tapeout.compiler.version import __version__

__all__ = ["__version__"]
