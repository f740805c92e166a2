"""The one narrow runner protocol every source model and artifact is executed through.

A runner is opened, asked for its input specs, fed a dict of NumPy arrays keyed by
input name and returns a dict of NumPy arrays keyed by output name. Nothing here
imports anything but NumPy, so artifacts can be verified on devices with no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Dim = int | str | None


@dataclass(frozen=True)
class IOSpec:
    name: str
    shape: tuple[Dim, ...]  # str or None: a dynamic dimension (the batch)
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


class Runner:
    """Base class: subclasses implement _open, input_specs, output_names and _infer."""

    name = "runner"

    def __init__(self) -> None:
        self._opened = False

    # lifecycle -----------------------------------------------------------
    @property
    def opened(self) -> bool:
        return self._opened

    def open(self) -> "Runner":
        if not self._opened:
            self._open()
            self._opened = True
        return self

    def close(self) -> None:
        if self._opened:
            self._close()
            self._opened = False

    def __enter__(self) -> "Runner":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # protocol ------------------------------------------------------------
    def input_specs(self) -> list[IOSpec]:
        raise NotImplementedError

    def output_names(self) -> list[str]:
        raise NotImplementedError

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._opened:
            self.open()
        return self._infer(feeds)

    # hooks ---------------------------------------------------------------
    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
