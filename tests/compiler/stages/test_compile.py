"""The build's stages under -j: the jobs share the BLAS threads out instead of oversubscribing."""

from __future__ import annotations

import os
from pathlib import Path

from threadpoolctl import threadpool_info

from tapeout.compiler.api import compile_model

SAMPLE = Path(__file__).resolve().parents[3] / "samples" / "digits_cnn"


def _blas_threads() -> set[int]:
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


def test_parallel_jobs_share_the_blas_threads_and_give_them_back(tmp_path):
    before = _blas_threads()
    assert before, "NumPy links no BLAS threadpoolctl can see"
    seen: dict[str, set[int]] = {}

    def progress(step: str) -> None:
        if step.startswith(("calibration", "emit", "verify")):
            seen[step] = _blas_threads()

    compile_model(SAMPLE / "model.keras", ["onnx", "tflite:int8"], tmp_path / "out", progress=progress, jobs=2,
                  calibration=str(SAMPLE / "calibration.npz"))
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert seen and all(v == {share} for v in seen.values()), seen
    assert _blas_threads() == before
