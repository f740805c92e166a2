"""runtime.model_files, the one gate for Keras files, and runtime.budgets, without running a framework.

The CLI-level cases (compile, inspect, verify) are in tests/test_security.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from tapeout.runtime import budgets
from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.model_files import (KERAS_LAYERS, KERAS_OPERATIONS, ModelFileError, check_graph, check_hdf5,
                                         check_safe, check_shape, parse_config)

h5py = pytest.importorskip("h5py")


def _model(*layers: dict) -> dict:
    return {"class_name": "Functional", "config": {"name": "m", "layers": list(layers)}}


def _layer(cls: str = "Dense", **extra) -> dict:
    return {"class_name": cls, "config": {"name": cls.lower(), **extra}, "name": cls.lower(), "inbound_nodes": []}


def test_allow_list_matches_the_compiler_front_end() -> None:
    from tapeout.compiler.frontends.keras_layers import OPERATIONS, SUPPORTED_CLASSES

    assert sorted(KERAS_LAYERS) == sorted(SUPPORTED_CLASSES)
    assert sorted(KERAS_OPERATIONS) == sorted(OPERATIONS)


def test_module_imports_no_compiler_or_framework() -> None:
    code = ("import tapeout.runtime.model_files, tapeout.runtime.budgets, sys; "
            "bad = [m for m in sys.modules if m.startswith(('tapeout.compiler', 'tapeout.targets', "
            "'tensorflow', 'keras', 'tf_keras', 'h5py'))]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------- parse / shape
def test_parse_refuses_recursion_depth_and_size(monkeypatch) -> None:
    with pytest.raises(ModelFileError, match="nests"):
        parse_config("m.json", "[" * 100_000 + "]" * 100_000)  # json's own RecursionError
    with pytest.raises(ModelFileError, match="deeper than 100 levels.*TAPEOUT_MAX_CONFIG_DEPTH"):
        parse_config("m.json", "[" * 150 + "]" * 150)  # parses, then the budget refuses it
    monkeypatch.setenv("TAPEOUT_MAX_CONFIG_DEPTH", "200")
    assert isinstance(parse_config("m.json", "[" * 150 + "]" * 150), list)  # raised: now allowed
    monkeypatch.setenv("TAPEOUT_MAX_CONFIG_BYTES", "10")
    with pytest.raises(RuntimeInputError, match="TAPEOUT_MAX_CONFIG_BYTES"):
        parse_config("m.json", json.dumps(_model()))
    with pytest.raises(ModelFileError, match="not valid JSON"):
        parse_config("m.json", b"{")


@pytest.mark.parametrize("cfg, where", [
    ([1, 2], "the config"),
    ({"class_name": "Functional", "config": "x"}, "config is a string"),
    ({"class_name": "Functional", "config": {"layers": {"a": 1}}}, "config.layers is an object"),
    (_model(_layer(), 3), r"config.layers\[1\] is a number"),
    (_model({"class_name": "Dense", "config": [1]}), r"config.layers\[0\].config is a list"),
    (_model({"class_name": "Dense"}), r"config.layers\[0\].config is null"),
    (_model({**_layer(), "name": 5}), r"config.layers\[0\].name is a number"),
    (_model({"class_name": "Functional", "config": {"layers": [{"class_name": "Dense", "config": "s"}]}}),
     r"config.layers\[0\].config.layers\[0\].config is a string"),
    (_model({"class_name": "Functional", "config": {"layers": []}, "inbound_nodes": 7}),
     r"config.layers\[0\].inbound_nodes is a number"),
])
def test_shape_errors_name_the_path(cfg, where) -> None:
    with pytest.raises(ModelFileError, match=where) as info:
        check_shape("m.keras", cfg)
    assert "\n" not in str(info.value)


def test_keras1_sequential_layer_list_is_a_valid_shape() -> None:
    check_shape("m.h5", {"class_name": "Sequential", "config": [_layer()]})
    with pytest.raises(ModelFileError, match=r"config\[0\] is a string"):
        check_shape("m.h5", {"class_name": "Sequential", "config": ["Dense"]})


# -------------------------------------------------------------------- graph
def _chain(*inbound) -> dict:
    """input -> a -> b, tf_keras style; ``inbound`` replaces b's inbound nodes when given."""
    b = inbound[0] if inbound else [[["a", 0, 0, {}]]]
    return _model({**_layer("InputLayer"), "name": "x", "inbound_nodes": []},
                  {**_layer(), "name": "a", "inbound_nodes": [[["x", 0, 0, {}]]]},
                  {**_layer(), "name": "b", "inbound_nodes": b})


def _keras3_ref(name: str, node: int) -> dict:
    return {"args": [{"class_name": "__keras_tensor__",
                      "config": {"shape": [None, 3], "dtype": "float32", "keras_history": [name, node, 0]}}],
            "kwargs": {}}


@pytest.mark.parametrize("inbound, words", [
    ([[["a", 5, 0, {}]]], "reads node 5 of layer 'a', which has 1"),  # tf_keras spun forever on this
    ([[["a", None, 0, {}]]], "is not a"),
    ([[["a", -1, 0, {}]]], "is not a"),
    ([[["nosuch", 0, 0, {}]]], "does not have"),
    ([[["b", 0, 0, {}]]], "depends on itself"),
    ([_keras3_ref("a", 3)], "reads node 3 of layer 'a'"),
    ([_keras3_ref("b", 0)], "depends on itself"),
    ("nodes", "inbound_nodes is a string"),
])
def test_inbound_nodes_that_would_never_build_are_refused(inbound, words) -> None:
    cfg = _chain(inbound)
    with pytest.raises(ModelFileError, match=words):
        check_shape("m.h5", cfg)
        check_graph("m.h5", cfg)


def test_a_cycle_through_two_layers_and_good_graphs() -> None:
    cfg = _chain()
    check_graph("m.h5", cfg)
    check_graph("m.keras", _chain([_keras3_ref("a", 0)]))
    cfg["config"]["layers"][1]["inbound_nodes"] = [[["b", 0, 0, {}]]]
    with pytest.raises(ModelFileError, match="depends on itself"):
        check_graph("m.h5", cfg)


def test_an_empty_layer_name_is_refused() -> None:
    """make fuzz (json): a Dense whose config names it "" (the outer entry says "d1") loaded in
    tf_keras and became the IR's "no value", crashing shape inference with exit 4."""
    cfg = _chain()
    cfg["config"]["layers"][1]["config"]["name"] = ""
    with pytest.raises(ModelFileError, match=r"config.layers\[1\].config.name .*non-empty layer name"):
        check_graph("m.json", cfg)
    cfg = _chain()
    cfg["config"]["layers"][1]["name"] = ""
    with pytest.raises(ModelFileError, match="non-empty layer name"):
        check_graph("m.json", cfg)


# ------------------------------------------------------------------- safety
@pytest.mark.parametrize("cfg, words", [
    (_model(_layer("Lambda")), "holds code"),
    (_model(_layer("TFSMLayer")), "holds code"),
    (_model({**_layer(), "module": "evil.layers"}), "holds code"),
    (_model({**_layer(), "registered_name": "pkg>Dense"}), "holds code"),
    (_model(_layer("LSTM")), "not supported"),
    (_model(_layer(kernel_initializer={"module": "posix", "class_name": "system", "config": {}})),
     "names module 'posix'"),
    (_model(_layer(activation={"module": "keras.config", "class_name": "function",
                                "config": "enable_unsafe_deserialization"})), "enable_unsafe_deserialization"),
    (_model(_layer(activation={"class_name": "__lambda__", "config": {"code": "AA=="}})), "__lambda__"),
    (_model(_layer(kernel_initializer={"class_name": "GlorotUniform", "registered_name": "x>Glorot"})), "custom"),
])
def test_code_and_foreign_objects_are_refused(cfg, words) -> None:
    check_shape("m.keras", cfg)
    with pytest.raises(ModelFileError, match=words):
        check_safe("m.keras", cfg)


def test_keras_own_objects_pass() -> None:
    cfg = _model(
        {**_layer(kernel_initializer={"module": "keras.initializers", "class_name": "GlorotUniform", "config": {},
                                      "registered_name": None},
                  dtype={"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}},
                  activation={"module": "keras.activations", "class_name": "function", "config": "relu",
                              "registered_name": "function"}), "module": "keras.layers"},
        {**_layer("Add"), "module": "keras.src.ops.numpy", "registered_name": "Add"})
    check_shape("m.keras", cfg)
    check_safe("m.keras", cfg)


# --------------------------------------------------------------------- HDF5
def _h5(build) -> io.BytesIO:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        build(f)
    buf.seek(0)
    return buf


def test_plain_weights_pass_and_are_summed() -> None:
    summary = check_hdf5("w.h5", _h5(lambda f: f.create_dataset("g/kernel", data=np.ones((3, 4), np.float32))))
    assert (summary.elements, summary.nbytes) == (12, 48)


def test_links_and_external_storage_are_refused(tmp_path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\1" * 64)
    with pytest.raises(ModelFileError, match="external link"):
        check_hdf5("w.h5", _h5(lambda f: f.__setitem__("k", h5py.ExternalLink(str(tmp_path / "o.h5"), "/k"))))
    with pytest.raises(ModelFileError, match="soft link"):
        check_hdf5("w.h5", _h5(lambda f: f.__setitem__("k", h5py.SoftLink("/elsewhere"))))
    with pytest.raises(ModelFileError, match="external storage"):
        check_hdf5("w.h5", _h5(lambda f: f.create_dataset("k", (16,), "<f4", external=[(str(secret), 0, 64)])))


def test_declared_far_beyond_stored_is_refused_and_raisable(monkeypatch) -> None:
    sparse = _h5(lambda f: f.create_dataset("k", (10_000, 1_000), "<f4"))  # 40 MB declared, nothing stored
    with pytest.raises(RuntimeInputError, match="TAPEOUT_MAX_TENSOR_RATIO"):
        check_hdf5("w.h5", sparse)
    sparse.seek(0)
    monkeypatch.setenv("TAPEOUT_MAX_TENSOR_RATIO", str(10 ** 12))
    monkeypatch.setenv("TAPEOUT_MAX_MODEL_BYTES", "1000")
    with pytest.raises(RuntimeInputError, match="TAPEOUT_MAX_MODEL_BYTES"):
        check_hdf5("w.h5", sparse)


def test_not_hdf5_is_one_line() -> None:
    with pytest.raises(ModelFileError, match="not a readable HDF5 file"):
        check_hdf5("w.h5", io.BytesIO(b"garbage" * 10))


# ------------------------------------------------------------------ budgets
def test_every_budget_is_named_and_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    for b in budgets.BUDGETS:
        assert b.env.startswith("TAPEOUT_MAX_") and b.default > 0
        assert b.env in doc, b.env


def test_bad_budget_value_is_one_line(monkeypatch) -> None:
    monkeypatch.setenv("TAPEOUT_MAX_SYNTH_BYTES", "-3")
    with pytest.raises(RuntimeInputError, match="TAPEOUT_MAX_SYNTH_BYTES"):
        budgets.MAX_SYNTH_BYTES.value()


# ------------------------------------------- the forked HDF5 read (found by make fuzz)
def test_hdf5_read_that_never_returns_is_refused_in_time(tmp_path, monkeypatch):
    """The HDF5 library can loop in C on a damaged file; the read runs in a child that is killed."""
    import time as _time

    import h5py

    from tapeout.runtime import model_files

    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(4, np.float32)
    monkeypatch.setattr(model_files, "HDF5_PROBE_SECONDS", 1.0)
    monkeypatch.setattr(model_files, "_check_and_read", lambda label, source: _time.sleep(60))
    t0 = _time.monotonic()
    with pytest.raises(model_files.ModelFileError, match="did not finish in 1 s"):
        model_files.check_hdf5("w.h5", path)
    assert _time.monotonic() - t0 < 10


def test_hdf5_library_crash_is_refused_not_fatal(tmp_path, monkeypatch):
    import os
    import signal

    import h5py

    from tapeout.runtime import model_files

    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(4, np.float32)
    monkeypatch.setattr(model_files, "_check_and_read", lambda label, source: os.kill(os.getpid(), signal.SIGSEGV))
    with pytest.raises(model_files.ModelFileError, match="HDF5 library failed on it: signal 11"):
        model_files.check_hdf5("w.h5", path)
    monkeypatch.undo()
    assert model_files.check_hdf5("w.h5", path).elements == 4  # this process lives on, the real read works


def test_fuzzer_legacy_h5_whose_config_read_never_returned_is_exit_2():
    """make fuzz's input as found: h5py's read of model_config never returned (tests/fuzz/regressions/)."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "fuzz" / "regressions" / "legacy-h5-model-config-read-never-returns.h5"
    r = subprocess.run([sys.executable, "-m", "tapeout.compiler", "inspect", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("tapeout: error:") and len(r.stderr.strip().splitlines()) == 1


def test_the_same_files_load_once_per_process(tmp_path) -> None:
    """compile reads the source for the IR and again to run it: the second load of the same bytes
    is the same model (the caller's check still runs on its config); changed files load afresh."""
    import shutil
    from pathlib import Path

    from tapeout.runtime.model_files import load_keras_model

    sample = Path(__file__).resolve().parents[2] / "samples" / "digits_cnn" / "model.keras"
    a = tmp_path / "a.keras"
    shutil.copyfile(sample, a)
    first = load_keras_model(a)
    assert load_keras_model(a) is first

    def refuse(cfg):
        raise ModelFileError("refused by the caller's check")

    with pytest.raises(ModelFileError, match="caller's check"):
        load_keras_model(a, check=refuse)
    a.write_bytes(a.read_bytes() + b"\0")  # other bytes (a zip with trailing data still reads)
    second = load_keras_model(a)
    assert second is not first
