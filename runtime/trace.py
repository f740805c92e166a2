"""Per-layer trace: an artifact's intermediate tensors against the reference interpreter's.

Each target that can expose intermediates writes ``tapeout_trace.json`` next to its artifact:
which artifact tensor holds which IR value, how to bring it to the IR's channels-last layout,
and its quantization step. ``collect`` runs the artifact with those tensors exposed
(onnxruntime: extra graph outputs on an in-memory copy; LiteRT: preserved tensors; hls4ml: the
C simulation's trace hooks); ``compare_layers`` measures each against the IR value the caller
computed (``tapeout.compiler.trace``); ``first_jump`` names the layer where the error jumps.
NumPy plus the artifact's runtime only: nothing from the compiler or the targets.

Metrics per layer (reference r, artifact a, both float64):
- ``max_abs`` / ``mean_abs``: of |a - r|;
- ``sqnr_db``: 20 log10(max(|r|, eps) / max(|r - a|, eps)), eps = float64's, as onnxruntime's
  ``qdq_loss_debug.compute_signal_to_quantization_noice_ratio`` computes it;
- ``cosine``: of the flattened tensors (None when either is all zeros);
- ``rmse_over_scale``: RMSE(a - r) / the tensor's quantization step, for quantized tensors
  (TFLite's quantization debugger flags values above about 0.7; rounding alone gives 0.29).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tapeout.runtime.data import Dataset, batches
from tapeout.runtime.errors import RuntimeInputError

FILE = "tapeout_trace.json"
FORMAT = "tapeout-trace/1"

# The first-jump rule (docs/report.md "trace"): a layer is where the error jumps when it is
# noisy in absolute terms (SQNR below NOISY_DB) and either its SQNR fell by at least JUMP_DB
# from the previous traced layer's (the first traced layer: from a clean input), or, for a
# quantized tensor, its RMSE exceeds MAX_RMSE_OVER_SCALE quantization steps.
NOISY_DB = 30.0
JUMP_DB = 10.0
MAX_RMSE_OVER_SCALE = 0.7
CLIPPED = 0.01  # more than this share of reference values outside the tensor's range: clipping
TRACE_SAMPLES = 128  # samples traced at most (the first ones of the verification data): a per-layer
# error needs far fewer samples than an accuracy, and this keeps --trace within 2x of verification
# (benchmarks/trace_overhead.py)


@dataclass(frozen=True)
class TracedTensor:
    """One IR value as the artifact holds it."""

    name: str  # the IR value
    op: str  # the IR op producing it (the fused op for fused layers)
    index: int  # its node's position in the emitted IR graph
    artifact: str  # the artifact's tensor (ONNX tensor, TFLite tensor name, hls4ml layer)
    layer: str  # what to name in a suggestion: the IR node (--keep-float) or the hls4ml layer (--precision)
    perm: tuple[int, ...] | None = None  # artifact tensor -> IR layout (a transpose), None when equal
    flat_from: tuple[int, ...] | None = None  # flattened in channels-first order of this [C, *S] shape
    scale: float | None = None  # quantization step (int scale, or a fixed-point LSB)
    zero_point: int | None = None  # an integer artifact tensor is dequantized with scale and this
    lo: float | None = None  # the range the tensor can hold (None: float)
    hi: float | None = None
    dtype: str | None = None  # "int8", "ap_fixed<16,6>", ...

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "TracedTensor":
        def ints(v: Any) -> tuple[int, ...] | None:
            return None if v is None else tuple(int(i) for i in v)

        return TracedTensor(str(d["name"]), str(d["op"]), int(d["index"]), str(d["artifact"]),
                            str(d.get("layer", d["name"])), ints(d.get("perm")), ints(d.get("flat_from")),
                            None if d.get("scale") is None else float(d["scale"]),
                            None if d.get("zero_point") is None else int(d["zero_point"]),
                            *(None if d.get(k) is None else float(d[k]) for k in ("lo", "hi")),
                            d.get("dtype"))


@dataclass
class TraceMap:
    """What ``tapeout_trace.json`` holds: the artifact, how to suggest a fix, the tensors."""

    artifact: str  # file (or "." for a project folder) relative to the map's folder
    kind: str  # "int8"/"int16x8" (--keep-float), "fixed" (hls4ml --precision), "float"
    tensors: list[TracedTensor] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "artifact": self.artifact, "kind": self.kind,
                "tensors": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(t).items()}
                            for t in self.tensors]}

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE
        d = self.to_json()
        rows = ",\n".join("  " + json.dumps(t) for t in d["tensors"])
        path.write_text(f'{{"format": {json.dumps(FORMAT)}, "artifact": {json.dumps(self.artifact)}, '
                        f'"kind": {json.dumps(self.kind)},\n "tensors": [\n{rows}\n ]}}\n')
        return path

    @staticmethod
    def load(folder: str | Path) -> "TraceMap | None":
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
            return TraceMap(str(d["artifact"]), str(d["kind"]), [TracedTensor.from_json(t) for t in d["tensors"]])
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
            raise RuntimeInputError(f"{path}: not a tapeout trace map ({e})") from None


# ----------------------------------------------------------------- metrics
def _round(x: float | None, digits: int = 9) -> float | None:
    # As compiler/report.py rounds: reports of identical builds stay identical.
    return None if x is None else float(f"{x:.{digits}g}")


def _sqnr(signal2: float, noise2: float) -> float:
    eps = float(np.finfo(float).eps)
    return 20.0 * math.log10(max(math.sqrt(signal2), eps) / max(math.sqrt(noise2), eps))


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """onnxruntime qdq_loss_debug's SQNR: reference norm over error norm, both floored at eps, in dB."""
    r = np.asarray(ref, np.float64).ravel()
    d = np.asarray(got, np.float64).ravel() - r
    return _sqnr(float(np.sum(r * r)), float(np.sum(d * d)))


def layer_metrics(ref: np.ndarray, got: np.ndarray, scale: float | None = None) -> dict[str, float | None]:
    # Sums of squares rather than np.linalg.norm/np.dot: BLAS threads cost more than they save here.
    r = np.asarray(ref, np.float64).ravel()
    a = np.asarray(got, np.float64).ravel()
    if r.shape != a.shape:
        raise ValueError(f"shapes differ: reference {np.shape(ref)}, artifact {np.shape(got)}")
    if not r.size:
        return {"max_abs": 0.0, "mean_abs": 0.0, "sqnr_db": None, "cosine": None, "rmse_over_scale": None}
    d = a - r
    ad = np.abs(d)
    finite = bool(np.isfinite(ad).all())
    rr, aa, dd, ra = (float(np.sum(x * y)) for x, y in ((r, r), (a, a), (d, d), (r, a)))
    cos = ra / math.sqrt(rr * aa) if finite and rr > 0 and aa > 0 else None
    return {
        "max_abs": float(ad.max()),
        "mean_abs": float(ad.mean()),
        "sqnr_db": _sqnr(rr, dd) if finite else None,
        "cosine": None if cos is None else min(1.0, max(-1.0, cos)),
        "rmse_over_scale": math.sqrt(dd / d.size) / scale if scale and finite else None,
    }


def to_ir_layout(t: TracedTensor, value: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The artifact's tensor in the IR's layout and ``shape`` (batch first)."""
    v = np.asarray(value)
    if v.dtype.kind in "iu" and t.scale is not None:
        v = (v.astype(np.float64) - (t.zero_point or 0)) * t.scale
    n = v.shape[0]
    if t.flat_from is not None:  # channels-first element order of a flatten: channels last again
        cf = v.reshape(n, *t.flat_from)
        v = cf.transpose(0, *range(2, cf.ndim), 1)
    elif t.perm is not None:
        v = v.transpose(t.perm)
    return v.reshape(n, *shape[1:])


def compare_layers(tmap: TraceMap, reference: Mapping[str, np.ndarray],
                   got: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per traced tensor, in graph order (schema: docs/report.md "trace")."""
    rows = []
    for t in sorted(tmap.tensors, key=lambda t: (t.index, t.name)):
        if t.name not in reference or t.name not in got:
            continue
        ref = np.asarray(reference[t.name])
        m = layer_metrics(ref, to_ir_layout(t, got[t.name], ref.shape), t.scale)
        rows.append({"name": t.name, "op": t.op, "index": t.index, **{k: _round(v) for k, v in m.items()}})
    return rows


# -------------------------------------------------------------- first jump
def first_jump(rows: Sequence[Mapping[str, Any]], tmap: TraceMap,
               reference: Mapping[str, np.ndarray] | None = None) -> dict[str, Any] | None:
    """The first layer whose error jumps (the rule above NOISY_DB), with the fix that fits; None if none."""
    by_name = {t.name: t for t in tmap.tensors}
    prev: float | None = None
    for row in rows:
        s, ros = row["sqnr_db"], row["rmse_over_scale"]
        # A non-finite artifact value (sqnr None) is the clearest jump of all.
        noisy = s is None or s < NOISY_DB
        dropped = s is None or (s <= prev - JUMP_DB if prev is not None else True)
        coarse = ros is not None and ros > MAX_RMSE_OVER_SCALE
        if noisy and (dropped or coarse):
            metric = "sqnr_db" if dropped else "rmse_over_scale"
            value = s if metric == "sqnr_db" else ros
            t = by_name[row["name"]]
            clipped = _clipped_share(t, None if reference is None else reference.get(t.name))
            return {"name": row["name"], "metric": metric, "value": value,
                    "suggestion": suggestion(tmap.kind, t, clipped),
                    "detail": _detail(row, prev, clipped, t)}
        if s is not None:
            prev = s
    return None


def _clipped_share(t: TracedTensor, ref: np.ndarray | None) -> float | None:
    if ref is None or t.lo is None or t.hi is None:
        return None
    r = np.asarray(ref, np.float64)
    step = t.scale or 0.0  # within a step of the range is rounding (a softmax's 1.0 in ap_fixed<W,1>), not clipping
    return float(np.mean((r < t.lo - step) | (r > t.hi + step))) if r.size else 0.0


def _detail(row: Mapping[str, Any], prev: float | None, clipped: float | None, t: TracedTensor) -> str:
    parts = [f"SQNR {row['sqnr_db']:.1f} dB" if row["sqnr_db"] is not None else "non-finite values"]
    if prev is not None and row["sqnr_db"] is not None:
        parts.append(f"{prev - row['sqnr_db']:.1f} dB below the previous traced layer")
    if row["rmse_over_scale"] is not None:
        parts.append(f"RMSE {row['rmse_over_scale']:.2f} quantization steps")
    if clipped is not None and clipped > CLIPPED:
        parts.append(f"{clipped:.0%} of its reference values outside its {t.dtype or ''} range "
                     f"[{t.lo:.4g}, {t.hi:.4g}]".replace("  ", " "))
    return "; ".join(parts)


def suggestion(kind: str, t: TracedTensor, clipped: float | None) -> str:
    """The flag to try for a jump at ``t``: keep it float, widen its fixed-point type, or recalibrate."""
    clips = clipped is not None and clipped > CLIPPED
    if kind == "fixed":
        m = re.match(r"(ap_u?fixed)<\s*(\d+)\s*,\s*(-?\d+)\s*(.*)$", t.dtype or "")
        if m is None:
            return f"raise the hls4ml precision of {t.layer}: --precision {t.layer}=ap_fixed<W,I> with a wider type"
        w, i = int(m.group(2)), int(m.group(3))
        # Clipping: 4 more integer bits; rounding: 4 more fractional bits. Modes (AP_RND, AP_SAT) kept.
        return f"--precision {t.layer}={m.group(1)}<{w + 4},{i + 4 if clips else i}{m.group(4)}"
    if kind in ("int8", "int16x8"):
        if clips:
            return (f"recalibrate {t.layer}: its range clips the values (--calibration-method minmax on "
                    f"representative --calibration data), or --keep-float {t.layer}")
        return f"--keep-float {t.layer}, or try --calibration-method percentile"
    return f"check {t.layer}: its float error stands out"


# --------------------------------------------------------------- collect
def _artifact_feeds(folder: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Source names and layouts -> the artifact's (its tapeout_io.json), as MappedRunner feeds them."""
    from tapeout.runtime.io_map import IOMap

    io = IOMap.load(folder)
    if io is None:
        return dict(feeds)
    out = {}
    for p in io.inputs:
        x = np.asarray(feeds[p.name])
        out[p.artifact] = x if p.perm is None else np.ascontiguousarray(x.transpose(p.perm))
    return out


def collect(folder: str | Path, tmap: TraceMap, dataset: Dataset,
            samples: int = TRACE_SAMPLES, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Run the artifact in ``folder`` on the first ``samples`` of ``dataset`` with every traced tensor
    exposed; IR value -> the artifact's values as it holds them (``to_ir_layout`` brings them to the IR)."""
    folder = Path(folder)
    path = (folder / tmap.artifact).resolve()
    # Once each: two IR values one artifact tensor holds (a fused-away op's) would otherwise be
    # gathered twice per batch, doubling its samples.
    names = list(dict.fromkeys(t.artifact for t in tmap.tensors))
    parts: dict[str, list[np.ndarray]] = {}
    sub = Dataset({k: v[:samples] for k, v in dataset.feeds.items()}, None, dataset.kind)
    if path.is_dir():
        from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

        with Hls4mlCsimRunner(path) as runner:  # takes source names and layouts itself
            for feeds in batches(sub, batch_size):
                for k, v in runner.run(feeds, trace=True)[1].items():
                    parts.setdefault(k, []).append(v)
    else:
        runner: Any
        if path.suffix == ".onnx":
            from tapeout.runtime.runners.onnxrt import OnnxRuntimeRunner

            runner = OnnxRuntimeRunner(path, lift_old=False, extra_outputs=names)
        elif path.suffix == ".tflite":
            from tapeout.runtime.runners.litert import LiteRTRunner

            runner = LiteRTRunner(path, intermediates=names)
        else:
            raise RuntimeInputError(f"{path}: no runner exposes the intermediates of {path.suffix} files")
        with runner:
            for feeds in batches(sub, batch_size):
                out = runner.infer(_artifact_feeds(folder, feeds))
                for k in names:
                    parts.setdefault(k, []).append(np.asarray(out[k]))
    by_artifact = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
    return {t.name: by_artifact[t.artifact] for t in tmap.tensors if t.artifact in by_artifact}


def trace_report(tmap: TraceMap, reference: Mapping[str, np.ndarray],
                 got: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The report's "trace" entry for one target (docs/report.md)."""
    rows = compare_layers(tmap, reference, got)
    samples = int(next(iter(got.values())).shape[0]) if got else 0
    return {"layers": rows, "first_jump": first_jump(rows, tmap, reference), "untraced": None, "samples": samples}


def untraced(reason: str) -> dict[str, Any]:
    return {"layers": [], "first_jump": None, "untraced": reason}
