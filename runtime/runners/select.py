"""Choose a runner for a model or artifact file by its suffix.

An explicit table (suffix -> factory); each factory imports its runner module
only when called, so picking a runner never imports a framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.protocol import Runner


def _keras(path: Path, weights: Path | None) -> Runner:
    from tapeout.runtime.runners.keras import KerasRunner

    return KerasRunner(path, weights=weights)


def _onnx(path: Path, weights: Path | None) -> Runner:
    from tapeout.runtime.runners.onnxrt import OnnxRuntimeRunner
    from tapeout.runtime.runners.qonnx_exec import QonnxRunner, qonnx_model

    model = qonnx_model(path)  # parsed only when the bytes name a QONNX domain
    if model is not None:  # QONNX quantizers: onnxruntime has no kernels for them
        return QonnxRunner(path, model)  # the runner takes this parse, not a second one

    return OnnxRuntimeRunner(path)


def _tflite(path: Path, weights: Path | None) -> Runner:
    from tapeout.runtime.runners.litert import LiteRTRunner

    return LiteRTRunner(path)


def _tensorrt(path: Path, weights: Path | None) -> Runner:
    from tapeout.runtime.runners.tensorrt import TensorRTRunner

    return TensorRTRunner(path)


RUNNERS: dict[str, Callable[[Path, Path | None], Runner]] = {
    ".keras": _keras,
    ".h5": _keras,
    ".hdf5": _keras,
    ".json": _keras,
    ".onnx": _onnx,
    ".tflite": _tflite,
    ".plan": _tensorrt,  # a TensorRT engine (GPU only)
}


def _hls4ml_project(path: Path) -> Runner:
    from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

    return Hls4mlCsimRunner(path)


def is_hls4ml_project(path: str | Path) -> bool:
    """A folder tapeout's hls4ml target wrote (it holds the C-simulation manifest)."""
    from tapeout.runtime.runners.hls4ml_csim import MANIFEST

    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def runner_for(path: str | Path, weights: str | Path | None = None) -> Runner:
    """The runner for a model or artifact file (by suffix), or for an hls4ml project folder.

    An artifact whose folder holds tapeout's I/O map (``runtime.io_map``) is run through it:
    fed and read with the source model's names and layouts."""
    p = Path(path)
    if p.is_dir():  # the runner refuses, on open, a folder without the manifest
        return _hls4ml_project(p)
    factory = RUNNERS.get(p.suffix.lower())
    if factory is None:
        raise RuntimeInputError(f"{p}: no runner for {p.suffix or 'files without a suffix'}; "
                                f"known: {', '.join(sorted(RUNNERS))}")
    if not p.is_file():
        raise RuntimeInputError(f"{p}: no such file")
    from tapeout.runtime.io_map import mapped

    return mapped(factory(p, Path(weights) if weights else None), p.parent)
