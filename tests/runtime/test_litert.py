"""LiteRTRunner: signature names, dynamic and fixed batches, int8/uint8 I/O with floats in and
out, backend fallback, errors, and an import that pulls in no TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tapeout.runtime.errors import RuntimeInputError, RuntimeUnavailable
from tapeout.runtime.runners.litert import LiteRTRunner, QuantizedPort, interpreter_class

W = np.array([[0.5, -1.0, 0.25], [1.5, 0.5, -0.5], [-0.75, 1.0, 1.0], [0.1, 0.2, 0.3]], np.float32)
B = np.array([0.1, -0.2, 0.05], np.float32)


def reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W + B, 0.0)


def _convert(batch: int | None = None, io: str | None = None) -> bytes:
    """y = relu(x @ W + B) for x [batch, 4] as .tflite; ``io`` "int8"/"uint8" makes it fully integer."""
    tf = pytest.importorskip("tensorflow")

    spec = tf.TensorSpec([batch, 4], tf.float32, name="x")

    @tf.function(input_signature=[spec])
    def serve(x):
        return {"y": tf.nn.relu(tf.matmul(x, tf.constant(W)) + tf.constant(B))}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], tf.Module())
    if io is not None:
        rng = np.random.default_rng(0)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rng.uniform(-2, 2, (1, 4)).astype(np.float32)] for _ in range(64))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = getattr(tf, io)
    return conv.convert()


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tflite")
    out = {}
    for key, kwargs in {"float": {}, "fixed": {"batch": 1}, "int8": {"io": "int8"}, "uint8": {"io": "uint8"}}.items():
        out[key] = folder / f"{key}.tflite"
        out[key].write_bytes(_convert(**kwargs))
    return out


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (n, 4)).astype(np.float32)


def test_float_model_names_specs_and_dynamic_batch(models) -> None:
    with LiteRTRunner(models["float"]) as runner:
        assert runner.name == "litert"
        (spec,) = runner.input_specs()
        assert (spec.name, spec.shape, spec.dtype) == ("x", ("N", 4), "float32")
        assert runner.output_names() == ["y"]
        for n in (1, 5, 33, 2):  # resized up and down
            y = runner.infer({"x": _x(n, seed=n)})["y"]
            assert y.shape == (n, 3) and y.dtype == np.float32
            np.testing.assert_allclose(y, reference(_x(n, seed=n)), rtol=1e-5, atol=1e-6)


def test_fixed_batch_model_runs_a_larger_feed_in_slices(models) -> None:
    with LiteRTRunner(models["fixed"]) as runner:
        assert runner.input_specs()[0].shape == (1, 4)
        np.testing.assert_allclose(runner.infer({"x": _x(3)})["y"], reference(_x(3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("io", ["int8", "uint8"])
def test_integer_io_takes_and_gives_floats(models, io: str) -> None:
    x = _x(40, seed=3)
    with LiteRTRunner(models[io]) as runner:
        assert runner.input_specs()[0].dtype == "float32"  # the runner quantizes
        y = runner.infer({"x": x})["y"]
    assert y.dtype == np.float32
    want = reference(x)
    step = (want.max() - want.min()) / 255
    assert np.abs(y - want).max() < 4 * step  # a few quantization steps of input and output
    assert np.mean(y.argmax(1) == want.argmax(1)) >= 0.95


def test_integer_io_matches_feeding_integers_by_hand(models) -> None:
    interp_cls, _ = interpreter_class()
    interp = interp_cls(model_path=str(models["int8"]))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    x = _x(1, seed=4)
    s, z = inp["quantization"]
    interp.set_tensor(inp["index"], np.clip(np.round(x / s) + z, -128, 127).astype(np.int8))
    interp.invoke()
    so, zo = out["quantization"]
    by_hand = (interp.get_tensor(out["index"]).astype(np.float32) - zo) * so
    with LiteRTRunner(models["int8"]) as runner:
        np.testing.assert_allclose(runner.infer({"x": x})["y"], by_hand, atol=so + 1e-7)


def test_quantize_rounds_half_away_from_zero_and_saturates() -> None:
    port = QuantizedPort("x", {"index": 0, "dtype": np.int8, "quantization": (0.5, 3), "shape": np.array([1, 4])})
    q = port.quantize(np.array([0.25, -0.25, 0.74, 1000.0, -1000.0], np.float32))
    assert q.dtype == np.int8 and q.tolist() == [4, 2, 4, 127, -128]
    np.testing.assert_array_equal(port.dequantize(np.array([3, 5], np.int8)), [0.0, 1.0])


def test_errors_are_runtime_input_errors(models, tmp_path) -> None:
    with LiteRTRunner(models["float"]) as runner:
        with pytest.raises(RuntimeInputError, match="no data for input"):
            runner.infer({"z": _x(1)})
        with pytest.raises(RuntimeInputError, match="rank"):
            runner.infer({"x": np.zeros((2, 2, 2), np.float32)})
        with pytest.raises(RuntimeInputError, match="could not run"):
            runner.infer({"x": np.zeros((2, 5), np.float32)})
    with pytest.raises(RuntimeInputError, match="no such"):
        LiteRTRunner(tmp_path / "missing.tflite").open()
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(RuntimeInputError, match="not a loadable TFLite model"):
        LiteRTRunner(bad).open()


def _hide(monkeypatch, *modules: str) -> None:
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # None in sys.modules makes `import m` fail


def test_falls_back_to_tf_lite_without_litert(models, monkeypatch) -> None:
    pytest.importorskip("tensorflow")
    _hide(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
          "tflite_runtime.interpreter")
    assert interpreter_class()[1] == "tf.lite"
    with LiteRTRunner(models["int8"]) as runner:
        assert runner.name == "tf.lite"
        y = runner.infer({"x": _x(6)})["y"]
    monkeypatch.undo()
    with LiteRTRunner(models["int8"], backend="litert") as litert:
        np.testing.assert_array_equal(litert.infer({"x": _x(6)})["y"], y)


def test_no_backend_is_runtime_unavailable(models, monkeypatch) -> None:
    _hide(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
          "tflite_runtime.interpreter", "tensorflow")
    with pytest.raises(RuntimeUnavailable, match="ai-edge-litert"):
        LiteRTRunner(models["float"]).open()
    with pytest.raises(ValueError, match="unknown TFLite backend"):
        interpreter_class("tvm")


def test_selected_by_suffix(models) -> None:
    from tapeout.runtime.runners.select import runner_for

    assert isinstance(runner_for(models["float"]), LiteRTRunner)


def test_runner_imports_no_tensorflow_compiler_or_targets(models) -> None:
    code = ("import sys; import numpy as np; from tapeout.runtime.runners.litert import LiteRTRunner; "
            f"r = LiteRTRunner({str(models['int8'])!r}); r.open(); r.infer({{'x': np.zeros((2, 4), np.float32)}}); "
            "bad = [m for m in sys.modules if m.startswith(('tensorflow', 'keras', 'tapeout.compiler', "
            "'tapeout.targets'))]; assert not bad, bad; print(r.name)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "litert"
