"""--strategy distributed_arithmetic (hls4ml 1.3 + da4ml): the jet MLP compiles, its C simulation
is bit-exact to the NumPy model, the estimate has no DSPs; reuse > 1 and non-AMD back ends are
refused in one line with exit 2 before the model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.errors import UsageError
from tests.cli_run import run_cli

pytest.importorskip("hls4ml")
pytest.importorskip("da4ml")

JET = Path(__file__).resolve().parents[3] / "samples" / "jet_mlp"
DA = "distributed_arithmetic"


@pytest.fixture(scope="module")
def jet_da(tmp_path_factory) -> tuple[int, str, dict, Path]:
    """A jet-tagger-shaped MLP, narrowed (16-6-5) so that its one C++ build takes seconds: the
    adder graphs' straight-line ap_fixed code is slow to compile, and the bundled 16-64-32-32-5
    jet MLP takes about 4 minutes on 2 cores (docs/hls4ml.md gives its figures)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    import keras

    tmp = tmp_path_factory.mktemp("da")
    keras.utils.set_random_seed(5)
    x = keras.Input((16,), name="x")
    h = keras.layers.Dense(6, activation="relu", name="fc1")(x)
    keras.Model(x, keras.layers.Dense(5, activation="softmax", name="out")(h)).save(tmp / "mlp.keras")
    jet = np.load(JET / "calibration.npz")["x"][:, :16].astype(np.float32)
    np.savez(tmp / "cal.npz", x=jet[:200])
    np.savez(tmp / "eval.npz", x=jet[200:600])
    out = tmp / "jet"
    code, _, err = run_cli("compile", tmp / "mlp.keras", "-t", "hls4ml", "--strategy", DA,
                           "--calibration", tmp / "cal.npz", "--eval", tmp / "eval.npz", "-o", out)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return code, err, report, out


def _hls(report: dict) -> dict:
    (t,) = report["targets"]
    return t["hls4ml"]


@pytest.mark.slow
def test_jet_mlp_compiles_and_verifies(jet_da):
    code, err, report, out = jet_da
    assert code == 0, err
    (t,) = report["targets"]
    assert t["verification"]["passed"] is True
    assert _hls(report)["strategy"] == DA
    # The adder graphs replaced the multiplications: one da4ml kernel per dense layer.
    code_gen = (out / "hls4ml-vitis" / "firmware" / "nnet_utils" / "nnet_code_gen.h").read_text()
    assert code_gen.count("void dense_da_") == 2


@pytest.mark.slow
def test_csim_is_bit_exact_to_the_numpy_model(jet_da):
    _, _, report, _ = jet_da
    csim = _hls(report)["csim"]
    assert csim["built"] is True and csim["samples"] >= 200
    assert csim["mismatched"] == []
    assert csim["bit_exact_layers"] == csim["checked_layers"] >= 3
    assert csim["csim_agreement"] == csim["numpy_agreement"] >= 0.995


@pytest.mark.slow
def test_estimate_has_no_dsps_and_counts_adder_luts(jet_da):
    _, _, report, _ = jet_da
    est = _hls(report)["estimates"]
    totals, base = est["totals"], est["latency_strategy"]
    assert totals["dsp"] == 0 and totals["multipliers"] == 0
    assert totals["da_luts"] > 0
    dense = [r for r in _hls(report)["layers"] if r["kind"] == "dense"]
    assert len(dense) == 2 and all(r["estimate"]["da_luts"] > 0 and r["estimate"]["dsp"] == 0 for r in dense)
    assert totals["da_luts"] == sum(r["estimate"]["da_luts"] for r in dense)
    # The DSP-based design of the same types, beside it: every product there is a multiplier.
    assert base["dsp"] > 0 and 0 < base["multipliers"] <= 16 * 6 + 6 * 5


@pytest.mark.parametrize("flags, reason", [
    (("-t", "hls4ml", "--reuse-factor", "2"), "needs reuse factor 1"),
    (("-t", "hls4ml", "--reuse-factor", "fc1=4"), "not --reuse-factor fc1=4"),
    (("-t", "hls4ml:quartus"), "needs the vitis or vivado back end"),
])
def test_bad_input_is_one_line_exit_2_before_loading(tmp_path, flags, reason):
    # The model path does not exist: the refusal comes before it is read.
    code, out, err = run_cli("compile", tmp_path / "absent.keras", *flags, "--strategy", DA, "-o", tmp_path / "o")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and reason in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_options_refuse_reuse_from_config_file(tmp_path):
    from tapeout.targets.hls4ml.target import parse_settings

    cfg = tmp_path / "hls.toml"
    cfg.write_text('strategy = "distributed_arithmetic"\n[layers.fc2]\nreuse_factor = 2\n')
    with pytest.raises(UsageError, match="fc2=2"):
        parse_settings({"config": str(cfg)})
    assert parse_settings({"strategy": DA}).strategy == DA


def _graph(model, path):
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.registry import default_pipeline

    model.save(path)
    return default_pipeline().run(load_model(path)[0]).graph


def test_da_plan_sums_exactly_and_weights_are_the_plan_values(tmp_path):
    """Fast (no C++): hls4ml's DA gets the NumPy model's weight values, and the NumPy model's
    accumulator for a DA layer never rounds or wraps."""
    import keras

    from tapeout.compiler.fixedpoint import fixed, hls_layers
    from tapeout.compiler.fixedpoint.model import written_weights
    from tapeout.compiler.fixedpoint.search import uniform_plan
    from tapeout.targets.hls4ml.da import da_graph, da_plan

    keras.utils.set_random_seed(1)
    x = keras.Input((6,), name="x")
    model = keras.Model(x, keras.layers.Dense(3, name="fc")(x))
    model.layers[-1].set_weights([np.full((6, 3), 0.7, np.float32), np.array([0.3, -0.2, 0.1], np.float32)])
    graph = _graph(model, tmp_path / "m.keras")
    t = fixed(8, 3, "AP_RND")
    plan = uniform_plan(graph, t)
    (layer,) = [layer for layer in hls_layers(graph) if layer.kind == "dense"]
    w_name, b_name = layer.node.inputs[1], layer.node.inputs[2]
    g = da_graph(graph, plan)
    assert g.constants[w_name].dtype == np.float32
    np.testing.assert_array_equal(g.constants[w_name], written_weights(graph.constants[w_name], t).to_float())
    assert graph.constants[w_name][0, 0] == np.float32(0.7)  # the source graph is untouched
    acc = da_plan(graph, plan).of(layer.name).accum
    x_t = plan.inputs[graph.inputs[0]]
    w = g.constants[w_name].astype(np.float64)  # 0.6875 each
    worst = 6 * w.max() * max(abs(x_t.min), x_t.max) + np.abs(g.constants[b_name]).max()  # every |x| at its maximum
    assert acc.frac == x_t.frac + t.frac and acc.min <= -worst and acc.max >= worst


def test_depthwise_conv_is_refused(tmp_path):
    import keras

    from tapeout.compiler.fixedpoint import fixed
    from tapeout.compiler.fixedpoint.search import uniform_plan
    from tapeout.targets.hls4ml.da import da_graph

    x = keras.Input((6, 6, 2), name="x")
    graph = _graph(keras.Model(x, keras.layers.DepthwiseConv2D(3, name="dw")(x)), tmp_path / "dw.keras")
    with pytest.raises(UsageError, match="depthwise"):
        da_graph(graph, uniform_plan(graph, fixed(8, 3)))


def test_estimate_with_da_costs(tmp_path):
    """estimates.py with da4ml's costs: no multipliers, LUTs = cost x parallel kernels."""
    import keras

    from tapeout.compiler.fixedpoint import fixed
    from tapeout.compiler.fixedpoint.search import uniform_plan
    from tapeout.targets.hls4ml.estimates import estimate

    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(2, name="fc")(x))
    graph = _graph(model, tmp_path / "m.keras")
    plan = uniform_plan(graph, fixed(16, 6))
    (name,) = [n for n in plan.layers]
    rows, totals = estimate(graph, plan, {name: 1}, variant="vitis", io_type="parallel", strategy=DA,
                            clock_period=5.0, da_costs={name: (41.5, 3)})
    assert totals["dsp"] == 0 and totals["multipliers"] == 0 and totals["da_luts"] == 42 * 3
    assert rows[0].to_json()["da_luts"] == 42 * 3 and rows[0].storage == "none"
    rows, totals = estimate(graph, plan, {name: 1}, variant="vitis", io_type="parallel", strategy="latency",
                            clock_period=5.0)
    assert "da_luts" not in totals and "da_luts" not in rows[0].to_json() and totals["dsp"] == 8


@pytest.mark.slow
def test_conv2d_compiles_bit_exact_without_dsps(tmp_path):
    """Conv layers go through hls4ml's DA im2col kernel: bit-exact C simulation, no DSPs."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    import keras

    from tapeout.compiler.api import compile_model

    keras.utils.set_random_seed(3)
    x = keras.Input((6, 6, 1), name="x")
    h = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="c1")(x)
    h = keras.layers.Flatten(name="fl")(keras.layers.MaxPooling2D(2, name="p1")(h))
    path = tmp_path / "conv2d.keras"
    keras.Model(x, keras.layers.Dense(3, name="fc")(h)).save(path)
    report = compile_model(path, ["hls4ml"], tmp_path / "o", target_options={"hls4ml": {"strategy": DA}})
    (t,) = report.to_json()["targets"]
    h = t["hls4ml"]
    assert t["verification"]["passed"] is True
    assert h["csim"]["mismatched"] == [] and h["csim"]["bit_exact_layers"] == h["csim"]["checked_layers"] > 0
    conv = next(r for r in h["layers"] if r["kind"] == "conv")
    assert conv["estimate"]["dsp"] == 0 and conv["estimate"]["da_luts"] > 0
    assert h["estimates"]["totals"]["dsp"] == 0 and h["estimates"]["latency_strategy"]["multipliers"] > 0
