"""The one narrow runner protocol every source model and artifact is executed through.

A runner is opened, asked for its input specs, fed a dict of NumPy arrays keyed by
input name and returns a dict of NumPy arrays keyed by output name. Nothing here
imports anything but NumPy, so artifacts can be verified on devices with no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tapeout.runtime.errors import RuntimeInputError

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


class FileRunner(Runner):
    """A runner over a model file whose ``_open`` fills ``_specs`` and ``_outputs``.

    Gives the protocol's spec queries and the one check every file runner makes on feeds.
    """

    def __init__(self) -> None:
        super().__init__()
        self._specs: list[IOSpec] = []
        self._outputs: list[str] = []

    def _label(self) -> str:
        return str(getattr(self, "path", self.name))

    def input_specs(self) -> list[IOSpec]:
        self.open()
        return list(self._specs)

    def output_names(self) -> list[str]:
        self.open()
        return list(self._outputs)

    def _typed_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The feeds in input order, cast to each input's dtype; one clear error for a missing one."""
        missing = [s.name for s in self._specs if s.name not in feeds]
        if missing:
            raise RuntimeInputError(f"{self._label()}: no data for input(s) {', '.join(missing)}; "
                                    f"the model takes {', '.join(s.name for s in self._specs)}")
        return [np.asarray(feeds[s.name], dtype=s.dtype) for s in self._specs]
