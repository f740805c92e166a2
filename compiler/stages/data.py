"""The data a build reads, loaded once and handed to every stage and target that needs it.

Calibration, eval and training files are each read from disk once (``runtime.data.read_arrays``)
and then fitted to whichever inputs ask (the source runner's, or the graph's after a pass): the
quantize stage, hls4ml's precision search, accuracy control and verification all get their
``Dataset`` here, never from the path.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from tapeout.runtime.data import Dataset, dataset_from, read_arrays, synthesize
from tapeout.runtime.protocol import IOSpec

SYNTHETIC = "synthetic"  # --calibration synthetic: random inputs, recorded as such
SYNTHETIC_SAMPLES = 8
SYNTHETIC_CALIBRATION_SAMPLES = 32


class BuildData:
    def __init__(self, calibration: str | Path | None = None, eval_data: str | Path | None = None,
                 train: str | Path | None = None) -> None:
        self.calibration_file = None if calibration is None or str(calibration) == SYNTHETIC else Path(calibration)
        self.synthetic_calibration = calibration is not None and str(calibration) == SYNTHETIC
        self.eval_file = None if eval_data is None else Path(eval_data)
        self.train_file = None if train is None else Path(train)
        self._arrays: dict[Path, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()  # targets emit in parallel (-j)

    def _load(self, path: Path, specs: Sequence[IOSpec], kind: str) -> Dataset:
        with self._lock:
            arrays = self._arrays.get(path)
            if arrays is None:
                arrays = self._arrays[path] = read_arrays(path)
                for a in arrays.values():  # shared by every stage and target: none may change them
                    a.setflags(write=False)
        return dataset_from(path, arrays, list(specs), kind)

    @property
    def has_calibration(self) -> bool:
        return self.calibration_file is not None or self.synthetic_calibration

    def calibration(self, specs: Sequence[IOSpec]) -> Dataset | None:
        """The calibration inputs (synthetic ones for --calibration synthetic); None without any."""
        if self.synthetic_calibration:
            return synthesize(list(specs), num_samples=SYNTHETIC_CALIBRATION_SAMPLES, seed=0)
        return None if self.calibration_file is None else self._load(self.calibration_file, specs, "calibration")

    def eval(self, specs: Sequence[IOSpec]) -> Dataset | None:
        return None if self.eval_file is None else self._load(self.eval_file, specs, "eval")

    def train(self, specs: Sequence[IOSpec]) -> Dataset | None:
        return None if self.train_file is None else self._load(self.train_file, specs, "file")

    def verification(self, specs: Sequence[IOSpec], samples: int = SYNTHETIC_SAMPLES) -> Dataset:
        """--eval if given, else the calibration file, else synthetic inputs (the report says which)."""
        if self.eval_file is not None:
            return self._load(self.eval_file, specs, "eval")
        if self.calibration_file is not None:
            return self._load(self.calibration_file, specs, "calibration")
        return synthesize(list(specs), num_samples=samples, seed=0)
