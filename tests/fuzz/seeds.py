"""Seed corpora for the fuzzers: small, valid inputs of every parser (samples and test-sized models).

Each seed is a ``Case``: the files of one input (name -> bytes). Built once per process and cached.
"""

from __future__ import annotations

import io
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PARSERS = ("onnx", "keras3", "legacy-h5", "json", "data")
# The model every data file is checked against (dynamic batch, input "x" [N, 4], output [N, 3]).
DATA_MODEL = "data_model.onnx"
Case = dict  # file name -> bytes


def _onnx_models() -> list[bytes]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def model(nodes, inits, in_shape, out_shape, opset=17):
        g = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="tapeout-fuzz")
        onnx.checker.check_model(m)
        return m.SerializeToString()

    mlp = model([helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
                 helper.make_node("MatMul", ["r", "w2"], ["m"]), helper.make_node("Softmax", ["m"], ["y"], axis=1)],
                {"w": rng.standard_normal((8, 4)), "b": rng.standard_normal(8), "w2": rng.standard_normal((8, 3))},
                ["N", 4], ["N", 3])
    cnn = model([helper.make_node("Conv", ["x", "k", "kb"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
                 helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["n"]),
                 helper.make_node("Relu", ["n"], ["r"]), helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2],
                                                                          strides=[2, 2]),
                 helper.make_node("Reshape", ["p", "shape"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["y"])],
                {"k": rng.standard_normal((2, 1, 3, 3)), "kb": np.zeros(2), "s": np.ones(2), "bb": np.zeros(2),
                 "mu": np.zeros(2), "var": np.ones(2), "shape": np.array([1, 32]),
                 "w": rng.standard_normal((32, 3)), "b": np.zeros(3)},
                [1, 1, 8, 8], [1, 3], opset=13)
    # Reshape's shape must stay int64.
    m = onnx.load_from_string(cnn)
    for t in m.graph.initializer:
        if t.name == "shape":
            t.CopyFrom(numpy_helper.from_array(np.array([1, 32], np.int64), "shape"))
    cnn = m.SerializeToString()
    data_model = model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                       {"w": rng.standard_normal((4, 3))}, ["N", 4], ["N", 3])
    return [mlp, cnn, data_model]


def _tf_keras_models() -> list:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((6,), name="x")
    h = tf_keras.layers.Dense(5, activation="relu", name="d1")(inp)
    mlp = tf_keras.Model(inp, tf_keras.layers.Dense(3, activation="softmax", name="d2")(h), name="mlp")
    seq = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Conv2D(2, 3, name="c"),
                               tf_keras.layers.BatchNormalization(name="bn"), tf_keras.layers.MaxPooling2D(name="p"),
                               tf_keras.layers.Flatten(name="f"), tf_keras.layers.Dense(2, name="o")], name="cnn")
    return [mlp, seq]


def _h5_bytes(save) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.h5"
        save(p)
        return p.read_bytes()


def _npz(**arrays) -> bytes:
    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


def _npy(a) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


@lru_cache(maxsize=None)
def seeds(parser: str) -> tuple[Case, ...]:
    """The seed cases of one parser (see PARSERS); their HDF5 files are marked well-formed for editing."""
    from tests.fuzz.mutators import trust_h5

    cases = _seeds(parser)
    for case in cases:
        for name, data in case.items():
            if name.endswith(".h5"):
                trust_h5(data)
            elif name.endswith(".keras"):
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    trust_h5(z.read("model.weights.h5"))
    return cases


def _seeds(parser: str) -> tuple[Case, ...]:
    if parser == "onnx":
        return tuple({"model.onnx": m} for m in _onnx_models())
    if parser == "keras3":
        return tuple({"model.keras": (ROOT / "samples" / s / "model.keras").read_bytes()}
                     for s in ("jet_mlp", "conv1d_signals", "conv2d_shapes"))
    if parser == "legacy-h5":
        return tuple({"model.h5": _h5_bytes(lambda p, m=m: m.save(p, save_format="h5"))} for m in _tf_keras_models())
    if parser == "json":
        return tuple({"arch.json": m.to_json().encode(), "weights.h5": _h5_bytes(m.save_weights)}
                     for m in _tf_keras_models())
    if parser == "data":
        rng = np.random.default_rng(1)
        x = rng.standard_normal((5, 4)).astype(np.float32)
        buf = io.BytesIO()
        np.savez_compressed(buf, x=x, y=np.arange(5) % 3)
        return ({"eval.npz": _npz(x=x, y=np.arange(5) % 3)}, {"data.npy": _npy(x)},
                {"eval.npz": buf.getvalue()}, {"eval.npz": _npz(x=x.astype(np.float64), y=np.eye(3)[np.arange(5) % 3])})
    raise ValueError(f"unknown parser {parser!r}; one of {PARSERS}")


@lru_cache(maxsize=None)
def data_model() -> bytes:
    return _onnx_models()[2]


# ------------------------------------------------------- one input as bytes (for atheris)
def encode(case: Case) -> bytes:
    """A case as one byte string: a stored zip of its files (a single raw file for one-file cases)."""
    if len(case) == 1:
        return next(iter(case.values()))
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(case):
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), case[name])
    return b.getvalue()


def decode(parser: str, data: bytes) -> Case:
    """The inverse of encode, for ``parser``'s file names; bytes that do not unpack become its first file."""
    names = list(seeds(parser)[0])
    if len(names) == 1:
        name = names[0]
        if parser == "data":  # the suffix says how tapeout reads it: follow the bytes' magic
            name = "data.npy" if data[:6] == b"\x93NUMPY" else "eval.npz"
        return {name: data}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            case = {n: z.read(n) for n in names}
    except Exception:  # noqa: BLE001 - the harness's own decoding: any damage means "raw bytes"
        case = {names[0]: data, names[1]: b""}
    return case
