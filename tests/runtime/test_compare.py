"""The comparator on hand-made arrays whose errors are known by construction."""

import json
import math

import numpy as np
import pytest

from tapeout.runtime.compare import ComparisonResult, OutputComparison, Tolerance, compare, compare_output
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
