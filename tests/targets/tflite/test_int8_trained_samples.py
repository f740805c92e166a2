"""The trained samples' int8 artifacts pass verification as compiled by default (issue 13's lesson:
a correct int8 model of a low-margin classifier flips a few near-tie samples, as TensorFlow's own
converter does, while its accuracy holds; before, tapeout exited 1 on samples/jet_mlp)."""

import io
import json
from pathlib import Path

from tapeout.compiler.cli import main

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


def test_jet_mlp_int8_verifies_with_accuracy_kept(tmp_path):
    s = SAMPLES / "jet_mlp"
    out, err = io.StringIO(), io.StringIO()
    rc = main(["compile", str(s / "model.keras"), "-t", "tflite:int8", "-t", "onnx:int8", "-o", str(tmp_path / "o"),
               "--eval", str(s / "eval.npz"), "--calibration", str(s / "calibration.npz"), "--json", "--no-timings"],
              out=out, err=err)
    assert rc == 0, err.getvalue()
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    for t in report["targets"]:
        v = t["verification"]
        assert v["passed"] and v["cosine"] >= 0.999
        assert 0.98 <= v["top1_agreement"] < 0.99  # the flips are real; the criterion now allows them
        assert v["accuracy"]["artifact"] >= v["accuracy"]["source"] - 0.005
