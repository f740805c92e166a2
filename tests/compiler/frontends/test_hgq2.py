"""HGQ2 front end (issue 18): trained HGQ2 models read into the IR bit-exactly against HGQ2's own
forward pass; quantizer modes; refusals; the file gate; the qkeras shim kept out."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hgq")

from tapeout.compiler.errors import FrontendError  # noqa: E402
from tapeout.compiler.frontends.loader import load_model  # noqa: E402
from tapeout.compiler.interpreter import run  # noqa: E402
from tests.cli_run import run_cli  # noqa: E402
from tests.compiler.frontends import hgq2_models as H  # noqa: E402

N_COMPARE = 2000


def _quant_nodes(graph) -> dict:
    return {n.name: n for n in graph.nodes if n.op == "fixed_quant"}


def _kif(graph, node) -> list[np.ndarray]:
    return [graph.constants[c] for c in node.inputs[1:]]


def _trained_kif(q) -> list[np.ndarray]:
    from keras import ops

    return [np.asarray(ops.convert_to_numpy(v)) for v in q.quantizer.kif]


def _compare(model, path: Path, x: np.ndarray) -> tuple:
    graph, info = load_model(path)
    ref = H.forward(model, x)
    got = run(graph, {graph.inputs[0]: x})[graph.outputs[0]]
    return graph, ref, got


def test_jet_mlp_bit_exact(tmp_path: Path) -> None:
    model = H.hgq2_mlp(units=(64, 32, 32))
    x, y = H.jet_data(4000)
    assert H.train(model, x, y, epochs=4) > 0.8
    model.save(tmp_path / "mlp.keras")
    xt, yt = H.jet_data(N_COMPARE, seed=7)
    graph, ref, got = _compare(model, tmp_path / "mlp.keras", xt * 1.5)  # wider than training: wraps too
    np.testing.assert_array_equal(got, ref)
    assert got.shape == (N_COMPARE, 5) and (H.forward(model, xt).argmax(1) == yt).mean() > 0.8
    quants = _quant_nodes(graph)
    # each QDense: input, kernel and bias quantizers with HGQ2's trained bit widths, per element
    assert len(quants) == 4 * 3
    first = model.layers[1]
    k, i, f = _kif(graph, quants[f"{first.name}/iq"])
    tk, ti, tf = _trained_kif(first.iq)
    np.testing.assert_array_equal(np.broadcast_to(i, (16,)), ti.reshape(16))
    np.testing.assert_array_equal(np.broadcast_to(f, (16,)), tf.reshape(16))
    assert len(np.unique(ti)) > 1 and not np.all(ti == 2)  # trained away from i0=2, per feature
    assert quants[f"{first.name}/iq"].attrs == {"rounding": "AP_RND", "overflow": "AP_WRAP"}
    assert quants[f"{first.name}/kernel/q"].attrs["overflow"] == "AP_SAT_SYM"
    kernel = graph.constants[quants[f"{first.name}/kernel/q"].inputs[0]]
    np.testing.assert_array_equal(kernel, np.asarray(first.qkernel))


def test_conv2d_bit_exact(tmp_path: Path) -> None:
    model = H.hgq2_cnn()
    x, y = H.image_data(3000)
    assert H.train(model, x, y, epochs=4) > 0.7
    model.save(tmp_path / "cnn.keras")
    xt, _ = H.image_data(N_COMPARE, seed=7)
    graph, ref, got = _compare(model, tmp_path / "cnn.keras", xt)
    np.testing.assert_array_equal(got, ref)
    assert [n.op for n in graph.nodes if n.op not in ("fixed_quant",)] == ["conv", "max_pool", "conv", "flatten",
                                                                            "dense"]
    conv2 = next(layer for layer in model.layers if layer.name == "q_conv2d_1")
    quants = _quant_nodes(graph)
    k, i, f = _kif(graph, quants["q_conv2d_1/iq"])
    assert i.size == 1 and f.size == 1  # one type for the whole tensor
    k, i, f = _kif(graph, quants["q_conv2d_1/kernel/q"])
    ti = _trained_kif(conv2.kq)[1]
    assert ti.shape == (1, 1, 1, 8)  # one type per output channel
    np.testing.assert_array_equal(np.broadcast_to(i, (3, 3, 4, 8)), np.broadcast_to(ti, (3, 3, 4, 8)))


MODES = [("kif", "RND", "WRAP", True), ("kif", "TRN", "SAT", True), ("kbi", "RND_CONV", "SAT_SYM", True),
         ("kbi", "TRN", "WRAP", False), ("kif", "S_RND", "SAT", False), ("kbi", "RND", "SAT", True)]


@pytest.mark.parametrize("q_type,rnd,ovf,signed", MODES)
def test_quantizer_modes(tmp_path: Path, q_type: str, rnd: str, ovf: str, signed: bool) -> None:
    """A standalone Quantizer layer with per-element bit widths set by hand (ties and overflow on
    every grid, some elements 0 bits) matches HGQ2 exactly in each mode."""
    import keras
    from hgq.config import QuantizerConfig
    from hgq.layers import Quantizer

    extra = {"i0": 1, "f0": 2} if q_type == "kif" else {"b0": 3, "i0": 1}
    conf = QuantizerConfig(q_type, "datalane", k0=signed, round_mode=rnd, overflow_mode=ovf, **extra)
    inp = keras.Input((12,), name="x")
    q = Quantizer(conf, name="quant")
    model = keras.Model(inp, q(inp))
    rng = np.random.default_rng(3)
    inner = q.quantizer
    i = rng.integers(-2, 4, (1, 12)).astype(np.float32)
    f = rng.integers(-1, 4, (1, 12)).astype(np.float32)
    f[0, :2] = -i[0, :2] - 1  # fewer than 1 bit: 0
    inner._i.assign(i)
    if q_type == "kif":
        inner._f.assign(f)
    else:
        inner._b.assign(i + f)
    model.save(tmp_path / "q.keras")
    x = np.concatenate([rng.normal(0, 4, (500, 12)), np.arange(-96, 96).reshape(16, 12) / 8.0]).astype(np.float32)
    graph, ref, got = _compare(model, tmp_path / "q.keras", x)
    np.testing.assert_array_equal(got, ref)
    node = _quant_nodes(graph)["quant"]
    assert node.attrs["rounding"] == {"S_RND": "AP_RND"}.get(rnd, f"AP_{rnd}")
    assert node.attrs["overflow"] == f"AP_{ovf}"
    assert np.any(ref == 0) and len(np.unique(ref)) > 12


def test_unary_lut_and_batchnorm_dense(tmp_path: Path) -> None:
    """QUnaryFunctionLUT (input and table quantizers around the activation) and
    QBatchNormDense (HGQ2's fused, quantized kernel and bias)."""
    import keras
    from hgq.layers import QBatchNormDense, QUnaryFunctionLUT

    H._seed(1)
    inp = keras.Input((16,), name="features")
    x = QBatchNormDense(8)(inp)
    x = QUnaryFunctionLUT("relu")(x)
    out = QBatchNormDense(5)(x)
    model = keras.Model(inp, out)
    xs, ys = H.jet_data(2000)
    H.train(model, xs, ys, epochs=2)
    model.save(tmp_path / "m.keras")
    xt, _ = H.jet_data(N_COMPARE, seed=5)
    graph, ref, got = _compare(model, tmp_path / "m.keras", xt)
    np.testing.assert_array_equal(got, ref)
    assert "q_unary_function_lut/oq" in _quant_nodes(graph)


def test_merges_and_batchnorm(tmp_path: Path) -> None:
    """QAdd, QSubtract, QMultiply, QMaximum (one quantizer per input) and QBatchNormalization
    (quantized scale and offset, as affine) on a trained branching model."""
    import keras
    from hgq.layers import QAdd, QBatchNormalization, QDense, QMaximum, QMultiply, QSubtract

    H._seed(1)
    inp = keras.Input((16,), name="features")
    a = QDense(16, activation="relu")(inp)
    x = QBatchNormalization(name="bn")(QAdd(name="sum")([a, QDense(16)(inp)]))
    y = QMultiply()([x, QDense(16)(inp)])
    z = QMaximum()([x, QSubtract()([y, a])])
    model = keras.Model(inp, QDense(5, name="logits")(z))
    xs, ys = H.jet_data(3000)
    assert H.train(model, xs, ys, epochs=3) > 0.8
    model.save(tmp_path / "m.keras")
    xt, _ = H.jet_data(N_COMPARE, seed=5)
    graph, ref, got = _compare(model, tmp_path / "m.keras", xt)
    np.testing.assert_array_equal(got, ref)
    assert sorted(n.op for n in graph.nodes if n.op != "fixed_quant") == ["add", "affine", "dense", "dense", "dense",
                                                                          "dense", "maximum", "mul", "sub"]
    quants = _quant_nodes(graph)
    assert {"sum/iq0", "sum/iq1", "bn/iq", "bn/scale/q", "bn/offset/q"} <= set(quants)


# ------------------------------------------------------------------ refusals
def _save(model, path: Path) -> Path:
    model.save(path)
    return path


def test_float_quantizer_refused(tmp_path: Path) -> None:
    """A minifloat quantizer (HGQ2 0.2.0 cannot build its weight form, so the config is edited):
    refused from the config, naming the layer and the quantizer, before Keras builds anything."""
    import keras
    from hgq.layers import QDense

    inp = keras.Input((4,))
    path = _save(keras.Model(inp, QDense(3, name="fq")(inp)), tmp_path / "ok.keras")

    def to_float(cfg):
        cfg["config"]["layers"][1]["config"]["kq_conf"]["config"]["q_type"] = "float"

    with pytest.raises(FrontendError, match=r"layer 'fq' \(QDense, HGQ2\): its kq quantizer is a 'float' quantizer"):
        load_model(_rewrite_config(path, tmp_path / "f.keras", to_float))

    def wrap_sm(cfg):
        cfg["config"]["layers"][1]["config"]["iq_conf"]["config"]["overflow_mode"] = "WRAP_SM"

    with pytest.raises(FrontendError, match="its iq quantizer overflows with 'WRAP_SM'"):
        load_model(_rewrite_config(path, tmp_path / "w.keras", wrap_sm))


def test_unsupported_hgq2_layer_cli(tmp_path: Path) -> None:
    """Acceptance 7: an HGQ2 layer tapeout (and so hls4ml through it) cannot take: one line, exit 2,
    the layer named, before Keras builds anything."""
    import keras
    from hgq.layers import QDense, QEinsumDense

    inp = keras.Input((4, 6))
    x = QEinsumDense("abc,cd->abd", output_shape=(4, 3), name="mixer")(inp)
    out = QDense(2)(keras.layers.Flatten()(x))
    path = _save(keras.Model(inp, out), tmp_path / "e.keras")
    code, out_text, err = run_cli("compile", path, "-t", "hls4ml", "-o", tmp_path / "o")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert "'mixer' (QEinsumDense, HGQ2) is not supported" in err and "QDense" in err
    assert "Traceback" not in err


def _rewrite_config(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(members["config.json"])
    edit(cfg)
    members["config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    return dst


def test_forged_hgq2_entries_refused(tmp_path: Path) -> None:
    """The gate takes HGQ2 classes by registered name and module only: a layer that claims an
    hgq> name from another module, or an object registered elsewhere, is refused as code."""
    import keras
    from hgq.layers import QDense

    inp = keras.Input((4,))
    path = _save(keras.Model(inp, QDense(3, name="d")(inp)), tmp_path / "ok.keras")
    load_model(path)  # the untouched file loads

    def other_module(cfg):
        cfg["config"]["layers"][1]["module"] = "os.path"

    with pytest.raises(FrontendError, match="which HGQ2 does not use"):
        load_model(_rewrite_config(path, tmp_path / "a.keras", other_module))

    def foreign_object(cfg):
        kq = cfg["config"]["layers"][1]["config"]["kq_conf"]["config"]
        kq["bc"] = {"module": "builtins", "class_name": "eval", "config": {}, "registered_name": "eval"}

    with pytest.raises(FrontendError, match="custom object|names module"):
        load_model(_rewrite_config(path, tmp_path / "b.keras", foreign_object))

    def unlisted(cfg):
        layer = cfg["config"]["layers"][1]
        layer["class_name"], layer["registered_name"] = "QSoftmax", "hgq>QSoftmax"

    with pytest.raises(FrontendError, match=r"'d' \(QSoftmax, HGQ2\) is not supported"):
        load_model(_rewrite_config(path, tmp_path / "c.keras", unlisted))


def test_layer_lists_agree() -> None:
    from tapeout.compiler.frontends.hgq2_layers import HGQ2_LAYERS
    from tapeout.runtime.hgq2_files import HGQ2_LAYERS as GATE

    assert tuple(sorted(GATE)) == HGQ2_LAYERS


def _count_config_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every open of config.json in a .keras file from now on (not Keras's reads of the gate's
    rebuilt in-memory archive, which has no file name)."""
    opened: list[str] = []
    original = zipfile.ZipFile.open

    def counting(self, name, *args, **kwargs):
        if getattr(name, "filename", name) == "config.json" and self.filename:
            opened.append(str(self.filename))
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", counting)
    return opened


def test_config_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each .keras file's config.json is read once per load, HGQ2 or plain: the gate's read
    also decides which front end's check applies (the HGQ2 test used to read it first)."""
    import keras
    from hgq.layers import QDense

    inp = keras.Input((4,))
    hgq_path = _save(keras.Model(inp, QDense(3, name="d")(inp)), tmp_path / "h.keras")
    inp = keras.Input((4,))
    plain = _save(keras.Model(inp, keras.layers.Dense(3, name="d")(inp)), tmp_path / "p.keras")
    opened = _count_config_reads(monkeypatch)
    graph, _ = load_model(hgq_path)
    assert opened == [str(hgq_path)]
    assert graph.metadata["quantization_aware"] == "hgq2" and graph.metadata["source_format"] == "keras"
    assert [n.op for n in graph.nodes if n.op == "fixed_quant"]
    graph, _ = load_model(plain)
    assert opened == [str(hgq_path), str(plain)]
    assert "quantization_aware" not in graph.metadata and [n.op for n in graph.nodes] == ["dense"]


def test_missing_hgq2_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An HGQ2 file without hgq2 installed: MissingToolError (exit 3) naming the extra."""
    import keras
    from hgq.layers import QDense

    from tapeout.compiler.errors import MissingToolError

    inp = keras.Input((4,))
    path = _save(keras.Model(inp, QDense(3, name="d")(inp)), tmp_path / "m.keras")
    monkeypatch.setitem(sys.modules, "hgq", None)  # import hgq raises ImportError
    with pytest.raises(MissingToolError, match=r"m.keras is an HGQ2 model: reading it needs hgq2 \(pip install"):
        load_model(path)


# ------------------------------------------------------------------- qkeras
_ISOLATION = r"""
import sys
import numpy as np
import keras
from tapeout.compiler.frontends.loader import load_model
from tapeout.compiler.interpreter import run
from tapeout.runtime.model_files import load_keras_model
g, _ = load_model({hgq!r})
print("after hgq2 load:", "qkeras" in sys.modules)
import qkeras  # the shim hgq2 installs: importing it must change nothing tapeout reads
g2, _ = load_model({plain!r})
x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
ref = np.asarray(load_keras_model({plain!r}).model(x, training=False))
got = run(g2, {{g2.inputs[0]: x}})[g2.outputs[0]]
print("plain keras exact:", bool(np.array_equal(ref, got)), [n.op for n in g2.nodes])
"""


def test_qkeras_shim_isolated(tmp_path: Path) -> None:
    """Reading an HGQ2 model never imports the qkeras shim; with the shim imported, the Keras
    front end reads a plain model as before, and a file naming the shim's classes is refused."""
    import keras
    from hgq.layers import QDense

    inp = keras.Input((4,))
    hgq_path = _save(keras.Model(inp, QDense(3)(inp)), tmp_path / "h.keras")
    inp = keras.Input((4,))
    plain = _save(keras.Model(inp, keras.layers.Dense(3, activation="relu")(inp)), tmp_path / "p.keras")
    script = _ISOLATION.format(hgq=str(hgq_path), plain=str(plain))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "after hgq2 load: False" in res.stdout
    assert "plain keras exact: True ['dense']" in res.stdout

    def shim_object(cfg):
        layer = cfg["config"]["layers"][1]
        layer["config"]["kernel_initializer"] = {"module": "qkeras.quantizers.quantized_bits",
                                                 "class_name": "quantized_bits", "config": {},
                                                 "registered_name": "hgq/qkeras>quantized_bits"}

    with pytest.raises(FrontendError, match="custom object"):
        load_model(_rewrite_config(plain, tmp_path / "s.keras", shim_object))
