"""correct-bias: each conv/dense's mean output offset in the quantization simulation, measured
layer by layer on calibration data and taken out of its bias before Quantize annotates it."""

from __future__ import annotations

import numpy as np

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import Activation, Graph
from tapeout.compiler.passes.bias_correction import CorrectBias
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize, SplitActivations, simulate


def net(builder) -> Graph:
    """Positive inputs (as after a ReLU) through a padded conv without a bias, a global pool and a
    wide dense: the rounding offset survives the pool, as in SqueezeNet's classifier."""
    b = builder(seed=5)
    x = b.input("x", 8, 8, 16)
    c = b.node("conv", [x, b.rand("cw", 3, 3, 16, 32, low=-0.3, high=0.3)], "conv", pads=((1, 1), (1, 1)),
               activation=Activation.of("relu"))
    p = b.node("global_avg_pool", [c], "pool", keepdims=False)
    return b.build(b.node("dense", [p, b.rand("dw", 32, 10, low=-0.5, high=0.5), b.rand("db", 10)], "fc"))


def data(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).uniform(0.0, 2.0, (n, 8, 8, 16)).astype(np.float32)}


def prepared(builder) -> Graph:
    split = Pipeline([SplitActivations()]).run(net(builder)).graph
    return calibrate(split, data(64, 0))


def test_each_layer_matches_the_float_mean_after_the_layers_before_it(builder):
    """On the calibration data the corrected simulation's mean output per channel is the float
    model's (up to the output's own rounding), for the padded bias-less conv and for the dense
    after it, which is corrected for what reaches it from the corrected conv."""
    g = prepared(builder)
    res = CorrectBias("int8", data(64, 0)).run(g)
    assert res.changed and "2 conv/dense bias(es) corrected layer by layer on 64" in res.details[0]
    conv = next(n for n in res.graph.nodes if n.name == "conv")
    assert len(conv.inputs) == 3  # a bias added where the layer had none
    assert g.nodes[0].inputs == ["x", "cw"] and "cw" in g.constants  # the pass is pure
    q = Pipeline([Quantize("int8")]).run(res.graph).graph
    x = data(64, 0)
    want = run(g, x, keep_intermediates=True)
    got = simulate(q, x, keep_intermediates=True)
    out = g.outputs[0]
    step = float(q.quant.tensors[out].scale[0])
    after = np.abs((got[out].astype(np.float64) - want[out]).mean(axis=0)).max()
    before = simulate(Pipeline([Quantize("int8")]).run(g).graph, x)[out].astype(np.float64)
    before = np.abs((before - want[out]).mean(axis=0)).max()
    assert after < step / 4 and after < before / 3, (after, before, step)


def test_corrected_int8_is_closer_to_float_on_other_data(builder):
    g = prepared(builder)
    test = data(32, 1)
    want = run(g, test)[g.outputs[0]].astype(np.float64)

    def error(graph: Graph) -> float:
        q = Pipeline([Quantize("int8")]).run(graph).graph
        got = simulate(q, test)[g.outputs[0]].astype(np.float64)
        return float(np.abs((got - want).mean(axis=0)).max())  # the steady per-output offset

    corrected = CorrectBias("int8", data(64, 0)).run(g).graph
    assert error(corrected) < error(g) / 3, (error(corrected), error(g))


def test_kept_float_layers_are_left_alone(builder):
    g = prepared(builder)
    res = CorrectBias("int8", data(64, 0), exclude=["conv"]).run(g)
    assert "1 conv/dense bias(es) corrected" in res.details[0]
    conv = next(n for n in res.graph.nodes if n.name == "conv")
    assert conv.inputs == ["x", "cw"]
    none = CorrectBias("int8", data(64, 0), exclude=["conv", "fc"]).run(g)
    assert not none.changed and none.graph is g


def test_the_cli_flag_and_the_project_key_turn_it_off(tmp_path):
    """On by default for tflite:int8 (its line in the quantization details); --no-bias-correction
    and `bias_correction = false` in tapeout.toml leave the biases as trained."""
    import json
    from pathlib import Path

    from tapeout.compiler.cli import main
    from tapeout.compiler.project import load_project

    jet = Path(__file__).resolve().parents[3] / "samples" / "jet_mlp"
    args = [str(jet / "model.keras"), "-t", "tflite:int8", "--calibration", str(jet / "calibration.npz"),
            "--no-verify", "--no-cache", "--quiet"]

    def details(out: Path) -> list[str]:
        q = json.loads((out / "report.json").read_text())["targets"][0]["quantization"]
        return q["details"]

    assert main(["compile", *args, "-o", str(tmp_path / "on")]) == 0
    assert any("bias(es) corrected" in d for d in details(tmp_path / "on"))
    assert main(["compile", *args, "-o", str(tmp_path / "off"), "--no-bias-correction"]) == 0
    assert not any("bias(es) corrected" in d for d in details(tmp_path / "off"))
    (tmp_path / "tapeout.toml").write_text(f'[models.jet]\npath = "{jet / "model.keras"}"\ntargets = ["onnx"]\n'
                                           'bias_correction = false\n')
    assert load_project(tmp_path / "tapeout.toml").models["jet"].build.bias_correction is False
