"""tflite:int8 and tflite:int16x8: built from the IR's annotations alone (no converter
calibration), exact scales and integers, matching the quantization simulation; --io;
acceptance 1 (digits accuracy and size), 3 (one calibration, the same ranges as onnx:int8)
and 6 (int8 I/O through the runner gives float I/O's top-1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.errors import UsageError
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import Activation, Graph
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize, SplitActivations, quantize_array, simulate
from tapeout.targets.base import EmitContext

from .params import details, layer_params

SAMPLE = Path(__file__).resolve().parents[3] / "samples" / "digits_cnn"


def annotate(graph: Graph, scheme: str = "int8", n: int = 64, exclude: tuple[str, ...] = ()) -> Graph:
    split = Pipeline([SplitActivations()]).run(graph).graph
    rng = np.random.default_rng(0)
    feeds = {i: rng.normal(size=(n, *split.types[i].shape[1:])).astype(np.float32) for i in split.inputs}
    return Pipeline([Quantize(scheme, exclude)]).run(calibrate(split, feeds, method="minmax")).graph


def cnn(cases) -> Graph:
    m = cases.GraphMaker(x=((8, 8, 3), "NHWC"))
    y = m.conv("x", 8, (3, 3), pads=((1, 1), (1, 1)), activation=Activation.of("relu"))
    y = m.conv(y, 8, (3, 3), groups=8, pads=((1, 1), (1, 1)), activation=Activation.of("clip", min=0.0, max=6.0))
    y = m.node("max_pool", y, kernel=(2, 2), strides=(2, 2))
    y = m.node("add", y, m.conv(y, 8, (1, 1)))
    y = m.node("global_avg_pool", y, keepdims=False)
    y = m.dense(y, 16, activation=Activation.of("relu"))
    y = m.dense(y, 5, activation=Activation.of("softmax", axis=-1))
    return m.done(y)


def emit(graph: Graph, folder: Path, variant: str = "int8", **options):
    from tapeout.targets.tflite.target import TfliteTarget

    folder.mkdir(parents=True, exist_ok=True)
    target = TfliteTarget(variant, **options)
    return target, target.emit(graph, EmitContext(folder))


@pytest.fixture(scope="module")
def int8_cnn(cases, tmp_path_factory):
    g = annotate(cnn(cases))
    folder = tmp_path_factory.mktemp("int8")
    target, result = emit(g, folder)
    return g, folder, target, result


def test_activations_carry_exactly_the_annotated_parameters(int8_cnn) -> None:
    g, folder, _, result = int8_cnn
    annotated = {(float(np.float32(tq.scale[0])), tq.zero_point[0]) for tq in g.quant.tensors.values()
                 if tq.role == "activation"}
    seen = set()
    for d in details(folder / "model.tflite"):
        if d["dtype"] == np.int8 and d["scales"].size == 1 and "pseudo_qconst" not in d["name"]:
            seen.add((float(d["scales"][0]), int(d["zps"][0])))
    # Every int8 activation in the model holds one of the IR's (scale, zero point) pairs, bit for bit.
    assert seen and seen <= annotated, seen - annotated
    assert result.extra["quantized_tensors"]["activations"] >= len(seen)
    assert result.extra["quantized_tensors"]["float_ops"] == 0
    assert "no converter calibration" in " ".join(result.notes)


def test_weights_are_the_annotated_integers(int8_cnn) -> None:
    g, folder, _, _ = int8_cnn
    weights = {c: tq for c, tq in g.quant.tensors.items() if tq.role == "weight"}
    by_scales = {d["scales"].tobytes(): d for d in details(folder / "model.tflite")
                 if d["value"] is not None and d["value"].dtype == np.int8}
    for c, tq in weights.items():
        d = by_scales[np.float32(tq.scale).tobytes()]  # the IR's per-channel scales, bit for bit
        q = quantize_array(g.constants[c], tq)
        # IR conv [*K, C, F] / dense [K, M] -> TFLite [F, *K, C] / [M, K]; depthwise [1, *K, F].
        layouts = [np.moveaxis(q, -1, 0)]
        if q.ndim == 4 and q.shape[2] == 1:
            layouts.append(q.reshape(1, *q.shape[:2], q.shape[-1]))
        assert any(w.shape == d["value"].shape and np.array_equal(w, d["value"]) for w in layouts), c


def test_int8_matches_the_quantization_simulation(int8_cnn) -> None:
    g, folder, target, _ = int8_cnn
    x = np.random.default_rng(5).normal(size=(32, 8, 8, 3)).astype(np.float32)
    with target.runner(folder) as runner:
        got = runner.infer({"x": x})[g.outputs[0]]
    sim, ref = simulate(g, {"x": x})[g.outputs[0]], run(g, {"x": x})[g.outputs[0]]
    step = g.quant.tensors[g.outputs[0]].scale[0]
    assert np.abs(got - sim).max() <= 3 * step
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.9


@pytest.mark.parametrize("io,dtype", [("int8", np.int8), ("uint8", np.uint8)])
def test_integer_io_types(cases, int8_cnn, tmp_path, io, dtype) -> None:
    g, folder, _, _ = int8_cnn
    target, result = emit(g, tmp_path, io=io)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tmp_path / "model.tflite"))
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert inp["dtype"] == dtype and out["dtype"] == dtype
    shift = 128 if io == "uint8" else 0
    tq = g.quant.tensors["x"]
    assert inp["quantization"] == (pytest.approx(np.float32(tq.scale[0])), tq.zero_point[0] + shift)
    assert result.extra["io"] == io
    x = np.random.default_rng(6).normal(size=(16, 8, 8, 3)).astype(np.float32)
    with target.runner(tmp_path) as runner, target.runner(folder) as float_io:
        assert runner.input_specs()[0].dtype == "float32"  # the runner quantizes
        a, b = runner.infer({"x": x})[g.outputs[0]], float_io.infer({"x": x})[g.outputs[0]]
    np.testing.assert_allclose(a, b, atol=2 * g.quant.tensors[g.outputs[0]].scale[0])


def test_int16x8_has_int16_activations_and_int64_biases(cases, tmp_path) -> None:
    g = annotate(cnn(cases), "int16x8")
    target, result = emit(g, tmp_path, "int16x8")
    tensors = details(tmp_path / "model.tflite")
    acts = [d for d in tensors if d["dtype"] == np.int16]
    assert acts and all(int(d["zps"][0]) == 0 for d in acts)  # symmetric int16
    biases = [d for d in tensors if d["dtype"] in (np.int32, np.int64) and d["scales"].size > 0]
    assert biases and all(d["dtype"] == np.int64 for d in biases)
    x = np.random.default_rng(7).normal(size=(16, 8, 8, 3)).astype(np.float32)
    with target.runner(tmp_path) as runner:
        got = runner.infer({"x": x})[g.outputs[0]]
    sim = simulate(g, {"x": x})[g.outputs[0]]
    assert np.abs(got - sim).max() < 2e-3  # int16 steps are 256x finer than int8's
    assert any("widened to int64" in n for n in result.notes)


def test_widened_model_keeps_buffers_16_byte_aligned(cases, tmp_path) -> None:
    from tapeout.targets.tflite.flatbuffer import schema

    g = annotate(cnn(cases), "int16x8")
    emit(g, tmp_path, "int16x8")
    s = schema()
    model = s.Model.GetRootAs(bytearray((tmp_path / "model.tflite").read_bytes()), 0)
    for i in range(model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.DataLength():
            start = buf._tab.Vector(buf._tab.Offset(4))  # the data vector's first byte
            assert start % 16 == 0, i


def test_integer_variants_are_deterministic(cases, tmp_path) -> None:
    from tapeout.targets.tflite import convert

    for variant in ("int8", "int16x8"):
        g = annotate(cnn(cases), variant)
        emit(g, tmp_path / "a" / variant, variant)
        convert.clear_cache()
        emit(g.copy(), tmp_path / "b" / variant, variant)
        for name in ("model.tflite", "model.cc"):
            assert (tmp_path / "a" / variant / name).read_bytes() == (tmp_path / "b" / variant / name).read_bytes()


def test_refusals(cases, tmp_path) -> None:
    from tapeout.targets.tflite.target import TfliteTarget

    plain = cnn(cases)
    with pytest.raises(UsageError, match="annotated by the quantize pass"):
        TfliteTarget("int8").emit(plain, EmitContext(tmp_path))
    with pytest.raises(UsageError, match="annotated by the quantize pass"):
        TfliteTarget("int16x8").emit(annotate(plain, "int8"), EmitContext(tmp_path))
    with pytest.raises(UsageError, match="takes --io float or int16"):
        TfliteTarget("int16x8", io="uint8")
    with pytest.raises(UsageError, match="tflite: option io: expected one of float, int8, uint8, int16"):
        TfliteTarget("fp32", io="int4")


def test_kept_float_layer(cases, tmp_path) -> None:
    g = annotate(cnn(cases), exclude=("dense",))
    target, result = emit(g, tmp_path)
    assert any("kept float by request: dense" in n for n in result.notes)
    x = np.random.default_rng(8).normal(size=(16, 8, 8, 3)).astype(np.float32)
    with target.runner(tmp_path) as runner:
        got = runner.infer({"x": x})[g.outputs[0]]
    want = run(g, {"x": x})[g.outputs[0]]
    assert float(np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want)) > 0.99


def test_kept_float_softmax_runs_in_float(cases, tmp_path) -> None:
    from tapeout.targets.tflite.flatbuffer import read_model

    g = annotate(cnn(cases), exclude=("dense_1/softmax",))  # the split-off softmax of the last dense
    target, result = emit(g, tmp_path)
    info = read_model((tmp_path / "model.tflite").read_bytes())
    (softmax,) = [o for o in info.ops if o.op == "SOFTMAX"]
    assert info.tensors[softmax.outputs[0]].dtype == "FLOAT32"  # TFLite would give it int8 1/256 otherwise
    assert result.extra["quantized_tensors"]["fixed_outputs_quantized"] == 0
    x = np.random.default_rng(9).normal(size=(16, 8, 8, 3)).astype(np.float32)
    with target.runner(tmp_path) as runner:
        got = runner.infer({"x": x})[g.outputs[0]]
    np.testing.assert_allclose(got, simulate(g, {"x": x})[g.outputs[0]], atol=0.02)
    assert got.min() > 0  # float probabilities, not int8 steps of 1/256 rounding small ones to 0


def test_near_empty_ranges_are_reported_not_refused(cases, tmp_path) -> None:
    m = cases.GraphMaker(x=((4, 4, 2), "NHWC"))
    y = m.node("affine", "x", m.const((), scale=0.0, offset=1e-8), m.const((), scale=0.0))  # x * 1e-8: dead
    y = m.node("add", m.conv(y, 2, (1, 1)), m.conv("x", 2, (1, 1)))
    g = annotate(m.done(y))
    _, result = emit(g, tmp_path)
    assert result.extra["quantized_tensors"]["widened"] >= 1
    assert any("narrower than 1e-6" in n for n in result.notes)


# ------------------------------------------------------------- digits sample
@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """onnx:int8, tflite:int8 and tflite:int8 with int8 I/O from one command's calibration."""
    from tapeout.compiler.api import compile_model

    out = tmp_path_factory.mktemp("digits")
    common = dict(calibration=SAMPLE / "calibration.npz", eval_data=SAMPLE / "eval.npz")
    report = compile_model(SAMPLE / "model.keras", ["onnx:int8", "tflite:int8", "tflite:fp32"], out / "float_io",
                           **common)
    int_io = compile_model(SAMPLE / "model.keras", ["tflite:int8"], out / "int_io",
                           target_options={"tflite": {"io": "int8"}}, **common)
    return out, report, int_io


def test_acceptance_1_digits_int8_keeps_accuracy_and_is_small(digits, tmp_path) -> None:
    out, report, _ = digits
    assert report.passed
    t = {f"{r.target}:{r.variant}": r for r in report.targets}
    acc = t["tflite:int8"].verification.accuracy
    assert acc["source"] - acc["artifact"] <= 0.005
    # No larger than TensorFlow's own full-integer conversion of the same Keras model.
    tf = pytest.importorskip("tensorflow")
    import keras

    model = keras.saving.load_model(SAMPLE / "model.keras")
    cal = np.load(SAMPLE / "calibration.npz")["x"]
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([cal[i:i + 1]] for i in range(len(cal)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    reference_size = len(conv.convert())
    ours = (out / "float_io" / "tflite-int8" / "model.tflite").stat().st_size
    assert ours <= reference_size, (ours, reference_size)
    assert ours < 0.45 * t["tflite:fp32"].size_bytes


def _onnx_params(folder: Path, tensor: str) -> tuple[float, int]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(folder / "model.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in (tensor, f"{tensor}/float"):
            return float(inits[n.input[1]]), int(inits[n.input[2]])
    raise KeyError(tensor)


def test_acceptance_3_one_calibration_same_ranges_in_tflite_and_onnx(digits) -> None:
    from tapeout.compiler.stages.data import BuildData
    from tapeout.compiler.stages.quantize import quantize
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.registry import default_pipeline

    out, report, int_io = digits
    graph = default_pipeline().run(load_model(SAMPLE / "model.keras")[0]).graph
    annotated = quantize(graph, _int8_chosen(), BuildData(SAMPLE / "calibration.npz"), "minmax", None, (),
                         lambda _: None)["int8"][0]
    # The chosen tensor: relu2, conv3's output (a calibrated range, not one its op fixes).
    tq = annotated.quant.tensors["relu2"]
    producer = annotated.producers()["relu2"].name
    want = (float(np.float32(tq.scale[0])), tq.zero_point[0])
    assert layer_params(out / "float_io" / "tflite-int8", producer) == want
    assert _onnx_params(out / "float_io" / "onnx-int8", "relu2") == want
    # And the graph input, which the int8-I/O model stores on its input tensor.
    from ai_edge_litert.interpreter import Interpreter

    (inp,) = Interpreter(model_path=str(out / "int_io" / "tflite-int8" / "model.tflite")).get_input_details()
    tq_in = annotated.quant.tensors["image"]
    assert inp["quantization"] == (float(np.float32(tq_in.scale[0])), tq_in.zero_point[0])
    assert _onnx_params(out / "float_io" / "onnx-int8", "image") == inp["quantization"]


def _int8_chosen():
    from tapeout.targets.onnx.target import OnnxTarget
    from tapeout.targets.tflite.target import TfliteTarget

    return [(OnnxTarget, "int8"), (TfliteTarget, "int8")]


def test_acceptance_6_int8_io_gives_float_io_top1(digits) -> None:
    out, report, int_io = digits
    from tapeout.runtime.runners.litert import LiteRTRunner

    x = np.load(SAMPLE / "eval.npz")["x"]
    with LiteRTRunner(out / "int_io" / "tflite-int8" / "model.tflite") as a, \
            LiteRTRunner(out / "float_io" / "tflite-int8" / "model.tflite") as b:
        ya, yb = a.infer({"image": x})["probabilities"], b.infer({"image": x})["probabilities"]
    assert np.array_equal(ya.argmax(1), yb.argmax(1))
    assert int_io.passed and int_io.targets[0].extra["io"] == "int8"


def test_verify_judges_quantized_artifacts_by_cosine_and_agreement(digits) -> None:
    """`tapeout verify SOURCE model.tflite|model.onnx`: quantized -> cosine/top-1, fp32 -> elementwise."""
    from tapeout.compiler.api import quantized_artifact, verify_artifact

    out, _, _ = digits
    folder = out / "float_io"
    data = SAMPLE / "eval.npz"
    assert quantized_artifact(folder / "tflite-fp32" / "model.tflite") is None
    for artifact in (folder / "tflite-int8" / "model.tflite", folder / "onnx-int8" / "model.onnx"):
        assert quantized_artifact(artifact) is not None
        result = verify_artifact(SAMPLE / "model.keras", artifact, data=data)
        (o,) = result.outputs
        assert result.passed and o.mismatches > 0  # elementwise it would fail; cosine/top-1 pass
        assert o.tolerance.min_cosine == 0.99 and o.tolerance.min_top1_agreement == 0.98
        assert any("judged by cosine" in n for n in result.notes)
        strict = verify_artifact(SAMPLE / "model.keras", artifact, data=data, atol=1e-4)
        assert not strict.passed and strict.outputs[0].tolerance.min_cosine is None
    fp32 = verify_artifact(SAMPLE / "model.keras", folder / "tflite-fp32" / "model.tflite", data=data)
    assert fp32.passed and fp32.outputs[0].tolerance.min_cosine is None
