"""Compare a candidate's outputs (an artifact) with a reference's (the source model).

Elementwise judgement follows Polygraphy: an element passes when abs_err <= atol OR
rel_err <= rtol, with rel_err = abs_err / |reference|. Matching NaNs and equal infinities
pass; a NaN or infinity on one side only fails. A tolerance may instead judge an output
by cosine similarity and/or top-1 agreement (classifiers whose logits may drift).
A scaled atol (``Tolerance.scale_atol``, tapeout's default when no --atol is given) is in units
of the reference output's RMS where that exceeds 1: float round-off between two frameworks grows
with the magnitudes a network carries (ResNet18's logits of std 4 differ by 1.7e-4 between
onnxruntime and LiteRT), while a lowering bug moves outputs by a large fraction of their scale.
Results round floats to 9 significant digits so saved reports are deterministic.

The error model (``Tolerance.error_model``, tapeout's default for float32 artifacts when no
--atol/--rtol is given) judges an output against exact values, the IR run in float64 (passed in by
the caller, see ``compare``), instead of against the source alone. With RMSE and RMS over the
elements finite on every side:

    e_src  = RMSE(source - exact)          float32 error of the source's framework on this network
    e_ir32 = RMSE(IR in float32 - exact)   float32 error of the reference interpreter (optional)
    e_art  = RMSE(artifact - exact)
    scale  = RMS(exact)

an output passes when

    e_art <= K * max(e_src, e_ir32) + FLOOR * scale                      (the artifact)
    e_src <= max(SANITY * scale, SANITY_K * e_ir32)                      (the import)

The artifact may be K times as wrong as a float32 evaluation of this very network is, whatever its
depth and magnitudes (a sharp softmax over logits of 1e5 moves by 1e-3 under mere reordering);
two evaluations measure that, so one that happens to round luckily does not tighten the bound.
FLOOR covers outputs that float32 computes almost exactly, where a runtime's own approximations
(exp, reciprocal) still differ by a few ulps. The second line stops an artifact passing by riding
a large e_src: a source farther from the IR than float32 rounding explains (SANITY of the scale,
or SANITY_K times the interpreter's own float32 error on ill-conditioned outputs) means the
import is wrong. Non-finite values fail as in the elementwise rule.

The constants are set from measurements (docs/cli.md, "The error model"): e_art / max(e_src,
e_ir32) ranged 0.3-3.6 over the bundled samples, six ONNX-zoo / torchvision models and 26
compiles of sharp-softmax CNNs, the top of that range always TFLite's XNNPACK on deep nets
(ResNet50 2.9, DenseNet121 3.3, ShuffleNet 3.6), so K = 5 (torch._dynamo's 2 is for one framework against
itself); e_src / e_ir32 ranged 0.3-2.1, so SANITY_K = 10; well-conditioned sources sit at 1e-7
to 5e-5 of the scale, so SANITY = 1e-4; float32 rounds to 6e-8, so FLOOR = 1e-6 (about 8 ulps
RMS) leaves room for a runtime's approximations and still catches one weight of a small CNN
changed by 1% (8e-5 of the scale), which the old atol of 1e-4 passed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tapeout.runtime.errors import RuntimeInputError

ANY_OUTPUT = "*"

# The error model's constants: the module docstring gives the rule and the measurements behind them.
ERROR_MODEL_K = 5.0
ERROR_MODEL_FLOOR = 1e-6
ERROR_MODEL_SANITY = 1e-4
ERROR_MODEL_SANITY_K = 10.0

ELEMENTWISE, COSINE_TOP1, ERROR_MODEL = "elementwise", "cosine/top-1", "error-model"


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-5
    rtol: float = 1e-5
    # When either is set the output is judged by these instead of elementwise.
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    # atol times max(1, RMS of the reference output); see the module docstring.
    scale_atol: bool = False
    # Judged by the error model against exact outputs where the caller gives them; elementwise
    # (atol, rtol above) where it does not.
    error_model: bool = False

    @property
    def elementwise(self) -> bool:
        return self.min_cosine is None and self.min_top1_agreement is None and not self.error_model

    @property
    def rule(self) -> str:
        if self.error_model:
            return ERROR_MODEL
        return ELEMENTWISE if self.elementwise else COSINE_TOP1


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{float(x):.9g}")


@dataclass
class OutputComparison:
    name: str
    passed: bool
    shape: list[int]  # the reference's
    elements: int
    mismatches: int  # elements failing both atol and rtol, non-finite mismatches included
    nonfinite_mismatches: int
    max_abs_err: float | None
    mean_abs_err: float | None
    p99_abs_err: float | None
    max_rel_err: float | None  # relative stats cover elements whose reference is non-zero
    mean_rel_err: float | None
    p99_rel_err: float | None
    cosine: float | None
    top1_agreement: float | None  # only for [N, C>1] outputs
    tolerance: Tolerance = field(default_factory=Tolerance)
    reason: str | None = None  # why it failed: no numbers apply (missing output, shape mismatch), or the error model
    effective_atol: float | None = None  # the atol applied (differs from tolerance.atol when scaled)
    rule: str = ELEMENTWISE  # which rule judged: ELEMENTWISE, COSINE_TOP1 or ERROR_MODEL
    # The error model's numbers (rule ERROR_MODEL), see ``error_model``; e_ir32 None without the float32 IR.
    error_model: dict[str, float | None] | None = None
    # Quantized outputs: the error their final rounding alone brings (``runtime.verify.expected_output_errors``):
    # basis, dtype, step, rounding, bound (0.5 x scale, or the LSB), rms, max_abs_over_bound. Recorded, not judged.
    expected_error: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = _round(v)
        d["tolerance"] = {k: _round(v) if isinstance(v, float) else v for k, v in d["tolerance"].items()}
        if d["error_model"] is not None:
            d["error_model"] = {k: _round(v) for k, v in d["error_model"].items()}
        if d["expected_error"] is not None:
            d["expected_error"] = {k: _round(v) if isinstance(v, float) else v for k, v in d["expected_error"].items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "OutputComparison":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["tolerance"] = Tolerance(**d.get("tolerance", {}))
        return cls(**kwargs)


@dataclass
class ComparisonResult:
    outputs: list[OutputComparison]
    passed: bool
    samples: int
    data_kind: str
    accuracy: dict[str, float] | None = None  # {"source": .., "artifact": ..} top-1 vs labels
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "samples": self.samples,
            "data_kind": self.data_kind,
            "accuracy": None if self.accuracy is None else {k: _round(v) for k, v in self.accuracy.items()},
            "notes": list(self.notes),
            "outputs": [o.to_json() for o in self.outputs],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ComparisonResult":
        return cls([OutputComparison.from_json(o) for o in d["outputs"]], bool(d["passed"]), int(d["samples"]),
                   str(d["data_kind"]), d.get("accuracy"), list(d.get("notes", [])))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ComparisonResult":
        return cls.from_json(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        failed = [o.name for o in self.outputs if not o.passed]
        worst = max((o.max_abs_err for o in self.outputs if o.max_abs_err is not None), default=None)
        parts = [f"{'PASSED' if self.passed else 'FAILED'}: {len(self.outputs)} output(s) on "
                 f"{self.samples} {self.data_kind} sample(s)"]
        if worst is not None:
            parts.append(f"max abs err {worst:.3e}")
        if failed:
            parts.append(f"failing: {', '.join(failed)}")
        if self.accuracy:
            parts.append(f"accuracy source {self.accuracy['source']:.4f} / artifact {self.accuracy['artifact']:.4f}")
        return ", ".join(parts)


def _tolerance_for(name: str, tolerances: Tolerance | Mapping[str, Tolerance]) -> Tolerance:
    if isinstance(tolerances, Tolerance):
        return tolerances
    return tolerances.get(name) or tolerances.get(ANY_OUTPUT) or Tolerance()


def is_classifier(a: Any) -> bool:
    """Whether an output is judged as a classifier's (top-1 agreement, accuracy): [N, classes]
    with at least two classes. The one definition; compiler/ and targets/ import it."""
    return np.ndim(a) == 2 and np.shape(a)[1] > 1


def _failed(name: str, ref: np.ndarray, tol: Tolerance, reason: str) -> OutputComparison:
    return OutputComparison(name, False, list(ref.shape), int(ref.size), int(ref.size), 0,
                            None, None, None, None, None, None, None, None, tol, reason,
                            rule=tol.rule)


def _stats(x: np.ndarray) -> tuple[float, float, float]:
    if x.size == 0:
        return 0.0, 0.0, 0.0
    return float(x.max()), float(x.mean()), float(np.percentile(x, 99))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    """Share of samples whose top class the candidate keeps. A k-way tie for the candidate's top
    value counts by the share of its classes that are the reference's top (itself a set when the
    reference ties): int8 outputs tie often (a softmax in 1/256 steps), and argmax would break
    every tie towards the lower class index."""
    if not len(ref):
        return 1.0
    r, c = np.asarray(ref, dtype=np.float64), np.asarray(cand, dtype=np.float64)
    top = c == c.max(axis=1, keepdims=True)
    ref_top = r == r.max(axis=1, keepdims=True)
    shared = (top & ref_top).sum(axis=1)
    return float(np.mean(shared / np.maximum(top.sum(axis=1), 1)))


# A top-1 agreement below the threshold fails only when it is significant at this level: the
# flips seen on n samples are judged against a flip rate of (1 - threshold), one-sided binomial.
# A point value on 100 samples makes one flip the difference between 0.99 and 1.0.
AGREEMENT_SIGNIFICANCE = 0.05


def agreement_holds(agreement: float, samples: int, threshold: float) -> bool:
    """False when ``agreement`` on ``samples`` shows, at AGREEMENT_SIGNIFICANCE, that the true
    agreement is below ``threshold``: P(flips >= seen | flip rate 1 - threshold) < significance."""
    if agreement >= threshold or samples <= 0:
        return agreement >= threshold or samples <= 0
    p = 1.0 - threshold
    if p <= 0.0:
        return False
    flips = int(round(samples * (1.0 - agreement)))
    k = np.arange(flips, samples + 1)
    logpmf = (math.lgamma(samples + 1) - np.array([math.lgamma(i + 1) + math.lgamma(samples - i + 1) for i in k])
              + k * math.log(p) + (samples - k) * math.log1p(-p))
    return float(np.exp(logpmf).sum()) >= AGREEMENT_SIGNIFICANCE


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def error_model(ref: np.ndarray, cand: np.ndarray, exact: np.ndarray,
                ir_float32: np.ndarray | None = None) -> tuple[bool, dict[str, float | None], str | None]:
    """The error model (module docstring) on one output: (passed, its numbers, why it failed).

    ``ir_float32`` is the same IR run in float32: its error e_ir32 is a second measure of how far
    float32 evaluation alone moves this output. Elements non-finite on any side are left out here;
    the caller fails unmatched non-finite pairs.
    """
    have32 = ir_float32 is not None and np.shape(ir_float32) == np.shape(exact)
    flat = [np.asarray(v, dtype=np.float64).ravel() for v in (ref, cand, exact, *([ir_float32] if have32 else []))]
    finite = np.logical_and.reduce([np.isfinite(v) for v in flat])
    a, b, x, *f32 = (v[finite] for v in flat)
    e_src, e_art, scale = _rms(a - x), _rms(b - x), _rms(x)
    e_ir32 = _rms(f32[0] - x) if f32 else None
    # float32's own error on this network: the larger of two independent float32 evaluations.
    e_f32 = max(e_src, e_ir32 or 0.0)
    bound = ERROR_MODEL_K * e_f32 + ERROR_MODEL_FLOOR * scale
    sanity_bound = max(ERROR_MODEL_SANITY * scale, ERROR_MODEL_SANITY_K * (e_ir32 or 0.0))
    numbers: dict[str, float | None] = {
        "e_src": e_src, "e_ir32": e_ir32, "e_art": e_art, "scale": scale, "k": ERROR_MODEL_K,
        "floor": ERROR_MODEL_FLOOR, "bound": bound, "sanity": ERROR_MODEL_SANITY, "sanity_k": ERROR_MODEL_SANITY_K,
        "sanity_bound": sanity_bound}
    if e_src > sanity_bound:
        return False, numbers, (f"the source disagrees with the float64 IR (RMSE {e_src:.3e}, output RMS {scale:.3e}) "
                                f"beyond float32 rounding (bound {sanity_bound:.3e}): the import is wrong, so the "
                                "artifact cannot be judged against it")
    if e_art > bound:
        return False, numbers, (f"artifact RMSE {e_art:.3e} against the float64 IR exceeds {ERROR_MODEL_K:g} x "
                                f"float32's {e_f32:.3e} + {ERROR_MODEL_FLOOR:g} x RMS {scale:.3e} = {bound:.3e}")
    return True, numbers, None


def compare_output(name: str, ref: np.ndarray, cand: np.ndarray, tol: Tolerance,
                   exact: np.ndarray | None = None, ir_float32: np.ndarray | None = None) -> OutputComparison:
    """One output judged by ``tol``: elementwise, cosine/top-1, or the error model (``tol.error_model``
    and ``exact``, the float64 reference values of the reference's shape, given; elementwise without).
    ``ir_float32``: see ``error_model``."""
    ref, cand = np.asarray(ref), np.asarray(cand)
    if ref.shape != cand.shape:
        return _failed(name, ref, tol, f"shape mismatch: reference {list(ref.shape)}, candidate {list(cand.shape)}")
    a, b = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    finite = np.isfinite(a) & np.isfinite(b)
    # Non-finite pairs pass only when identical (NaN with NaN, +inf with +inf).
    same_nonfinite = ~finite & ((np.isnan(a) & np.isnan(b)) | (a == b))
    nonfinite_bad = int(np.count_nonzero(~finite & ~same_nonfinite))
    fa, fb = a[finite], b[finite]
    abs_err = np.abs(fa - fb)
    denom = np.abs(fa)
    nonzero = denom > 0
    rel_err = abs_err[nonzero] / denom[nonzero]
    atol = tol.atol
    if tol.scale_atol and fa.size:
        atol *= max(1.0, float(np.sqrt(np.mean(fa * fa))))
    # A zero reference element can only pass through atol.
    within = (abs_err <= atol) | (nonzero & (abs_err <= tol.rtol * denom))
    mismatches = int(np.count_nonzero(~within)) + nonfinite_bad
    max_abs, mean_abs, p99_abs = _stats(abs_err)
    max_rel, mean_rel, p99_rel = _stats(rel_err)
    cosine = _cosine(fa, fb)
    top1 = _top1_agreement(ref, cand) if is_classifier(ref) else None
    numbers, reason = None, None
    rule = tol.rule
    if rule == ERROR_MODEL and (exact is None or np.shape(exact) != ref.shape):
        rule = ELEMENTWISE  # no exact values for this output: the atol/rtol it carries judge it
    if rule == ERROR_MODEL:
        assert exact is not None
        passed, numbers, reason = error_model(ref, cand, exact, ir_float32)
        passed = passed and nonfinite_bad == 0
    elif rule == ELEMENTWISE:
        passed = mismatches == 0
    else:
        passed = nonfinite_bad == 0
        if tol.min_cosine is not None:
            passed = passed and cosine >= tol.min_cosine
        if tol.min_top1_agreement is not None:
            passed = passed and top1 is not None and agreement_holds(top1, len(ref), tol.min_top1_agreement)
    return OutputComparison(name, bool(passed), list(ref.shape), int(ref.size), mismatches, nonfinite_bad,
                            max_abs, mean_abs, p99_abs, max_rel, mean_rel, p99_rel, cosine, top1, tol,
                            reason=reason, effective_atol=atol, rule=rule, error_model=numbers)


def _accuracy(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
              labels: np.ndarray) -> dict[str, float] | None:
    """Top-1 accuracy of both sides on the first classifier-shaped output both have."""
    for name, ref in reference.items():
        ref = np.asarray(ref)
        cand = candidate.get(name)
        if not is_classifier(ref) or cand is None or np.shape(cand) != ref.shape:
            continue
        ids = np.asarray(labels)
        ids = ids.argmax(axis=1) if ids.ndim == 2 else ids.ravel()
        if len(ids) != len(ref):
            raise RuntimeInputError(f"{len(ids)} labels for {len(ref)} samples of output '{name}'")
        return {"source": float(np.mean(ref.argmax(axis=1) == ids)),
                "artifact": float(np.mean(np.asarray(cand).argmax(axis=1) == ids))}
    return None


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
            tolerances: Tolerance | Mapping[str, Tolerance] = Tolerance(), labels: np.ndarray | None = None,
            data_kind: str = "synthetic", samples: int | None = None,
            exact: Mapping[str, np.ndarray] | None = None,
            ir_float32: Mapping[str, np.ndarray] | None = None) -> ComparisonResult:
    """Compare every reference output with the candidate output of the same name.

    ``tolerances`` is one Tolerance for all outputs or a dict by output name with an optional
    "*" fallback. A reference output the candidate lacks fails; extra candidate outputs are noted.
    ``exact`` (by output name, in the reference's layout) are the float64 values the error model
    judges both sides against, for outputs whose Tolerance has ``error_model``; ``ir_float32`` the
    same computation in float32, which measures float32 rounding for the sanity bound.
    """
    outputs = []
    for name, ref in reference.items():
        tol = _tolerance_for(name, tolerances)
        if name not in candidate:
            outputs.append(_failed(name, np.asarray(ref), tol, "missing from the candidate's outputs"))
        else:
            outputs.append(compare_output(name, ref, candidate[name], tol, (exact or {}).get(name),
                                          (ir_float32 or {}).get(name)))
    notes = [f"candidate output '{n}' has no reference output; not compared" for n in candidate if n not in reference]
    if samples is None:
        first = next((np.asarray(r) for r in reference.values()), None)
        samples = int(first.shape[0]) if first is not None and first.ndim else 0
    accuracy = _accuracy(reference, candidate, labels) if labels is not None else None
    passed = bool(outputs) and all(o.passed for o in outputs)
    return ComparisonResult(outputs, passed, samples, data_kind, accuracy, notes)
