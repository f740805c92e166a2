"""TFLite Micro aborts (SIGABRT, no message) on some int8 softmaxes that LiteRT runs: the two
TFLITE_CHECKs targets/tflite/mcu.py's ``known_aborts`` reads off the model, judged against the
real interpreter, always in a child process (the abort kills it).

- Prepare: beta * input scale * 2^26 must exceed 1. Random-weight MobileNetV2's logits span
  about 4e-11, its int8 softmax input scale is 3.9e-9 (TensorFlow's quantizer widens the range
  to 1e-6), and TFLite Micro aborts allocating it at any arena. TensorFlow's own converter, with
  a representative dataset, writes the same kind of model (scale 7.8e-9) and it aborts too: the
  model's degeneracy, not tapeout's quantization.
- Eval: the row's sum of exp(x - max) must stay under 512 (int8 output), so 512 tied classes
  abort every invoke that ties them.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tflite_micro", reason="tflite-micro is not installed (the tflite extra)")

from tapeout.targets.tflite import mcu  # noqa: E402

LIMIT = 2 ** -26  # the smallest softmax input scale (beta 1) TFLite Micro's Prepare accepts

# Allocates, then invokes on the int8 input given after the model (when there is one); prints
# how far it got. An abort leaves returncode -6.
_CHILD = """
import sys, numpy as np
from tflite_micro.python.tflite_micro import runtime
raw = sys.stdin.buffer.read()
n = int(sys.argv[1])
i = runtime.Interpreter.from_bytes(raw[:n], arena_size=1 << 20)
print("allocated", flush=True)
if len(raw) > n:
    d = i.get_input_details(0)
    i.set_input(np.frombuffer(raw[n:], d["dtype"]).reshape(d["shape"]), 0)
    i.invoke()
    print("invoked", flush=True)
"""


def _tflm(model: bytes, x: np.ndarray | None = None) -> tuple[int, list[str]]:
    extra = b"" if x is None else np.ascontiguousarray(x, np.int8).tobytes()
    p = subprocess.run([sys.executable, "-c", _CHILD, str(len(model))], input=model + extra, capture_output=True)
    return p.returncode, p.stdout.decode().split()


def softmax_model(depth: int, scale: float, beta: float = 1.0, log: bool = False) -> bytes:
    """One int8 SOFTMAX (or LOG_SOFTMAX) over [1, depth]: input (scale, zero point 0), output
    the fixed parameters TFLite gives it (1/256, -128; 16/256, 127)."""
    import flatbuffers

    from tapeout.targets.tflite.flatbuffer import schema

    s = schema()

    def tensor(name: str, buffer: int, sc: float, zp: int):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, np.array([1, depth], np.int32), s.TensorType.INT8, buffer
        t.quantization = s.QuantizationParametersT()
        t.quantization.scale, t.quantization.zeroPoint = [sc], [zp]
        return t

    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.array([0], np.int32), np.array([1], np.int32)
    if not log:
        op.builtinOptionsType = s.BuiltinOptions.SoftmaxOptions
        op.builtinOptions = s.SoftmaxOptionsT()
        op.builtinOptions.beta = beta
    graph = s.SubGraphT()
    out = tensor("probabilities", 2, 16 / 256, 127) if log else tensor("probabilities", 2, 1 / 256, -128)
    graph.tensors = [tensor("logits", 1, scale, 0), out]
    graph.inputs, graph.outputs, graph.operators = np.array([0], np.int32), np.array([1], np.int32), [op]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.LOG_SOFTMAX if log else s.BuiltinOperator.SOFTMAX
    code.version = 1
    model = s.ModelT()
    model.version, model.subgraphs, model.operatorCodes = 3, [graph], [code]
    model.buffers = [s.BufferT() for _ in range(3)]
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _spread(depth: int) -> np.ndarray:
    """The input whose exponentials sum least: one class at the top, the rest at the bottom."""
    x = np.full((1, depth), -128, np.int8)
    x[0, 0] = 127
    return x


# ------------------------------------------------------------------ the two checks, at their edges
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("factor", [0.99, 1.01])
def test_prepare_aborts_exactly_below_the_smallest_input_scale(factor, log) -> None:
    model = softmax_model(10, factor * LIMIT, log=log)
    code, got = _tflm(model, _spread(10))
    flagged = mcu.known_aborts(model)
    if factor < 1:
        assert code == -6 and got == [], (code, got)
        assert len(flagged) == 1 and f"{'LOG_' if log else ''}SOFTMAX 'probabilities' aborts in Prepare" in flagged[0]
    else:
        assert code == 0 and got == ["allocated", "invoked"], (code, got)
        assert flagged == []
    assert mcu.invoke_abort_risks(model) == []  # 10 classes never sum to 512


def test_beta_enters_the_prepare_check() -> None:
    model = softmax_model(10, 0.75 * LIMIT, beta=2.0)  # 1.5 with beta
    assert mcu.known_aborts(model) == []
    assert _tflm(model, _spread(10)) == (0, ["allocated", "invoked"])


def test_512_tied_classes_abort_every_invoke() -> None:
    depth = 600
    edge = math.log(depth / 512) / 255  # the input scale at which the spread input sums to 512
    # Below it even the most spread input sums to 512 or more: flagged, and it aborts.
    narrow = softmax_model(depth, 0.9 * edge)
    assert _tflm(narrow, _spread(depth)) == (-6, ["allocated"])
    (line,) = mcu.known_aborts(narrow)
    assert "'probabilities' aborts at every invoke" in line
    # Above it the spread input runs, a tied one aborts: a risk, not a certainty.
    wide = softmax_model(depth, 1.2 * edge)
    assert mcu.known_aborts(wide) == []
    assert _tflm(wide, _spread(depth)) == (0, ["allocated", "invoked"])
    assert _tflm(wide, np.zeros((1, depth), np.int8)) == (-6, ["allocated"])
    (risk,) = mcu.invoke_abort_risks(wide)
    assert "over 600 classes" in risk
    # 511 classes can never reach the sum
    assert mcu.invoke_abort_risks(softmax_model(511, 1e-3)) == []
    assert _tflm(softmax_model(511, 1e-3), np.zeros((1, 511), np.int8)) == (0, ["allocated", "invoked"])


# ------------------------------------------------------------------ tapeout's int8 of a vanishing network
def _vanishing_keras(path: Path) -> Path:
    """MobileNetV2's tail in small: a conv whose tiny weights leave its ReLU6 output near 0 (the
    random-weight network's signal vanishes the same way), pooled, dense, softmax."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu6", name="conv")(x)
    h = keras.layers.GlobalAveragePooling2D()(h)
    m = keras.Model(x, keras.layers.Dense(10, activation="softmax", name="predictions")(h))
    w, b = m.get_layer("conv").get_weights()
    m.get_layer("conv").set_weights([w * 1e-6, b])  # the logits span about 1e-7
    m.save(path)
    return path


@pytest.fixture(scope="module")
def vanishing(tmp_path_factory) -> tuple[Path, bytes]:
    from tapeout.compiler.api import compile_model

    tmp = tmp_path_factory.mktemp("vanishing")
    model = _vanishing_keras(tmp / "m.keras")
    compile_model(model, ["tflite:int8"], tmp / "out", calibration="synthetic", timings=False, cache=None,
                  target_options={"tflite": {"c_array": False}})
    return model, (tmp / "out" / "tflite-int8" / "model.tflite").read_bytes()


def test_tapeouts_int8_of_a_vanishing_network_is_named_before_tflm_aborts(vanishing) -> None:
    _, data = vanishing
    (line,) = mcu.known_aborts(data)
    # Keras numbers the model's name from a process-wide counter: functional_1, functional_29_1...
    assert re.search(r"int8 SOFTMAX '[\w]+/predictions_softmax_1/Softmax' aborts in Prepare", line), line
    # one line, the tensor named, instead of TFLite Micro's silent abort
    assert mcu.mcu_problem(data) == f"TFLite Micro ({mcu.TFLM_VERSION}) aborts on this model: {line}"
    # ... which is what the real interpreter does, at any arena
    assert _tflm(data) == (-6, [])
    from tapeout.runtime import tflm

    with pytest.raises(tflm.TflmError, match=r"crashed \(SIGABRT\)"):
        tflm.measure_arena(data)


def test_tensorflows_own_converter_makes_the_same_model(vanishing, tmp_path) -> None:
    """The oracle: TFLiteConverter with a representative dataset (full int8, float I/O) on the
    same Keras model gives a softmax input scale under 2^-26 as well, and TFLite Micro aborts."""
    import keras
    import tensorflow as tf

    path, _ = vanishing
    cal = np.random.default_rng(0).standard_normal((32, 8, 8, 3)).astype(np.float32)
    conv = tf.lite.TFLiteConverter.from_keras_model(keras.models.load_model(path))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([cal[i:i + 1]] for i in range(len(cal)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    theirs = conv.convert()
    (sm,) = mcu.quantized_softmaxes(theirs)
    assert sm.scale < LIMIT
    assert len(mcu.known_aborts(theirs)) == 1
    assert _tflm(theirs) == (-6, [])


def test_the_tflite_target_names_the_abort_and_mcu_refuses_it(vanishing, tmp_path) -> None:
    """Through the CLI: without tflite.mcu the build goes on and its report says which op TFLite
    Micro would abort on (no arena in model.h); with it, one line and exit 2."""
    import io
    import json

    from tapeout.compiler.cli import main

    model, _ = vanishing
    base = ["compile", str(model), "-t", "tflite:int8", "--calibration", "synthetic", "--no-cache", "--no-verify"]
    assert main([*base, "-o", str(tmp_path / "a"), "--json"], out=io.StringIO(), err=io.StringIO()) == 0
    (t,) = json.loads((tmp_path / "a" / "report.json").read_text())["targets"]
    assert t["tflite_micro"]["refused"].startswith("TFLite Micro aborts on this model: int8 SOFTMAX")
    err = io.StringIO()
    rc = main([*base, "-o", str(tmp_path / "b"), "--target-option", "tflite.mcu=true"], out=io.StringIO(), err=err)
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "aborts in Prepare" in lines[0], lines
