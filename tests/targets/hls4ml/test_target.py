"""The hls4ml target end to end on the bundled samples (acceptance 1, 2, 4), its report, options and errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.errors import MissingToolError, UsageError
from tests.targets.hls4ml.conftest import SAMPLE_NAMES, SAMPLES

DATA = Path(__file__).parent / "data"


def _hls(report) -> dict:
    return report.targets[0].extra["hls4ml"]


def test_jet_mlp_acceptance_1(compiled_samples):
    """Auto precision: >= 0.995 top-1 agreement on held-out data in C simulation, >= 25% fewer weight
    bits than uniform ap_fixed<16,6>, and at least <16,6>'s agreement on the same data."""
    from tapeout.compiler import interpreter
    from tapeout.compiler.fixedpoint import fixed, predict_fixed
    from tapeout.compiler.fixedpoint.search import uniform_plan
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.registry import default_pipeline

    report, _ = compiled_samples["jet_mlp"]
    t = report.targets[0]
    v = t.verification
    assert v is not None and v.passed and v.data == "eval" and v.samples == 2000
    assert v.runner.startswith("hls4ml-csim")
    assert v.top1_agreement >= 0.995
    h = _hls(report)
    assert h["precision"]["mode"] == "auto" and h["precision"]["met"]
    assert h["totals"]["weight_memory_bits"] <= 0.75 * h["totals"]["uniform_16_6_weight_memory_bits"]
    # <16,6> on the same held-out data (the NumPy model is bit-exact with its C simulation).
    graph = default_pipeline().run(load_model(SAMPLES / "jet_mlp/model.keras")[0]).graph
    x = np.load(SAMPLES / "jet_mlp/eval.npz")["x"]
    ref = np.argmax(interpreter.run(graph, {graph.inputs[0]: x})[graph.outputs[0]], -1)
    base = predict_fixed(graph, uniform_plan(graph, fixed(16, 6)), {graph.inputs[0]: x})[graph.outputs[0]]
    assert v.top1_agreement >= float(np.mean(np.argmax(base, -1) == ref))


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_samples_numpy_model_is_bit_exact_with_csim(compiled_samples, name):
    """Acceptance 2: every dense, conv and relu layer of the sample's chosen plan, NumPy vs C simulation."""
    from tapeout.compiler.fixedpoint import hls_layers, run_fixed
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.registry import default_pipeline
    from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

    report, outdir = compiled_samples[name]
    h = _hls(report)
    assert h["csim"]["built"] and h["csim"]["mismatched"] == []
    graph = default_pipeline().run(load_model(SAMPLES / name / "model.keras")[0]).graph
    # The same plan the target chose (the search is deterministic).
    from tapeout.compiler.fixedpoint.precision import PrecisionSearch
    from tapeout.compiler.stages.data import BuildData
    from tapeout.targets.hls4ml.target import Hls4mlTarget

    data = BuildData(SAMPLES / name / "calibration.npz", SAMPLES / name / "eval.npz")
    plan = PrecisionSearch(Hls4mlTarget("vitis").precision_request(), data).run(graph).graph.fixed.plan
    for row in h["layers"]:
        assert row["types"] == {k: str(t) for k, t in plan.of(row["layer"]).types().items()}
    x = {graph.inputs[0]: np.load(SAMPLES / name / "eval.npz")["x"][:200]}
    with Hls4mlCsimRunner(outdir / "hls4ml-vitis") as r:
        _, traces = r.run(x, trace=True)
    model = run_fixed(graph, plan, x, keep_intermediates=True)
    kinds = set()
    for layer in hls_layers(graph):
        if layer.kind in ("dense", "conv", "relu", "max_pool"):
            want = model[layer.name].to_float().reshape(200, -1)
            np.testing.assert_array_equal(traces[layer.name], want, err_msg=f"{name}: {layer.name}")
            kinds.add(layer.kind)
    assert {"dense", "relu"} <= kinds and (name == "jet_mlp" or "conv" in kinds)


def test_the_project_holds_no_build_path_and_verifies_after_a_move(compiled_samples, tmp_path):
    """Projects are built in a temporary folder and moved into place: the C-simulation library
    must not bake that folder in (hls4ml's WEIGHTS_DIR), or a fresh process loading the moved
    library exits on missing weights. The Keras copy holds no per-process object ids."""
    import subprocess
    import sys
    import zipfile

    _, outdir = compiled_samples["jet_mlp"]
    project = outdir / "hls4ml-vitis"
    lib = (project / "firmware/myproject-tapeout.so").read_bytes()
    assert str(outdir.parent).encode() not in lib and b"/firmware/weights" not in lib
    config = zipfile.ZipFile(project / "keras_model.keras").read("config.json").decode()
    ids = {int(i) for i in re.findall(r'"shared_object_id":\s*(\d+)', config)}
    assert ids and ids == set(range(len(ids)))
    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(project, moved)
    # A fresh process, as a user's would be (one that loaded the library before shares it).
    code = ("import sys; from tapeout.compiler.cli import main; "
            "sys.exit(main(['verify', sys.argv[1], sys.argv[2], '--data', sys.argv[3], '--json']))")
    proc = subprocess.run([sys.executable, "-c", code, str(SAMPLES / "jet_mlp/model.keras"), str(moved),
                           str(SAMPLES / "jet_mlp/eval.npz")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["passed"] and result["samples"] == 2000
    assert any("fixed-point hls4ml project" in n for n in result["notes"])
    # A missing weight file is refused before the library is loaded (it would exit the process).
    from tapeout.runtime.errors import RuntimeInputError
    from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

    (moved / "firmware/weights/w4.txt").unlink()
    with pytest.raises(RuntimeInputError, match="w4.txt is missing"):
        Hls4mlCsimRunner(moved).open()
    for bad in ("{not json", "[]"):
        (moved / "tapeout_csim.json").write_text(bad)
        with pytest.raises(RuntimeInputError, match="C-simulation manifest"):
            Hls4mlCsimRunner(moved).open()


def test_report_lists_types_ranges_errors_totals_and_estimates(compiled_samples):
    report, outdir = compiled_samples["conv1d_signals"]
    data = json.loads((outdir / "report.json").read_text())
    h = data["targets"][0]["hls4ml"]
    conv = next(r for r in h["layers"] if r["kind"] == "conv")
    assert conv["types"]["weight"].startswith("ap_fixed<") and conv["range"] > 0
    assert conv["rel_rms_error"] >= 0 and conv["max_abs_error"] >= 0
    est = conv["estimate"]
    assert est["multipliers"] > 0 and est["dsp_multipliers"] + est["lut_multipliers"] == est["multipliers"]
    assert est["latency_cycles"] >= est["interval_cycles"] >= 1
    tot = h["estimates"]["totals"]
    assert tot["multipliers"] == sum(r["estimate"]["multipliers"] for r in h["layers"])
    assert tot["latency_cycles"] == sum(r["estimate"]["latency_cycles"] for r in h["layers"])
    assert h["totals"]["mean_weight_bits"] > 1 and h["totals"]["weight_memory_bits"] > 0
    assert h["precision"]["data"] == {"kind": "calibration", "samples": 500}
    assert (outdir / "hls4ml-vitis/build_prj.tcl").is_file()
    # The project's C++ holds the chosen weight type of that layer.
    defines = (outdir / "hls4ml-vitis/firmware/defines.h").read_text()
    w = conv["types"]["weight"]  # hls4ml spells the modes out: ap_fixed<9,2,AP_RND> -> ap_fixed<9,2,AP_RND,AP_WRAP,0>
    full = w[:-1] + ",AP_WRAP,0>" if "AP_RND>" in w else w
    assert f"typedef {full} {conv['layer']}_weight_t;" in defines


def _dense128(tmp_path: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((128,), name="x")
    h = keras.layers.Dense(128, activation="relu", name="big")(x)
    model = keras.Model(x, keras.layers.Dense(4, name="out")(h))
    path = tmp_path / "dense128.keras"
    model.save(path)
    return path


def test_reuse_factor_raised_for_128x128_dense(tmp_path):
    """Acceptance 4: 16,384 multiplications in io_parallel -> reuse factor raised, said in the report,
    and passed into the hls4ml project."""
    from tapeout.compiler.api import compile_model

    rep = compile_model(_dense128(tmp_path), ["hls4ml"], tmp_path / "out", verify_artifacts=False,
                        target_options={"hls4ml": {"build_csim": False}})
    h = _hls(rep)
    raised = h["reuse"]["raised"]
    assert [r["layer"] for r in raised] == ["big"]
    rf = raised[0]["chosen"]
    assert rf > 1 and 128 * 128 / rf <= 4096 and raised[0]["valid"]
    assert any("reuse factor of big raised from 1" in n for n in rep.targets[0].notes)
    assert h["reuse"]["layers"]["out"] == 1
    params = (tmp_path / "out/hls4ml-vitis/firmware/parameters.h").read_text()
    assert f"reuse_factor = {rf};" in params
    big = next(r for r in h["layers"] if r["layer"] == "big")
    assert big["estimate"]["reuse_factor"] == rf and big["estimate"]["multipliers"] <= 4096
    # The resource strategy keeps the user's factor (no unroll limit) and puts weights in BRAM.
    rep2 = compile_model(_dense128(tmp_path), ["hls4ml"], tmp_path / "out2", verify_artifacts=False,
                         target_options={"hls4ml": {"build_csim": False, "strategy": "resource"}})
    assert _hls(rep2)["reuse"]["raised"] == []
    assert next(r for r in _hls(rep2)["layers"] if r["layer"] == "big")["estimate"]["storage"] == "BRAM"


def test_explicit_and_per_layer_precision_through_the_cli(tmp_path):
    from tapeout.compiler.cli import main

    out = tmp_path / "o"
    args = ["compile", str(SAMPLES / "jet_mlp/model.keras"), "-t", "hls4ml", "-o", str(out), "--no-verify",
            "--precision", "ap_fixed<14,5>", "--precision", "fc2=ap_fixed<10,3>", "--reuse-factor", "fc1=2",
            "--clock-period", "4", "--target-option", "hls4ml.build_csim=false"]
    assert main(args) == 0
    h = json.loads((out / "report.json").read_text())["targets"][0]["hls4ml"]
    rows = {r["layer"]: r for r in h["layers"]}
    assert h["precision"]["mode"] == "explicit" and h["clock_period_ns"] == 4.0
    assert rows["fc1"]["types"]["weight"] == "ap_fixed<14,5>" and rows["fc2"]["types"]["weight"] == "ap_fixed<10,3>"
    assert h["reuse"]["layers"]["fc1"] == 2 and h["reuse"]["layers"]["fc2"] == 1
    assert "typedef ap_fixed<10,3> fc2_weight_t;" in (out / "hls4ml-vitis/firmware/defines.h").read_text()


def test_an_explicit_precision_too_coarse_names_the_first_layer_whose_error_jumps(tmp_path):
    from tapeout.compiler.api import compile_model

    # The per-layer errors are the verify stage's (Target.confirm): this build verifies.
    rep = compile_model(SAMPLES / "jet_mlp/model.keras", ["hls4ml"], tmp_path / "o",
                        calibration=SAMPLES / "jet_mlp/calibration.npz",
                        target_options={"hls4ml": {"build_csim": False, "precision": ["auto", "fc2=ap_fixed<6,1>"]}})
    h = _hls(rep)
    assert h["csim"]["first_error_jump"] == "fc2"
    assert any("first layer whose error jumps: fc2" in n for n in rep.targets[0].notes)


def test_settings_parsing(tmp_path):
    from tapeout.targets.hls4ml.target import Hls4mlTarget, parse_settings

    cfg = tmp_path / "hls.toml"
    cfg.write_text('reuse_factor = 2\nstrategy = "resource"\n[layers.fc1]\nprecision = "ap_fixed<8,3>"\n'
                   'reuse_factor = 4\n')
    s = parse_settings({"config": str(cfg), "io_type": "io_stream", "min_agreement": 0.99})
    assert (s.reuse_factor, s.strategy, s.io_type, s.min_agreement) == (2, "resource", "stream", 0.99)
    assert str(s.layer_precision["fc1"]) == "ap_fixed<8,3>" and s.layer_reuse == {"fc1": 4}
    assert parse_settings({"max_abs_error": 0.1}).min_agreement is None
    for bad in ({"strategy": "fast"}, {"reuse_factor": 0}, {"precision": "ap_fixed<8"}, {"min_agreement": 2},
                {"clock_period": -1}):
        with pytest.raises(UsageError):
            parse_settings(bad)
    with pytest.raises(UsageError, match="hls4ml: unknown option 'colour'"):
        Hls4mlTarget("vitis", colour="red")
    t = Hls4mlTarget("vitis", min_agreement=0.98)
    # The user's agreement judges the C simulation through EmitResult.tolerance; the class default stays.
    assert t.settings.min_agreement == 0.98
    assert Hls4mlTarget.default_tolerance("vitis").min_top1_agreement != 0.98


@pytest.mark.skipif(shutil.which("vitis_hls") is not None, reason="vitis_hls is installed: --synth would run")
def test_synth_without_the_tool_exits_3(tmp_path, capsys):
    from tapeout.compiler.cli import main

    with pytest.raises(MissingToolError):
        from tapeout.targets.hls4ml.target import Hls4mlTarget

        Hls4mlTarget("vitis", synth=True)
    code = main(["compile", str(SAMPLES / "jet_mlp/model.keras"), "-t", "hls4ml", "-o", str(tmp_path / "o"),
                 "--synth"])
    err = capsys.readouterr().err
    assert code == 3 and "vitis_hls" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_parse_stored_vitis_synthesis_report():
    from tapeout.targets.hls4ml.synth import parse_csynth_xml

    r = parse_csynth_xml(DATA / "myproject_csynth.xml")
    assert r["part"] == "xcvu13p-flga2577-2-e" and r["top"] == "myproject"
    assert r["latency_cycles"] == {"best": 12, "worst": 14} and r["interval_cycles"] == {"min": 1, "max": 1}
    assert r["resources"] == {"BRAM_18K": 4, "DSP": 1183, "FF": 24617, "LUT": 61872, "URAM": 0}
    assert r["available"]["DSP"] == 12288 and r["estimated_clock_ns"] == pytest.approx(3.712)


@pytest.mark.skipif(shutil.which("vitis_hls") is None,
                    reason="real synthesis needs AMD vitis_hls on PATH (not installed here); the parser is tested "
                           "on a stored report")
def test_real_synthesis(tmp_path):  # pragma: no cover - needs the vendor tool
    from tapeout.compiler.api import compile_model

    rep = compile_model(SAMPLES / "jet_mlp/model.keras", ["hls4ml"], tmp_path / "o", verify_artifacts=False,
                        target_options={"hls4ml": {"synth": True}})
    assert _hls(rep)["synthesis"]["latency_cycles"]["worst"] is not None
