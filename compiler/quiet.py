"""Keep TensorFlow's, Keras's and absl's log noise off the user's terminal.

TensorFlow writes from C++ straight to file descriptor 2, so Python-level
redirection is not enough: ``captured_output`` swaps the descriptors themselves
and hands back what was written, for --verbose or for an error message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",  # oneDNN reorders float sums: results would vary run to run
    "KERAS_BACKEND": "tensorflow",
    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "-1"),
    "ABSL_MIN_LOG_LEVEL": "3",
}


def quiet_environment() -> None:
    """Set the variables TensorFlow reads at import time (call before importing it)."""
    for k, v in _ENV.items():
        os.environ.setdefault(k, v)
    for name in ("tensorflow", "absl", "keras", "h5py", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|tf_keras|h5py|absl|google)(\.|$)")


@contextlib.contextmanager
def captured_output(enabled: bool = True) -> Iterator[list[str]]:
    """Send fd 1 and 2 to a temporary file for the duration; the list gets its text at exit."""
    sink: list[str] = []
    if not enabled:
        yield sink
        return
    quiet_environment()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield sink
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))
