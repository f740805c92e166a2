"""The verify stage: run each artifact beside the source on the same inputs and judge it by its
variant's rule (the error model for float32 variants, cosine / top-1 agreement for quantized and
fixed-point ones, --atol/--rtol elementwise when given). Also ``tapeout verify`` of one artifact
or of a whole build folder, with the same rules.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from tapeout.compiler.errors import FrontendError, UsageError
from tapeout.compiler.frontends.loader import load_model
from tapeout.compiler.ir import Graph
from tapeout.compiler.quiet import quiet_environment
from tapeout.compiler.report import CompileReport, TargetReport, Verification
from tapeout.compiler.stages.data import SYNTHETIC_SAMPLES
from tapeout.compiler.stages.spec import Progress, noop
from tapeout.runtime.compare import ComparisonResult, Tolerance, compare, is_classifier
from tapeout.runtime.data import Dataset, load_data, synthesize
from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.protocol import Runner
from tapeout.runtime.runners.select import is_hls4ml_project, runner_for
from tapeout.runtime.verify import attach_expected_errors, expected_output_errors, run_batches, verify
from tapeout.targets.base import Target
from tapeout.targets.registry import parse_target

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4


def base_tolerance(atol: float | None, rtol: float | None) -> Tolerance:
    """--atol/--rtol, or the defaults with atol scaled by the output's RMS."""
    return Tolerance(atol if atol is not None else DEFAULT_ATOL, rtol if rtol is not None else DEFAULT_RTOL,
                     scale_atol=atol is None)


def summarize(result: ComparisonResult, runner: str, tol: Tolerance) -> Verification:
    outs = result.outputs

    def pick(attr: str, reduce: Callable[[Iterable[float]], float]) -> float | None:
        vals = [getattr(o, attr) for o in outs if getattr(o, attr) is not None]
        return float(reduce(vals)) if vals else None

    return Verification(
        passed=result.passed, runner=runner, samples=result.samples, data=result.data_kind,
        max_abs_err=pick("max_abs_err", max), mean_abs_err=pick("mean_abs_err", lambda v: float(np.mean(list(v)))),
        cosine=pick("cosine", min), top1_agreement=pick("top1_agreement", min),
        atol=tol.atol, rtol=tol.rtol, accuracy=result.accuracy,
        outputs=[o.to_json() for o in outs],
    )


def judge_accuracy(tr: TargetReport, max_drop: float) -> None:
    """A quantized artifact with an accuracy budget passes on accuracy, not on cosine/agreement."""
    from tapeout.compiler.accuracy_control import drop_pt

    v = tr.verification
    assert v is not None
    drop = drop_pt(v.accuracy)
    finite = all(o.get("nonfinite_mismatches", 0) == 0 for o in v.outputs)
    v.passed = bool(drop is not None and drop <= max_drop + 1e-9 and finite)
    v.max_accuracy_drop = max_drop
    if drop is not None:
        tr.notes.append(f"top-1 accuracy drop {drop:.2f} pt "
                        f"{'within' if v.passed else 'exceeds'} --max-accuracy-drop {max_drop:g}")


def trace_target(target: str, graph: Graph, tdir: Path, dataset: Dataset,
                  refs: dict[int, dict[str, np.ndarray]], reference: Graph | None = None) -> dict[str, Any]:
    """The "trace" entry of one target (docs/report.md), its layers compared with ``reference``'s
    float run (default: ``graph``'s); a reference run is shared by the targets that use it."""
    from tapeout.compiler.trace import UNTRACEABLE, reference_values, trace_folder

    reference = graph if reference is None else reference
    if target not in UNTRACEABLE and id(reference) not in refs:
        refs[id(reference)] = reference_values(reference, dataset)
    return trace_folder(tdir, graph, dataset, target, refs.get(id(reference)))




def verify_target(target: Target, tdir: Path, dataset: Dataset, reference: dict[str, np.ndarray],
                   tol: Tolerance, source_name: str, exact: Mapping[str, np.ndarray] | None = None,
                   ir32: Mapping[str, np.ndarray] | None = None) -> Verification:
    return verify_runner(target.runner(tdir), tdir, dataset, reference, tol, source_name, exact, ir32)


def cross_check(target: Target, tdir: Path, extra: Mapping[str, Any], dataset: Dataset,
                reference: dict[str, np.ndarray], tol: Tolerance, source_name: str,
                exact: Mapping[str, np.ndarray] | None = None,
                ir32: Mapping[str, np.ndarray] | None = None) -> list[Verification]:
    """The artifact in each of the target's other runtimes (tflite: TFLite Micro), judged as the
    primary runner is; a runtime that cannot run it fails its check with the reason."""
    checks = []
    for runner in target.cross_runners(tdir, extra):
        try:
            checks.append(verify_runner(runner, tdir, dataset, reference, tol, source_name, exact, ir32))
        except RuntimeInputError as e:
            checks.append(_unrun(f"{runner.name} could not run it: {e}", tol, dataset, runner.name))
    return checks


def verify_runner(runner: Runner, tdir: Path, dataset: Dataset, reference: dict[str, np.ndarray],
                  tol: Tolerance, source_name: str, exact: Mapping[str, np.ndarray] | None = None,
                  ir32: Mapping[str, np.ndarray] | None = None) -> Verification:
    with runner:
        candidate = run_batches(runner, dataset)
        name = runner.name
    # Top-1 agreement only means something for [N, classes] outputs; others keep the cosine test.
    per_output = {k: tol if tol.min_top1_agreement is None or is_classifier(v)
                  else replace(tol, min_top1_agreement=None) for k, v in reference.items()}
    result = compare(reference, candidate, per_output, labels=dataset.labels, data_kind=dataset.kind,
                     exact=exact if tol.error_model else None, ir_float32=ir32 if tol.error_model else None)
    if not tol.error_model:  # quantized and fixed-point outputs: their output rounding's expected error
        attach_expected_errors(result, expected_output_errors(primary_artifact(tdir)))
    return summarize(result, f"{name} vs {source_name}", tol)


def primary_artifact(tdir: Path) -> Path:
    """What `tapeout verify` takes for a target folder: the hls4ml project folder itself, else its
    .tflite / .plan / .onnx model (in that order), else the folder."""
    if is_hls4ml_project(tdir):
        return tdir
    for suffix in (".tflite", ".plan", ".onnx"):
        found = sorted(tdir.glob(f"*{suffix}"))
        if found:
            return found[0]
    return tdir


def error_model_applies(cls: type[Target] | Target, variant: str, atol: float | None, rtol: float | None) -> bool:
    """A float32 variant judged by default: onnx, tflite:fp32 (no default tolerance) and
    tensorrt:fp32 (an elementwise default: its engine's error is float32's too, or TF32's, which
    the 1e-5 default fails as well). --atol/--rtol keep every target elementwise."""
    if atol is not None or rtol is not None or cls.quant_scheme(variant) is not None:
        return False
    default = cls.default_tolerance(variant)
    return default is None or default.elementwise


def ir_outputs(graph: Graph, dataset: Dataset, precision: str) -> dict[str, np.ndarray]:
    """The float IR (before quantization; pruned when pruning ran) on the verification data, in the
    source's layout. In float64: the near-exact values the error model judges source and artifact against."""
    from tapeout.compiler.reference_runner import ReferenceRunner

    with ReferenceRunner(graph, source_layout=True, precision=precision) as runner:
        return run_batches(runner, dataset)


def source_ir_outputs(source: str | Path, weights: str | Path | None, dataset: Dataset, notes: list[str],
                       fallback: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The source's float IR in float64 and float32 on ``dataset``, for the error model of ``verify``;
    ({}, {}) with a note saying ``fallback`` when the source does not import."""
    try:
        graph, _ = load_model(source, weights)
    except FrontendError as e:
        notes.append(f"{fallback}: the source does not import for the error model ({e})")
        return {}, {}
    return ir_outputs(graph, dataset, "float64"), ir_outputs(graph, dataset, "float32")


def target_tolerance(cls: type[Target] | Target, variant: str, atol: float | None, rtol: float | None,
                     tol: Tolerance, emitted: Tolerance | None = None) -> Tolerance:
    """--atol/--rtol when given (elementwise for every target); a float32 variant's error model; else
    the tolerance the emitter chose (``EmitResult.tolerance``), else the variant's default."""
    if atol is not None or rtol is not None:
        return tol
    if emitted is None and error_model_applies(cls, variant, atol, rtol):
        # atol/rtol stay for an output the float64 run lacks (judged elementwise).
        return replace(tol, error_model=True)
    default = emitted if emitted is not None else cls.default_tolerance(variant)
    if default is None:
        return tol
    # An elementwise default is the variant's own atol/rtol.
    return default if default.elementwise else replace(default, atol=tol.atol, rtol=tol.rtol)


# ---------------------------------------------------------------- verify
def verify_artifact(source: str | Path, artifact: str | Path, *, weights: str | Path | None = None,
                    data: str | Path | None = None, atol: float | None = None,
                    rtol: float | None = None, trace: bool = False) -> ComparisonResult:
    """Run ``source`` and ``artifact`` on the same inputs and compare every output.

    A quantized artifact (integer or float16 tensors in a .tflite, Q/DQ or QLinear nodes in an
    .onnx) is judged by cosine and top-1 agreement, as compile judges it, unless ``atol`` or
    ``rtol`` is given. A float one is judged by the error model (``runtime.compare``) against the
    source's IR run in float64, as compile judges it, unless ``atol`` or ``rtol`` is given or the
    source does not import (then elementwise, with a note).
    """
    result = _verify_artifact(source, artifact, weights, data, atol, rtol)
    if trace:  # --trace: the per-layer error, as compile's report.json holds it (result.trace)
        result.trace = _trace_artifact(source, artifact, weights, data)  # type: ignore[attr-defined]
    return result


def _trace_artifact(source: str | Path, artifact: str | Path, weights: str | Path | None,
                    data: str | Path | None) -> dict[str, Any]:
    from tapeout.compiler.passes.registry import default_pipeline
    from tapeout.compiler.trace import trace_artifact
    from tapeout.runtime.trace import untraced

    try:
        graph, _ = load_model(source, weights)
    except FrontendError as e:
        return untraced(f"the source does not import, so there is no reference interpreter run ({e})")
    graph = default_pipeline().run(graph).graph
    from tapeout.compiler.calibration import source_specs

    dataset = load_data(data, source_specs(graph), kind="eval") if data else synthesize(
        source_specs(graph), num_samples=SYNTHETIC_SAMPLES, seed=0)
    return trace_artifact(artifact, graph, dataset)


def _verify_artifact(source: str | Path, artifact: str | Path, weights: str | Path | None,
                     data: str | Path | None, atol: float | None, rtol: float | None) -> ComparisonResult:
    quiet_environment()
    tol = base_tolerance(atol, rtol)
    with runner_for(source, weights) as ref, runner_for(artifact) as cand:
        dataset = load_data(data, ref.input_specs(), kind="eval") if data else synthesize(
            ref.input_specs(), num_samples=SYNTHETIC_SAMPLES, seed=0)
        scheme = quantized_artifact(artifact) if atol is None and rtol is None else None
        if scheme is None:
            exact: dict[str, np.ndarray] = {}
            ir32: dict[str, np.ndarray] = {}
            notes = list(getattr(ref, "notes", []))
            if atol is None and rtol is None:
                # A float artifact: the error model, against the source's IR in float64, as compile judges it.
                exact, ir32 = source_ir_outputs(source, weights, dataset, notes, "judged elementwise")
                if exact:
                    tol = replace(tol, error_model=True)
            result = verify(ref, cand, dataset, tol, exact=exact, ir_float32=ir32)
            result.notes[:0] = notes
            return result
        from tapeout.targets.base import QUANTIZED_TOLERANCE
        from tapeout.targets.hls4ml.target import Hls4mlTarget

        # Judged as compile judges that kind of artifact; top-1 agreement only means something
        # for [N, classes] outputs.
        q = Hls4mlTarget.default_tolerance(Hls4mlTarget.default_variant) if scheme == HLS4ML_PROJECT \
            else QUANTIZED_TOLERANCE
        q = replace(q, atol=tol.atol, rtol=tol.rtol)
        per_output = {k: q if is_classifier(v) else replace(q, min_top1_agreement=None)
                      for k, v in run_batches(ref, dataset).items()}
        result = verify(ref, cand, dataset, per_output)
        attach_expected_errors(result, expected_output_errors(artifact))
        result.notes[:0] = getattr(ref, "notes", [])
        result.notes.append(f"{scheme} artifact: judged by cosine >= {q.min_cosine:g} and top-1 agreement >= "
                            f"{q.min_top1_agreement:g}; pass --atol/--rtol for elementwise checks")
        return result


HLS4ML_PROJECT = "fixed-point hls4ml project"


def quantized_artifact(path: str | Path) -> str | None:
    """What makes an artifact quantized ("int8 .tflite", "QDQ .onnx", ...), or None for a float one."""
    path = Path(path)
    if is_hls4ml_project(path):
        return HLS4ML_PROJECT
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        from tapeout.runtime.runners.litert import interpreter_class

        cls, _ = interpreter_class()
        try:
            details = cls(model_path=str(path)).get_tensor_details()
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the runner itself
            return None
        kinds = {np.dtype(d["dtype"]).name for d in details}
        found = [k for k in ("int8", "uint8", "int16", "float16") if k in kinds]
        return f"{'/'.join(found)} .tflite" if found else None
    if suffix == ".onnx":
        try:
            import onnx

            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - as above
            return None
        ops = {n.op_type for n in model.graph.node}
        if ops & {"QuantizeLinear", "DequantizeLinear"}:
            return "QDQ .onnx"
        if any(op.startswith("QLinear") or op in ("MatMulInteger", "ConvInteger") for op in ops):
            return "integer .onnx"
    return None


# --------------------------------------------------------- verify a build
def is_build_folder(path: str | Path) -> bool:
    """A folder given to `tapeout verify` as the artifact: a whole build (OUTDIR), not one hls4ml project."""
    p = Path(path)
    return p.is_dir() and not is_hls4ml_project(p)


def verify_build(source: str | Path, outdir: str | Path, *, weights: str | Path | None = None,
                 data: str | Path | None = None, atol: float | None = None, rtol: float | None = None,
                 max_accuracy_drop: float | None = None, trace: bool = False,
                 progress: Progress = noop) -> CompileReport:
    """Verify every artifact a compile wrote into ``outdir`` (found through OUTDIR/report.json)
    against ``source``, with compile's judging rules: each target's runner, its variant's tolerance
    (the error model for float32 variants, cosine/top-1 for quantized ones), the expected error of
    quantized outputs, and with ``max_accuracy_drop`` the accuracy budget on ``data``'s labels.
    Returns a report in compile's format (the artifacts' sizes and notes from the build's report);
    an artifact that is missing or cannot be run fails, with the reason. Writes nothing.
    """
    import json

    quiet_environment()
    outdir = Path(outdir)
    found = outdir / "report.json"
    if not found.is_file():
        raise UsageError(f"{outdir}: no report.json and not an hls4ml project (no tapeout_csim.json); give the "
                         "OUTDIR `tapeout compile -o` wrote, an hls4ml project folder, or one artifact file")
    try:
        built = json.loads(found.read_text())
        entries = list(built["targets"])
        pairs = [parse_target(f"{t['target']}:{t['variant']}") for t in entries]
    except (ValueError, KeyError, TypeError, UsageError) as e:
        raise UsageError(f"{found}: not a tapeout compile report ({e})") from None
    if max_accuracy_drop is not None:
        if not max_accuracy_drop >= 0:
            raise UsageError(f"--max-accuracy-drop must be >= 0 percentage points, got {max_accuracy_drop:g}")
        if data is None:
            raise UsageError("--max-accuracy-drop needs --data FILE with labels y")
    tol = base_tolerance(atol, rtol)
    notes: list[str] = []
    calibration = None if data is not None else _build_calibration(built)
    if calibration is not None:
        # Without --data, the build's own calibration file: synthetic inputs outside its ranges say
        # little about a quantized artifact (compile, given no --eval, verified on it too).
        notes.append(f"verified on the build's calibration data {calibration} (pass --data for other inputs)")
    progress("source run")
    with runner_for(source, weights) as ref:
        if data is not None:
            dataset = load_data(data, ref.input_specs(), kind="eval")
        elif calibration is not None:
            dataset = load_data(calibration, ref.input_specs(), kind="calibration")
        else:
            dataset = synthesize(ref.input_specs(), num_samples=SYNTHETIC_SAMPLES, seed=0)
        if max_accuracy_drop is not None and dataset.labels is None:
            raise UsageError(f"--max-accuracy-drop needs labels: {data} has no array 'y'")
        reference = run_batches(ref, dataset)
        source_name = ref.name
        notes[:0] = list(getattr(ref, "notes", []))
    exact: dict[str, np.ndarray] = {}
    ir32: dict[str, np.ndarray] = {}
    if any(error_model_applies(cls, v, atol, rtol) for cls, v in pairs):
        progress("IR run (float64, float32)")
        exact, ir32 = source_ir_outputs(source, weights, dataset, notes, "float artifacts judged elementwise")
    traced_graph: Graph | None = None
    if trace:  # --trace: each artifact as `verify SOURCE ARTIFACT --trace` traces it (compiler.trace)
        try:
            from tapeout.compiler.passes.registry import default_pipeline

            traced_graph = default_pipeline().run(load_model(source, weights)[0]).graph
        except FrontendError as e:
            notes.append(f"not traced: the source does not import ({e})")
    if built.get("pruning"):
        notes.append("the build was pruned: its artifacts are judged against the unpruned source here, while "
                     "compile judged them against the pruned IR")
    report = CompileReport(source=built.get("source", {"path": str(source)}), graph=built.get("graph", {}),
                           passes=built.get("passes", []), pruning=built.get("pruning"),
                           data={"kind": dataset.kind, "samples": dataset.num_samples,
                                 "labels": dataset.labels is not None},
                           outdir=str(outdir), notes=notes)
    for entry, (cls, variant) in zip(entries, pairs):
        folder = f"{cls.name}-{variant}"
        tdir = outdir / folder
        tr = TargetReport(cls.name, variant, list(entry.get("artifacts", [])), int(entry.get("size_bytes", 0)),
                          float(entry.get("seconds") or 0.0), [], interface=entry.get("interface"),
                          extra={k: v for k, v in entry.items() if k not in _TARGET_FIELDS})
        progress(f"verify {cls.name}:{variant}")
        missing = [a for a in tr.artifacts if not (outdir / a).exists()]
        ttol = target_tolerance(cls, variant, atol, rtol, tol)
        if ttol.error_model and not exact:
            ttol = replace(ttol, error_model=False)
        if missing:
            tr.verification = _unrun(f"missing: {', '.join(missing)}", ttol, dataset)
        else:
            try:
                target = cls(variant)
                tr.verification = verify_target(target, tdir, dataset, reference, ttol, source_name, exact, ir32)
                tr.cross_checks = cross_check(target, tdir, tr.extra, dataset, reference, ttol, source_name,
                                              exact, ir32)
            except (FrontendError, RuntimeInputError) as e:  # a damaged artifact; a missing tool stays exit 3
                tr.verification = _unrun(f"could not be run: {e}", ttol, dataset)
        if max_accuracy_drop is not None and tr.verification.error is None \
                and cls.default_tolerance(variant) is not None:
            judge_accuracy(tr, max_accuracy_drop)
        if traced_graph is not None and not missing:
            from tapeout.compiler.trace import trace_artifact

            progress(f"trace {cls.name}:{variant}")
            tr.extra["trace"] = trace_artifact(primary_artifact(tdir), traced_graph, dataset)
        report.targets.append(tr)
    return report


def _build_calibration(built: Mapping[str, Any]) -> str | None:
    """The calibration file a build's quantized targets recorded, when it still exists."""
    for t in built.get("targets", []):
        cal = ((t.get("quantization") or {}).get("calibration") or {}).get("file")
        if cal and Path(cal).is_file():
            return str(cal)
    return None


# Fields of a target's entry in report.json that verify_build recomputes or carries itself.
_TARGET_FIELDS = TargetReport.FIELDS | {"trace"}


def _unrun(reason: str, tol: Tolerance, dataset: Dataset, runner: str = "-") -> Verification:
    return Verification(passed=False, runner=runner, samples=dataset.num_samples, data=dataset.kind,
                        max_abs_err=None, mean_abs_err=None, cosine=None, top1_agreement=None,
                        atol=tol.atol, rtol=tol.rtol, error=reason)


def failing_artifacts(report: CompileReport) -> list[str]:
    """'target:variant (artifact, ...)' for every target that failed verification."""
    failing = [f"{t.target}:{t.variant} ({', '.join(t.artifacts) or t.folder})" for t in report.targets if not t.passed]
    budget = ((report.pruning or {}).get("fine_tuning") or {}).get("budget") or {}
    if budget.get("met") is False:
        failing.append(f"pruning ({budget.get('note') or 'the fine-tuning budget was missed'})")
    return failing
