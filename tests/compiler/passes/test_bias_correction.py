"""correct-bias: the mean output offset of rounded weights, measured on calibration data and
subtracted from each conv/dense bias before Quantize annotates it."""

from __future__ import annotations

import numpy as np

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.interpreter import eval_node, run
from tapeout.compiler.ir import Activation, Graph, Node
from tapeout.compiler.passes.bias_correction import CorrectBias
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize, SplitActivations, fake_quantize, per_channel_weights, simulate


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


def test_the_offset_is_the_mean_effect_of_the_rounded_weights_borders_included(builder):
    g = prepared(builder)
    res = CorrectBias(data(64, 0)).run(g)
    assert res.changed and "2 conv/dense bias(es) corrected" in res.details[0]
    conv = next(n for n in res.graph.nodes if n.name == "conv")
    assert len(conv.inputs) == 3  # a bias added where the layer had none
    w = g.constants["cw"]
    wq = fake_quantize(w, per_channel_weights(w, 3))
    linear = Node("conv", "c", ["x", "w"], ["y"], {"pads": ((1, 1), (1, 1))})
    x = data(64, 0)["x"]
    offset = (eval_node(linear, [x, wq])[0] - eval_node(linear, [x, w])[0]).astype(np.float64).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(res.graph.constants[conv.inputs[2]], -offset, rtol=1e-4, atol=1e-7)
    assert g.nodes[0].inputs == ["x", "cw"] and "cw" in g.constants  # the pass is pure


def test_corrected_int8_is_closer_to_float_on_other_data(builder):
    g = prepared(builder)
    test = data(32, 1)
    want = run(g, test)[g.outputs[0]].astype(np.float64)

    def error(graph: Graph) -> float:
        q = Pipeline([Quantize("int8")]).run(graph).graph
        got = simulate(q, test)[g.outputs[0]].astype(np.float64)
        return float(np.abs((got - want).mean(axis=0)).max())  # the steady per-output offset

    corrected = CorrectBias(data(64, 0)).run(g).graph
    assert error(corrected) < error(g) / 3, (error(corrected), error(g))


def test_kept_float_layers_are_left_alone(builder):
    g = prepared(builder)
    res = CorrectBias(data(64, 0), exclude=["conv"]).run(g)
    assert "1 conv/dense bias(es) corrected" in res.details[0]
    conv = next(n for n in res.graph.nodes if n.name == "conv")
    assert conv.inputs == ["x", "cw"]
    none = CorrectBias(data(64, 0), exclude=["conv", "fc"]).run(g)
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


def test_the_calibration_sweep_gives_the_same_means_and_ranges_as_two_passes(builder):
    """The build takes the mean layer inputs from the calibration's own sweep (one float pass, not
    two): the same means as the standalone pass, the same ranges as calibrate alone."""
    from tapeout.compiler.calibration import calibrate_with_means
    from tapeout.compiler.passes.bias_correction import correctable_inputs, layer_input_means

    split = Pipeline([SplitActivations()]).run(net(builder)).graph
    feeds = data(70, 3)  # not a multiple of the batch: the last batch is short
    wanted = correctable_inputs(split)
    assert len(wanted) == 2
    for method in ("minmax", "percentile"):
        calibrated, means = calibrate_with_means(split, feeds, wanted, method=method)
        assert calibrated.calibration == calibrate(split, feeds, method=method).calibration
        alone = layer_input_means(split, feeds)
        assert sorted(means) == sorted(alone) == sorted(wanted)
        for name in wanted:
            assert means[name].shape[0] == 1 and np.array_equal(means[name], alone[name])
