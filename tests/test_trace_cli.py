"""`--trace` (issue 15 s2) on the digits CNN: every traced layer of onnx:int8, tflite:int8 and hls4ml in
report.json, the numbers recomputed here from the artifacts' own tensors; a layer miscalibrated on
purpose named as the first jump in every quantized target; tensorrt said to be untraced while the
rest are traced; `tapeout verify --trace` giving compile's trace."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.cli_run import run_cli

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "digits_cnn"
TRACED = ("onnx:int8", "tflite:int8", "hls4ml:vitis")


def _data_args() -> list:
    return ["--calibration", SAMPLE / "calibration.npz", "--eval", SAMPLE / "eval.npz"]


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> tuple[Path, dict, str]:
    outdir = tmp_path_factory.mktemp("trace") / "out"
    code, out, err = run_cli("compile", SAMPLE / "model.keras", "-o", outdir, "-t", "onnx:int8", "-t", "tflite:int8",
                             "-t", "hls4ml", "-t", "tensorrt", "--trace", "--no-timings", *_data_args())
    assert code == 0, out + err
    report = json.loads((outdir / "report.json").read_text())
    return outdir, {f"{t['target']}:{t['variant']}": t for t in report["targets"]}, out


def _graphs():
    """The IR each kind of target was emitted from, rebuilt here: the float graph (hls4ml) and the
    graph with activations split off (int8)."""
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.pipeline import Pipeline
    from tapeout.compiler.passes.quantize import SplitActivations
    from tapeout.compiler.passes.registry import default_pipeline

    g = default_pipeline().run(load_model(SAMPLE / "model.keras")[0]).graph
    return g, Pipeline([SplitActivations()]).run(g).graph


def _eval_x(n: int) -> np.ndarray:
    """The first ``n`` eval samples: the trace covers the first TRACE_SAMPLES (128) of the 360."""
    return np.load(SAMPLE / "eval.npz")["x"][:n].astype(np.float32)


def _reference(graph, n: int) -> dict[str, np.ndarray]:
    from tapeout.compiler import interpreter

    return interpreter.run(graph, {"image": _eval_x(n)}, keep_intermediates=True)


def _check(row: dict, ref: np.ndarray, got: np.ndarray, scale: float | None) -> None:
    """The report's numbers against a recomputation (onnxruntime's own SQNR function); rel 1e-5: LiteRT
    dequantizes in float32."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio as ort_sqnr

    r, a = ref.astype(np.float64).ravel(), got.astype(np.float64).reshape(ref.shape).ravel()
    assert row["max_abs"] == pytest.approx(np.abs(a - r).max(), rel=1e-5, abs=1e-9)
    assert row["mean_abs"] == pytest.approx(np.abs(a - r).mean(), rel=1e-5, abs=1e-9)
    assert row["sqnr_db"] == pytest.approx(ort_sqnr(r, a), rel=1e-5)
    assert row["cosine"] == pytest.approx(r @ a / (np.linalg.norm(r) * np.linalg.norm(a)), rel=1e-7)
    if scale is not None:
        assert row["rmse_over_scale"] == pytest.approx(math.sqrt(np.mean((a - r) ** 2)) / scale, rel=1e-5)


def test_every_layer_traced_for_every_target(build):
    _, targets, out = build
    floating, split = _graphs()
    every = {"onnx:int8": [o for n in split.nodes for o in n.outputs],
             "tflite:int8": [o for n in split.nodes for o in n.outputs],
             "hls4ml:vitis": [o for n in floating.nodes for o in n.outputs]}
    for name in TRACED:
        tr = targets[name]["trace"]
        assert tr["untraced"] is None and tr["samples"] == 128, name
        assert [r["name"] for r in tr["layers"]] == every[name], name  # all of them, in graph order
        assert [r["index"] for r in tr["layers"]] == sorted(r["index"] for r in tr["layers"])
        assert all(r["sqnr_db"] > 20 and r["cosine"] > 0.99 for r in tr["layers"]), name
        assert f"trace   {name}: {len(every[name])} layers traced" in out
    assert len(every["onnx:int8"]) == 8 and len(every["hls4ml:vitis"]) == 7


def test_onnx_numbers_recomputed(build):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    outdir, targets, _ = build
    _, split = _graphs()
    n = targets["onnx:int8"]["trace"]["samples"]
    ref = _reference(split, n)
    model = onnx.load(str(outdir / "onnx-int8" / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    names = [o for n in split.nodes for o in n.outputs]
    # By the QDQ emitter's naming: the int8 tensor 'v/quantized', its 'v/scale' and 'v/zero_point'.
    quantized = [f"{v}/quantized" for v in names]
    for t in quantized:
        model.graph.output.append(onnx.ValueInfoProto(name=t))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(quantized, sess.run(quantized, {"image": _eval_x(n)})))
    for row, v in zip(targets["onnx:int8"]["trace"]["layers"], names):
        q = got[f"{v}/quantized"].astype(np.float64)
        scale, zp = float(inits[f"{v}/scale"]), int(inits[f"{v}/zero_point"])
        deq = (q - zp) * scale
        if deq.ndim == 4:
            deq = deq.transpose(0, 2, 3, 1)  # ONNX runs channels-first inside
        _check(row, ref[v], deq, scale)


def test_tflite_numbers_recomputed(build):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    outdir, targets, _ = build
    _, split = _graphs()
    n = targets["tflite:int8"]["trace"]["samples"]
    ref = _reference(split, n)
    tmap = json.loads((outdir / "tflite-int8" / "tapeout_trace.json").read_text())["tensors"]
    annotated = {t["name"]: t for t in tmap}
    interp = Interpreter(model_path=str(outdir / "tflite-int8" / "model.tflite"),
                         experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    x = _eval_x(n)
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    details = {d["name"]: d for d in interp.get_tensor_details()}
    for row in targets["tflite:int8"]["trace"]["layers"]:
        d = details[annotated[row["name"]]["artifact"]]
        scale, zp = d["quantization"]
        # The tensor matched by name carries the scale tflite:int8 wrote for that very value.
        assert scale == pytest.approx(annotated[row["name"]]["scale"], rel=1e-6)
        deq = (interp.get_tensor(d["index"]).astype(np.float64) - zp) * np.float32(scale)
        _check(row, ref[row["name"]], deq, float(np.float32(scale)))
    # The last traced tensor is the model's output, as the LiteRT runner returns it.
    out = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(deq.reshape(out.shape), out, atol=1e-7)


def test_hls4ml_numbers_recomputed(build):
    from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

    outdir, targets, _ = build
    floating, _ = _graphs()
    n = targets["hls4ml:vitis"]["trace"]["samples"]
    ref = _reference(floating, n)
    with Hls4mlCsimRunner(outdir / "hls4ml-vitis") as runner:
        _, traces = runner.run({"image": _eval_x(n)}, trace=True)
    # hls4ml's layer for a node with a fused activation is '<node>_<activation>'.
    layer_of = {"relu1": "conv1_relu", "conv2": "conv2_relu", "pool": "pool", "relu2": "conv3_relu", "gap": "gap",
                "fc1": "fc1_relu", "probabilities": "probabilities_softmax"}
    types = {row["layer"]: row["types"]["result"] for row in targets["hls4ml:vitis"]["hls4ml"]["layers"]}
    for row in targets["hls4ml:vitis"]["trace"]["layers"]:
        layer = layer_of[row["name"]]
        w, i = (int(v) for v in types[layer].split("<")[1].split(",")[:2])
        _check(row, ref[row["name"]], traces[layer], 2.0 ** -(w - i))


def test_tensorrt_said_untraced_and_the_rest_traced(build):
    _, targets, out = build
    tr = targets["tensorrt:fp32"]["trace"]
    assert tr["layers"] == [] and tr["first_jump"] is None and "TensorRT" in tr["untraced"]
    assert "trace   tensorrt:fp32: not traced: TensorRT" in out
    assert all(targets[t]["trace"]["layers"] for t in TRACED)
    outdir = build[0]
    code, out, err = run_cli("verify", SAMPLE / "model.keras", outdir / "tensorrt-fp32" / "model.onnx", "--data",
                             SAMPLE / "eval.npz", "--trace")
    assert code == 0, out + err
    assert f"trace   {outdir / 'tensorrt-fp32' / 'model.onnx'}: not traced: TensorRT" in out


def test_verify_trace_matches_compile(build):
    outdir, targets, _ = build
    code, out, err = run_cli("verify", SAMPLE / "model.keras", outdir / "onnx-int8" / "model.onnx", "--data",
                             SAMPLE / "eval.npz", "--trace", "--json")
    assert code == 0, out + err
    assert json.loads(out)["trace"] == targets["onnx:int8"]["trace"]
    code, out, err = run_cli("verify", SAMPLE / "model.keras", outdir / "tflite-int8" / "model.tflite", "--data",
                             SAMPLE / "eval.npz", "--trace")
    assert code == 0, out + err
    assert "layers traced" in out and "SQNR dB" in out


def test_trace_needs_verification(tmp_path):
    code, out, err = run_cli("compile", SAMPLE / "model.keras", "-o", tmp_path / "o", "-t", "onnx", "--trace",
                             "--no-verify")
    assert code == 2 and "--trace" in err and "Traceback" not in err


def test_miscalibrated_layer_is_the_first_jump(tmp_path, monkeypatch):
    """conv2's calibrated range clipped to a tenth (int8), its hls4ml type clipped likewise: every
    quantized target names conv2 as the first jump, and nothing before it."""
    import tapeout.compiler.calibration as calibration
    from tapeout.compiler.api import compile_model

    calibrate = calibration.calibrate_with_means  # calibrate() and the build's stage both go through it

    def clipped(*args, **kwargs):
        g, means = calibrate(*args, **kwargs)
        lo, hi = g.calibration.ranges["conv2"]
        g.calibration.ranges["conv2"] = (lo / 10, hi / 10)
        return g, means

    monkeypatch.setattr(calibration, "calibrate_with_means", clipped)
    # hls4ml: conv2's activation output held in ap_fixed<16,0> ([-0.5, 0.5), under a quarter of its range)
    # while the other layers keep a roomy explicit type.
    report = compile_model(SAMPLE / "model.keras", ["onnx:int8", "tflite:int8", "hls4ml"], tmp_path / "out",
                           calibration=SAMPLE / "calibration.npz", eval_data=SAMPLE / "eval.npz", trace=True,
                           target_options={"hls4ml": {"precision": ["ap_fixed<18,8>", "conv2_relu=ap_fixed<16,0>"]}})
    for t in report.targets:
        tr = t.extra["trace"]
        jump = tr["first_jump"]
        assert jump is not None and jump["name"] == "conv2", (t.target, tr)
        before = [r for r in tr["layers"] if r["index"] < 1]
        assert before and all(r["sqnr_db"] > 30 for r in before)
        if t.target == "hls4ml":
            assert jump["suggestion"].startswith("--precision conv2_relu=ap_fixed<20,4")
        else:
            assert "--keep-float conv2" in jump["suggestion"] and jump["suggestion"].startswith("recalibrate conv2")


def test_channels_first_onnx_source_traces_in_the_ir_layout(tmp_path):
    """An NCHW ONNX CNN: the onnx artifacts hold channels-first tensors and a flatten in channels-first
    order (its dense rows permuted instead of a Transpose), tflite channels-last ones; every traced
    layer of the float targets agrees with the reference, so each was brought back to the IR's layout."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.3, (10, 64)).astype(np.float32), "fw"),
             numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc", transB=1),
             helper.make_node("Softmax", ["logits"], ["y"], name="softmax")]
    graph = helper.make_graph(nodes, "nchw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    src = tmp_path / "nchw.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    np.savez(tmp_path / "data.npz", x=rng.random((40, 1, 8, 8), dtype=np.float32))
    code, out, err = run_cli("compile", src, "-o", tmp_path / "out", "-t", "onnx", "-t", "onnx:int8", "-t", "tflite",
                             "--calibration", tmp_path / "data.npz", "--trace", "--no-timings")
    assert code == 0, out + err
    targets = {f"{t['target']}:{t['variant']}": t["trace"]
               for t in json.loads((tmp_path / "out" / "report.json").read_text())["targets"]}
    tmap = json.loads((tmp_path / "out" / "onnx-fp32" / "tapeout_trace.json").read_text())["tensors"]
    assert any(t["perm"] for t in tmap) and any(t["flat_from"] for t in tmap)  # both paths are exercised
    for name in ("onnx:fp32", "tflite:fp32"):
        rows = targets[name]["layers"]
        assert len(rows) >= 4 and targets[name]["first_jump"] is None, name
        assert all(r["cosine"] > 0.999999 and r["sqnr_db"] > 100 for r in rows), (name, rows)
    rows = targets["onnx:int8"]["layers"]
    assert len(rows) >= len(targets["onnx:fp32"]["layers"]) and all(r["cosine"] > 0.99 for r in rows), rows


def test_batch1_cnn_with_a_layer_named_after_an_op(tmp_path):
    """A batch-1 ONNX CNN (fixed input [1, 3, 12, 12], as torch exports) whose Mul node is named 'mul'
    and is followed by a conv + HardSwish of the same size: the hard swish's TFLite tensor
    ('.../conv2_hard_swish_1/mul') once matched layer 'mul' by its op name, so two IR values shared one
    artifact tensor, gathered twice per sample ('shapes differ: reference (40, ...), artifact (80,
    ...)', exit 4). Now every layer of tflite:int8 and onnx:int8 is traced at its own tensor on every
    sample."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tapeout.runtime.trace import TraceMap

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.4, (6, 6, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "b2"),
             numpy_helper.from_array(rng.normal(0, 0.3, (5, 6)).astype(np.float32), "fw"),
             numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
             helper.make_node("Mul", ["relu", "conv"], ["mul"], name="mul"),
             helper.make_node("Conv", ["mul", "w2", "b2"], ["conv2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["conv2"], ["hardswish"], name="hardswish"),
             helper.make_node("GlobalAveragePool", ["hardswish"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "b1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    src = tmp_path / "b1.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    np.savez(tmp_path / "data.npz", x=rng.random((40, 3, 12, 12), dtype=np.float32))
    code, out, err = run_cli("compile", src, "-o", tmp_path / "out", "-t", "onnx:int8", "-t", "tflite:int8",
                             "--calibration", tmp_path / "data.npz", "--trace", "--no-timings")
    assert code in (0, 1), out + err  # traced whether or not verification passes
    targets = {f"{t['target']}:{t['variant']}": t["trace"]
               for t in json.loads((tmp_path / "out" / "report.json").read_text())["targets"]}
    for name, folder in (("onnx:int8", "onnx-int8"), ("tflite:int8", "tflite-int8")):
        trace = targets[name]
        assert trace["untraced"] is None and trace["samples"] == 40, (name, trace)
        rows = {r["name"]: r for r in trace["layers"]}
        assert {"mul", "hardswish"} <= set(rows), (name, sorted(rows))
        assert all(r["cosine"] > 0.98 for r in rows.values()), (name, rows)
        tensors = TraceMap.load(tmp_path / "out" / folder).tensors
        arts = [t.artifact for t in tensors]
        assert len(arts) == len(set(arts)), (name, arts)
    mul = next(t for t in TraceMap.load(tmp_path / "out" / "tflite-int8").tensors if t.name == "mul")
    assert "hard_swish" not in mul.artifact and mul.perm is None, mul


def test_tflite_op_name_is_not_a_layer_scope():
    from tapeout.targets.trace_maps import _mentions

    name = "main_graph_1/conv2_hard_swish_1/mul;;main_graph_1/conv2_hard_swish_1/Relu6"
    assert not _mentions(name, "mul", {"mul", "conv2/hard_swish"})
    assert _mentions("main_graph_1/mul_1/Mul", "mul", {"mul"})
    assert not _mentions("main_graph_1/mul_1/Mul", "mul", {"mul", "mul_1"})  # mul_1's own scope
    # A bias folded for two convs names both; only the first path is the op's own.
    shared = "g_1/conv_b_1/BiasAdd;g_1/conv_b_1/convolution;g_1/conv_a_1/Squeeze"
    assert _mentions(shared, "conv_a", {"conv_a", "conv_b"})
    assert not _mentions(shared, "conv_a", {"conv_a", "conv_b"}, first=True)
    assert _mentions(shared, "conv_b", {"conv_a", "conv_b"}, first=True)


def test_an_activation_tflite_fuses_into_the_add_before_it_is_traced_at_the_add_s_tensor(tmp_path):
    """conv -> add(skip) -> relu: TensorFlow's converter writes one ADD with a fused RELU. Its tensor
    holds the relu's output; traced as the add's value it read -10 dB on zoo ResNet50 and DenseNet
    (every negative sum compared with a zero). Now it is the relu's value, exact in fp32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (3, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 3).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["conv", "x"], ["sum"], name="sum"),
             helper.make_node("Relu", ["sum"], ["act"], name="act"),
             helper.make_node("GlobalAveragePool", ["act"], ["y"], name="gap")]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 1, 1])], inits)
    src = tmp_path / "res.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(16, 3, 8, 8)).astype(np.float32))
    code, out, err = run_cli("compile", src, "-o", tmp_path / "out", "-t", "tflite:fp32", "--eval",
                             tmp_path / "data.npz", "--trace", "--no-timings")
    assert code == 0, out + err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {r["name"]: r for r in report["targets"][0]["trace"]["layers"]}
    assert "act" in rows and "sum" not in rows, sorted(rows)
    assert rows["act"]["max_abs"] < 1e-5
