"""Pick the front end for a model file by its contents and suffix."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tapeout.compiler.errors import FrontendError, UsageError
from tapeout.compiler.ir import Graph

SUFFIX_FORMATS = {
    ".keras": "keras",
    ".h5": "keras2-h5",
    ".hdf5": "keras2-h5",
    ".json": "keras2-json",
    ".onnx": "onnx",
}


@dataclass(frozen=True)
class SourceInfo:
    path: str  # as the user gave it (no absolute temp paths in reports)
    format: str
    sha256: str
    weights: str | None = None

    def to_json(self) -> dict:
        d = {"path": self.path, "format": self.format, "sha256": self.sha256}
        if self.weights:
            d["weights"] = self.weights
        return d


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detect_format(path: Path) -> str:
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: unknown model format {path.suffix!r}; expected one of "
                         f"{', '.join(sorted(SUFFIX_FORMATS))}")
    return fmt


def source_info(path: str | Path, weights: str | Path | None = None) -> SourceInfo:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such model file")
    if weights is not None and not Path(weights).is_file():
        raise UsageError(f"{weights}: no such weights file")
    fmt = detect_format(p)
    if fmt == "keras2-json" and weights is None:
        raise UsageError(f"{p}: an architecture JSON needs its weights: pass --weights WEIGHTS.h5")
    if weights is not None and fmt != "keras2-json":
        raise UsageError(f"--weights applies to an architecture .json only, not to {p.suffix} files")
    return SourceInfo(str(path), fmt, sha256_of(p), str(weights) if weights else None)


def load_model(path: str | Path, weights: str | Path | None = None) -> tuple[Graph, SourceInfo]:
    """Read a model file into the IR; returns the graph and what the report says about the source."""
    info = source_info(path, weights)
    if info.format == "onnx":
        try:
            from tapeout.compiler.frontends.onnx import load_onnx
        except ImportError:
            raise FrontendError(f"{path}: the ONNX front end is not available in this version") from None
        from tapeout.compiler.frontends.onnx_model import read_model
        from tapeout.compiler.frontends.qonnx import load_qonnx
        from tapeout.runtime.runners.qonnx_exec import names_qonnx

        model = read_model(Path(path))  # parsed once: the QONNX test and the front end share it
        graph = load_qonnx(path, model) if names_qonnx(model) else load_onnx(path, model)
    else:  # HGQ2 .keras files too: the Keras front end's check tells them apart
        from tapeout.compiler.frontends.keras import load_keras

        graph = load_keras(path, weights)
    graph.metadata.setdefault("source_format", info.format)
    return graph, info

