"""The quantize stage: calibrate once, annotate the graph for every scheme the chosen targets
consume (compiler.passes.quantize), and, with --fallback, keep the most sensitive layers in float
until the accuracy criterion holds (compiler.accuracy_control).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Graph
from tapeout.compiler.stages.data import SYNTHETIC, BuildData
from tapeout.compiler.stages.spec import Progress
from tapeout.targets.base import Target


# ------------------------------------------------------- accuracy control
def check_accuracy_args(chosen: Sequence[tuple[type[Target], str]], eval_data: str | Path | None,
                         max_drop: float | None, fallback: bool, verifying: bool) -> None:
    if max_drop is not None:
        if not max_drop >= 0:
            raise UsageError(f"--max-accuracy-drop must be >= 0 percentage points, got {max_drop:g}")
        if eval_data is None:
            raise UsageError("--max-accuracy-drop needs --eval DATA with labels y")
        if not verifying and not fallback:
            raise UsageError("--max-accuracy-drop is checked by verification; drop --no-verify")
    if fallback and not any(cls.quant_scheme(v) for cls, v in chosen):
        raise UsageError("--fallback applies to quantized targets only (e.g. tflite:int8)")


def _fallback(quantized: dict[str, tuple[Graph, dict]], data: BuildData, max_drop: float | None,
              progress: Progress, requantizers: dict[str, Any]) -> dict[str, tuple[Graph, dict]]:
    from tapeout.compiler.accuracy_control import Criterion, apply
    from tapeout.compiler.calibration import source_specs
    from tapeout.targets.base import QUANTIZED_TOLERANCE

    graph = next(iter(quantized.values()))[0]
    ds = data.verification(source_specs(graph))
    if max_drop is not None and ds.labels is None:
        raise UsageError(f"--max-accuracy-drop needs labels: {data.eval_file} has no array 'y'")
    return apply(quantized, ds.feeds, ds.labels, Criterion(max_drop, QUANTIZED_TOLERANCE), progress, requantizers)


# ----------------------------------------------------------- quantization
def check_quantization_args(chosen: Sequence[tuple[type[Target], str]], calibration: str | Path | None,
                             method: str, percentile: float | None) -> None:
    """Refuse bad quantization flags before any model is loaded."""
    from tapeout.compiler.schemes import CALIBRATED_SCHEMES, METHODS

    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}; one of {', '.join(METHODS)}")
    if percentile is not None and method != "percentile":
        raise UsageError("--percentile applies to --calibration-method percentile only")
    needing = [f"{cls.name}:{v}" for cls, v in chosen if cls.quant_scheme(v) in CALIBRATED_SCHEMES]
    if needing and calibration is None:
        one = len(needing) == 1
        # A target with no float form says why (ethos-u: Vela compiles only fully quantized models).
        why = "".join(dict.fromkeys(f" ({r})" for cls, v in chosen if cls.quant_scheme(v) in CALIBRATED_SCHEMES
                                    and (r := cls.quantized_only)))
        raise UsageError(f"{', '.join(needing)} {'quantizes' if one else 'quantize'} activations and "
                         f"{'needs' if one else 'need'} calibration data{why}: pass --calibration DATA (.npz/.npy of "
                         "representative inputs), or --calibration synthetic to use random inputs")


def quantize(graph: Graph, chosen: Sequence[tuple[type[Target], str]], data: BuildData,
             method: str, percentile: float | None, keep_float: Sequence[str],
             progress: Progress, bias_correction: bool = True, fallback: bool = False,
             max_drop: float | None = None, integer: tuple[Graph, list[str]] | None = None
             ) -> dict[str, tuple[Graph, dict]]:
    """scheme -> (annotated graph, report entry) for every scheme the chosen targets consume.

    ``integer``: ``integer_graph(graph)`` when the caller made it already (it keeps the float graph
    as --trace's reference), else made here when a scheme calibrates.

    One calibration serves every scheme, so all quantized artifacts share the same ranges. With
    ``bias_correction`` the integer schemes' conv/dense biases absorb the mean offset that rounding
    the weights causes (compiler.passes.bias_correction), measured on the calibration data; a node
    ``fallback`` keeps float gets its trained bias back.
    """
    from tapeout.compiler.calibration import DEFAULT_PERCENTILE, calibrate_with_means, source_specs
    from tapeout.compiler.passes.pipeline import Pipeline
    from tapeout.compiler.passes.quantize import CALIBRATED_SCHEMES, Quantize, integer_graph, is_excluded

    schemes = list(dict.fromkeys(s for cls, v in chosen if (s := cls.quant_scheme(v))))
    if not schemes:
        if keep_float:
            raise UsageError("--keep-float applies to quantized targets only (e.g. onnx:int8)")
        return {}
    if not set(schemes) & set(CALIBRATED_SCHEMES):
        integer = (graph, [])
    split, rewrites = integer if integer is not None else integer_graph(graph)
    # Names of layers and of the activation nodes split off them ("dense/softmax").
    names = {n.name for n in [*graph.nodes, *split.nodes]}
    unknown = [k for k in keep_float if not any(is_excluded(n, [k]) for n in names)]
    if unknown:
        raise UsageError(f"--keep-float: no layer named {', '.join(map(repr, unknown))}; "
                         f"`tapeout inspect MODEL` lists them")
    calibrated: Graph | None = None
    means = None
    if split is not graph:
        progress("calibration")
        ds = data.calibration(source_specs(split))
        assert ds is not None  # check_quantization_args refused a missing --calibration
        p = percentile if percentile is not None else DEFAULT_PERCENTILE
        from tapeout.compiler.passes.bias_correction import correctable_inputs

        correct = bias_correction and not data.synthetic_calibration  # offsets measured on noise would ship everywhere
        # The mean layer inputs bias correction needs come from the calibration's own sweep.
        calibrated, found = calibrate_with_means(split, ds.feeds, correctable_inputs(split) if correct else (),
                                                 method=method, percentile=p, data_kind=ds.kind)
        means = found if correct else None

    def annotate(scheme: str, exclude: Sequence[str]) -> tuple[Graph, list[str], list[str]]:
        """(annotated graph, detail lines, warnings) with ``exclude`` kept float."""
        integer = calibrated is not None and scheme in CALIBRATED_SCHEMES
        passes: list[Any] = [Quantize(scheme, exclude)]
        if integer and means is not None:
            from tapeout.compiler.passes.bias_correction import CorrectBias

            passes.insert(0, CorrectBias(exclude=exclude, means=means))
        res = Pipeline(passes).run(calibrated if integer else graph)
        return (res.graph, [d for r in res.records for d in r.details],
                [w for r in res.records for w in r.warnings])

    def prefixed(scheme: str, details: list[str]) -> list[str]:
        """An integer scheme's details start with what built its graph (split, distributed)."""
        return (rewrites if scheme in CALIBRATED_SCHEMES else []) + details

    out: dict[str, tuple[Graph, dict]] = {}
    for scheme in schemes:
        progress(f"quantize {scheme}")
        base = calibrated if calibrated is not None and scheme in CALIBRATED_SCHEMES else graph
        # A split-off activation named for the unsplit (fp16) graph is fused there and float anyway.
        here = [k for k in keep_float if any(is_excluded(n.name, [k]) for n in base.nodes)]
        annotated, details, warnings = annotate(scheme, here)
        q = annotated.quant
        assert q is not None
        cal = annotated.calibration if scheme in CALIBRATED_SCHEMES else None
        info = {
            "scheme": scheme,
            "calibration": None if cal is None else {
                "method": cal.method, "percentile": cal.percentile, "data": cal.data, "samples": cal.samples,
                "file": None if cal.data == SYNTHETIC else str(data.calibration_file)},
            "float_layers": list(q.float_nodes),
            "ranges": quant_ranges(annotated),
            "details": prefixed(scheme, details),
            "warnings": warnings,
        }
        out[scheme] = (annotated, info)
    quantized_layers = {scheme: entry["float_layers"] for scheme, (_, entry) in out.items()}
    if fallback:
        requantizers = {s: ((lambda ex, s=s: annotate(s, ex)[0]),
                            calibrated if calibrated is not None and s in CALIBRATED_SCHEMES else graph)
                        for s in schemes}
        out = _fallback(out, data, max_drop, progress, requantizers)
        for scheme, (_, entry) in out.items():
            if entry["float_layers"] != quantized_layers[scheme]:  # the details count what fallback left
                _, details, warnings = annotate(scheme, entry["float_layers"])
                entry["details"] = prefixed(scheme, details)
                entry["warnings"] = warnings
    return out


def quant_ranges(graph: Graph) -> list[dict[str, Any]]:
    """Each quantized activation in graph order: its range, dtype, scale and zero point (report.html's
    quantization table); per-tensor only, as activations are."""
    q = graph.quant
    if q is None:
        return []
    order = list(graph.inputs) + [o for n in graph.nodes for o in n.outputs if o]
    rows = []
    for name in dict.fromkeys(order):
        tq = q.tensors.get(name)
        if tq is None or tq.role != "activation" or tq.per_channel:
            continue
        rows.append({"tensor": name, "dtype": tq.dtype,
                     "min": float(f"{tq.rmin[0]:.9g}") if tq.rmin else None,
                     "max": float(f"{tq.rmax[0]:.9g}") if tq.rmax else None,
                     "scale": float(f"{tq.scale[0]:.9g}") if tq.scale else None,
                     "zero_point": int(tq.zero_point[0]) if tq.zero_point else None})
    return rows


