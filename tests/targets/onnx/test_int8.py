"""onnx:int8: the QDQ model carries exactly the IR's annotations, runs on onnxruntime's integer
kernels, matches the quantization simulation; the compile flow around it (calibration flags,
refusals, report); and acceptance 3: one calibration, identical ranges in every artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import Activation, Graph, IRError, TensorQuant
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize, SplitActivations, simulate

from .conftest import logical_to_onnx, onnx_to_logical
from tests.cli_run import run_cli

SAMPLE = Path(__file__).resolve().parents[3] / "samples" / "digits_cnn"


def annotated(graph: Graph, n: int = 128, exclude: tuple[str, ...] = ()) -> Graph:
    split = Pipeline([SplitActivations()]).run(graph).graph
    feeds = {i: np.random.default_rng(0).normal(size=(n, *split.types[i].shape[1:])).astype(np.float32)
             for i in split.inputs}
    # Calibration data is in the source layout, as users' files are.
    feeds = {i: logical_to_onnx(split, i, a) for i, a in feeds.items()}
    return Pipeline([Quantize("int8", exclude)]).run(calibrate(split, feeds, method="minmax")).graph


def cnn(maker, layout: str = "NHWC", out_layout: str | None = None) -> Graph:
    m = maker(x=((8, 8, 3), layout))
    y = m.conv("x", 8, (3, 3), pads=((1, 1), (1, 1)), activation=Activation.of("relu"))
    y = m.node("max_pool", y, kernel=(2, 2), strides=(2, 2))
    y = m.conv(y, 8, (3, 3), pads=((1, 1), (1, 1)), activation=Activation.of("clip", min=0.0, max=6.0))
    if out_layout:  # a spatial graph output
        return m.done(y, layouts={y: out_layout})
    y = m.node("global_avg_pool", y, keepdims=False)
    y = m.dense(y, 16, activation=Activation.of("relu"))
    y = m.dense(y, 5, activation=Activation.of("softmax", axis=-1))
    return m.done(y, layouts={y: "NC"})


def session(model, optimized: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_onnx(graph: Graph, model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    outs = session(model).run(None, {i: logical_to_onnx(graph, i, a) for i, a in feeds.items()})
    return {o: onnx_to_logical(graph, o, a) for o, a in zip(graph.outputs, outs)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))


def onnx_qparams(model, tensor: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of the QuantizeLinear quantizing ``tensor`` (or DequantizeLinear producing it)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if (n.op_type == "QuantizeLinear" and n.input[0] in (tensor, f"{tensor}/float")) or \
                (n.op_type == "DequantizeLinear" and n.output[0] == tensor and n.input[0] in inits):
            return inits[n.input[1]], inits[n.input[2]]
    raise KeyError(f"no Q/DQ node for {tensor!r}")


def assert_params_equal(scale: np.ndarray, zero_point: np.ndarray, tq: TensorQuant) -> None:
    assert np.array_equal(np.asarray(scale, np.float32).ravel(), np.float32(tq.scale)), (scale, tq.scale)
    assert zero_point.dtype == np.dtype(tq.dtype) and list(np.ravel(zero_point)) == list(tq.zero_point)


# ------------------------------------------------------------------ emitter
def test_qdq_carries_exactly_the_ir_annotations(maker):
    from onnx import numpy_helper

    from tapeout.targets.onnx.qdq import graph_to_qdq

    g = annotated(cnn(maker))
    model = graph_to_qdq(g)
    tensors = g.quant.tensors
    for v, tq in tensors.items():
        if tq.role == "activation":
            assert_params_equal(*onnx_qparams(model, v), tq)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for c, tq in tensors.items():
        if tq.role in ("weight", "bias"):
            # The float constant (or its channels-first copy) is now an integer initializer read through DQ.
            name = next(o for o in dq if o == c or o.startswith(c + "/"))
            node = dq[name]
            q = inits[node.input[0]]
            assert q.dtype == np.dtype(tq.dtype)
            assert_params_equal(inits[node.input[1]], inits[node.input[2]], tq)
            readers = [n for n in model.graph.node if name in n.input]
            axis = {a.name: a.i for a in node.attribute}.get("axis")
            if tq.role == "bias":
                assert axis == 0
            elif readers[0].op_type == "Conv":
                assert axis == 0  # [F, C/g, kh, kw]
            else:
                assert readers[0].op_type == "Gemm" and axis == 1  # [K, M]
            assert not any(np.issubdtype(a.dtype, np.floating) and a.size > 1 and k.startswith(c)
                           for k, a in inits.items() if not k.endswith("/scale")), c
    assert [o.name for o in model.graph.output] == g.outputs and [i.name for i in model.graph.input] == g.inputs


def test_qdq_runs_integer_kernels_and_matches_the_simulation(maker, tmp_path):
    import onnx

    from tapeout.targets.onnx.qdq import graph_to_qdq

    g = annotated(cnn(maker))
    model = graph_to_qdq(g)
    session(model, tmp_path / "opt.onnx")
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert ops.count("QLinearConv") == 2 and ops.count("QGemm") == 2, ops
    assert "Conv" not in ops and "Gemm" not in ops, ops  # nothing fell back to float
    feeds = {"x": np.random.default_rng(5).normal(size=(64, 8, 8, 3)).astype(np.float32)}
    got, sim, ref = run_onnx(g, model, feeds), simulate(g, feeds), run(g, feeds)
    out = g.outputs[0]
    assert cosine(got[out], sim[out]) > 0.999
    assert cosine(got[out], ref[out]) > 0.99 and np.mean(got[out].argmax(1) == ref[out].argmax(1)) >= 0.9
    assert not np.allclose(got[out], ref[out], atol=1e-4)  # it really is quantized


def test_channels_first_io_and_a_quantized_spatial_output(maker):
    from tapeout.targets.onnx.qdq import graph_to_qdq

    g = annotated(cnn(maker, layout="NCHW", out_layout="NCHW"))
    model = graph_to_qdq(g)
    out = g.outputs[0]
    assert_params_equal(*onnx_qparams(model, out), g.quant.tensors[out])
    feeds = {"x": np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype(np.float32)}
    got, sim = run_onnx(g, model, feeds)[out], simulate(g, feeds)[out]
    step = g.quant.tensors[out].scale[0]
    assert np.abs(got - sim).max() <= 2 * step + 1e-6  # integer kernels round a step differently at most
    assert cosine(got, sim) > 0.999


def test_kept_float_layer_has_float_weights(maker, tmp_path):
    import onnx

    from tapeout.targets.onnx.qdq import graph_to_qdq

    g = annotated(cnn(maker), exclude=(cnn(maker).nodes[-1].name,))  # the classifier head
    head = g.quant.float_nodes[0]
    model = graph_to_qdq(g)
    gemm = next(n for n in model.graph.node if n.name == head)
    float_inits = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert gemm.input[1] in float_inits and gemm.input[2] in float_inits
    session(model, tmp_path / "opt.onnx")
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert ops.count("QGemm") == 1 and ops.count("Gemm") + ops.count("FusedGemm") == 1, ops


def test_qdq_is_deterministic_and_refuses_unannotated_graphs(maker):
    from tapeout.targets.onnx.qdq import graph_to_qdq

    g = cnn(maker)
    with pytest.raises(IRError, match="annotated by the quantize pass with scheme int8"):
        graph_to_qdq(g)
    a, b = annotated(g), annotated(cnn(maker))
    assert graph_to_qdq(a).SerializeToString() == graph_to_qdq(b).SerializeToString()


# --------------------------------------------------------------- compile flow


def one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tapeout: error:"), err
    for w in words:
        assert w in lines[0], (w, err)


def test_int8_without_calibration_is_refused_before_loading(tmp_path):
    code, _, err = run_cli("compile", tmp_path / "missing.keras", "-t", "onnx", "-t", "onnx:int8",
                           "-o", tmp_path / "o")
    assert code == 2
    one_line_error(err, "onnx:int8 quantizes activations", "--calibration DATA", "--calibration synthetic")
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli("compile", tmp_path / "m.keras", "-t", "onnx:int8", "-o", tmp_path / "o",
                           "--calibration", "synthetic", "--percentile", "99")
    assert code == 2
    one_line_error(err, "--percentile applies to --calibration-method percentile")


def test_fp32_only_ignores_no_calibration_but_refuses_keep_float():
    from tapeout.compiler.stages.data import BuildData
    from tapeout.compiler.stages.quantize import quantize as _quantize

    assert _quantize(Graph("g", [], []), [], BuildData(), "minmax", None, (), lambda s: None) == {}
    from tapeout.compiler.errors import UsageError
    from tapeout.targets.onnx.target import OnnxTarget

    with pytest.raises(UsageError, match="--keep-float applies to quantized targets"):
        _quantize(Graph("g", [], []), [(OnnxTarget, "fp32")], BuildData(), "minmax", None, ("a",), lambda s: None)


@pytest.fixture(scope="module")
def digits_build(tmp_path_factory):
    """The digits sample compiled to onnx:fp32 and onnx:int8 from its calibration split, verified on eval."""
    out = tmp_path_factory.mktemp("digits")
    code, stdout, err = run_cli("compile", SAMPLE / "model.keras", "-t", "onnx", "-t", "onnx:int8", "-o", out,
                                "--calibration", SAMPLE / "calibration.npz", "--eval", SAMPLE / "eval.npz")
    return code, stdout, err, out, json.loads((out / "report.json").read_text())


def test_digits_int8_verifies_is_smaller_and_keeps_accuracy(digits_build):
    code, stdout, err, out, report = digits_build
    assert code == 0, err
    fp32, int8 = report["targets"]
    assert (int8["target"], int8["variant"]) == ("onnx", "int8")
    v = int8["verification"]
    assert v["passed"] and v["cosine"] >= 0.99 and v["top1_agreement"] >= 0.99
    assert v["outputs"][0]["tolerance"]["min_cosine"] == 0.99  # judged by cosine/top-1, not elementwise
    assert v["accuracy"]["source"] - v["accuracy"]["artifact"] <= 0.005
    assert int8["size_bytes"] < 0.45 * fp32["size_bytes"]
    assert int8["quantization"]["calibration"] == {
        "method": "minmax", "percentile": None, "data": "calibration", "samples": 200,
        "file": str(SAMPLE / "calibration.npz")}
    assert "quantization" not in fp32 and fp32["verification"]["outputs"][0]["tolerance"]["min_cosine"] is None
    assert "quant   onnx:int8 int8, calibration minmax on 200 calibration samples" in stdout


@pytest.mark.parametrize("method, extra, keep, kept", [
    ("percentile", ["--percentile", "99.9"], "probabilities", ["probabilities", "probabilities/softmax"]),
    ("entropy", [], "probabilities/softmax", ["probabilities/softmax"]),  # a split-off activation alone
])
def test_synthetic_calibration_and_other_methods_are_recorded(tmp_path, method, extra, keep, kept):
    code, _, err = run_cli("compile", SAMPLE / "model.keras", "-t", "onnx:int8", "-o", tmp_path, "--no-verify",
                           "--calibration", "synthetic", "--calibration-method", method, *extra,
                           "--keep-float", keep)
    assert code == 0, err
    q = json.loads((tmp_path / "report.json").read_text())["targets"][0]["quantization"]
    assert q["calibration"]["data"] == "synthetic" and q["calibration"]["file"] is None
    assert q["calibration"]["method"] == method and q["calibration"]["samples"] == 32
    assert q["calibration"]["percentile"] == (99.9 if method == "percentile" else None)
    assert q["float_layers"] == kept


def test_unknown_keep_float_layer_is_a_usage_error(tmp_path):
    code, _, err = run_cli("compile", SAMPLE / "model.keras", "-t", "onnx:int8", "-o", tmp_path, "--no-verify",
                           "--calibration", "synthetic", "--keep-float", "nope")
    assert code == 2
    one_line_error(err, "--keep-float: no layer named 'nope'")


# --------------------------------------------------------------- acceptance 3
def _annotated_sample() -> Graph:
    """The sample's graph annotated with its calibration split (what compile does)."""
    from tapeout.compiler.calibration import source_specs
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.registry import default_pipeline
    from tapeout.runtime.data import load_data

    g, _ = load_model(SAMPLE / "model.keras")
    g = Pipeline([*default_pipeline().passes, SplitActivations()]).run(g).graph
    data = load_data(SAMPLE / "calibration.npz", source_specs(g), kind="calibration")
    return Pipeline([Quantize("int8")]).run(calibrate(g, data.feeds, method="minmax")).graph


def _onnx_int8_params(folder: Path, graph: Graph, tensor: str) -> tuple[np.ndarray, np.ndarray]:
    import onnx

    return onnx_qparams(onnx.load(folder / "model.onnx"), tensor)


def _tflite_int8_params(folder: Path, graph: Graph, tensor: str) -> tuple[np.ndarray, np.ndarray]:
    from ..tflite.params import tflite_params

    scale, zp = tflite_params(folder, graph, tensor)
    return np.float32(scale), np.int8(zp)


# One reader per quantized artifact: (scale, zero point) of an IR value in that artifact, given
# the annotated IR (artifacts that keep no IR value names find it through its producer).
# tensorrt:int8's model.onnx is the QDQ model the engine is built from (explicit quantization).
ARTIFACT_PARAMS = {"onnx:int8": _onnx_int8_params, "tflite:int8": _tflite_int8_params,
                   "tensorrt:int8": _onnx_int8_params}
CHOSEN_TENSOR = "relu2"  # conv3's output: a calibrated range, not one fixed by its op


def _registered_int8_targets() -> list[str]:
    from tapeout.targets.registry import TARGETS

    return [f"{name}:int8" for name, cls in sorted(TARGETS.items()) if cls.quant_scheme("int8") == "int8"
            and "int8" in cls.variants]


def test_acceptance_3_every_int8_artifact_has_a_reader():
    registered = _registered_int8_targets()
    assert {"onnx:int8", "tflite:int8"} <= set(registered) and {"onnx:int8", "tflite:int8"} <= set(ARTIFACT_PARAMS)
    # Targets other issues add (tensorrt:int8 needs a GPU to build) are flagged, not failed, until they bring one.
    missing = [s for s in registered if s not in ARTIFACT_PARAMS]
    if missing:
        import warnings

        warnings.warn(f"no parameter reader for {', '.join(missing)}: add one to ARTIFACT_PARAMS", stacklevel=1)


def test_acceptance_3_one_calibration_same_ranges_in_every_artifact(tmp_path):
    from tapeout.compiler.api import compile_model

    specs = [s for s in _registered_int8_targets() if s in ARTIFACT_PARAMS]  # onnx:int8, tflite:int8 at least
    report = compile_model(SAMPLE / "model.keras", specs, tmp_path, calibration=SAMPLE / "calibration.npz",
                           verify_artifacts=False)
    graph = _annotated_sample()
    expected = graph.quant.tensors[CHOSEN_TENSOR]
    assert expected.dtype == "int8" and expected.rmax[0] > 0  # a calibrated range, not a fixed one
    seen = {}
    for t in report.targets:
        spec = f"{t.target}:{t.variant}"
        scale, zp = ARTIFACT_PARAMS[spec](tmp_path / t.folder, graph, CHOSEN_TENSOR)
        assert_params_equal(scale, zp, expected)
        seen[spec] = (float(np.float32(scale)), int(zp))
    assert len(set(seen.values())) == 1 and {"onnx:int8", "tflite:int8"} <= set(seen)


def test_many_op_kinds_match_the_simulation(maker):
    """Depthwise conv, constant operands, same-scale ops, concat, fixed-scale outputs, rank-3 dense."""
    from tapeout.targets.onnx.qdq import graph_to_qdq

    m = maker(x=((8, 8, 4), "NHWC"))
    y = m.conv("x", 4, (3, 3), groups=4, pads=((1, 1), (1, 1)), activation=Activation.of("relu"))
    y = m.node("affine", y, m.const((4,)), m.const((4,)))
    z = m.node("avg_pool", m.node("pad", y, pads=((0, 0), (1, 1), (1, 1), (0, 0)), value=0.0), kernel=(3, 3), strides=(1, 1))
    y = m.node("add", y, z)
    y = m.node("concat", y, m.node("sigmoid", y), axis=-1)
    y = m.node("resize", m.node("max_pool", y, kernel=(2, 2), strides=(2, 2)), scales=(2, 2), mode="nearest")
    y = m.dense(m.node("reshape", y, shape=(64, 8)), 6, activation=Activation.of("tanh"))
    y = m.node("global_avg_pool", m.node("transpose", y, perm=(0, 2, 1)), keepdims=False)
    g = annotated(m.done(y, layouts={y: "NC"}))
    feeds = {"x": np.random.default_rng(5).normal(size=(16, 8, 8, 4)).astype(np.float32)}
    model = graph_to_qdq(g)
    got, sim, ref = run_onnx(g, model, feeds)[y], simulate(g, feeds)[y], run(g, feeds)[y]
    assert cosine(got, sim) > 0.999 and cosine(got, ref) > 0.99
    assert np.abs(got - sim).max() <= 3 * g.quant.tensors[y].scale[0]
