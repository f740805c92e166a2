"""Integer-only tflite:int8 / int16x8 (issue 17: Ethos-U NPU, TFLite Micro): a standalone per-channel
batch_norm / affine (one no conv or dense could absorb, as after DenseNet's concats) is an integer
1x1 DEPTHWISE_CONV_2D (targets/tflite/lowering.py), not DEQUANTIZE + float MUL + ADD + QUANTIZE;
no op of the model computes in float but the QUANTIZE / DEQUANTIZE at float inputs and outputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import Activation, Graph
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize, SplitActivations, simulate
from tapeout.targets.base import EmitContext
from tapeout.targets.tflite.flatbuffer import ModelInfo, read_model
from tapeout.targets.tflite.lowering import lower_channel_scales, lowered_nodes

from .params import details

DIGITS = Path(__file__).resolve().parents[3] / "samples" / "digits_cnn"
SAME = ((1, 1), (1, 1))


def float_ops(info: ModelInfo) -> list[str]:
    """Ops reading or writing a float activation, except a QUANTIZE of a graph input and a
    DEQUANTIZE to a graph output (the float I/O edges)."""
    def is_float(t: int) -> bool:
        return t >= 0 and info.tensors[t].dtype in ("FLOAT32", "FLOAT16") and not info.tensors[t].constant

    out = []
    for op in info.ops:
        if not any(is_float(t) for t in (*op.inputs, *op.outputs)):
            continue
        edge_in = op.op == "QUANTIZE" and all(t in info.inputs for t in op.inputs if is_float(t))
        edge_out = op.op == "DEQUANTIZE" and all(t in info.outputs for t in op.outputs if is_float(t))
        if not (edge_in or edge_out):
            out.append(op.op)
    return out


def annotate(graph: Graph, scheme: str = "int8", exclude: tuple[str, ...] = ()) -> Graph:
    split = Pipeline([SplitActivations()]).run(graph).graph
    rng = np.random.default_rng(0)
    feeds = {i: rng.normal(size=(64, *split.types[i].shape[1:])).astype(np.float32) for i in split.inputs}
    return Pipeline([Quantize(scheme, exclude)]).run(calibrate(split, feeds, method="minmax")).graph


def norms(cases, concat: bool = True) -> Graph:
    """conv -> concat(input, conv) -> batch_norm -> relu -> conv -> global pool -> affine [N, C] -> relu ->
    dense, and affine [N, L, C] -> relu -> conv1d: three norms no fuse pass could fold. ``concat=False``:
    an add of two convs instead (TensorFlow's int16x8 converter refuses a concat of unequal scales)."""
    m = cases.GraphMaker(x=((8, 8, 3), "NHWC"), s=((6, 4), "NWC"))
    if concat:
        y = m.node("concat", "x", m.conv("x", 5, (3, 3), pads=SAME, activation=Activation.of("relu")), axis=-1)
    else:
        y = m.node("add", m.conv("x", 8, (1, 1)), m.conv("x", 8, (3, 3), pads=SAME))
    y = m.node("batch_norm", y, m.const((8,), offset=1.0), m.const((8,)), m.const((8,)),
               m.const((8,), scale=0.1, offset=1.0), epsilon=1e-3)
    y = m.conv(m.node("relu", y), 6, (3, 3), pads=SAME)
    y = m.node("affine", m.node("global_avg_pool", y, keepdims=False), m.const((6,), offset=1.0), m.const((6,)))
    y = m.dense(m.node("relu", y), 4)
    z = m.node("affine", "s", m.const((1, 4), offset=-1.0), m.const((4,)))
    return m.done(y, m.conv(m.node("relu", z), 3, (3,)))


def emit(graph: Graph, folder: Path, variant: str = "int8", **options):
    from tapeout.targets.tflite.target import TfliteTarget

    folder.mkdir(parents=True, exist_ok=True)
    target = TfliteTarget(variant, **options)
    return target, target.emit(graph, EmitContext(folder))


@pytest.fixture(scope="module")
def int8_norms(cases, tmp_path_factory):
    g = annotate(norms(cases))
    folder = tmp_path_factory.mktemp("norms")
    target, result = emit(g, folder)
    return g, folder, target, result


def test_standalone_norms_are_integer_depthwise_convs(int8_norms) -> None:
    g, folder, _, result = int8_norms
    info = read_model((folder / "model.tflite").read_bytes())
    counts = info.op_counts()
    assert sorted(lowered_nodes(g)) == sorted(n.name for n in g.nodes if n.op in ("batch_norm", "affine"))
    assert counts.get("DEPTHWISE_CONV_2D") == 3 and "MUL" not in counts and "ADD" not in counts, counts
    assert float_ops(info) == []
    floats = [op.op for op in info.ops if any(info.tensors[t].dtype == "FLOAT32" for t in (*op.inputs, *op.outputs)
                                              if t >= 0 and not info.tensors[t].constant)]
    assert sorted(floats) == ["DEQUANTIZE"] * 2 + ["QUANTIZE"] * 2  # the two float inputs and outputs
    assert result.extra["quantized_tensors"]["float_ops"] == 0
    assert any("1x1 DEPTHWISE_CONV_2D" in n for n in result.notes)


def test_depthwise_weights_carry_their_per_channel_annotation(int8_norms) -> None:
    g, folder, _, result = int8_norms
    lowered = lower_channel_scales(g)
    added = {c: lowered.quant.tensors[c] for c in lowered.constants if c not in g.constants}
    assert len(added) == 6 and {tq.role for tq in added.values()} == {"weight", "bias"}
    found = {d["scales"].tobytes(): d for d in details(folder / "model.tflite") if d["value"] is not None}
    for name, tq in added.items():
        d = found[np.float32(tq.scale).tobytes()]  # the annotation's exact scales, one per channel
        if tq.role == "weight":  # one weight per channel: exactly +-127 steps
            assert d["dtype"] == np.int8 and d["value"].shape == (1, 1, 1, len(tq.scale))
            assert np.array_equal(np.abs(d["value"].reshape(-1)), np.full(len(tq.scale), 127))
    # Every quantized tensor was matched, the new constants included (align lowers the graph too).
    assert result.extra["quantized_tensors"]["constants"] == sum(
        1 for tq in lowered.quant.tensors.values() if tq.role != "activation")


def test_lowered_model_matches_the_simulation(int8_norms) -> None:
    g, folder, target, _ = int8_norms
    rng = np.random.default_rng(5)
    feeds = {"x": rng.normal(size=(32, 8, 8, 3)).astype(np.float32),
             "s": rng.normal(size=(32, 6, 4)).astype(np.float32)}
    with target.runner(folder) as runner:
        got = runner.infer(feeds)
    sim, ref = simulate(lower_channel_scales(g), feeds), run(g, feeds)
    for out in g.outputs:
        step = g.quant.tensors[out].scale[0]
        assert np.abs(got[out] - sim[out]).max() <= 3 * step, out  # as test_int8's: a rounding tie here and there
        cos = np.sum(got[out] * ref[out]) / np.linalg.norm(got[out]) / np.linalg.norm(ref[out])
        assert cos > 0.995, (out, cos)  # random weights, 8-bit: 0.9988 here


@pytest.mark.filterwarnings("ignore:Warning. Enabling .experimental_preserve_all_tensors")
def test_each_depthwise_rounds_once_from_the_exact_scale_and_shift(int8_norms) -> None:
    """Given its int8 input, each lowered norm writes round((x * s + t) / scale) (clamped by a fused relu)
    with the source's own s and t: the one rounding an integer kernel must make. Before, TFLite ran
    it in float from per-tensor int8 copies of gamma, beta, mean and variance, half a step off."""
    from ai_edge_litert.interpreter import Interpreter

    g, folder, _, _ = int8_norms
    info = read_model((folder / "model.tflite").read_bytes())
    interp = Interpreter(model_path=str(folder / "model.tflite"), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    qp = {d["index"]: d["quantization_parameters"] for d in interp.get_tensor_details()}
    dws = [op for op in info.ops if op.op == "DEPTHWISE_CONV_2D"]
    rng = np.random.default_rng(11)
    for _ in range(8):
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], rng.normal(size=d["shape"]).astype(np.float32))
        interp.invoke()
        for op in dws:
            x, w, b = op.inputs
            y = op.outputs[0]
            real = lambda i: (interp.get_tensor(i).astype(np.float64) - qp[i]["zero_points"]) * qp[i]["scales"]
            z = real(x) * real(w).reshape(-1) + real(b)
            z = np.maximum(z, 0) if op.fused_activation == "RELU" else z
            want = np.clip(np.round(z / qp[y]["scales"][0]) + qp[y]["zero_points"][0], -128, 127)
            assert np.array_equal(interp.get_tensor(y), want)
    assert [op.fused_activation for op in dws].count("RELU") == 3  # each norm's relu folded in


def test_lowering_only_changes_the_norms(cases) -> None:
    g = annotate(norms(cases))
    lowered = lower_channel_scales(g)
    feeds = {"x": np.random.default_rng(2).normal(size=(4, 8, 8, 3)).astype(np.float32),
             "s": np.random.default_rng(3).normal(size=(4, 6, 4)).astype(np.float32)}
    a, b = run(g, feeds), run(lowered, feeds)
    for out in g.outputs:
        np.testing.assert_allclose(b[out], a[out], rtol=1e-4, atol=1e-5)
    assert {n.op for n in lowered.nodes} >= {"conv", "reshape"} and "batch_norm" not in {n.op for n in lowered.nodes}
    plain = norms(cases)  # no integer annotations (the float variants): untouched
    assert lower_channel_scales(plain) is plain and lowered_nodes(plain) == []


def test_integer_io_has_no_float_tensor_at_all(int8_norms, tmp_path) -> None:
    g, _, _, _ = int8_norms
    emit(g, tmp_path, io="int8")
    info = read_model((tmp_path / "model.tflite").read_bytes())
    assert [t.name for t in info.tensors if t.dtype == "FLOAT32"] == [] and float_ops(info) == []
    assert "DEQUANTIZE" not in info.op_counts()  # a QUANTIZE left is int8 -> int8 (the concat's input)


def test_int16x8_norms_are_integer_too(cases, tmp_path) -> None:
    g = annotate(norms(cases, concat=False), "int16x8")
    target, result = emit(g, tmp_path, "int16x8")
    info = read_model((tmp_path / "model.tflite").read_bytes())
    assert info.op_counts().get("DEPTHWISE_CONV_2D") == 3 and float_ops(info) == []
    x = {"x": np.random.default_rng(7).normal(size=(8, 8, 8, 3)).astype(np.float32),
         "s": np.random.default_rng(8).normal(size=(8, 6, 4)).astype(np.float32)}
    with target.runner(tmp_path) as runner:
        got = runner.infer(x)
    sim = simulate(lower_channel_scales(g), x)
    for out in g.outputs:
        assert np.abs(got[out] - sim[out]).max() < 2e-3, out


def test_a_norm_kept_float_by_name_stays_float(cases, tmp_path) -> None:
    g = annotate(norms(cases), exclude=("batch_norm",))
    assert "batch_norm" not in lowered_nodes(g) and len(lowered_nodes(g)) == 2
    _, result = emit(g, tmp_path)
    info = read_model((tmp_path / "model.tflite").read_bytes())
    assert info.op_counts().get("DEPTHWISE_CONV_2D") == 2 and float_ops(info)  # the one asked for


def test_float_variant_keeps_its_batch_norm(cases, tmp_path) -> None:
    _, result = emit(norms(cases), tmp_path, "fp32")
    assert "DEPTHWISE_CONV_2D" not in read_model((tmp_path / "model.tflite").read_bytes()).op_counts()


@pytest.mark.parametrize("io_type", ["float", "int8"])
def test_digits_sample_is_integer_only(tmp_path, io_type) -> None:
    from tapeout.compiler.cli import main

    out, err = io.StringIO(), io.StringIO()
    rc = main(["compile", str(DIGITS / "model.keras"), "-t", "tflite:int8", "--io", io_type, "-o", str(tmp_path),
               "--calibration", str(DIGITS / "calibration.npz"), "--no-cache", "--json", "--no-timings"],
              out=out, err=err)
    assert rc == 0, err.getvalue()
    info = read_model((tmp_path / "tflite-int8" / "model.tflite").read_bytes())
    assert float_ops(info) == [], info.op_counts()
    edges = info.op_counts().get("QUANTIZE", 0) + info.op_counts().get("DEQUANTIZE", 0)
    assert edges == (2 if io_type == "float" else 0)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets"][0]["quantized_tensors"]["float_ops"] == 0
