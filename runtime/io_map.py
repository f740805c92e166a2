"""How an artifact's inputs and outputs relate to the source model's: names and layouts.

Artifacts may rename tensors (TFLite and C++ need identifiers: ``gpu_0/data_0`` becomes
``gpu_0_data_0``) and may present another layout (a channels-last TFLite model of an NCHW
source). Data files, reports and ``tapeout verify`` speak the source's names and layouts.
Each target folder declares the relation in ``tapeout_io.json`` (written by the target next
to its artifacts); ``MappedRunner`` wraps the artifact's own runner so that callers feed and
get tensors named and laid out as the source's. NumPy only, so a device can use it.

A port's ``perm`` takes a source-layout tensor to the artifact's layout
(``artifact = source.transpose(perm)``); None when both agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.protocol import IOSpec, Runner

FILE = "tapeout_io.json"
FORMAT = "tapeout-io/1"


@dataclass(frozen=True)
class Port:
    name: str  # the source model's name: data files, reports
    artifact: str  # the artifact's own name for it
    shape: tuple[Any, ...]  # in the artifact's layout; the batch is "N"
    layout: str | None = None  # the artifact's layout ("NHWC"), None when it has none
    source_layout: str | None = None  # the source model's layout ("NCHW")
    perm: tuple[int, ...] | None = None  # source layout -> artifact layout

    @property
    def inverse(self) -> tuple[int, ...] | None:
        return None if self.perm is None else tuple(int(i) for i in np.argsort(self.perm))

    def source_shape(self) -> tuple[Any, ...]:
        inv = self.inverse
        return self.shape if inv is None else tuple(self.shape[i] for i in inv)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "artifact": self.artifact, "shape": list(self.shape), "layout": self.layout,
                "source_layout": self.source_layout, "perm": None if self.perm is None else list(self.perm)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Port":
        perm = d.get("perm")
        return Port(str(d["name"]), str(d.get("artifact", d["name"])), tuple(d.get("shape", ())),
                    d.get("layout"), d.get("source_layout"), None if perm is None else tuple(int(i) for i in perm))


@dataclass(frozen=True)
class IOMap:
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]

    @property
    def identity(self) -> bool:
        return all(p.name == p.artifact and p.perm is None for p in (*self.inputs, *self.outputs))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "inputs": [p.to_json() for p in self.inputs],
                "outputs": [p.to_json() for p in self.outputs]}

    @staticmethod
    def from_json(d: Any, where: str = FILE) -> "IOMap":
        try:
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
            return IOMap(tuple(Port.from_json(p) for p in d["inputs"]), tuple(Port.from_json(p) for p in d["outputs"]))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise RuntimeInputError(f"{where}: not a tapeout I/O map ({exc})") from None

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE
        # One port a line: small, readable, deterministic.
        d = self.to_json()
        lines = [f'{{"format": {json.dumps(FORMAT)},']
        for i, kind in enumerate(("inputs", "outputs")):
            ports = ",\n".join("  " + json.dumps(p) for p in d[kind])
            lines.append(f' "{kind}": [\n{ports}\n ]' + ("," if i == 0 else "}"))
        path.write_text("\n".join(lines) + "\n")
        return path

    @staticmethod
    def load(folder: str | Path) -> "IOMap | None":
        """The map in ``folder`` (an artifact's folder), None when it has none."""
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RuntimeInputError(f"{path}: not a readable I/O map ({exc})") from None
        return IOMap.from_json(data, str(path))


class MappedRunner(Runner):
    """An artifact's runner seen through its I/O map: source names in, source layouts in and out."""

    def __init__(self, inner: Runner, io_map: IOMap) -> None:
        super().__init__()
        self.inner = inner
        self.map = io_map

    @property  # type: ignore[override]
    def name(self) -> str:  # the inner runner may learn its name on open (LiteRT's backend)
        return self.inner.name

    def _open(self) -> None:
        self.inner.open()
        have_in = {s.name: s for s in self.inner.input_specs()}
        have_out = set(self.inner.output_names())
        for kind, ports, have in (("input", self.map.inputs, have_in), ("output", self.map.outputs, have_out)):
            missing = [p.artifact for p in ports if p.artifact not in have]
            if missing:
                self.inner.close()
                raise RuntimeInputError(f"{getattr(self.inner, 'path', self.inner.name)}: its {FILE} names "
                                        f"{kind}(s) {', '.join(missing)} the artifact does not have "
                                        f"(it has {', '.join(sorted(have))})")
        self._specs = [IOSpec(p.name, p.source_shape(), have_in[p.artifact].dtype) for p in self.map.inputs]

    def _close(self) -> None:
        self.inner.close()

    def input_specs(self) -> list[IOSpec]:
        self.open()
        return list(self._specs)

    def output_names(self) -> list[str]:
        return [p.name for p in self.map.outputs]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [p.name for p in self.map.inputs if p.name not in feeds]
        if missing:
            raise RuntimeInputError(f"no data for input(s) {', '.join(missing)}; the model takes "
                                    f"{', '.join(p.name for p in self.map.inputs)}")
        args = {}
        for p in self.map.inputs:
            x = np.asarray(feeds[p.name])
            if p.perm is not None and x.ndim != len(p.perm):
                raise RuntimeInputError(f"input '{p.name}' has shape {x.shape}; the model takes rank "
                                        f"{len(p.perm)} ({p.source_layout})")
            args[p.artifact] = x if p.perm is None else np.ascontiguousarray(x.transpose(p.perm))
        out = self.inner.infer(args)
        result = {}
        for p in self.map.outputs:
            y = out[p.artifact]
            result[p.name] = y if p.perm is None else np.ascontiguousarray(np.asarray(y).transpose(p.inverse))
        return result


def mapped(runner: Runner, folder: str | Path) -> Runner:
    """``runner`` seen through the I/O map in ``folder``; itself when there is none or it changes nothing."""
    io_map = IOMap.load(folder)
    return runner if io_map is None or io_map.identity else MappedRunner(runner, io_map)


def describe(ports: Sequence[Port]) -> str:
    """'x NHWC [N, 8, 8, 3] (source NCHW), ...' for notes."""
    parts = []
    for p in ports:
        renamed = f" as '{p.artifact}'" if p.artifact != p.name else ""
        moved = f" (source {p.source_layout})" if p.perm is not None else ""
        shape = "[" + ", ".join(str(d) for d in p.shape) + "]"
        parts.append(f"'{p.name}'{renamed} {p.layout or ''} {shape}{moved}".replace("  ", " "))
    return ", ".join(parts)
