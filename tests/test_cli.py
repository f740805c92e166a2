"""The `tapeout` CLI contract: commands, report.json, exit codes, errors, atomic output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.cli import main
from tapeout.compiler.version import __version__
from tests.cli_run import run_cli


def assert_one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tapeout: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, err)


# ------------------------------------------------------------------ basics
def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_targets_lists_onnx():
    code, out, _ = run_cli("targets", "--json")
    assert code == 0
    rows = {r["target"]: r for r in json.loads(out)}
    assert rows["onnx"]["default"] == "fp32" and "fp32" in rows["onnx"]["variants"]
    assert rows["onnx"]["missing"] == []


def test_bad_flag_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compile", "m.keras", "-t", "onnx", "-o", "out", "--no-such-flag"])
    assert e.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "--no-such-flag")


def test_unknown_target_and_variant(tiny_cnn_path, tmp_path):
    code, _, err = run_cli("compile", tiny_cnn_path, "-t", "nosuch", "-o", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "nosuch", "onnx")
    code, _, err = run_cli("compile", tiny_cnn_path, "-t", "onnx:int3", "-o", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "int3", "fp32")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- compile
@pytest.fixture(scope="module")
def compiled(tiny_cnn_path, tiny_eval_path, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("compiled") / "out"
    code, out, err = run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", outdir, "--eval", tiny_eval_path,
                             "--json")
    return code, out, err, outdir


def test_compile_writes_report_contract(compiled, tiny_cnn_path):
    code, out, err, outdir = compiled
    assert code == 0, err
    report = json.loads((outdir / "report.json").read_text())
    assert json.loads(out) == report
    assert report["tapeout_version"] == __version__
    assert report["source"]["format"] == "keras"
    assert len(report["source"]["sha256"]) == 64
    assert report["graph"]["params"] > 0 and report["graph"]["macs"] > 0
    assert report["graph"]["nodes"] < report["graph"]["source_nodes"]  # dropout removed, bn/activation fused
    assert any(p["changed"] for p in report["passes"])
    (t,) = report["targets"]
    assert (t["target"], t["variant"]) == ("onnx", "fp32")
    assert t["artifacts"] == ["onnx-fp32/model.onnx"]
    assert t["size_bytes"] == (outdir / "onnx-fp32" / "model.onnx").stat().st_size
    assert isinstance(t["seconds"], float)
    v = t["verification"]
    assert v["passed"] is True and v["data"] == "eval" and v["samples"] == 20
    assert v["max_abs_err"] <= 1e-4 and v["cosine"] > 0.9999 and v["top1_agreement"] == 1.0
    assert set(v["accuracy"]) == {"source", "artifact"}
    assert v["accuracy"]["source"] == v["accuracy"]["artifact"]
    assert report["passed"] is True


def test_compile_table_output(tiny_cnn_path, tmp_path):
    code, out, err = run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", tmp_path / "o")
    assert code == 0, err
    assert "onnx:fp32" in out and "pass" in out
    assert "synthetic" in out  # no data given: the summary says so
    assert err == ""


def test_compile_is_deterministic(tiny_cnn_path, tmp_path):
    for name in ("a", "b"):
        code, _, err = run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", tmp_path / name, "--no-timings")
        assert code == 0, err
    for rel in ("report.json", "onnx-fp32/model.onnx"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert str(tmp_path) not in (tmp_path / "a" / "report.json").read_text()


def _perturbing_emit(monkeypatch):
    """Make the ONNX target emit a model whose first weight is off, as a broken back end would."""
    from tapeout.targets.onnx.target import OnnxTarget

    original = OnnxTarget.emit

    def emit(self, graph, ctx):
        g = graph.copy()
        name = next(n for n in sorted(g.constants) if g.constants[n].size > 1)
        g.constants[name] = g.constants[name] + np.float32(0.5)
        return original(self, g, ctx)

    monkeypatch.setattr(OnnxTarget, "emit", emit)


def test_failed_verification_exits_1_and_still_writes_report(tiny_cnn_path, tmp_path, monkeypatch):
    _perturbing_emit(monkeypatch)
    code, out, err = run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", tmp_path / "o")
    assert code == 1, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["passed"] is False
    assert report["targets"][0]["verification"]["passed"] is False
    assert report["targets"][0]["verification"]["max_abs_err"] > 1e-4
    assert "FAIL" in out


def test_interrupted_build_leaves_nothing_half_written(tiny_cnn_path, tmp_path, monkeypatch):
    from tapeout.targets.onnx.target import OnnxTarget

    def emit(self, graph, ctx):
        (ctx.outdir / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxTarget, "emit", emit)
    code, _, err = run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", tmp_path / "o")
    assert code == 130
    assert "interrupted" in err
    assert not (tmp_path / "o" / "onnx-fp32").exists()
    assert not (tmp_path / "o" / "report.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "o"] == []  # no staging folder left


def test_rebuild_replaces_previous_artifacts(tiny_cnn_path, tmp_path):
    out = tmp_path / "o"
    (out / "onnx-fp32").mkdir(parents=True)
    (out / "onnx-fp32" / "stale.txt").write_text("old")
    (out / "keep.txt").write_text("user file")
    code, _, err = run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", out)
    assert code == 0, err
    assert not (out / "onnx-fp32" / "stale.txt").exists()
    assert (out / "onnx-fp32" / "model.onnx").is_file()
    assert (out / "keep.txt").read_text() == "user file"


# ---------------------------------------------------------- inspect/verify
def test_inspect_table_and_json(tiny_cnn_path):
    code, out, _ = run_cli("inspect", tiny_cnn_path)
    assert code == 0
    assert "conv1" in out and "total" in out
    code, out, _ = run_cli("inspect", tiny_cnn_path, "--json")
    data = json.loads(out)
    assert data["graph"]["nodes"] == len(data["nodes"])
    assert data["graph"]["params"] == sum(n["params"] for n in data["nodes"])
    assert data["graph"]["macs"] == sum(n["macs"] for n in data["nodes"])
    conv = next(n for n in data["nodes"] if n["name"] == "conv1")
    assert conv["macs"] == 8 * 8 * 4 * 3 * 3 * 1
    code, out, _ = run_cli("inspect", tiny_cnn_path, "--dump")
    assert code == 0 and out.startswith("graph ")


def test_verify_command(compiled, tiny_cnn_path, tiny_eval_path):
    *_, outdir = compiled
    artifact = outdir / "onnx-fp32" / "model.onnx"
    code, out, err = run_cli("verify", tiny_cnn_path, artifact, "--data", tiny_eval_path, "--json")
    assert code == 0, err
    assert json.loads(out)["passed"] is True


def test_verify_fails_on_a_wrong_artifact(tiny_cnn_path, tmp_path, monkeypatch):
    _perturbing_emit(monkeypatch)
    run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", tmp_path / "o", "--no-verify")
    code, out, _ = run_cli("verify", tiny_cnn_path, tmp_path / "o" / "onnx-fp32" / "model.onnx")
    assert code == 1
    assert "FAILED" in out


def test_verify_a_folder_that_is_not_an_hls4ml_project(compiled, tiny_cnn_path):
    *_, outdir = compiled
    code, out, err = run_cli("verify", tiny_cnn_path, outdir / "onnx-fp32")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not an hls4ml project" in err, err


# ------------------------------------------------------------ legacy Keras 2 files
@pytest.fixture(scope="module")
def legacy_files(tmp_path_factory):
    """A Keras 2 model saved by tf-keras as a full .h5 and as architecture JSON + weights .h5."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    L = tf_keras.layers
    inp = tf_keras.Input((8, 8, 2), name="pixels")
    x = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="act")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(3, activation="softmax", name="scores")(x)
    model = tf_keras.Model(inp, out, name="legacy")
    rng = np.random.default_rng(2)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 1.5, 4) for _ in range(4)])
    d = tmp_path_factory.mktemp("legacy")
    model.save(d / "full.h5", save_format="h5")
    (d / "arch.json").write_text(model.to_json())
    model.save_weights(d / "weights.h5")
    np.savez(d / "eval.npz", x=rng.normal(size=(6, 8, 8, 2)).astype(np.float32), y=rng.integers(0, 3, 6))
    return d


@pytest.mark.parametrize("form", ["full-h5", "json+weights"])
def test_legacy_keras2_files_compile_and_verify(legacy_files, tmp_path, form):
    d = legacy_files
    model = ["full.h5"] if form == "full-h5" else ["arch.json", "--weights", str(d / "weights.h5")]
    code, out, err = run_cli("compile", d / model[0], *model[1:], "-t", "onnx", "-o", tmp_path / "o",
                             "--eval", d / "eval.npz", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["source"]["format"] == ("keras2-h5" if form == "full-h5" else "keras2-json")
    v = report["targets"][0]["verification"]
    assert v["passed"] and v["data"] == "eval" and v["samples"] == 6 and v["max_abs_err"] < 1e-4
    assert v["accuracy"]["source"] == v["accuracy"]["artifact"]
    artifact = tmp_path / "o" / "onnx-fp32" / "model.onnx"
    code, out, err = run_cli("verify", d / model[0], *model[1:], artifact, "--data", d / "eval.npz")
    assert code == 0 and "PASSED on 6 samples" in out, err


# ------------------------------------------------------------ bad inputs
def test_truncated_h5(tmp_path, tiny_cnn_path):
    import tf_keras

    m = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    full = tmp_path / "full.h5"
    m.save(full)
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    code, _, err = run_cli("compile", bad, "-t", "onnx", "-o", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "truncated.h5")
    assert not (tmp_path / "o").exists()


def test_text_file_renamed_keras(tmp_path):
    bad = tmp_path / "notes.keras"
    bad.write_text("this is not a model\n")
    code, _, err = run_cli("compile", bad, "-t", "onnx", "-o", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "notes.keras")


def test_unsupported_layer_names_node_op_and_supported_list(tmp_path):
    import keras

    inp = keras.Input((5, 3), name="seq")
    out = keras.layers.LSTM(4, name="my_lstm")(inp)
    path = tmp_path / "lstm.keras"
    keras.Model(inp, out).save(path)
    code, _, err = run_cli("compile", path, "-t", "onnx", "-o", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "my_lstm", "LSTM", "Conv2D", "Dense")


def test_lambda_layer_is_refused_without_running_it(tmp_path):
    import keras

    inp = keras.Input((4,), name="x")
    out = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inp)
    path = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(path)
    code, _, err = run_cli("compile", path, "-t", "onnx", "-o", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "doubler", "Lambda")


def test_missing_model_and_unknown_suffix(tmp_path):
    code, _, err = run_cli("compile", tmp_path / "nope.keras", "-t", "onnx", "-o", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "nope.keras")
    odd = tmp_path / "model.pt"
    odd.write_bytes(b"\0")
    code, _, err = run_cli("compile", odd, "-t", "onnx", "-o", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, ".pt")


def test_json_without_weights(tmp_path):
    arch = tmp_path / "arch.json"
    arch.write_text("{}")
    code, _, err = run_cli("compile", arch, "-t", "onnx", "-o", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "--weights")


def test_bad_data_file(tiny_cnn_path, tmp_path):
    bad = tmp_path / "wrong.npz"
    np.savez(bad, x=np.zeros((3, 7, 7, 1), np.float32))
    code, _, err = run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", tmp_path / "o", "--eval", bad)
    assert code == 2
    assert_one_line_error(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["missing/x.json", "."])
def test_model_explorer_file_that_cannot_be_written_is_refused_first(tiny_cnn_path, tmp_path, where):
    """It was exit 4 after the whole compile (FileNotFoundError writing the file)."""
    code, _, err = run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", tmp_path / "o",
                           "--model-explorer", tmp_path / where)
    assert code == 2 and "--model-explorer" in err
    assert_one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_real_process_error_has_no_traceback(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04garbage")
    r = subprocess.run([sys.executable, "-m", "tapeout.compiler", "compile", str(bad), "-t", "onnx",
                        "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stdout == ""
    assert_one_line_error(r.stderr, "broken.keras")


@pytest.mark.parametrize("flags", [
    ["{missing}", "-t", "onnx"],
    ["{jet}", "-t", "onnx", "--eval", "{missing}"],
    ["{jet}", "-t", "tflite:int8", "--calibration", "{missing}"],
    ["{jet}", "-t", "onnx", "--prune", "channels:0.5", "--train", "{missing}"],
])
def test_a_missing_input_file_is_exit_2_with_the_build_cache_on(flags, tmp_path, monkeypatch):
    """The build cache hashes the model and data files for its key: a missing one was an internal
    error (exit 4) before check() refused it."""
    monkeypatch.setenv("TAPEOUT_CACHE_DIR", str(tmp_path / "cache"))
    jet = Path(__file__).resolve().parents[1] / "samples" / "jet_mlp" / "model.keras"
    args = [f.format(missing=tmp_path / "nope.npz", jet=jet) for f in flags]
    code, _, err = run_cli("compile", *args, "-o", tmp_path / "out")
    # --train is refused by the prune flags' own check ("--train X: no such file"), also before the cache.
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'nope.npz'}: no such" in err and "internal error" not in err
