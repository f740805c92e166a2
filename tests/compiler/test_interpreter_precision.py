"""The interpreter's float64 mode: the near-exact values verification's error model judges against."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler import kernels
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import BATCH, Activation, Graph, Node, TensorType
from tapeout.compiler.reference_runner import ReferenceRunner

RNG = np.random.default_rng(7)


def conv_dense_net() -> tuple[Graph, dict[str, np.ndarray]]:
    """x [N,6,6,2] -> conv 3x3 (pad 1) relu -> avg pool 2 -> flatten -> dense 18 -> softmax, float32 weights."""
    w = {"k": RNG.standard_normal((3, 3, 2, 4)).astype(np.float32),
         "kb": RNG.standard_normal(4).astype(np.float32),
         "d": (RNG.standard_normal((36, 18)) * 3).astype(np.float32),
         "db": RNG.standard_normal(18).astype(np.float32)}
    g = Graph("net", ["x"], ["p"])
    g.types["x"] = TensorType((BATCH, 6, 6, 2))
    for name, value in w.items():
        g.add_constant(name, value)
    g.nodes += [
        Node("conv", "conv", ["x", "k", "kb"], ["c"], {"pads": ((1, 1), (1, 1)), "activation": Activation("relu")}),
        Node("avg_pool", "pool", ["c"], ["a"], {"kernel": (2, 2), "strides": (2, 2)}),
        Node("flatten", "flat", ["a"], ["f"]),
        Node("dense", "dense", ["f", "d", "db"], ["z"]),
        Node("softmax", "softmax", ["z"], ["p"], {"axis": -1}),
    ]
    g.infer_shapes()
    g.check()
    return g, w


def numpy_float64(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The same net written out directly in float64 (loops over the kernel taps, no im2col)."""
    x = x.astype(np.float64)
    k, kb, d, db = (w[n].astype(np.float64) for n in ("k", "kb", "d", "db"))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    c = np.zeros((x.shape[0], 6, 6, 4))
    for i in range(3):
        for j in range(3):
            c += np.einsum("nhwc,cf->nhwf", xp[:, i:i + 6, j:j + 6, :], k[i, j])
    c = np.maximum(c + kb, 0)
    a = c.reshape(x.shape[0], 3, 2, 3, 2, 4).mean(axis=(2, 4))
    z = a.reshape(x.shape[0], -1) @ d + db
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_float64_mode_is_closer_to_float64_numpy_than_float32_mode():
    g, w = conv_dense_net()
    x = RNG.standard_normal((16, 6, 6, 2)).astype(np.float32)
    want = numpy_float64(w, x)
    y32 = run(g, {"x": x})["p"]
    y64 = run(g, {"x": x}, precision="float64")["p"]
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    err32, err64 = np.abs(y32 - want).max(), np.abs(y64 - want).max()
    assert err64 < 1e-12 < err32  # float64 agrees to float64 rounding, float32 does not
    assert err64 < err32 / 1e4
    np.testing.assert_allclose(y64, y32, rtol=1e-5, atol=1e-6)


def _affine_and_friends() -> Graph:
    """Ops beyond conv/dense, including binaries with a float32 constant and a concat."""
    g = Graph("misc", ["x"], ["y"])
    g.types["x"] = TensorType((BATCH, 5, 5, 3))
    scale = g.add_constant("s", RNG.standard_normal(3).astype(np.float32))
    shift = g.add_constant("t", RNG.standard_normal(3).astype(np.float32))
    bn = [g.add_constant(f"bn{i}", (RNG.random(3) + 0.5).astype(np.float32)) for i in range(4)]
    g.nodes += [
        Node("affine", "aff", ["x", scale, shift], ["a"]),
        Node("batch_norm", "bn", ["a", *bn], ["b"], {"epsilon": 1e-3}),
        Node("mul", "mul", ["b", scale], ["m"]),
        Node("sigmoid", "sig", ["m"], ["s1"]),
        Node("gelu", "gelu", ["b"], ["g1"]),
        Node("concat", "cat", ["s1", "g1"], ["c"], {"axis": -1}),
        Node("max_pool", "mp", ["c"], ["p"], {"kernel": (2, 2), "strides": (1, 1)}),
        Node("global_avg_pool", "gap", ["p"], ["y"]),
    ]
    g.infer_shapes()
    g.check()
    return g


@pytest.mark.parametrize("make", [lambda: conv_dense_net()[0], _affine_and_friends], ids=["conv_dense", "misc"])
def test_float64_agrees_with_float32_on_sample_graphs(make):
    g = make()
    x = RNG.standard_normal((4, *g.types["x"].shape[1:])).astype(np.float32)
    y32 = run(g, {"x": x})[g.outputs[0]]
    y64 = run(g, {"x": x}, precision="float64")[g.outputs[0]]
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, y32, rtol=1e-5, atol=1e-6)


def test_float64_intermediates_and_sample_model():
    pytest.importorskip("keras")
    from pathlib import Path

    from tapeout.compiler.frontends.loader import load_model

    sample = Path(__file__).resolve().parents[2] / "samples" / "digits_cnn"
    g, _ = load_model(sample / "model.keras")
    x = np.load(sample / "eval.npz")["x"][:32].astype(np.float32)
    env = run(g, {g.inputs[0]: x}, precision="float64", keep_intermediates=True)
    # Every float value computed is float64: no kernel fell back to float32.
    assert {v.dtype for v in env.values() if np.issubdtype(v.dtype, np.floating)} == {np.dtype(np.float64)}
    y32 = run(g, {g.inputs[0]: x})[g.outputs[0]]
    np.testing.assert_allclose(env[g.outputs[0]], y32, rtol=1e-5, atol=1e-6)


def test_precision_is_scoped_and_checked():
    g, _ = conv_dense_net()
    x = RNG.standard_normal((2, 6, 6, 2)).astype(np.float32)
    run(g, {"x": x}, precision="float64")
    assert kernels.compute_dtype() == np.float32  # restored after the run
    with kernels.precision("float64"):
        assert run(g, {"x": x})["p"].dtype == np.float32  # an explicit float32 run inside float64 mode
        assert kernels.compute_dtype() == np.float64
    with pytest.raises(ValueError, match="unknown precision"):
        run(g, {"x": x}, precision="float16")


def test_reference_runner_float64_source_layout():
    g, w = conv_dense_net()
    g.io_layouts["x"] = "NCHW"
    x = RNG.standard_normal((3, 2, 6, 6)).astype(np.float32)  # source layout
    with ReferenceRunner(g, source_layout=True, precision="float64") as r:
        assert r.input_specs()[0].dtype == "float32"  # fed as the source's dtype
        y = r.infer({"x": x})["p"]
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, numpy_float64(w, x.transpose(0, 2, 3, 1)), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="unknown precision"):
        ReferenceRunner(g, precision="half")
