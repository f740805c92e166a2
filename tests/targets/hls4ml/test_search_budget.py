"""The precision search budgets what the hls4ml verification checks: cosine >= MIN_COSINE as well as
top-1 agreement, so it never picks a plan its own verification rejects (two C-sim builds).

Before: a global-average-pool head whose top-1 never changes kept agreement 1.0 with 1-4-bit types,
the search took them and the compile exited 1 (cosine 0.94); a [N, 1] regression output has no
agreement at all, so nothing held its widths (2-bit weights, cosine 0.63, exit 1).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH: no hls4ml C simulation")


def _glorot(rng, shape, fan_in, fan_out):
    lim = np.sqrt(6 / (fan_in + fan_out))
    return rng.uniform(-lim, lim, shape).astype(np.float32)


def _save(tmp: Path, name: str, model, shape: tuple[int, ...]) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    model.save(tmp / f"{name}.keras")
    for kind in ("cal", "eval"):  # synthetic standard-normal data, 512 samples each
        np.savez(tmp / f"{name}_{kind}.npz", x=rng.standard_normal((512, *shape)).astype(np.float32))
    return tmp / f"{name}.keras", tmp / f"{name}_cal.npz", tmp / f"{name}_eval.npz"


def _gap_classifier():
    """8x8x3 -> conv(8, 3, relu) x2 -> global average pool -> dense(5), untrained (Glorot weights,
    zero biases, fixed here): class 0 wins on every input, so top-1 agreement cannot tell widths apart."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    L = keras.layers
    x = keras.Input((8, 8, 3), name="x")
    h = L.Conv2D(8, 3, activation="relu", name="c1")(x)
    h = L.Conv2D(8, 3, activation="relu", name="c2")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(x, L.Dense(5, name="fc")(h), name="gap_head")
    rng = np.random.default_rng(1)
    model.set_weights([_glorot(rng, (3, 3, 3, 8), 27, 72), np.zeros(8, np.float32),
                       _glorot(rng, (3, 3, 8, 8), 72, 72), np.zeros(8, np.float32),
                       _glorot(rng, (8, 5), 8, 5), np.zeros(5, np.float32)])
    return model


def _regression():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    keras.utils.set_random_seed(5)
    L = keras.layers
    x = keras.Input((16,), name="x")
    h = L.Dense(32, activation="relu", name="fc1")(x)
    return keras.Model(x, L.Dense(1, name="out")(h), name="regression")


def _compile(tmp: Path, name: str, model, shape: tuple[int, ...], capsys) -> tuple[int, dict]:
    from tapeout.compiler.cli import main

    src, cal, ev = _save(tmp, name, model, shape)
    out = tmp / f"{name}_out"
    code = main(["compile", str(src), "-t", "hls4ml", "-o", str(out), "--calibration", str(cal), "--eval", str(ev)])
    capsys.readouterr()
    return code, json.loads((out / "report.json").read_text())


def _check(code: int, report: dict) -> tuple[dict, dict]:
    t = report["targets"][0]
    v, h = t["verification"], t["hls4ml"]
    assert code == 0 and report["passed"] and v["passed"], (code, v)
    assert v["data"] == "eval" and v["runner"].startswith("hls4ml-csim")
    # Held-out data clears the verification's cosine; the search held its own data to the guarded one.
    assert v["cosine"] >= 0.99
    p = h["precision"]
    assert p["mode"] == "auto" and p["met"] and p["budget"]["min_cosine"] == 0.99
    assert p["required_cosine"] == pytest.approx(0.995) and p["cosine"] >= 0.995
    assert h["csim"]["built"] and h["csim"]["csim_cosine"] >= 0.995  # C sim on the search data
    return v, h


@pytest.mark.slow  # a conv C-sim build: about 30 s on a loaded 2-core machine
@needs_gxx
def test_global_pool_classifier_keeps_the_cosine(tmp_path, capsys):
    pytest.importorskip("hls4ml")
    code, report = _compile(tmp_path, "gap", _gap_classifier(), (8, 8, 3), capsys)
    v, h = _check(code, report)
    assert v["top1_agreement"] == 1.0 and h["precision"]["baseline"]["agreement"] == 1.0
    # Still far narrower than hls4ml's default type.
    assert h["totals"]["weight_bits_saved"] >= 0.4


@needs_gxx
def test_regression_output_compiles_and_verifies(tmp_path, capsys):
    pytest.importorskip("hls4ml")
    code, report = _compile(tmp_path, "reg", _regression(), (16,), capsys)
    v, h = _check(code, report)
    assert v["top1_agreement"] is None and h["precision"]["baseline"]["agreement"] is None
    assert min(int(r["types"]["weight"].split("<")[1].split(",")[0]) for r in h["layers"] if "weight" in r["types"]) >= 4
