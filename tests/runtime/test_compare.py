"""The comparator on hand-made arrays whose errors are known by construction."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from tapeout.runtime.compare import ERROR_MODEL_FLOOR as FLOOR
from tapeout.runtime.compare import ERROR_MODEL_K as K
from tapeout.runtime.compare import ERROR_MODEL_SANITY as SANITY
from tapeout.runtime.compare import ERROR_MODEL_SANITY_K as SANITY_K
from tapeout.runtime.compare import (ComparisonResult, OutputComparison, Tolerance, compare, compare_output,
                                     is_classifier)
from tapeout.runtime.errors import RuntimeInputError


def test_identical_outputs_pass_with_zero_error() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = compare({"y": a}, {"y": a.copy()})
    (o,) = result.outputs
    assert result.passed and o.passed and o.mismatches == 0
    assert o.max_abs_err == 0.0 and o.mean_abs_err == 0.0 and o.cosine == pytest.approx(1.0)
    assert result.samples == 3 and o.shape == [3, 4] and o.elements == 12


def test_metrics_of_a_single_known_error() -> None:
    ref = np.array([[1.0, 2.0, 4.0, 8.0]])
    cand = ref.copy()
    cand[0, 2] = 4.5  # abs err 0.5, rel err 0.5 / 4 = 0.125 on one of four elements
    o = compare_output("y", ref, cand, Tolerance(atol=0.1, rtol=0.1))
    assert not o.passed and o.mismatches == 1
    assert o.max_abs_err == 0.5
    assert o.mean_abs_err == pytest.approx(0.5 / 4)
    assert o.max_rel_err == pytest.approx(0.125)
    assert o.mean_rel_err == pytest.approx(0.125 / 4)
    # numpy's linear percentile: 99% of the way from the 3rd sorted error (0) to the 4th (0.5).
    assert o.p99_abs_err == pytest.approx(0.5 * 0.97)
    dot = 1 * 1 + 2 * 2 + 4 * 4.5 + 8 * 8
    expected_cos = dot / (math.sqrt(1 + 4 + 16 + 64) * math.sqrt(1 + 4 + 4.5**2 + 64))
    assert o.cosine == pytest.approx(expected_cos)
    assert o.top1_agreement == 1.0  # argmax stays at column 3


@pytest.mark.parametrize(("atol", "rtol", "passes"), [
    (0.5, 0.0, True),    # abs err 0.5 <= atol
    (0.0, 0.125, True),  # rel err 0.5 / 4 = 0.125 <= rtol
    (0.49, 0.12, False),  # fails both: only then is it a mismatch
])
def test_element_passes_on_atol_or_rtol(atol: float, rtol: float, passes: bool) -> None:
    o = compare_output("y", np.array([4.0]), np.array([4.5]), Tolerance(atol, rtol))
    assert o.passed is passes and o.mismatches == (0 if passes else 1)


def test_zero_reference_is_judged_by_atol_only() -> None:
    o = compare_output("y", np.array([0.0, 2.0]), np.array([1e-3, 2.0]), Tolerance(atol=1e-4, rtol=10.0))
    assert not o.passed and o.mismatches == 1
    assert o.max_rel_err == 0.0  # relative stats skip the zero reference element


def test_per_output_tolerances_with_fallback() -> None:
    ref = {"a": np.array([1.0]), "b": np.array([1.0]), "c": np.array([1.0])}
    cand = {"a": np.array([1.2]), "b": np.array([1.2]), "c": np.array([1.2])}
    tols = {"a": Tolerance(atol=0.3), "*": Tolerance(atol=0.01, rtol=0.01)}
    result = compare(ref, cand, tols)
    passed = {o.name: o.passed for o in result.outputs}
    assert passed == {"a": True, "b": False, "c": False} and not result.passed
    assert result.outputs[0].tolerance.atol == 0.3 and result.outputs[1].tolerance.atol == 0.01


def test_nan_in_candidate_fails_but_matching_nans_pass() -> None:
    ref = np.array([1.0, np.nan, np.inf])
    bad = compare_output("y", ref, np.array([np.nan, np.nan, np.inf]), Tolerance(atol=1.0))
    assert not bad.passed and bad.nonfinite_mismatches == 1 and bad.mismatches == 1
    good = compare_output("y", ref, np.array([1.0, np.nan, np.inf]), Tolerance())
    assert good.passed and good.max_abs_err == 0.0
    flipped = compare_output("y", ref, np.array([1.0, np.nan, -np.inf]), Tolerance(atol=1e9))
    assert not flipped.passed


def test_shape_mismatch_and_missing_output_fail_with_a_reason() -> None:
    result = compare({"y": np.zeros((2, 3)), "z": np.zeros(2)}, {"y": np.zeros((2, 1, 3)), "w": np.zeros(1)})
    y, z = result.outputs
    assert not result.passed and not y.passed and not z.passed
    assert "shape" in y.reason and y.max_abs_err is None
    assert "missing" in z.reason
    assert any("'w'" in n for n in result.notes)


def test_top1_agreement_counts_rows_whose_argmax_matches() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    cand = np.array([[0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.3, 0.7]])  # row 1 flips
    o = compare_output("p", ref, cand, Tolerance())
    assert o.top1_agreement == 0.75
    assert compare_output("p", ref[:, :1], cand[:, :1], Tolerance()).top1_agreement is None
    assert compare_output("p", ref.ravel(), cand.ravel(), Tolerance()).top1_agreement is None


def test_classifier_mode_judges_cosine_and_agreement_not_elements() -> None:
    ref = np.array([[2.0, 1.0], [1.0, 3.0]])
    cand = ref * 1.1  # every element off by 10%, same direction, same argmax
    assert not compare_output("p", ref, cand, Tolerance()).passed
    assert compare_output("p", ref, cand, Tolerance(min_cosine=0.999, min_top1_agreement=1.0)).passed
    flipped = np.array([[1.0, 2.0], [1.0, 3.0]])
    assert not compare_output("p", ref, flipped, Tolerance(min_top1_agreement=1.0)).passed
    assert not compare_output("p", ref, -ref, Tolerance(min_cosine=0.9)).passed


def test_accuracy_against_labels_uses_the_first_classifier_output() -> None:
    ref = {"emb": np.zeros((4, 1)), "probs": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], float)}
    cand = {"emb": np.zeros((4, 1)), "probs": np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]], float)}
    labels = np.array([0, 1, 2, 2])  # reference right on 3 of 4, candidate on 2 of 4
    result = compare(ref, cand, labels=labels, data_kind="eval")
    assert result.accuracy == {"source": 0.75, "artifact": 0.5}
    one_hot = np.eye(3)[labels]
    assert compare(ref, cand, labels=one_hot).accuracy == {"source": 0.75, "artifact": 0.5}
    assert compare(ref, cand).accuracy is None
    with pytest.raises(RuntimeInputError, match="3 labels for 4 samples"):
        compare(ref, cand, labels=labels[:3])


def test_json_round_trip_is_exact_and_deterministic(tmp_path) -> None:
    rng = np.random.default_rng(0)
    ref = {"p": rng.standard_normal((5, 4)), "q": rng.standard_normal(5)}
    cand = {"p": ref["p"] + 1e-3, "q": ref["q"].copy()}
    result = compare(ref, cand, {"p": Tolerance(1e-4, 1e-4), "q": Tolerance(min_cosine=0.99)},
                     labels=np.arange(5) % 4, data_kind="eval")
    path = tmp_path / "cmp.json"
    result.save(path)
    loaded = ComparisonResult.load(path)
    assert loaded.to_json() == result.to_json()
    assert loaded.outputs[1].tolerance == Tolerance(min_cosine=0.99) and loaded.accuracy == result.accuracy
    text = path.read_text()
    result.save(path)
    assert path.read_text() == text
    # Floats are cut to 9 significant digits, so tiny float noise cannot change the report.
    floats = [v for v in json.loads(text)["outputs"][0].values() if isinstance(v, float)]
    assert floats and all(v == float(f"{v:.9g}") for v in floats)
    assert OutputComparison.from_json(result.outputs[0].to_json()).to_json() == result.outputs[0].to_json()


def test_summary_is_one_line_naming_failures() -> None:
    result = compare({"a": np.ones(2), "b": np.ones(2)}, {"a": np.ones(2), "b": np.zeros(2)})
    line = result.summary()
    assert "\n" not in line and line.startswith("FAILED") and "failing: b" in line
    assert compare({"a": np.ones(2)}, {"a": np.ones(2)}).summary().startswith("PASSED")


def test_no_outputs_does_not_pass() -> None:
    assert not compare({}, {}).passed


def test_scaled_atol_follows_the_output_rms_and_still_catches_real_errors():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 4, (16, 10))  # logits of a deep net: RMS ~4
    roundoff = ref + rng.choice([-2e-4, 2e-4], ref.shape)  # cross-framework fp32 round-off
    absolute = Tolerance(1e-4, 1e-4)
    scaled = Tolerance(1e-4, 1e-4, scale_atol=True)
    near_zero = np.abs(ref) < 1  # only there can the rtol arm not cover the round-off
    assert near_zero.any()
    assert not compare_output("y", ref, roundoff, absolute).passed
    got = compare_output("y", ref, roundoff, scaled)
    assert got.passed and 3.5e-4 < got.effective_atol < 4.5e-4
    wrong = ref + 0.05 * np.std(ref) * rng.normal(size=ref.shape)  # a small real error: 5% of the scale
    assert not compare_output("y", ref, wrong, scaled).passed
    # Outputs below unit scale keep the absolute atol.
    small = ref / 100
    assert compare_output("y", small, small + 2e-4, scaled).effective_atol == 1e-4
    again = OutputComparison.from_json(got.to_json())
    assert again.tolerance.scale_atol is True and again.effective_atol == pytest.approx(got.effective_atol, rel=1e-8)


def test_top1_agreement_counts_a_tie_with_the_reference_class_as_a_share():
    ref = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7]])
    # Sample 0: a 2-way tie of classes 0 and 1 (argmax would say 0, a flip); sample 1 kept;
    # sample 2: a 3-way tie including class 2; sample 3: class 2 lost outright.
    cand = np.array([[0.5, 0.5, 0.0], [0.8, 0.1, 0.1], [0.3, 0.3, 0.3], [0.1, 0.8, 0.1]])
    got = compare_output("p", ref, cand, Tolerance(min_cosine=0.0, min_top1_agreement=0.0))
    assert got.top1_agreement == pytest.approx((0.5 + 1 + 1 / 3 + 0) / 4)
    assert float(np.mean(ref.argmax(1) == cand.argmax(1))) == pytest.approx(0.25)  # argmax's count


def test_agreement_below_the_threshold_fails_only_when_significant():
    from tapeout.runtime.compare import agreement_holds

    # One flip in 100 against a 0.995 threshold (0.5 flips expected) is no evidence of a worse rate.
    assert agreement_holds(0.99, 100, 0.995)
    assert not agreement_holds(0.97, 100, 0.995)  # 3 flips: P = 0.014
    # Many samples: the point value decides (the trained jet tagger's int8, 2000 samples).
    assert agreement_holds(0.9834, 2000, 0.98) and not agreement_holds(0.9834, 2000, 0.99)
    # A broken artifact fails on any sample count.
    assert not agreement_holds(0.75, 16, 0.98) and not agreement_holds(0.9, 1000, 0.98)
    assert agreement_holds(1.0, 0, 0.99) and agreement_holds(0.98, 100, 0.98)


def test_compare_output_applies_the_significance_rule():
    ref = np.eye(10)[np.arange(100) % 10] + 0.01
    cand = ref.copy()
    cand[0] = np.roll(cand[0], 1)  # one flip of 100
    tol = Tolerance(min_cosine=0.0, min_top1_agreement=0.995)
    got = compare_output("p", ref, cand, tol)
    assert got.top1_agreement == pytest.approx(0.99) and got.passed
    cand[1:4] = np.roll(cand[1:4], 1, axis=1)  # four flips
    assert not compare_output("p", ref, cand, tol).passed


def test_top1_agreement_of_a_constant_output_that_ties_on_both_sides_is_one():
    flat = np.full((8, 5), 0.2)  # a softmax of constant logits: every class ties, in both
    got = compare_output("p", flat, flat.copy(), Tolerance(min_cosine=0.99, min_top1_agreement=0.98))
    assert got.top1_agreement == 1.0 and got.passed
    ref = np.array([[0.5, 0.5, 0.0]])  # the reference ties on classes 0 and 1: either one is its top
    assert compare_output("p", ref, np.array([[0.4, 0.6, 0.0]]), Tolerance()).top1_agreement == 1.0
    assert compare_output("p", ref, np.array([[0.1, 0.2, 0.7]]), Tolerance()).top1_agreement == 0.0


# ------------------------------------------------------------------ error model
def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_error_model_passes_float32_reordering_the_elementwise_rule_fails():
    rng = np.random.default_rng(0)
    # Logits ~1e5 with a sharp (near one-hot) softmax: float32 evaluation moves each logit by a
    # few ulps of 1e5 (~2e-2), and the probabilities by up to ~1e-3.
    z = 1e5 + rng.normal(0, 10, (16, 10))
    ulps = 1e5 * 6e-8 * 4
    exact, source, artifact, ir32 = (_softmax(z + rng.normal(0, s, z.shape)) for s in (0.0, ulps, ulps, ulps))
    tol = Tolerance(1e-4, 1e-4, scale_atol=True, error_model=True)
    elementwise = compare_output("p", source, artifact, replace(tol, error_model=False))
    assert not elementwise.passed and elementwise.max_abs_err > 1e-4  # today's rule: a false failure
    got = compare_output("p", source, artifact, tol, exact, ir32)
    assert got.passed and got.rule == "error-model" and got.reason is None
    em = got.error_model
    rmse = [np.sqrt(np.mean((v - exact) ** 2)) for v in (source, artifact, ir32)]
    assert [em["e_src"], em["e_art"], em["e_ir32"]] == pytest.approx(rmse)
    assert em["scale"] == pytest.approx(np.sqrt(np.mean(exact ** 2)))
    assert em["k"] == K and em["floor"] == FLOOR
    assert em["bound"] == pytest.approx(K * max(rmse[0], rmse[2]) + FLOOR * em["scale"])
    # This output is ill-conditioned: float32 moves it by more than SANITY of its scale, which the
    # float32 IR shows (the sanity bound follows e_ir32). Without that measure the fixed bound fails it.
    assert em["e_src"] > SANITY * em["scale"] and em["sanity_bound"] == pytest.approx(SANITY_K * em["e_ir32"])
    assert "import" in compare_output("p", source, artifact, tol, exact).reason


EM = Tolerance(1e-4, 1e-4, scale_atol=True, error_model=True)


def _float32_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    exact = rng.normal(0, 3, (32, 10))
    source = exact.astype(np.float32).astype(np.float64) * (1 + rng.normal(0, 3e-7, exact.shape))
    artifact = exact.astype(np.float32).astype(np.float64) * (1 + rng.normal(0, 3e-7, exact.shape))
    return exact, source, artifact


@pytest.mark.parametrize("rel", [1e-3, 1e-4])
def test_error_model_still_fails_a_real_error(rel):
    rng = np.random.default_rng(2)
    exact, source, artifact = _float32_pair(rng)
    assert compare_output("y", source, artifact, EM, exact).passed
    scale = np.sqrt(np.mean(exact ** 2))
    # A lowering bug: one output channel off by ``rel`` of the output's scale on every sample.
    wrong = artifact.copy()
    wrong[:, 3] += rel * scale * np.sqrt(10)
    got = compare_output("y", source, wrong, EM, exact)
    assert not got.passed and got.rule == "error-model" and "exceeds" in got.reason


def test_error_model_sanity_guard_fails_a_source_far_from_the_ir():
    rng = np.random.default_rng(3)
    exact, source, artifact = _float32_pair(rng)
    scale = np.sqrt(np.mean(exact ** 2))
    # The IR (so the artifact) lost a bias the source has: e_src is far beyond float32 rounding, and
    # K * e_src would wave through an artifact equally far from the source.
    shifted = source + 3 * SANITY * scale
    _, _, ir32 = _float32_pair(np.random.default_rng(3))  # float32's own error here: ~3e-7 relative
    for f32 in (None, ir32):
        got = compare_output("y", shifted, artifact, EM, exact, f32)
        assert not got.passed and "import" in got.reason
        assert got.error_model["e_src"] > got.error_model["sanity_bound"] == pytest.approx(SANITY * scale)
    assert compare_output("y", source, artifact, EM, exact, ir32).passed


def test_error_model_non_finite_fails_and_missing_exact_falls_back_to_elementwise():
    rng = np.random.default_rng(4)
    exact, source, artifact = _float32_pair(rng)
    bad = artifact.copy()
    bad[0, 0] = np.nan
    got = compare_output("y", source, bad, EM, exact)
    assert not got.passed and got.nonfinite_mismatches == 1
    both = source.copy()
    both[0, 0] = np.inf
    same = artifact.copy()
    same[0, 0] = np.inf  # the same infinity on both sides passes, as elementwise
    assert compare_output("y", both, same, EM, exact).passed
    # No exact values for an output (or of another shape): the Tolerance's atol/rtol judge it.
    for ex in (None, exact[:3]):
        got = compare_output("y", source, artifact + 1e-3, EM, ex)
        assert got.rule == "elementwise" and got.error_model is None and not got.passed
    result = compare({"y": source, "z": source}, {"y": artifact, "z": artifact}, EM, exact={"y": exact})
    assert [o.rule for o in result.outputs] == ["error-model", "elementwise"]


def test_error_model_record_round_trips_rounded(tmp_path):
    rng = np.random.default_rng(5)
    exact, source, artifact = _float32_pair(rng)
    result = compare({"y": source, "q": source}, {"y": artifact, "q": artifact},
                     {"y": EM, "q": Tolerance(min_cosine=0.99)}, exact={"y": exact, "q": exact})
    d = result.to_json()
    y, q = d["outputs"]
    assert y["rule"] == "error-model" and q["rule"] == "cosine/top-1" and q["error_model"] is None
    assert set(y["error_model"]) == {"e_src", "e_ir32", "e_art", "scale", "k", "floor", "bound", "sanity",
                                     "sanity_k", "sanity_bound"}
    assert all(v == float(f"{v:.9g}") for v in y["error_model"].values() if v is not None)
    assert y["tolerance"]["error_model"] is True
    path = tmp_path / "cmp.json"
    result.save(path)
    assert ComparisonResult.load(path).to_json() == d
    assert compare_output("y", source, artifact, Tolerance()).rule == "elementwise"


def test_is_classifier_means_batch_by_at_least_two_classes() -> None:
    assert is_classifier(np.zeros((4, 10))) and is_classifier([[0.1, 0.9]])  # array-likes too
    assert not is_classifier(np.zeros((4, 1)))  # one logit: a score, no class to agree on
    assert not is_classifier(np.zeros(4)) and not is_classifier(np.zeros((4, 8, 8, 3)))
