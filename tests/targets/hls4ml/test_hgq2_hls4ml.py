"""Issue 18 acceptance 1: HGQ2 models trained here compile to hls4ml; the C simulation equals
HGQ2's forward pass bit for bit on 2,000 inputs, and the estimated LUT+DSP cost is below the same
architecture trained as a float model and compiled with automatic precision.

Cost: compiler.fixedpoint.cost's resource objective over report.json's per-layer estimates
(LUTs of the products built in fabric + 140 LUTs per DSP). Each model trains once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hgq")

from tapeout.compiler.fixedpoint.cost import lut_multiplier_luts, resource_cost  # noqa: E402
from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner  # noqa: E402
from tests.cli_run import run_cli  # noqa: E402
from tests.compiler.frontends import hgq2_models as H  # noqa: E402

N_COMPARE = 2000
EPOCHS = 5


class Trained:
    def __init__(self, root: Path, kind: str) -> None:
        if kind == "mlp":
            self.qmodel, self.fmodel = H.hgq2_mlp(units=(64, 32, 32)), H.float_mlp(units=(64, 32, 32))
            (x, y), (xt, yt), self.input = H.jet_data(4000), H.jet_data(N_COMPARE, seed=7), "features"
        else:
            self.qmodel, self.fmodel = H.hgq2_cnn(), H.float_cnn()
            (x, y), (xt, yt), self.input = H.image_data(4000), H.image_data(N_COMPARE, seed=7), "image"
        self.q_accuracy = H.train(self.qmodel, x, y, EPOCHS)
        H.train(self.fmodel, x, y, EPOCHS)
        self.root = root
        self.qpath, self.fpath = root / "hgq2.keras", root / "float.keras"
        self.qmodel.save(self.qpath)
        self.fmodel.save(self.fpath)
        self.x, self.y = xt, yt
        self.eval = root / "eval.npz"
        np.savez(self.eval, **{self.input: xt, "y": yt})

    def compile(self, model: Path, out: str, *flags: str) -> dict:
        code, _, err = run_cli("compile", model, "-t", "hls4ml", "-o", self.root / out, "--eval", self.eval, *flags)
        assert code == 0, err
        return json.loads((self.root / out / "report.json").read_text())["targets"][0]


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def trained(request, tmp_path_factory) -> Trained:
    return Trained(tmp_path_factory.mktemp(f"hgq2_{request.param}"), request.param)


def _cost(target: dict) -> dict:
    h = target["hls4ml"]
    luts = sum(layer["estimate"]["lut_multipliers"] * lut_multiplier_luts(*layer["estimate"]["operand_bits"])
               for layer in h["layers"] if layer["estimate"]["lut_multipliers"])
    dsp = h["estimates"]["totals"]["dsp"]
    return {"dsp": dsp, "luts": luts, "cost": resource_cost(dsp, luts)}


@pytest.fixture(scope="module")
def compiled(trained: Trained) -> dict:
    return trained.compile(trained.qpath, "hgq2")


def test_csim_bit_exact_with_hgq2(trained: Trained, compiled: dict) -> None:
    v = compiled["verification"]
    assert v["passed"] and v["samples"] == N_COMPARE and v["max_abs_err"] == 0.0
    assert compiled["hls4ml"]["precision"]["mode"] == "quantizers"  # the trained types, no search
    # and once more outside tapeout's verifier: the built library against HGQ2's forward pass
    project = trained.root / "hgq2" / "hls4ml-vitis"
    with Hls4mlCsimRunner(project) as runner:
        got = runner.infer({trained.input: trained.x})
    ref = H.forward(trained.qmodel, trained.x)
    out = next(iter(got.values()))
    assert out.shape == ref.shape == (N_COMPARE, 5)
    np.testing.assert_array_equal(out, ref.astype(np.float64))
    assert (ref.argmax(1) == trained.y).mean() > 0.8


def test_cost_below_float_auto_precision(trained: Trained, compiled: dict) -> None:
    float_target = trained.compile(trained.fpath, "float", "--precision", "auto")
    fv, qv = float_target["verification"], compiled["verification"]
    assert fv["passed"] and fv["top1_agreement"] >= 0.995  # the float model at its agreement budget
    assert qv["top1_agreement"] == 1.0
    q, f = _cost(compiled), _cost(float_target)
    # the same task accuracy on the labelled inputs, within a point
    assert qv["accuracy"]["artifact"] >= fv["accuracy"]["artifact"] - 0.01
    assert q["cost"] < f["cost"], (q, f)


def test_layer_hls4ml_cannot_take(tmp_path: Path) -> None:
    """Acceptance 7, the target's side: an HGQ2 QMultiply of two tensors reads into the IR, but
    hls4ml has no fixed-point model for it: one line, exit 2, the layer named."""
    import keras
    from hgq.layers import QDense, QMultiply

    inp = keras.Input((8,), name="x")
    y = QMultiply(name="gate")([QDense(4)(inp), QDense(4)(inp)])
    keras.Model(inp, QDense(2)(y)).save(tmp_path / "m.keras")
    code, _, err = run_cli("compile", tmp_path / "m.keras", "-t", "hls4ml", "-o", tmp_path / "o")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "node 'gate': op 'mul' of two runtime tensors has no hls4ml fixed-point model" in err
