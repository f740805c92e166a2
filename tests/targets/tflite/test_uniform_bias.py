"""tflite:int8 of convs whose bias is one nonzero value repeated (a hard sigmoid folded into a conv
as clip(0, 1) gives 0.5 everywhere): TensorFlow's converter quantized such a splat bias once, with
the first channel's scale, for every channel, so channel c added bias * scale_0 / scale_c (cosine
0.80-0.93 here against onnx:int8's 0.9999; timm MobileNetV3-small-050 with the fold: 0.385)."""

from __future__ import annotations

import io
import json

import numpy as np

from tapeout.compiler.cli import main
from tapeout.targets.tflite.quantized import not_splat

# (activation, clip bounds): the fused clips that are not relu/relu6 go through custom.Clip.
HEADS = (("none", None), ("clip01", (0.0, 1.0)), ("clip11", (-1.0, 1.0)), ("clip02", (0.0, 2.0)))


def _model(path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, outs = [], [], []
    for k, (name, bounds) in enumerate(HEADS):
        # Output channels of very different weight ranges: per-channel scales 10x apart.
        w = rng.normal(0, 0.5, (6, 3, 3, 3)) * np.linspace(0.2, 2.0, 6)[:, None, None, None]
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{k}"),
                  numpy_helper.from_array(np.full(6, 0.5, np.float32), f"b{k}")]
        conv = name if bounds is None else f"{name}_conv"
        nodes.append(helper.make_node("Conv", ["x", f"w{k}", f"b{k}"], [conv], name=conv, pads=[1, 1, 1, 1]))
        if bounds is not None:
            inits += [numpy_helper.from_array(np.float32(bounds[0]), f"lo{k}"),
                      numpy_helper.from_array(np.float32(bounds[1]), f"hi{k}")]
            nodes.append(helper.make_node("Clip", [conv, f"lo{k}", f"hi{k}"], [name], name=name))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 6, 8, 8]))
    graph = helper.make_graph(nodes, "uniform_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    ["N", 3, 8, 8])], outs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_uniform_bias_convs_match_onnx_int8(tmp_path):
    src = tmp_path / "m.onnx"
    _model(src)
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(1).normal(0, 1, (48, 3, 8, 8)).astype(np.float32))
    out, err = io.StringIO(), io.StringIO()
    # Trained biases: bias correction would make them differ per channel, and the splat is the case.
    code = main([str(a) for a in ("compile", src, "-o", tmp_path / "out", "-t", "tflite:int8", "-t", "onnx:int8",
                                  "--calibration", tmp_path / "data.npz", "--no-timings", "--no-bias-correction")],
                out, err)
    assert code == 0, out.getvalue() + err.getvalue()
    report = {t["variant"] if t["target"] == "onnx" else "tflite": t
              for t in json.loads((tmp_path / "out" / "report.json").read_text())["targets"]}
    assert report["tflite"]["verification"]["passed"], report["tflite"]["verification"]
    # Same annotations, same integers: the two artifacts agree as closely as their rounding allows.
    assert report["tflite"]["verification"]["cosine"] > 0.9995
    assert abs(report["tflite"]["verification"]["cosine"] - report["int8"]["verification"]["cosine"]) < 1e-4

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tmp_path / "out" / "tflite-int8" / "model.tflite"))
    biases = [d for d in interp.get_tensor_details() if d["dtype"] == np.int32 and len(d["shape"]) == 1]
    assert len(biases) == len(HEADS)
    for d in biases:  # every channel's stored integer stands for 0.5 at its own scale
        scales = d["quantization_parameters"]["scales"]
        assert np.ptp(scales) > 0, d["name"]
        np.testing.assert_allclose(interp.get_tensor(d["index"]) * scales, 0.5, atol=scales.max())


def _squeeze_excite(path) -> None:
    """Two squeeze-excite gates, GAP -> 1x1 conv -> clip(0, 1) -> mul, with the same 0.5 bias."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for k in range(2):
        w = rng.normal(0, 0.5, (6, 6, 1, 1)) * np.linspace(0.2, 2.0, 6)[:, None, None, None]
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{k}"),
                  numpy_helper.from_array(np.full(6, 0.5, np.float32), f"b{k}"),
                  numpy_helper.from_array(np.float32(0), f"lo{k}"), numpy_helper.from_array(np.float32(1), f"hi{k}")]
        nodes += [helper.make_node("GlobalAveragePool", [x], [f"g{k}"], name=f"gap{k}"),
                  helper.make_node("Conv", [f"g{k}", f"w{k}", f"b{k}"], [f"c{k}"], name=f"se{k}"),
                  helper.make_node("Clip", [f"c{k}", f"lo{k}", f"hi{k}"], [f"s{k}"], name=f"gate{k}"),
                  helper.make_node("Mul", [x, f"s{k}"], [f"m{k}"], name=f"scale{k}")]
        x = f"m{k}"
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8, 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 6, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_shared_bias_gates_traced_at_their_own_tensors(tmp_path):
    """The converter folds the two gates' equal biases into one constant, whose name the second conv's
    TFLite tensor carries ('.../c1_1/convolution;.../c0_1/Squeeze'): the first gate was traced at the
    second's tensor (SQNR 6.8 dB against onnx:int8's 36). Each gate is now traced at its clip's output."""
    src = tmp_path / "se.onnx"
    _squeeze_excite(src)
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(1).normal(0, 1, (48, 6, 8, 8)).astype(np.float32))
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in ("compile", src, "-o", tmp_path / "out", "-t", "tflite:int8", "-t", "onnx:int8",
                                  "--calibration", tmp_path / "data.npz", "--no-timings", "--trace")], out, err)
    assert code == 0, out.getvalue() + err.getvalue()
    report = {t["variant"] if t["target"] == "onnx" else "tflite": t["trace"]
              for t in json.loads((tmp_path / "out" / "report.json").read_text())["targets"]}
    tflite_rows = {r["name"]: r for r in report["tflite"]["layers"]}
    onnx_rows = {r["name"]: r for r in report["int8"]["layers"]}
    assert {"s0", "s1"} <= set(tflite_rows) and set(tflite_rows) == set(onnx_rows)
    for name, row in tflite_rows.items():
        assert abs(row["sqnr_db"] - onnx_rows[name]["sqnr_db"]) < 3.0, (name, row, onnx_rows[name])
    tmap = {t["name"]: t["artifact"] for t in
            json.loads((tmp_path / "out" / "tflite-int8" / "tapeout_trace.json").read_text())["tensors"]}
    assert len(set(tmap.values())) == len(tmap) and tmap["s0"].endswith("c0_clip_1/Minimum"), tmap


def test_not_splat():
    b = np.full(4, 0.5, np.float32)
    nb = not_splat(b)
    assert nb[:3].tolist() == [0.5] * 3 and 0.5 - nb[3] == np.spacing(np.float32(0.5)) / 2 and b[3] == 0.5
    for same in (np.zeros(4, np.float32), np.array([0.5], np.float32), np.array([0.5, 0.25], np.float32)):
        assert not_splat(same) is same
