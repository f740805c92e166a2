"""Legacy Keras architecture JSON (Keras 1 and Keras <= 2.2.4) with weights .h5 in the old layouts.

No installed Keras writes these any more, so the JSON is written by hand as those versions
wrote it (a Sequential ``config`` that is a plain layer list; Keras 1 class names and
settings) and the weights with h5py in the old layout (``layer_names``/``weight_names`` at the
root or under ``model_weights``, Keras 1 weight names such as ``dense_1_W``). Every compiled
model is checked against a NumPy reference of the same weights, and against tf_keras where
tf_keras reads the file as it is.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from tapeout.compiler.cli import main
from tapeout.compiler.errors import FrontendError
from tapeout.compiler.frontends.keras import load_keras
from tapeout.compiler.reference_runner import ReferenceRunner
from tapeout.runtime.runners.onnxrt import OnnxRuntimeRunner

RNG = np.random.default_rng(13)


def _cli(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out, err)
    return code, out.getvalue(), err.getvalue()


def _he(*shape: int, fan_in: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _small(n: int) -> np.ndarray:
    return (RNG.standard_normal(n) * 0.1).astype(np.float32)


def _bn(n: int) -> list[np.ndarray]:
    return [RNG.uniform(0.7, 1.3, n).astype(np.float32), _small(n), _small(n),
            RNG.uniform(0.5, 2.0, n).astype(np.float32)]


def _write_weights(group: Any, layers: list[tuple[str, list[tuple[str, np.ndarray]]]]) -> None:
    """Keras 1 / Keras 2 weight layout: ``layer_names`` on ``group``, one subgroup per layer."""
    group.attrs["layer_names"] = [n.encode() for n, _ in layers]
    for name, weights in layers:
        g = group.create_group(name)
        g.attrs["weight_names"] = [w.encode() for w, _ in weights]
        for w, value in weights:
            g.create_dataset(w, data=value)


def _weights_file(path: Path, layers, attrs: dict[str, str] | None = None) -> Path:
    with h5py.File(path, "w") as f:
        _write_weights(f, layers)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v.encode()
    return path


# ------------------------------------------------------------- NumPy reference
def _conv2d_nhwc(x: np.ndarray, k: np.ndarray, b: np.ndarray, same: bool) -> np.ndarray:
    kh, kw = k.shape[:2]
    if same:
        x = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], h, w, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i:i + h, j:j + w, :] @ k[i, j]
    return out + b


def _conv1d_nwc(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    width = x.shape[1] - k.shape[0] + 1
    return sum(x[:, i:i + width, :] @ k[i] for i in range(k.shape[0])) + b


def _batch_norm(x: np.ndarray, gamma, beta, mean, var, eps: float, axis: int = -1) -> np.ndarray:
    shape = [1] * x.ndim
    shape[axis] = -1
    r = [v.reshape(shape) for v in (gamma, beta, mean, var)]
    return (x - r[2]) / np.sqrt(r[3] + eps) * r[0] + r[1]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _check(path: Path, weights: Path | None, reference, x: np.ndarray, *, targets=("onnx",), tf_keras_reads=False):
    """Import, compare with NumPy; compile through the CLI, check exit 0 and the artifact; tf_keras too."""
    graph = load_keras(path, weights)
    got = ReferenceRunner(graph, source_layout=True).infer({graph.inputs[0]: x})[graph.outputs[0]]
    want = reference(x.astype(np.float64))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    out = path.parent / f"{path.stem}-out"
    argv = ["compile", path, *(["--weights", weights] if weights else []),
            *[a for t in targets for a in ("-t", t)], "-o", out]
    code, stdout, err = _cli(*argv)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert all(t["verification"]["passed"] for t in report["targets"])
    assert all(t["verification"]["runner"].endswith("vs keras") for t in report["targets"])
    with OnnxRuntimeRunner(out / "onnx-fp32" / "model.onnx") as r:
        art = next(iter(r.infer({r.input_specs()[0].name: x}).values()))
    np.testing.assert_allclose(art, want, atol=2e-5, rtol=1e-4)
    if tf_keras_reads:  # the file as it is, through tf_keras's own readers
        import tf_keras

        if weights is None:
            model = tf_keras.models.load_model(str(path), compile=False)
        else:
            model = tf_keras.models.model_from_json(path.read_text())
            model.load_weights(str(weights))
        np.testing.assert_allclose(model(x, training=False).numpy(), want, atol=2e-5, rtol=1e-4)
    return graph, report


# ---------------------------------------------------- Keras <= 2.2.4 list form
def _keras2_list_mlp(tmp_path: Path) -> tuple[Path, Path, Any]:
    w1, b1, w2, b2 = _he(8, 16, fan_in=8), _small(16), _he(16, 4, fan_in=16) * 2, _small(4)
    arch = {"class_name": "Sequential", "keras_version": "2.1.6", "backend": "tensorflow", "config": [
        {"class_name": "Dense", "config": {
            "name": "dense_1", "trainable": True, "batch_input_shape": [None, 8], "dtype": "float32", "units": 16,
            "activation": "relu", "use_bias": True,
            "kernel_initializer": {"class_name": "VarianceScaling", "config": {
                "scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
            "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
            "bias_constraint": None}},
        {"class_name": "Dropout", "config": {"name": "dropout_1", "trainable": True, "rate": 0.5,
                                             "noise_shape": None, "seed": None}},
        {"class_name": "Dense", "config": {"name": "dense_2", "trainable": True, "units": 4,
                                           "activation": "softmax", "use_bias": True}},
    ]}
    path = tmp_path / "mlp_list.json"
    path.write_text(json.dumps(arch))
    weights = _weights_file(tmp_path / "mlp_list_weights.h5", [
        ("dense_1", [("dense_1/kernel:0", w1), ("dense_1/bias:0", b1)]), ("dropout_1", []),
        ("dense_2", [("dense_2/kernel:0", w2), ("dense_2/bias:0", b2)])],
        {"keras_version": "2.1.6", "backend": "tensorflow"})
    return path, weights, lambda x: _softmax(_relu(x @ w1 + b1) @ w2 + b2)


def test_list_style_sequential(tmp_path: Path) -> None:
    path, weights, reference = _keras2_list_mlp(tmp_path)
    x = RNG.standard_normal((5, 8)).astype(np.float32)
    graph, report = _check(path, weights, reference, x, targets=("onnx", "tflite:fp32"), tf_keras_reads=True)
    assert graph.metadata["source_format"] == "keras2-json"
    assert any("plain layer list" in n for n in report["notes"])


def test_list_style_sequential_full_h5(tmp_path: Path) -> None:
    """Keras 2.1 ``model.save``: the list-form model_config at the root, weights under model_weights."""
    json_path, weights, reference = _keras2_list_mlp(tmp_path)
    path = tmp_path / "mlp_list_full.h5"
    with h5py.File(path, "w") as f, h5py.File(weights, "r") as w:
        f.attrs["model_config"] = json_path.read_text().encode()
        f.attrs["keras_version"], f.attrs["backend"] = b"2.1.6", b"tensorflow"
        group = f.create_group("model_weights")
        for key in w:
            w.copy(w[key], group, name=key)
        for key, value in w.attrs.items():
            group.attrs[key] = value
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    graph, _ = _check(path, None, reference, x, tf_keras_reads=True)
    assert graph.metadata["source_format"] == "keras2-h5"


# ------------------------------------------------------------------- Keras 1
def _keras1_cnn(tmp_path: Path) -> tuple[Path, Path, Any]:
    """Convolution2D / BatchNormalization mode 0 / MaxPooling2D / Dropout p / Flatten / Dense output_dim."""
    k, b = _he(3, 3, 3, 4, fan_in=27), _small(4)
    bn = _bn(4)
    w, wb = _he(64, 5, fan_in=64) * 2, _small(5)
    none_regs = {"W_regularizer": None, "b_regularizer": None, "activity_regularizer": None, "W_constraint": None,
                 "b_constraint": None}
    arch = {"class_name": "Sequential", "config": [
        {"class_name": "Convolution2D", "config": {
            "name": "convolution2d_1", "trainable": True, "batch_input_shape": [None, 8, 8, 3],
            "input_dtype": "float32", "nb_filter": 4, "nb_row": 3, "nb_col": 3, "init": "glorot_uniform",
            "activation": "relu", "border_mode": "same", "subsample": [1, 1], "dim_ordering": "tf", "bias": True,
            **none_regs}},
        {"class_name": "BatchNormalization", "config": {
            "name": "batchnormalization_1", "trainable": True, "epsilon": 0.001, "mode": 0, "axis": -1,
            "gamma_regularizer": None, "beta_regularizer": None, "momentum": 0.99}},
        {"class_name": "MaxPooling2D", "config": {
            "name": "maxpooling2d_1", "trainable": True, "pool_size": [2, 2], "strides": [2, 2],
            "border_mode": "valid", "dim_ordering": "tf"}},
        {"class_name": "Dropout", "config": {"name": "dropout_1", "trainable": True, "p": 0.25}},
        {"class_name": "Flatten", "config": {"name": "flatten_1", "trainable": True}},
        {"class_name": "Dense", "config": {
            "name": "dense_1", "trainable": True, "output_dim": 5, "init": "glorot_uniform", "activation": "softmax",
            "bias": True, "input_dim": 64, **none_regs}},
    ]}
    path = tmp_path / "keras1_cnn.json"
    path.write_text(json.dumps(arch))
    weights = _weights_file(tmp_path / "keras1_cnn_weights.h5", [  # Keras 1: no keras_version, _W/_b names
        ("convolution2d_1", [("convolution2d_1_W", k), ("convolution2d_1_b", b)]),
        ("batchnormalization_1", [(f"batchnormalization_1_{n}", v)
                                  for n, v in zip(("gamma", "beta", "running_mean", "running_std"), bn)]),
        ("maxpooling2d_1", []), ("dropout_1", []), ("flatten_1", []),
        ("dense_1", [("dense_1_W", w), ("dense_1_b", wb)])])

    def reference(x):
        y = _batch_norm(_relu(_conv2d_nhwc(x, k, b, same=True)), *bn, eps=0.001)
        y = y.reshape(-1, 4, 2, 4, 2, 4).max(axis=(2, 4))
        return _softmax(y.reshape(len(x), -1) @ w + wb)

    return path, weights, reference


def test_keras1_sequential_cnn(tmp_path: Path) -> None:
    path, weights, reference = _keras1_cnn(tmp_path)
    x = RNG.standard_normal((3, 8, 8, 3)).astype(np.float32)
    graph, report = _check(path, weights, reference, x, targets=("onnx", "tflite:fp32"))
    assert [n.op for n in graph.nodes][:1] == ["conv"]
    assert any("Keras 1 layer names" in n for n in report["notes"])
    assert any(n.startswith("source runner: tf_keras") for n in report["notes"])


@pytest.mark.parametrize("stamp", [None, "1.2.2"])
def test_keras1_conv1d(tmp_path: Path, stamp: str | None) -> None:
    """Convolution1D from input_dim/input_length, its Keras 1.1+ kernel (length, 1, in, filters),
    MaxPooling1D pool_length; the weights file with no version, or stamped by Keras 1.2."""
    k4, b = _he(3, 1, 2, 6, fan_in=6), _small(6)
    w, wb = _he(24, 3, fan_in=24), _small(3)
    arch = {"class_name": "Sequential", "config": [
        {"class_name": "Convolution1D", "config": {
            "name": "convolution1d_1", "trainable": True, "nb_filter": 6, "filter_length": 3, "init": "uniform",
            "activation": "tanh", "border_mode": "valid", "subsample_length": 1, "W_regularizer": None,
            "b_regularizer": None, "activity_regularizer": None, "W_constraint": None, "b_constraint": None,
            "bias": True, "input_dim": 2, "input_length": 10}},
        {"class_name": "MaxPooling1D", "config": {"name": "maxpooling1d_1", "trainable": True, "pool_length": 2,
                                                  "stride": 2, "border_mode": "valid"}},
        {"class_name": "Flatten", "config": {"name": "flatten_1", "trainable": True}},
        {"class_name": "Dense", "config": {"name": "dense_1", "trainable": True, "output_dim": 3, "init": "uniform",
                                           "activation": "linear", "bias": True, "input_dim": 24}},
    ]}
    path = tmp_path / "keras1_conv1d.json"
    path.write_text(json.dumps(arch))
    weights = _weights_file(tmp_path / "keras1_conv1d_weights.h5", [
        ("convolution1d_1", [("convolution1d_1_W", k4), ("convolution1d_1_b", b)]), ("maxpooling1d_1", []),
        ("flatten_1", []), ("dense_1", [("dense_1_W", w), ("dense_1_b", wb)])],
        {"keras_version": stamp} if stamp else None)

    def reference(x):
        y = np.tanh(_conv1d_nwc(x, k4[:, 0], b))
        return y.reshape(len(x), 4, 2, 6).max(axis=2).reshape(len(x), -1) @ w + wb

    x = RNG.standard_normal((4, 10, 2)).astype(np.float32)
    _check(path, weights, reference, x)


def test_keras1_functional_merge_full_h5(tmp_path: Path) -> None:
    """A Keras 1 functional ``Model`` (InputLayer input_dtype, 3-element inbound nodes, Merge sum and
    concat) saved as one .h5: model_config at the root, weights under model_weights."""
    w1, b1, w2, b2 = _he(6, 8, fan_in=6), _small(8), _he(6, 8, fan_in=6), _small(8)
    w3, b3 = _he(16, 3, fan_in=16), _small(3)

    def dense(name, units, act, inbound):
        return {"class_name": "Dense", "name": name, "inbound_nodes": [[[n, 0, 0] for n in inbound]],
                "config": {"name": name, "trainable": True, "output_dim": units, "init": "glorot_uniform",
                           "activation": act, "W_regularizer": None, "b_regularizer": None,
                           "activity_regularizer": None, "W_constraint": None, "b_constraint": None,
                           "bias": True, "input_dim": None}}

    def merge(name, mode, inbound):
        return {"class_name": "Merge", "name": name, "inbound_nodes": [[[n, 0, 0] for n in inbound]],
                "config": {"name": name, "mode": mode, "concat_axis": -1, "dot_axes": -1, "output_shape": None,
                           "output_shape_type": "raw", "output_mask": None, "output_mask_type": "raw",
                           "mode_type": "raw", "arguments": {}}}

    arch = {"class_name": "Model", "keras_version": "1.2.2", "config": {
        "name": "model_1", "input_layers": [["input_1", 0, 0]], "output_layers": [["dense_3", 0, 0]],
        "layers": [
            {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [],
             "config": {"batch_input_shape": [None, 6], "input_dtype": "float32", "sparse": False,
                        "name": "input_1"}},
            dense("dense_1", 8, "relu", ["input_1"]), dense("dense_2", 8, "tanh", ["input_1"]),
            merge("merge_1", "sum", ["dense_1", "dense_2"]), merge("merge_2", "concat", ["merge_1", "dense_1"]),
            dense("dense_3", 3, "softmax", ["merge_2"])]}}
    path = tmp_path / "keras1_functional.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(arch).encode()
        _write_weights(f.create_group("model_weights"), [
            ("input_1", []), ("dense_1", [("dense_1_W", w1), ("dense_1_b", b1)]),
            ("dense_2", [("dense_2_W", w2), ("dense_2_b", b2)]), ("merge_1", []), ("merge_2", []),
            ("dense_3", [("dense_3_W", w3), ("dense_3_b", b3)])])

    def reference(x):
        d1, d2 = _relu(x @ w1 + b1), np.tanh(x @ w2 + b2)
        return _softmax(np.concatenate([d1 + d2, d1], axis=-1) @ w3 + b3)

    x = RNG.standard_normal((4, 6)).astype(np.float32)
    graph, _ = _check(path, None, reference, x)
    assert graph.metadata["source_format"] == "keras2-h5"
    assert {"add", "concat"} <= {n.op for n in graph.nodes}


def _keras1_th_cnn(tmp_path: Path, pad: bool) -> tuple[Path, Path, Any]:
    """dim_ordering 'th': NCHW input, kernels stored (out, in, rows, cols), BatchNormalization axis=1,
    Flatten in NCHW order, then Dense (and ZeroPadding2D + GlobalAveragePooling2D when ``pad``)."""
    k, b = _he(4, 3, 3, 3, fan_in=27), _small(4)  # Keras 1 'th' kernel layout
    bn = _bn(4)
    w, wb = _he(4 if pad else 64, 5, fan_in=64) * 2, _small(5)
    th = {"dim_ordering": "th"}
    layers = [
        {"class_name": "Convolution2D", "config": {
            "name": "convolution2d_1", "batch_input_shape": [None, 3, 8, 8], "input_dtype": "float32",
            "nb_filter": 4, "nb_row": 3, "nb_col": 3, "init": "glorot_uniform", "activation": "relu",
            "border_mode": "valid" if pad else "same", "subsample": [1, 1], "bias": True, "W_regularizer": None,
            **th}},
        {"class_name": "BatchNormalization", "config": {"name": "batchnormalization_1", "epsilon": 1e-3,
                                                        "mode": 0, "axis": 1, "momentum": 0.99}},
    ]
    if pad:
        layers += [{"class_name": "ZeroPadding2D", "config": {"name": "zeropadding2d_1", "padding": [1, 1], **th}},
                   {"class_name": "GlobalAveragePooling2D", "config": {"name": "globalaveragepooling2d_1", **th}}]
    else:
        layers += [{"class_name": "MaxPooling2D", "config": {"name": "maxpooling2d_1", "pool_size": [2, 2],
                                                             "strides": [2, 2], "border_mode": "valid", **th}},
                   {"class_name": "Flatten", "config": {"name": "flatten_1"}}]
    layers.append({"class_name": "Dense", "config": {"name": "dense_1", "output_dim": 5, "activation": "softmax",
                                                     "init": "glorot_uniform", "bias": True}})
    path = tmp_path / f"keras1_th_{pad}.json"
    path.write_text(json.dumps({"class_name": "Sequential", "config": layers}))
    weights = _weights_file(tmp_path / f"keras1_th_{pad}_weights.h5", [
        ("convolution2d_1", [("convolution2d_1_W", k), ("convolution2d_1_b", b)]),
        ("batchnormalization_1", [(f"batchnormalization_1_{n}", v)
                                  for n, v in zip(("gamma", "beta", "running_mean", "running_std"), bn)]),
        *[(entry["config"]["name"], []) for entry in layers[2:4]],
        ("dense_1", [("dense_1_W", w), ("dense_1_b", wb)])])

    def reference(x):  # NCHW throughout, as Keras 1 computed it
        nhwc = _conv2d_nhwc(x.transpose(0, 2, 3, 1), k.transpose(2, 3, 1, 0), b, same=not pad)
        y = _batch_norm(_relu(nhwc.transpose(0, 3, 1, 2)), *bn, eps=1e-3, axis=1)
        if pad:
            y = np.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1))).mean(axis=(2, 3))
        else:
            y = y.reshape(len(x), 4, 4, 2, 4, 2).max(axis=(3, 5)).reshape(len(x), -1)
        return _softmax(y @ w + wb)

    return path, weights, reference


@pytest.mark.parametrize("pad", [False, True])
def test_keras1_th_dim_ordering(tmp_path: Path, pad: bool) -> None:
    path, weights, reference = _keras1_th_cnn(tmp_path, pad)
    x = RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)
    graph, report = _check(path, weights, reference, x, targets=("onnx", "tflite:fp32"))
    assert graph.io_layouts[graph.inputs[0]] == "NCHW"
    assert graph.types[graph.inputs[0]].shape[1:] == (8, 8, 3)  # channels-last inside, as for NCHW ONNX
    assert any("through XLA" in n for n in report["notes"])


# ----------------------------------------------------------------- refusals
def _one_layer(tmp_path: Path, entry: dict, name: str = "m") -> tuple[Path, Path]:
    cfg = entry["config"]
    cfg.setdefault("batch_input_shape", [None, 4])
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"class_name": "Sequential", "config": [entry]}))
    weights = _weights_file(tmp_path / f"{name}_w.h5", [(cfg["name"], [])])
    return path, weights


@pytest.mark.parametrize("entry, match", [
    ({"class_name": "Dense", "config": {"name": "odd", "output_dim": 2, "W_learning_rate": 0.1}},
     r"'odd' \(Dense\): Keras 1 setting 'W_learning_rate' is not supported"),
    ({"class_name": "BatchNormalization", "config": {"name": "bn", "mode": 2, "axis": -1}},
     r"'bn' \(BatchNormalization\): setting 'mode'=2"),
    ({"class_name": "Convolution2D", "config": {"name": "conv", "nb_filter": 2, "nb_row": 1, "nb_col": 1,
                                                "dim_ordering": "default", "batch_input_shape": [None, 4, 4, 1]}},
     r"'conv' \(Convolution2D\): setting 'dim_ordering'='default'"),
    ({"class_name": "Convolution1D", "config": {"name": "c1", "nb_filter": 2, "filter_length": 3,
                                                "border_mode": "full", "batch_input_shape": [None, 5, 4]}},
     r"'c1' \(Convolution1D\): setting 'border_mode'='full'"),
    ({"class_name": "Merge", "config": {"name": "dot", "mode": "cos", "mode_type": "raw"}},
     r"'dot' \(Merge\): setting 'mode'='cos' is not supported"),
])
def test_unmapped_keras1_forms_refused(tmp_path: Path, entry: dict, match: str) -> None:
    path, weights = _one_layer(tmp_path, entry)
    with pytest.raises(FrontendError, match=match):
        load_keras(path, weights)
    code, _, err = _cli("compile", path, "--weights", weights, "-t", "onnx", "-o", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_list_style_lambda_and_merge_function_refused_without_running(tmp_path: Path) -> None:
    """The list form and Keras 1 Merge go through the same allow-list: code is never executed."""
    import marshal

    code_blob = marshal.dumps((lambda x: x).__code__).hex()  # what Keras 1 stored for a lambda
    lam = {"class_name": "Lambda", "config": {"name": "sneaky", "function": [code_blob, None, None],
                                              "function_type": "lambda", "output_shape": None,
                                              "output_shape_type": "raw", "arguments": {}}}
    path, weights = _one_layer(tmp_path, lam, "lam")
    with pytest.raises(FrontendError, match=r"'sneaky' \(Lambda\).*does not execute code"):
        load_keras(path, weights)
    merge = {"class_name": "Merge", "config": {"name": "fm", "mode": [code_blob, None, None],
                                               "mode_type": "lambda"}}
    path, weights = _one_layer(tmp_path, merge, "merge")
    with pytest.raises(FrontendError, match=r"'fm' \(Merge\).*does not execute code"):
        load_keras(path, weights)
    nested = {"class_name": "Sequential", "config": [
        {"class_name": "Sequential", "config": [dict(lam, config=dict(lam["config"], batch_input_shape=[None, 4]))]}]}
    path = tmp_path / "nested.json"
    path.write_text(json.dumps(nested))
    with pytest.raises(FrontendError, match=r"'sneaky' \(Lambda\)"):
        load_keras(path, weights)


def test_keras3_config_is_not_read_as_keras1() -> None:
    """Keras 2 and 3 keep gamma_regularizer, depthwise_constraint and the like: a Keras 3
    MobileNetV3 config is no legacy form (it was "translated", its keys checked against tf_keras
    after a 5 s import); only a Keras 1 value of those keys is."""
    from tapeout.runtime.runners.keras_legacy import translate

    root = Path(__file__).resolve().parents[2] / "corpus" / "keras" / "keras_mobilenetv3small.keras.json"
    cfg = json.loads(root.read_text())
    same, notes = translate(cfg)
    assert same is cfg and notes == []
    keras1_bn = {"class_name": "BatchNormalization", "config": {
        "name": "bn", "epsilon": 0.001, "axis": -1, "momentum": 0.99,
        "gamma_regularizer": {"name": "WeightRegularizer", "l1": 0.0, "l2": 0.01}, "beta_regularizer": None}}
    legacy = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 4]}}, keras1_bn]}}
    new, notes = translate(legacy)
    assert notes and "gamma_regularizer" not in new["config"]["layers"][1]["config"]
    assert new["config"]["layers"][1]["config"]["beta_regularizer"] is None
