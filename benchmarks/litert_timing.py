"""The benchmarks' one way to time a .tflite on the host: LiteRT, one thread, batch 1, the median
of ``runs`` invocations after a warm-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def latency_ms(path: Path, runs: int, x: np.ndarray | None = None, warmup: int = 3) -> float:
    """``x``: samples whose first is fed; None: one standard-normal sample of the input's shape."""
    from tapeout.runtime.runners.litert import LiteRTRunner, median_latency_ms

    with LiteRTRunner(path, num_threads=1) as r:
        spec = r.input_specs()[0]
        if x is None:
            shape = [1, *(d if isinstance(d, int) else 1 for d in spec.shape[1:])]
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        return median_latency_ms(r, {spec.name: x[:1]}, runs, warmup)
