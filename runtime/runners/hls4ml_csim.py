"""Run an hls4ml project's C simulation: its compiled bridge library, through ctypes.

The library (``firmware/myproject-<stamp>.so``, built by the project's ``build_lib.sh``)
exports ``myproject_double(in..., out...)`` taking flat double arrays for one sample, and the
trace hooks ``allocate_trace_storage`` / ``collect_trace_output`` / ``free_trace_storage``.
This is what hls4ml's ``predict`` calls; here it needs only NumPy and the manifest the
target wrote (``tapeout_csim.json``), not TensorFlow or hls4ml. With ``build=True`` a
missing library is built with g++ first.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from tapeout.runtime.errors import RuntimeInputError, RuntimeUnavailable
from tapeout.runtime.protocol import FileRunner, IOSpec

MANIFEST = "tapeout_csim.json"


class _TraceData(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.c_void_p)]


class Hls4mlCsimRunner(FileRunner):
    name = "hls4ml-csim"

    def __init__(self, project: str | Path, *, build: bool = True) -> None:
        super().__init__()
        self.path = Path(project).resolve()
        self.build = build
        self._lib: ctypes.CDLL | None = None
        self._manifest: dict[str, Any] = {}
        self._out_shapes: list[tuple[int, ...]] = []

    # ------------------------------------------------------------ lifecycle
    def _check_weights(self) -> None:
        """The library reads firmware/weights/*.txt on its first call and exits the whole process
        (hls4ml's load_weights_from_txt) when one is missing: refuse before loading it instead."""
        source = self.path / "firmware" / f"{self._manifest['project']}.cpp"
        names = re.findall(r'load_weights_from_txt<[^>]*>\(\s*\w+\s*,\s*"([^"]+)"', source.read_text()) \
            if source.is_file() else []
        missing = [n for n in names if not (self.path / "firmware" / "weights" / n).is_file()]
        if missing:
            raise RuntimeInputError(f"{self.path}: firmware/weights/{missing[0]} is missing ({len(missing)} of "
                                    f"{len(names)} weight files); the C simulation needs them")

    def _open(self) -> None:
        mf = self.path / MANIFEST
        if not mf.is_file():
            raise RuntimeInputError(f"{self.path}: not an hls4ml project written by tapeout (no {MANIFEST})")
        try:
            manifest = json.loads(mf.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RuntimeInputError(f"{mf}: not a readable C-simulation manifest ({e})") from None
        keys = ("project", "library", "build", "inputs", "outputs")
        if not isinstance(manifest, dict) or not all(k in manifest for k in keys):
            raise RuntimeInputError(f"{mf}: not a C-simulation manifest (it needs {', '.join(keys)})")
        self._manifest = manifest
        lib = self.path / self._manifest["library"]
        if not lib.is_file():
            if not self.build:
                raise RuntimeUnavailable(f"{lib}: C-simulation library not built (run {self._manifest['build']})")
            proc = subprocess.run(["bash", self._manifest["build"]], cwd=self.path, capture_output=True, text=True)
            if proc.returncode != 0 or not lib.is_file():
                raise RuntimeUnavailable(f"{self.path}: building the C simulation failed (needs g++): "
                                         + " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:]))
        self._check_weights()
        self._lib = ctypes.CDLL(str(lib.resolve()))
        proj = self._manifest["project"]
        fn = getattr(self._lib, f"{proj}_double")
        n_io = len(self._manifest["inputs"]) + len(self._manifest["outputs"])
        fn.argtypes = [np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")] * n_io
        fn.restype = None
        self._fn = fn
        self._specs = [IOSpec(i["name"], ("N", *i["shape"]), "float32") for i in self._manifest["inputs"]]
        self._outputs = [o["name"] for o in self._manifest["outputs"]]
        self._out_shapes = [tuple(o["shape"]) for o in self._manifest["outputs"]]
        # A channels-first source keeps its layout here; the C++ computes channels-last.
        self._in_perm = [i.get("perm") for i in self._manifest["inputs"]]
        self._out_perm = [o.get("perm") for o in self._manifest["outputs"]]

    def _close(self) -> None:
        self._lib = None

    # ----------------------------------------------------------------- run
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(feeds)[0]

    def run(self, feeds: dict[str, np.ndarray], *, trace: bool = False
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Outputs by name and, with ``trace``, every traced layer's output by hls4ml layer name."""
        self.open()
        xs = [np.asarray(a, np.float64) for a in self._typed_feeds(feeds)]
        n = xs[0].shape[0] if xs else 0
        for s, x in zip(self._specs, xs):
            want = tuple(int(d) for d in s.shape[1:])
            if x.shape[1:] != want or x.shape[0] != n:
                raise RuntimeInputError(f"input {s.name!r} has shape {x.shape}, expected (N, {', '.join(map(str, want))})"
                                        f" with the same N for every input")
        flat = [np.ascontiguousarray((x.transpose(p) if p else x).reshape(n, -1)) for x, p in zip(xs, self._in_perm)]
        outs = [np.zeros((n, int(np.prod(shp))), np.float64) for shp in self._out_shapes]
        layers = [(t["name"], int(t["size"])) for t in self._manifest.get("trace", [])] if trace else []
        traces = {name: np.zeros((n, size), np.float64) for name, size in layers}
        assert self._lib is not None
        # Some back ends' C simulations (Catapult) read their weights from ./firmware/weights/ on the
        # first call and exit the process when missing: run from the project folder, as hls4ml does.
        here = contextlib.chdir(self.path)
        here.__enter__()
        if trace:
            self._lib.allocate_trace_storage(ctypes.c_size_t(8))
        try:
            buf = (_TraceData * len(layers))()
            for i in range(n):
                row_out = [np.zeros(o.shape[1], np.float64) for o in outs]
                self._fn(*[f[i] for f in flat], *row_out)
                for o, r in zip(outs, row_out):
                    o[i] = r
                if trace:
                    self._lib.collect_trace_output(buf)
                    sizes = dict(layers)
                    for entry in buf:
                        name = entry.name.decode()
                        if name in traces:
                            ptr = ctypes.cast(entry.data, ctypes.POINTER(ctypes.c_double))
                            traces[name][i] = np.ctypeslib.as_array(ptr, shape=(sizes[name],))
        finally:
            if trace:
                self._lib.free_trace_storage()
            here.__exit__(None, None, None)
        result = {}
        for name, o, shp, p in zip(self._outputs, outs, self._out_shapes, self._out_perm):
            if p:  # C++ order is channels-last: reshape to it, then back to the source layout
                ir = (n, *shp[1:], shp[0])
                result[name] = o.reshape(ir).transpose(np.argsort(p))
            else:
                result[name] = o.reshape(n, *shp)
        return result, traces
