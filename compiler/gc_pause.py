"""Pause CPython's cyclic garbage collector while a large, acyclic structure is built.

Each full collection walks every live container object. Building the IR of a long model
(or a pass's copy of it) allocates enough of them to set off many full collections, each
over the whole, growing heap: on a chain of 40,000 nodes that was half the compile time
(issue 14, finding 5). The IR holds no reference cycles, so reference counting frees all of
it; only the collector's bookkeeping is skipped. The previous state is restored on exit.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
