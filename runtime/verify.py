"""Run a reference and a candidate runner on the same data and compare their outputs."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tapeout.runtime.compare import ComparisonResult, Tolerance, compare
from tapeout.runtime.data import Dataset, batches
from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.io_map import FILE as IO_MAP
from tapeout.runtime.protocol import Runner


def run_batches(runner: Runner, dataset: Dataset, batch_size: int = 32,
                rename: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """All of ``dataset`` through ``runner`` in batches; outputs concatenated along the sample axis.

    ``rename`` maps dataset input names to the runner's, where they differ.
    """
    rename = rename or {}
    parts: dict[str, list[np.ndarray]] = {}
    for feeds in batches(dataset, batch_size):
        out = runner.infer({rename.get(k, k): v for k, v in feeds.items()})
        for name, value in out.items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {k: np.concatenate(v, axis=0) if v[0].ndim else v[0] for k, v in parts.items()}


def _positional(kind: str, ref: list[str], cand: list[str], notes: list[str]) -> dict[str, str]:
    """Reference name -> candidate name: by name, or by position for a lone differently named tensor."""
    if len(ref) == 1 and len(cand) == 1 and ref != cand:
        notes.append(f"{kind}s matched by position: '{ref[0]}' (reference) with '{cand[0]}' (candidate)")
        return {ref[0]: cand[0]}
    return {}


def _check_names(candidate: Runner, dataset: Dataset, rename: Mapping[str, str]) -> None:
    """A candidate input the data cannot feed: say where names are mapped instead of a bare 'no data'."""
    fed = {rename.get(k, k) for k in dataset.feeds}
    missing = [s.name for s in candidate.input_specs() if s.name not in fed]
    if missing:
        raise RuntimeInputError(
            f"{getattr(candidate, 'path', candidate.name)}: no data for input(s) {', '.join(missing)} (the data has "
            f"{', '.join(dataset.feeds)}); an artifact that renames or re-lays out the source's inputs is run "
            f"through the {IO_MAP} written beside it: keep that file next to the artifact")


def verify(reference: Runner, candidate: Runner, dataset: Dataset,
           tolerances: Tolerance | Mapping[str, Tolerance] = Tolerance(), batch_size: int = 32,
           exact: Mapping[str, np.ndarray] | None = None,
           ir_float32: Mapping[str, np.ndarray] | None = None) -> ComparisonResult:
    """Both runners on every sample of ``dataset``; outputs matched by name and compared.

    Runners the caller has not opened are opened here and closed afterwards. ``exact`` and
    ``ir_float32`` (by reference output name, on ``dataset``) feed the error model (``compare``).
    """
    # Only what we open here is ours to close.
    opened_here = [r for r in (reference, candidate) if not r.opened]
    try:
        for r in opened_here:
            r.open()
        notes: list[str] = []
        inputs = _positional("input", [s.name for s in reference.input_specs()],
                             [s.name for s in candidate.input_specs()], notes)
        outputs = _positional("output", reference.output_names(), candidate.output_names(), notes)
        _check_names(candidate, dataset, inputs)
        ref_out = run_batches(reference, dataset, batch_size)
        cand_out = run_batches(candidate, dataset, batch_size, rename=inputs)
        back = {c: r for r, c in outputs.items()}
        cand_out = {back.get(k, k): v for k, v in cand_out.items()}
    finally:
        for r in opened_here:
            r.close()
    result = compare(ref_out, cand_out, tolerances, labels=dataset.labels, data_kind=dataset.kind,
                     samples=dataset.num_samples, exact=exact, ir_float32=ir_float32)
    result.notes[:0] = notes
    return result


# ------------------------------------------------------ expected error (issue 15 s1)
def _rounding_figure(dtype: str, step: float, nearest: bool, basis: str) -> dict[str, Any]:
    """Uniform rounding to ``step``: at most step/2 when rounding to nearest, one step when
    truncating; RMS step/sqrt(12) (TFLite's quantization debugger reads ~0.29 as well quantized)."""
    return {"basis": basis, "dtype": dtype, "step": float(step), "rounding": "nearest" if nearest else "truncate",
            "bound": float(step) * (0.5 if nearest else 1.0), "rms": float(step) / math.sqrt(12.0)}


def _tflite_output_steps(path: Path) -> dict[str, dict[str, Any]]:
    from tapeout.runtime.runners.litert import LiteRTRunner

    runner = LiteRTRunner(path)
    with runner:
        interp = runner._interp
        tensors = {int(d["index"]): d for d in interp.get_tensor_details()}
        producer: dict[int, dict[str, Any]] = {}
        for op in interp._get_ops_details():  # the model's own op first: XNNPACK's DELEGATE nodes follow
            for o in op["outputs"]:
                producer.setdefault(int(o), op)
        found = {}
        for port in runner._outs:
            t = tensors[port.index]
            op = producer.get(port.index)
            # Float outputs come from a DEQUANTIZE of the int8/int16 tensor the model computes in.
            if np.dtype(t["dtype"]).kind == "f" and op is not None and op["op_name"] == "DEQUANTIZE":
                t = tensors[int(op["inputs"][0])]
            scale = float(t["quantization"][0])
            if np.dtype(t["dtype"]).kind in "iu" and scale > 0:
                name = np.dtype(t["dtype"]).name
                found[port.name] = _rounding_figure(name, scale, True, f"{name} output scale")
    return found


def _onnx_output_steps(path: Path) -> dict[str, dict[str, Any]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    producer = {o: n for n in model.graph.node for o in n.output}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = consts.get(name)
        if node is not None and node.attribute:
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    found = {}
    for out in model.graph.output:
        node = producer.get(out.name)
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 2:
            continue
        scale, zp = value(node.input[1]), value(node.input[2]) if len(node.input) > 2 else None
        if scale is None or scale.size != 1:  # a per-channel output: no one figure
            continue
        dtype = "uint8" if zp is not None and zp.dtype == np.uint8 else (zp.dtype.name if zp is not None else "uint8")
        found[out.name] = _rounding_figure(dtype, float(scale.ravel()[0]), True, f"{dtype} output scale")
    return found


_AP_FIXED = re.compile(r"ap_(u?)fixed<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*(\w+))?[^>]*>")


def _hls4ml_output_steps(folder: Path) -> dict[str, dict[str, Any]]:
    import json

    manifest = json.loads((folder / "tapeout_csim.json").read_text())
    project = manifest.get("project", "myproject")
    header = (folder / "firmware" / f"{project}.h").read_text()
    defines = (folder / "firmware" / "defines.h").read_text()
    sig = re.search(rf"void\s+{re.escape(project)}\s*\(([^)]*)\)", header)
    if sig is None:
        return {}
    params = [p.strip() for p in sig.group(1).split(",") if p.strip()]
    found = {}
    for p in params[len(manifest.get("inputs", [])):]:  # inputs first, then outputs
        m = re.match(r"(\w+)\s+(\w+)\s*\[", p)
        if m is None:
            continue
        typ, name = m.groups()
        td = re.search(rf"typedef\s+(ap_u?fixed<[^;]*>)\s+{re.escape(typ)}\s*;", defines)
        fx = _AP_FIXED.match(td.group(1)) if td else None
        if fx is None:
            continue
        unsigned, width, integer, mode = fx.groups()
        frac = int(width) - int(integer)
        spelled = f"ap_{unsigned}fixed<{width},{integer}>"
        # AP_TRN (the default) truncates: a full LSB; the AP_RND* modes round to nearest.
        found[name] = _rounding_figure(spelled, 2.0 ** -frac, bool(mode and mode.startswith("AP_RND")),
                                       f"{spelled} LSB 2^-{frac}")
    return found


def expected_output_errors(artifact: str | Path) -> dict[str, dict[str, Any]]:
    """The expected error of each quantized output's final rounding, by the source's output name:
    0.5 x scale for an int8/int16 output (TFLite, ONNX QDQ), the LSB 2^-(W-I) of an hls4ml
    ap_fixed<W,I> output (half of it when it rounds). Outputs in float (fp32, fp16, dynamic-range
    variants) have none. A floor for the measured error, not a bound on it: every earlier rounding
    adds to it. Empty when the artifact cannot be read."""
    from tapeout.runtime.io_map import IOMap

    path = Path(artifact)
    folder = path if path.is_dir() else path.parent
    try:
        if path.is_dir() and (path / "tapeout_csim.json").is_file():
            found = _hls4ml_output_steps(path)
        elif path.suffix.lower() == ".tflite":
            found = _tflite_output_steps(path)
        elif path.suffix.lower() == ".onnx":
            found = _onnx_output_steps(path)
        else:
            return {}
    except Exception:  # noqa: BLE001 - a figure for the report only; the runner reports unreadable files
        return {}
    io = IOMap.load(folder)
    if io is None:
        return found
    back = {p.artifact: p.name for p in io.outputs}
    return {back.get(k, k): v for k, v in found.items()}


def attach_expected_errors(result: ComparisonResult, figures: Mapping[str, dict[str, Any]]) -> None:
    """Record each figure on its output, with the measured max abs error over the bound."""
    for o in result.outputs:
        fig = figures.get(o.name)
        if fig is None:
            continue
        fig = dict(fig)
        fig["max_abs_over_bound"] = None if o.max_abs_err is None or not fig["bound"] else \
            float(f"{o.max_abs_err / fig['bound']:.6g}")
        o.expected_error = fig
