"""`tapeout compile --prune` on the digits CNN sample: the report's pruning entry, verification
against the pruned graph, and one-line usage errors (issue 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import run_cli

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "digits_cnn"


def compile_json(tmp_path: Path, spec: str, *extra: object) -> dict:
    code, out, err = run_cli("compile", SAMPLE / "model.keras", "-t", "onnx", "-o", tmp_path / "out",
                             "--eval", SAMPLE / "eval.npz", "--prune", spec, "--json", *extra)
    assert code == 0, err
    report = json.loads(out)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["pruning"] == report["pruning"]
    return report


def test_channels_shrinks_the_model_and_verifies_against_the_pruned_graph(tmp_path):
    r = compile_json(tmp_path, "channels:0.5")
    p = r["pruning"]
    assert p["spec"] == "channels:0.5" and p["one_shot"] is True and p["fine_tuning"] is None
    assert p["after"]["macs"] <= 0.55 * p["before"]["macs"] and p["macs_ratio"] <= 0.55
    assert p["after"]["params"] < 0.5 * p["before"]["params"]
    assert r["graph"]["macs"] == p["after"]["macs"]
    layers = {row["name"]: row for row in p["layers"]}
    assert layers["conv2"]["shape_before"] == [3, 3, 16, 32] and layers["conv2"]["shape_after"] == [3, 3, 8, 16]
    assert layers["probabilities"]["shape_after"][-1] == 10  # the classifier keeps its classes
    assert any(x["name"] == "prune:channels" and x["changed"] for x in r["passes"])
    v = r["targets"][0]["verification"]
    assert v["passed"] and v["max_abs_err"] < 1e-4 and "pruned IR" in v["runner"]
    acc = p["accuracy"]
    assert acc["unpruned"] >= 0.9 and acc["samples"] == 360
    assert v["accuracy"]["artifact"] == pytest.approx(acc["pruned"])


@pytest.mark.parametrize("spec, expected", [("magnitude:0.7", 0.7), ("2:4", 0.5)])
def test_unstructured_sparsity_per_layer(tmp_path, spec, expected):
    p = compile_json(tmp_path, spec, "--no-verify")["pruning"]
    rows = p["layers"]
    pruned = [row for row in rows if row["sparsity_after"] > 0]
    assert pruned and all(row["sparsity_after"] == pytest.approx(expected, abs=1e-3) for row in pruned)
    assert all(row["shape_after"] == row["shape_before"] for row in rows)
    assert p["after"]["macs"] == p["before"]["macs"] and p["after"]["nonzero_macs"] < p["before"]["nonzero_macs"]
    if spec.startswith("magnitude"):
        # The digits CNN's first conv and classifier hold under 10% of the weights: dense by default.
        assert rows[0]["sparsity_after"] == 0 and rows[-1]["sparsity_after"] == 0
        assert len(pruned) == len(rows) - 2


def test_bad_prune_spec_is_one_line_usage_error(tmp_path):
    for spec in ("channels:1.5", "sparse", "4:2"):
        code, out, err = run_cli("compile", SAMPLE / "model.keras", "-t", "onnx", "-o", tmp_path / "o",
                                 "--prune", spec)
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("tapeout: error: --prune")
        assert not (tmp_path / "o").exists()


def test_fine_tuning_holds_the_zeros_and_is_deterministic(tmp_path):
    runs = []
    for k in range(2):
        code, out, err = run_cli("compile", SAMPLE / "model.keras", "-t", "onnx", "-o", tmp_path / f"o{k}",
                                 "--eval", SAMPLE / "eval.npz", "--prune", "magnitude:0.7", "--train",
                                 SAMPLE / "calibration.npz", "--epochs", "2", "--json", "--no-timings")
        assert code == 0, err
        runs.append(json.loads(out))
    p = runs[0]["pruning"]
    assert p["one_shot"] is False and p["fine_tuning"]["epochs"] == 2 and p["fine_tuning"]["samples"] == 200
    assert p["fine_tuning"]["masked_layers"] == 3 and len(p["fine_tuning"]["losses"]) == 2
    assert p["fine_tuning"]["learning_rate"] == 1e-3
    # --epochs N keeps its meaning: exactly N epochs on all the data, no validation run, no verdict.
    assert p["fine_tuning"]["mode"] == "fixed" and "curve" not in p["fine_tuning"] and "budget" not in p["fine_tuning"]
    # The zeros stayed where pruning put them and are still exact.
    assert [row["sparsity_after"] for row in p["layers"]][1:-1] == [pytest.approx(0.7, abs=1e-3)] * 3
    acc = p["accuracy"]
    assert acc["pruned"] != acc["pruned_one_shot"]  # training changed the weights
    # Seeded: the second build is byte-identical.
    assert runs[0]["pruning"] == runs[1]["pruning"]
    assert (tmp_path / "o0/onnx-fp32/model.onnx").read_bytes() == (tmp_path / "o1/onnx-fp32/model.onnx").read_bytes()
    # --learning-rate reaches the optimizer: recorded, and the trained weights differ.
    code, out, err = run_cli("compile", SAMPLE / "model.keras", "-t", "onnx", "-o", tmp_path / "lr",
                             "--eval", SAMPLE / "eval.npz", "--prune", "magnitude:0.7", "--train",
                             SAMPLE / "calibration.npz", "--epochs", "2", "--learning-rate", "3e-3", "--json",
                             "--no-timings")
    assert code == 0, err
    fast = json.loads(out)["pruning"]["fine_tuning"]
    assert fast["learning_rate"] == 3e-3 and fast["losses"] != p["fine_tuning"]["losses"]


def test_prune_exclude_leaves_the_named_layers_alone(tmp_path):
    r = compile_json(tmp_path, "magnitude:0.6", "--no-verify", "--prune-exclude", "conv2", "--prune-exclude", "fc*")
    sparsity = {row["name"]: row["sparsity_after"] for row in r["pruning"]["layers"]}
    assert sparsity["conv2"] == 0 and sparsity["fc1"] == 0 and sparsity["conv3"] == pytest.approx(0.6, abs=1e-3)
    assert any("'conv2'" in d and "excluded" in d for d in r["pruning"]["details"])


@pytest.mark.parametrize("args, words", [(["--prune-exclude", "conv2"], "--prune SPEC"),
                                         (["--prune", "2:4", "--prune-exclude", "conv9"], "'conv9'"),
                                         (["--train", SAMPLE / "calibration.npz"], "--prune"),
                                         (["--prune", "channels:0.5", "--epochs", "3"], "--train"),
                                         (["--prune", "channels:0.5", "--train", "missing.npz"], "no such file"),
                                         (["--prune", "channels:0.5", "--learning-rate", "0.01"], "--train"),
                                         (["--learning-rate", "0.01"], "--prune"),
                                         (["--prune", "channels:0.5", "--train", SAMPLE / "calibration.npz",
                                           "--learning-rate", "-1"], "positive")])
def test_fine_tuning_usage_errors(tmp_path, args, words):
    code, out, err = run_cli("compile", SAMPLE / "model.keras", "-t", "onnx", "-o", tmp_path / "o", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def test_auto_finds_a_sparsity_within_the_budget_and_reports_the_curve(tmp_path):
    r = compile_json(tmp_path, "auto", "--max-accuracy-drop", "1")
    p = r["pruning"]
    s = p["search"]
    assert s["kind"] == "magnitude" and s["max_accuracy_drop"] == 1.0 and len(s["curve"]) >= 3
    assert [c["sparsity"] for c in s["curve"]] == sorted(c["sparsity"] for c in s["curve"])
    chosen = next(c for c in s["curve"] if c["sparsity"] == s["chosen"])
    assert chosen["within_budget"] and s["chosen"] > 0
    # Nothing tried above the choice was within budget (the search keeps the largest passing one).
    assert all(not c["within_budget"] for c in s["curve"] if c["sparsity"] > s["chosen"])
    assert p["spec"] == f"magnitude:{s['chosen']:g}"
    acc = p["accuracy"]
    assert 100 * (acc["unpruned"] - acc["pruned"]) <= 1.0 + 1e-9
    assert acc["pruned"] == pytest.approx(chosen["accuracy"])
    assert p["after"]["nonzero_macs"] < p["before"]["nonzero_macs"]


def test_auto_needs_a_budget(tmp_path):
    code, out, err = run_cli("compile", SAMPLE / "model.keras", "-t", "onnx", "-o", tmp_path / "o",
                             "--eval", SAMPLE / "eval.npz", "--prune", "channels:auto")
    assert code == 2 and "--max-accuracy-drop" in err and len(err.strip().splitlines()) == 1


def test_hls4ml_instantiates_no_multiplier_for_a_zero_weight(tmp_path):
    """Jet MLP, magnitude:0.7 -> hls4ml: the estimate counts only non-zero weights, the generated
    dense configs cap the multipliers (HLS ALLOCATION limit) at the non-zero count, and the pruned
    design still verifies in C simulation against the pruned graph."""
    import re
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    jet = SAMPLE.parent / "jet_mlp"
    out = tmp_path / "out"
    code, text, err = run_cli("compile", jet / "model.keras", "-t", "hls4ml", "-o", out, "--prune", "magnitude:0.7",
                              "--calibration", jet / "calibration.npz", "--eval", jet / "eval.npz", "--json",
                              "--no-timings")
    assert code == 0, err
    r = json.loads(text)
    zeros = {row["name"]: round(row["sparsity_after"] * np.prod(row["shape_after"])) for row in r["pruning"]["layers"]}
    # The output layer (160 of 4,256 weights) stays dense by default; fc1 holds 24%, so it is pruned.
    assert zeros["fc2"] > 0 and zeros["fc1"] == round(0.7 * 16 * 64) and zeros["output"] == 0
    params = (out / "hls4ml-vitis" / "firmware" / "parameters.h").read_text()
    blocks = re.findall(r"// (\w+)\nstruct config\d+ : nnet::dense_config \{(.*?)\n\};", params, re.S)
    generated = {name: {k: int(v) for k, v in re.findall(r"static const unsigned (n_\w+) = (\d+);", body)}
                 for name, body in blocks}
    assert set(generated) == set(zeros)
    hls = r["targets"][0]["hls4ml"]
    est = {row["layer"]: row["estimate"]["multipliers"] for row in hls["layers"] if row["layer"] in zeros}
    for name, g in generated.items():
        assert g["n_zeros"] == zeros[name], name
        assert g["n_nonzeros"] == g["n_in"] * g["n_out"] - zeros[name]
        # Reuse factor 1: one multiplier per non-zero weight; weights that quantize to zero drop too.
        assert est[name] <= g["n_nonzeros"] and est[name] >= 0.95 * g["n_nonzeros"], (name, est[name], g)
    assert hls["estimates"]["totals"]["multipliers"] == sum(est.values())
    # Acceptance 2 of the pruning issue: at least 60% fewer multipliers than one per dense weight.
    assert sum(est.values()) <= 0.4 * sum(g["n_in"] * g["n_out"] for g in generated.values())
    v = r["targets"][0]["verification"]
    assert v["passed"] and hls["csim"]["built"] and hls["csim"]["csim_agreement"] >= 0.995


@pytest.mark.slow
def test_default_fine_tuning_ends_within_a_point_of_unpruned(tmp_path):
    """Issue 18 acceptance 6: `--prune channels:0.5 --train` with no other flags, on the digits
    sample's training split (rebuilt by its train.py), ends within 1 point of unpruned."""
    import importlib.util

    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("digits_train", SAMPLE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x, y = module.load_splits()["train"]
    np.savez(tmp_path / "train.npz", x=x, y=y)
    code, out, err = run_cli("compile", SAMPLE / "model.keras", "-t", "onnx", "-o", tmp_path / "out",
                             "--eval", SAMPLE / "eval.npz", "--prune", "channels:0.5",
                             "--train", tmp_path / "train.npz", "--no-timings")
    assert code == 0, err
    p = json.loads((tmp_path / "out" / "report.json").read_text())["pruning"]
    acc, ft = p["accuracy"], p["fine_tuning"]
    assert 100 * (acc["unpruned"] - acc["pruned"]) <= 1.0 and acc["pruned_one_shot"] < 0.5
    assert ft["mode"] == "until-done" and ft["budget"]["met"] and ft["budget"]["judged_on"] == "eval"
    assert ft["validation"]["samples"] == 247 and ft["epochs"] <= ft["validation"]["epochs"] <= 100
    assert "prune   until done:" in out and "accuracy budget met" in out
