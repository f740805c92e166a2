"""Untrusted model files through the CLI (issue 14): every refusal is exit 2, one line, nothing run or leaked.

docs/security.md lists the threat model and names these tests per CVE class. Findings 1-4 and 6
of issue 14 are here with the defences that already held ("Defences to keep"); the loader's
own unit tests are in tests/runtime/test_model_files.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import run_cli

SECRET = b"SECR" * 32  # 32 identical float32 words: any layout change of a kernel keeps the pattern
SECRET_MARK = b"SECRSECRSECR"


def assert_refused(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tapeout: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, err)


def _commands(model: Path, tmp_path: Path, good: Path, weights: Path | None = None) -> dict[str, list[object]]:
    """compile, inspect, verify with the file as source, verify with it as the artifact."""
    w = ["--weights", weights] if weights is not None else []
    return {
        "compile": ["compile", model, *w, "-t", "onnx", "-o", tmp_path / "out"],
        # Without verification the source runner never opens the file: the front end alone must refuse.
        "compile-no-verify": ["compile", model, *w, "-t", "onnx", "-o", tmp_path / "out", "--no-verify"],
        "inspect": ["inspect", model, *w],
        "verify-source": ["verify", model, good, *w],
        "verify-artifact": ["verify", good, model],
    }


COMMANDS = ("compile", "inspect", "verify-source", "verify-artifact")


def _no_output(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()


def _secret_nowhere(tmp_path: Path, *texts: str) -> None:
    for t in texts:
        assert SECRET_MARK.decode() not in t
    for f in (tmp_path / "out").rglob("*"):  # an output folder should not exist; if it does, no secret
        if f.is_file():
            assert SECRET_MARK not in f.read_bytes(), f


# ----------------------------------------------------------------- builders
def _tf_keras_dense():
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((8,), name="x")
    out = tf_keras.layers.Dense(4, name="dense")(inp)
    return tf_keras.Model(inp, out, name="leak")


def _legacy_h5(path: Path) -> Path:
    _tf_keras_dense().save(path, save_format="h5")
    return path


def _json_pair(folder: Path) -> tuple[Path, Path]:
    model = _tf_keras_dense()
    arch, weights = folder / "arch.json", folder / "weights.h5"
    arch.write_text(model.to_json())
    model.save_weights(weights)
    return arch, weights


def _kernel_name(f) -> str:
    import h5py

    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and n.endswith("kernel:0") else None)
    return names[0]


def _secret(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    secret = folder / "secret.bin"
    secret.write_bytes(SECRET)
    return secret


def _leak(h5: Path, how: str, secret: Path) -> None:
    """Point the Dense kernel (8 x 4 float32 = 128 bytes) at ``secret`` through ``how``."""
    import h5py

    if how in ("external-link", "virtual"):
        holder = secret.with_name("holder.h5")
        with h5py.File(holder, "w") as g:
            g["kernel"] = np.frombuffer(SECRET, np.float32).reshape(8, 4)
    with h5py.File(h5, "a") as f:
        name = _kernel_name(f)
        del f[name]
        if how == "external-storage":
            f.create_dataset(name, (8, 4), "<f4", external=[(str(secret), 0, len(SECRET))])
        elif how == "external-link":
            f[name] = h5py.ExternalLink(str(holder), "/kernel")
        elif how == "virtual":
            layout = h5py.VirtualLayout((8, 4), "<f4")
            layout[:] = h5py.VirtualSource(str(holder), "kernel", shape=(8, 4))
            f.create_virtual_dataset(name, layout)
        elif how == "soft-link":
            f["stash"] = np.frombuffer(SECRET, np.float32).reshape(8, 4)
            f[name] = h5py.SoftLink("/stash")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A harmless .onnx (any readable model) for verify's other side."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8,), name="x")
    path = tmp_path_factory.mktemp("good") / "good.keras"
    keras.Model(inp, keras.layers.Dense(4, name="dense")(inp)).save(path)
    return path


# ------------------------------------------- finding 1: code execution via verify
def _lambda_h5(path: Path, marker: Path) -> Path:
    import tf_keras

    inp = tf_keras.Input((8,), name="x")
    # Marshalled into the .h5 as bytecode; tf_keras runs it when it rebuilds the graph.
    code = f"lambda t: (open({str(marker)!r}, 'w').write('ran'), t)[1]"
    out = tf_keras.layers.Lambda(eval(code), name="payload")(inp)  # noqa: S307 - builds the attack file
    tf_keras.Model(inp, out).save(path, save_format="h5")
    marker.unlink(missing_ok=True)
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_lambda_bytecode_in_legacy_h5_never_runs(command, tmp_path, good):
    """Issue 14 finding 1 (critical): verify ran a Lambda's marshalled bytecode from a legacy .h5."""
    marker = tmp_path / "pwned"
    model = _lambda_h5(tmp_path / "lambda.h5", marker)
    code, out, err = run_cli(*_commands(model, tmp_path, good)[command])
    assert not marker.exists(), "the Lambda's code ran"
    assert_refused(code, err, "payload", "Lambda", "does not execute code")
    _no_output(tmp_path)


# --------------------------------------------------- finding 2: HDF5 file leaks
@pytest.mark.parametrize("how", ["external-storage", "soft-link"])
def test_hdf5_leak_never_reaches_the_weights(how, tmp_path):
    """Before the fix the front end loaded these and the secret's bytes were the kernel."""
    from tapeout.compiler.errors import FrontendError
    from tapeout.compiler.frontends.keras import load_keras

    (tmp_path / "model").mkdir()
    model = _legacy_h5(tmp_path / "model" / "leak.h5")
    _leak(model, how, _secret(tmp_path / "elsewhere"))
    with pytest.raises(FrontendError, match=how.replace("-", " ").replace("storage", "")) as info:
        load_keras(model)
    assert "\n" not in str(info.value) and SECRET_MARK.decode() not in str(info.value)


@pytest.mark.parametrize("how", ["external-storage", "external-link", "virtual", "soft-link"])
@pytest.mark.parametrize("command", ("compile-no-verify", *COMMANDS))
def test_hdf5_legacy_h5_reading_other_files_is_refused(how, command, tmp_path, good):
    secret = _secret(tmp_path / "elsewhere")
    (tmp_path / "model").mkdir()
    model = _legacy_h5(tmp_path / "model" / "leak.h5")
    _leak(model, how, secret)
    code, out, err = run_cli(*_commands(model, tmp_path, good)[command])
    assert_refused(code, err, "leak.h5", how.replace("-", " ").replace("storage", ""))
    _secret_nowhere(tmp_path, out, err)
    _no_output(tmp_path)


@pytest.mark.parametrize("command", ["compile-no-verify", "inspect", "verify-source"])
def test_hdf5_external_storage_in_json_weights_is_refused(command, tmp_path, good):
    """The secret sits next to the weights: still another file."""
    folder = tmp_path / "model"
    folder.mkdir()
    arch, weights = _json_pair(folder)
    _leak(weights, "external-storage", _secret(folder))
    code, out, err = run_cli(*_commands(arch, tmp_path, good, weights)[command])
    assert_refused(code, err, "weights.h5", "external storage")
    _secret_nowhere(tmp_path, out, err)
    _no_output(tmp_path)


@pytest.mark.parametrize("how", ["external-storage", "external-link"])
def test_hdf5_leak_inside_a_keras3_archive_is_refused(how, tmp_path, good):
    """Keras guards its own archives too; tapeout's gate refuses first, naming the member."""
    import h5py

    secret = _secret(tmp_path / "elsewhere")
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(zipfile.ZipFile(good).read("model.weights.h5"))
    with h5py.File(weights, "a") as f:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.shape == (8, 4) else None)
        del f[names[0]]
        if how == "external-storage":
            f.create_dataset(names[0], (8, 4), "<f4", external=[(str(secret), 0, len(SECRET))])
        else:
            f[names[0]] = h5py.ExternalLink(str(secret), "/kernel")
    model = tmp_path / "leak.keras"
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(model, "w") as out:
        for info in z.infolist():
            out.writestr(info.filename, weights.read_bytes() if info.filename == "model.weights.h5" else z.read(info))
    for argv in (["compile", model, "-t", "onnx", "-o", tmp_path / "out", "--no-verify"], ["verify", good, model]):
        code, out, err = run_cli(*argv)
        assert_refused(code, err, "leak.keras", "model.weights.h5", how.replace("-", " ").replace("storage", ""))
        _secret_nowhere(tmp_path, out, err)
    _no_output(tmp_path)


def test_hdf5_external_storage_of_a_system_file_is_refused(tmp_path):
    """The red team's /etc/hostname: an absolute path outside every folder tapeout knows."""
    import h5py

    found = [p for p in map(Path, ("/etc/hostname", "/etc/hosts", "/etc/passwd")) if p.is_file() and p.stat().st_size >= 4]
    if not found:
        pytest.skip("no system file to point at")
    target = found[0]
    model = _legacy_h5(tmp_path / "host.h5")
    with h5py.File(model, "a") as f:
        name = _kernel_name(f)
        del f[name]
        f.create_dataset(name, (1,), "<f4", external=[(str(target), 0, 4)])
    code, _, err = run_cli("compile", model, "-t", "onnx", "-o", tmp_path / "out")
    assert_refused(code, err, "external storage")
    _no_output(tmp_path)


# ----------------------------------------------------- finding 3: memory budgets
def _rezip(src: Path, dst: Path, config: bytes | None = None, extra: dict[str, bytes] | None = None,
           compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", compression) as out:
        for info in z.infolist():
            data = config if info.filename == "config.json" and config is not None else z.read(info)
            out.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            out.writestr(name, data)
    return dst


def test_zip_bomb_config_is_refused_before_reading(tmp_path, good):
    """A config.json that inflates 1,000 times (16 MiB from ~16 KB): refused from the zip's sizes."""
    config = zipfile.ZipFile(good).read("config.json")
    bomb = config[:-1] + b" " * (16 << 20) + config[-1:]  # valid JSON, mostly whitespace
    model = _rezip(good, tmp_path / "bomb.keras", bomb, compression=zipfile.ZIP_DEFLATED)
    assert model.stat().st_size < 100_000
    for argv in (["compile", model, "-t", "onnx", "-o", tmp_path / "out"], ["inspect", model],
                 ["verify", model, good]):
        code, _, err = run_cli(*argv)
        assert_refused(code, err, "config.json", "TAPEOUT_MAX_ZIP_RATIO")
    _no_output(tmp_path)


def test_config_budget_is_named_and_raisable(tmp_path, good, monkeypatch):
    monkeypatch.setenv("TAPEOUT_MAX_CONFIG_BYTES", "500")
    code, _, err = run_cli("inspect", good)
    assert_refused(code, err, "TAPEOUT_MAX_CONFIG_BYTES")
    monkeypatch.setenv("TAPEOUT_MAX_CONFIG_BYTES", str(64 << 20))
    code, _, err = run_cli("inspect", good)
    assert code == 0, err
    monkeypatch.setenv("TAPEOUT_MAX_CONFIG_BYTES", "lots")
    code, _, err = run_cli("inspect", good)
    assert_refused(code, err, "TAPEOUT_MAX_CONFIG_BYTES")


def _huge_weights_pair(folder: Path, units: int, store: bool) -> tuple[Path, Path]:
    """A JSON + weights .h5 pair whose Dense kernel is [1000, units]; written or only declared."""
    import h5py

    model_json = {"class_name": "Sequential", "config": {"name": "big", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 1000], "dtype": "float32",
                                                "name": "x"}},
        {"class_name": "Dense", "config": {"name": "dense", "units": units, "dtype": "float32"}}]},
        "keras_version": "2.21.0", "backend": "tensorflow"}
    arch, weights = folder / "big.json", folder / "big.h5"
    arch.write_text(json.dumps(model_json))
    with h5py.File(weights, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        if store:
            g.create_dataset("dense/kernel:0", data=np.zeros((1000, 4), np.float32))
            g.create_dataset("dense/bias:0", data=np.zeros(4, np.float32))
        else:  # declared only: HDF5 answers reads with the fill value, from a 2 KB file
            g.create_dataset("dense/kernel:0", (1000, units), "<f4")
            g.create_dataset("dense/bias:0", (units,), "<f4")
    return arch, weights


def test_declared_weights_far_beyond_the_stored_bytes_are_refused(tmp_path):
    """A ~3 KB pair declaring a 25-million-element kernel: refused before anything is allocated."""
    arch, weights = _huge_weights_pair(tmp_path, 25_000, store=False)
    assert weights.stat().st_size < 10_000
    code, _, err = run_cli("compile", arch, "--weights", weights, "-t", "onnx", "-o", tmp_path / "out")
    assert_refused(code, err, "big.h5", "dense/kernel:0", "TAPEOUT_MAX_TENSOR_RATIO")
    _no_output(tmp_path)


def test_config_declaring_more_weights_than_the_file_holds_is_refused(tmp_path):
    """The config alone asks for 10^9 x 1000 weights; tf_keras would allocate them building the model."""
    arch, weights = _huge_weights_pair(tmp_path, 10 ** 9, store=True)
    code, _, err = run_cli("inspect", arch, "--weights", weights)
    assert_refused(code, err, "big.json", "'dense'")


def test_weight_sized_by_a_huge_input_is_refused_before_allocating(tmp_path):
    """Only the framework knows a Dense kernel after a Flatten of [30000, 1000] (1.2e8 elements):
    refused when the layer asks for it, not after tf_keras has filled 480 MB."""
    import h5py

    arch, weights = _huge_weights_pair(tmp_path, 4, store=True)
    cfg = json.loads(arch.read_text())
    cfg["config"]["layers"][0]["config"]["batch_input_shape"] = [None, 30000, 1000]
    cfg["config"]["layers"].insert(1, {"class_name": "Flatten", "config": {"name": "flat"}})
    arch.write_text(json.dumps(cfg))
    with h5py.File(weights, "a") as f:
        f.attrs["layer_names"] = [b"flat", b"dense"]
        f.create_group("flat").attrs["weight_names"] = []
    for argv in (["inspect", arch, "--weights", weights], ["verify", arch, arch, "--weights", weights]):
        code, _, err = run_cli(*argv)
        assert_refused(code, err, "big.json", "'dense'", "120,000,000", "before allocating")


def _huge_input_model(path: Path) -> Path:
    import keras

    inp = keras.Input((100000, 100000, 1), name="image")
    out = keras.layers.GlobalMaxPooling2D(name="pool")(inp)
    keras.Model(inp, out).save(path)
    return path


def test_huge_input_shape_is_refused_when_synthesizing_data(tmp_path):
    """[None, 100000, 100000, 1]: 8 samples would be 298 GiB; exit 2 naming the budget, not MemoryError."""
    model = _huge_input_model(tmp_path / "wide.keras")
    code, _, err = run_cli("compile", model, "-t", "onnx", "-o", tmp_path / "out")
    assert_refused(code, err, "image", "TAPEOUT_MAX_SYNTH_BYTES")
    _no_output(tmp_path)
    code, _, err = run_cli("verify", model, model)
    assert_refused(code, err, "image", "TAPEOUT_MAX_SYNTH_BYTES")


# ------------------------------------------- finding 4: malformed configs, exit 2
def _nested(depth: int) -> bytes:
    return b'{"class_name": "Functional", "config": {"layers": ' + b"[" * depth + b"]" * depth + b"}}"


def test_deeply_nested_config_is_exit_2_in_every_format(tmp_path, good):
    import h5py

    text = _nested(100_000)
    keras3 = _rezip(good, tmp_path / "deep.keras", text)
    arch, weights = _json_pair(tmp_path)
    arch.write_bytes(text)
    legacy = _legacy_h5(tmp_path / "deep.h5")
    with h5py.File(legacy, "a") as f:
        f.attrs["model_config"] = text
    for argv in (["inspect", keras3], ["inspect", arch, "--weights", weights], ["inspect", legacy],
                 ["verify", legacy, good]):
        code, _, err = run_cli(*argv)
        assert_refused(code, err, "nests")


def test_damaged_legacy_h5_bytes_are_exit_0_or_2(tmp_path):
    """Random byte flips in a legacy .h5 (a fixed seed): h5py raised RuntimeError reading the
    attributes of 6 in 150 such files, which was exit 4."""
    import random

    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((8, 8, 1), name="image")
    x = tf_keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    out = tf_keras.layers.Dense(5, name="logits")(tf_keras.layers.Flatten(name="flatten")(x))
    base = tmp_path / "base.h5"
    tf_keras.Model(inp, out).save(base, save_format="h5")
    data, rng, codes = base.read_bytes(), random.Random(0), []
    for i in range(150):
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        damaged = tmp_path / "damaged.h5"
        damaged.write_bytes(bytes(b))
        code, _, err = run_cli("inspect", damaged)
        codes.append(code)
        assert code in (0, 2) and "Traceback" not in err and len(err.strip().splitlines()) <= 1, (i, err)
    assert codes.count(2) > 10  # the flips did damage files


def _mutated(good: Path, tmp_path: Path, mutate) -> Path:
    cfg = json.loads(zipfile.ZipFile(good).read("config.json"))
    mutate(cfg)
    return _rezip(good, tmp_path / "mutant.keras", json.dumps(cfg).encode())


@pytest.mark.parametrize("mutation, where", [
    (lambda c: c.__setitem__("config", ["not", "a", "model"]), "config"),
    (lambda c: c.__setitem__("config", 7), "config"),
    (lambda c: c["config"].__setitem__("layers", "dense"), "config.layers"),
    (lambda c: c["config"]["layers"].__setitem__(1, ["a", "list"]), "config.layers[1]"),
    (lambda c: c["config"]["layers"].__setitem__(1, 42), "config.layers[1]"),
    (lambda c: c["config"]["layers"][1].__setitem__("config", [1, 2]), "config.layers[1].config"),
    (lambda c: c["config"]["layers"][1].__setitem__("config", "dense"), "config.layers[1].config"),
    (lambda c: c["config"]["layers"][1].__setitem__("class_name", 3), "config.layers[1].class_name"),
    (lambda c: c["config"]["layers"][1]["config"].__setitem__("kernel_initializer", {"class_name": 9}),
     "config.layers[1].config.kernel_initializer.class_name"),
])
def test_config_of_the_wrong_type_is_exit_2_naming_the_path(mutation, where, tmp_path, good):
    model = _mutated(good, tmp_path, mutation)
    for argv in (["inspect", model], ["verify", model, good]):
        code, _, err = run_cli(*argv)
        assert_refused(code, err, "mutant.keras", where)


def test_inbound_node_that_never_exists_is_exit_2_not_a_hang(tmp_path, good):
    """tf_keras retried the node forever (found by a mutation sweep); a real process, with a timeout."""
    import h5py

    model = _legacy_h5(tmp_path / "spin.h5")
    with h5py.File(model, "a") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"][1]["inbound_nodes"][0][0][1] = 5  # node 5 of the input layer
        f.attrs["model_config"] = json.dumps(cfg)
    for argv in (["inspect", model], ["verify", model, good]):
        r = subprocess.run([sys.executable, "-m", "tapeout.compiler", *map(str, argv)], capture_output=True,
                           text=True, timeout=300)
        assert_refused(r.returncode, r.stderr, "spin.h5", "config.layers[1].inbound_nodes[0]", "node 5")


# ------------------------------------------- finding 6: no assets in the system temp
def test_archive_assets_are_not_extracted_to_the_system_temp(tmp_path, good, monkeypatch):
    model = _rezip(good, tmp_path / "assets.keras", extra={"assets/vocab.txt": b"x" * 4096})
    assert run_cli("inspect", good)[0] == 0  # frameworks imported and warm: what follows is the load alone
    made: list[str] = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    code, _, err = run_cli("inspect", model)
    assert code == 0, err
    assert made == [], f"Keras extracted the archive to {made}"


# ----------------------------------------------------------- defences to keep
def _inject(cfg: dict, obj: dict) -> None:
    cfg["config"]["layers"][1]["config"]["kernel_initializer"] = obj


@pytest.mark.parametrize("obj", [
    # CVE-2025-1550 class: a module outside Keras, or a Keras function that weakens Keras.
    {"module": "builtins", "class_name": "eval", "config": {}, "registered_name": None},
    {"module": "keras.config", "class_name": "function", "config": "enable_unsafe_deserialization",
     "registered_name": "function"},
    {"module": "keras.utils", "class_name": "function", "config": "get_file", "registered_name": "function"},
    {"module": "keras.initializers", "class_name": "GlorotUniform", "config": {}, "registered_name": "evil>Glorot"},
    {"class_name": "__lambda__", "config": {"code": "ZXhpdCgp", "defaults": None, "closure": None}},
])
def test_keras_config_object_injection_is_refused(obj, tmp_path, good):
    model = _mutated(good, tmp_path, lambda c: _inject(c, obj))
    for argv in (["inspect", model], ["verify", model, good], ["verify", good, model]):
        code, _, err = run_cli(*argv)
        assert_refused(code, err, "mutant.keras", "kernel_initializer")


@pytest.mark.parametrize("entry", [
    {"module": "os", "class_name": "system", "config": {"name": "boom"}, "registered_name": None},
    {"module": "keras.layers", "class_name": "TFSMLayer", "config": {"name": "saved", "filepath": "/etc"},
     "registered_name": None},
    {"module": "keras.layers", "class_name": "Lambda", "config": {"name": "code", "function": {
        "class_name": "__lambda__", "config": {"code": "ZXhpdCgp"}}}, "registered_name": None},
    {"module": "keras.layers", "class_name": "TorchModuleWrapper", "config": {"name": "pickle"},
     "registered_name": None},
])
def test_code_holding_and_foreign_layers_are_refused(entry, tmp_path, good):
    def swap(cfg):
        old = cfg["config"]["layers"][1]
        cfg["config"]["layers"][1] = {**entry, "inbound_nodes": old["inbound_nodes"]}

    model = _mutated(good, tmp_path, swap)
    for argv in (["compile", model, "-t", "onnx", "-o", tmp_path / "out"], ["verify", model, good]):
        code, _, err = run_cli(*argv)
        assert_refused(code, err, "mutant.keras", entry["class_name"])
    _no_output(tmp_path)


def test_lambda_in_a_keras3_archive_is_refused_everywhere(tmp_path, good):
    """Also tests/test_cli.py::test_lambda_layer_is_refused_without_running_it (compile)."""
    import keras

    inp = keras.Input((8,), name="x")
    path = tmp_path / "lambda.keras"
    keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inp)).save(path)
    for command, argv in _commands(path, tmp_path, good).items():
        code, _, err = run_cli(*argv)
        assert_refused(code, err, "doubler", "Lambda")


def _onnx_with_external(folder: Path, location: str) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        w.external_data.add(key=k, value=v)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("how", ["traversal", "absolute", "symlink", "hardlink"])
def test_onnx_external_data_stays_in_the_model_folder(how, tmp_path):
    """CVE-2024-27318 class. The front end's own cases: tests/compiler/frontends/test_onnx.py
    (test_external_data_outside_the_folder_is_refused, ..._symlink_escaping_the_folder_is_refused)."""
    folder = tmp_path / "model"
    folder.mkdir()
    secret = _secret(tmp_path / "elsewhere")
    location = {"traversal": "../elsewhere/secret.bin", "absolute": str(secret)}.get(how, "data.bin")
    if how == "symlink":
        (folder / "data.bin").symlink_to(secret)
    elif how == "hardlink":
        os.link(secret, folder / "data.bin")
    model = _onnx_with_external(folder, location)
    code, out, err = run_cli("compile", model, "-t", "onnx", "-o", tmp_path / "out")
    assert_refused(code, err, "model.onnx")
    _secret_nowhere(tmp_path, out, err)
    _no_output(tmp_path)


def test_staging_leaves_no_partial_output_and_rebuilds_are_byte_identical(tmp_path, good):
    """Also tests/test_cli.py::test_interrupted_build_leaves_nothing_half_written and
    ::test_compile_is_deterministic (in-process); this one runs two real processes."""
    outs = []
    for name in ("a", "b"):
        r = subprocess.run([sys.executable, "-m", "tapeout.compiler", "compile", str(good), "-t", "onnx",
                            "-o", str(tmp_path / name), "--no-timings"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append(tmp_path / name)
    for rel in ("report.json", "onnx-fp32/model.onnx"):
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    assert not [p for p in tmp_path.iterdir() if p.name not in ("a", "b")], "a staging folder was left behind"
    bad = _rezip(good, tmp_path / "bad.keras", b"[1, 2]")
    code, _, err = run_cli("compile", bad, "-t", "onnx", "-o", tmp_path / "a")
    assert_refused(code, err, "bad.keras")
    assert (outs[0] / "onnx-fp32/model.onnx").read_bytes() == (outs[1] / "onnx-fp32/model.onnx").read_bytes()


# ------------------------------------- found by the fuzzing harness (tests/fuzz, make fuzz)
def _npy_declaring(shape: tuple, descr: str = "<f4") -> bytes:
    """An .npy of 20 float32 zeros whose header declares ``shape`` (or is ``descr``-typed)."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((5, 4), np.float32))
    data = buf.getvalue()
    hlen = int.from_bytes(data[8:10], "little")
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return data[:8] + len(header).to_bytes(2, "little") + header + data[10 + hlen:]


def _npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("how", ["npy-huge", "npz-huge", "npz-raw-member", "npz-empty-classes", "npy-bad-header",
                                 "npy-unmatched-header", "npy-bool-dim"])
def test_damaged_data_files_are_exit_2(how, tmp_path, good):
    """Were exit 4: MemoryError allocating a declared 256 GiB array, NpzFile's raw bytes for a
    member that is no .npy ('bytes' has no dtype), argmax of [N, 0] labels, TokenError from a header."""
    x = io.BytesIO()
    np.save(x, np.zeros((5, 8), np.float32))
    if how == "npy-huge":
        data = tmp_path / "d.npy"
        data.write_bytes(_npy_declaring((2**36,)))
    elif how == "npz-huge":
        data = _npz(tmp_path / "d.npz", {"x.npy": _npy_declaring((2**34, 8))})
    elif how == "npz-raw-member":
        data = _npz(tmp_path / "d.npz", {"x": b"plain bytes, no .npy header"})
    elif how == "npz-empty-classes":
        y = io.BytesIO()
        np.save(y, np.zeros((5, 0), np.float32))
        data = _npz(tmp_path / "d.npz", {"x.npy": x.getvalue(), "y.npy": y.getvalue()})
    elif how == "npy-bool-dim":  # make fuzz: shape (5, False, 4) reached reshape, TypeError
        data = tmp_path / "d.npy"
        data.write_bytes(_npy_declaring((5, False, 4)))
    elif how == "npy-unmatched-header":  # make fuzz: SyntaxError from the header's literal
        data = tmp_path / "d.npy"
        raw = _npy_declaring((5, 8))
        data.write_bytes(raw[:10] + b")" + raw[11:])
    else:
        data = tmp_path / "d.npy"
        raw = _npy_declaring((5, 8))
        data.write_bytes(raw[:10] + b"{" * (len(raw[10:raw.index(b"\n") + 1]) - 1) + raw[raw.index(b"\n"):])
    code, _, err = run_cli("verify", good, good, "--data", data)
    assert_refused(code, err, data.name)


def test_config_value_the_converter_cannot_read_is_exit_2(tmp_path):
    """A BatchNormalization epsilon of null builds in tf_keras; the converter's float(None) was exit 4."""
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Conv2D(2, 3, name="c"),
                                 tf_keras.layers.BatchNormalization(name="bn")])
    arch, weights = tmp_path / "bn.json", tmp_path / "bn.h5"
    cfg = json.loads(model.to_json())
    cfg["config"]["layers"][2]["config"]["epsilon"] = None  # [0] is the InputLayer
    arch.write_text(json.dumps(cfg))
    model.save_weights(weights)
    code, _, err = run_cli("inspect", arch, "--weights", weights)
    assert_refused(code, err, "'bn'", "not understood")


def test_reading_a_layer_that_is_never_called_is_exit_2_not_a_hang(tmp_path, good):
    """A layer with no inbound nodes (not an input) has no node 0: tf_keras retried a reader of it forever."""
    import tf_keras

    inp = tf_keras.Input((6,), name="x")
    h = tf_keras.layers.Dense(5, name="d1")(inp)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3, name="d2")(h))
    arch, weights = tmp_path / "uncalled.json", tmp_path / "uncalled.h5"
    cfg = json.loads(model.to_json())
    cfg["config"]["layers"][1]["inbound_nodes"] = []
    arch.write_text(json.dumps(cfg))
    model.save_weights(weights)
    r = subprocess.run([sys.executable, "-m", "tapeout.compiler", "inspect", str(arch), "--weights", str(weights)],
                       capture_output=True, text=True, timeout=300)
    assert_refused(r.returncode, r.stderr, "config.layers[2].inbound_nodes[0]", "'d1'")


def test_onnx_reshape_copying_a_dim_past_the_input_rank_is_exit_2(tmp_path):
    """Reshape's 0 copies the input's dim at that index; past the input's rank it was an IndexError."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([-1, 0, 0], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1])], [shape])
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    code, _, err = run_cli("inspect", path)
    assert_refused(code, err, "reshape.onnx", "Reshape", "rank")


def _onnx_gemm(path: Path, edit=None) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(8, 4), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gemm", ["r", "w", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if edit is not None:
        edit(model.graph.initializer[0])
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_initializer_whose_data_does_not_fill_its_dims_is_exit_2(tmp_path):
    """The fuzzer's input, kept as found (tests/fuzz/regressions/): Gemm weights of 96 floats under
    dims [32, 1] that the checker and the folder let pass; onnx_ir's reshape raised ValueError (exit 4)."""
    path = Path(__file__).parent / "fuzz" / "regressions" / "onnx-initializer-short-of-dims.onnx"
    code, _, err = run_cli("inspect", path)
    assert_refused(code, err, path.name, "initializer 'w'", "shape declares")


def test_onnx_external_data_location_that_is_not_text_is_exit_2(tmp_path):
    """Invalid UTF-8 in the location string: protobuf gave bytes, pathlib raised TypeError (exit 4)."""
    from onnx import TensorProto

    def external(t):
        t.data_location = TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", "LOCATION"
    path = _onnx_gemm(tmp_path / "loc.onnx", external)
    path.write_bytes(path.read_bytes().replace(b"LOCATION", b"\xff\xfe\xfdLOCAT"))
    code, _, err = run_cli("inspect", path)
    assert_refused(code, err, "loc.onnx", "not text")


def test_npz_member_inflating_a_thousand_times_is_refused_before_reading(tmp_path, good, monkeypatch):
    """Zeros deflate about 1,000 times (4 GB from 4 MB): np.load would hold all of it; the zip headers
    say so first. 1.6 MB of zeros here, over the 1 MiB floor, keeps the test small."""
    data = tmp_path / "bomb.npz"
    np.savez_compressed(data, x=np.zeros((50_000, 8), np.float32))
    assert data.stat().st_size < 16_000
    code, _, err = run_cli("verify", good, good, "--data", data)
    assert_refused(code, err, "bomb.npz", "TAPEOUT_MAX_ZIP_RATIO")
    monkeypatch.setenv("TAPEOUT_MAX_ZIP_RATIO", "100000")  # raised for a file you trust: read as usual
    code, _, err = run_cli("verify", good, good, "--data", data)
    assert code == 0, err
