"""runtime.trace: the per-layer metrics, the map file, layouts and the first-jump rule (no artifacts but
one tiny ONNX model for ``collect``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.trace import (JUMP_DB, MAX_RMSE_OVER_SCALE, NOISY_DB, TraceMap, TracedTensor, compare_layers,
                                   first_jump, layer_metrics, sqnr_db, to_ir_layout)


def _ort_sqnr(x: np.ndarray, y: np.ndarray) -> float:
    """onnxruntime.quantization.qdq_loss_debug's formula, written out independently."""
    left, right = x.flatten().astype(np.float64), y.flatten().astype(np.float64)
    eps = np.finfo("float").eps
    return 20 * math.log10(max(np.linalg.norm(left), eps) / max(np.linalg.norm(left - right), eps))


def test_sqnr_matches_onnxruntime_qdq_loss_debug():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 6)).astype(np.float32)
    y = x + rng.normal(scale=0.01, size=x.shape).astype(np.float32)
    assert sqnr_db(x, y) == pytest.approx(_ort_sqnr(x, y), rel=1e-12)
    ort = pytest.importorskip("onnxruntime.quantization.qdq_loss_debug")
    # onnxruntime subtracts in float32, tapeout in float64: equal to float32's precision.
    assert sqnr_db(x, y) == pytest.approx(ort.compute_signal_to_quantization_noice_ratio(x, y), rel=1e-6)
    # Equal tensors: the error norm is floored at eps, so the SQNR is large but finite.
    assert 300 < sqnr_db(x, x) < 400


def test_layer_metrics_numbers():
    ref = np.array([[1.0, -2.0, 3.0, 0.0]])
    got = np.array([[1.5, -2.0, 2.0, 0.0]])
    m = layer_metrics(ref, got, scale=0.5)
    assert m["max_abs"] == 1.0
    assert m["mean_abs"] == pytest.approx(0.375)
    rmse = math.sqrt((0.25 + 1.0) / 4)
    assert m["rmse_over_scale"] == pytest.approx(rmse / 0.5)
    cos = float(ref.ravel() @ got.ravel() / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert m["cosine"] == pytest.approx(cos)
    assert m["sqnr_db"] == pytest.approx(_ort_sqnr(ref, got))
    assert layer_metrics(ref, got)["rmse_over_scale"] is None  # float tensor: no step
    bad = layer_metrics(ref, np.array([[np.nan, 0, 0, 0]]))
    assert bad["sqnr_db"] is None and bad["cosine"] is None
    assert layer_metrics(np.zeros((1, 3)), np.ones((1, 3)))["cosine"] is None


def test_map_round_trip_and_bad_file(tmp_path):
    t = TracedTensor("conv", "conv", 0, "conv/quantized", "conv1", (0, 2, 3, 1), None, 0.1, -3, -12.5, 13.0, "int8")
    m = TraceMap("model.onnx", "int8", [t, TracedTensor("flat", "flatten", 1, "flat", "flatten", flat_from=(3, 2, 2))])
    m.write(tmp_path)
    back = TraceMap.load(tmp_path)
    assert back == m
    assert json.loads((tmp_path / "tapeout_trace.json").read_text())["format"] == "tapeout-trace/1"
    assert TraceMap.load(tmp_path / "nowhere") is None
    (tmp_path / "tapeout_trace.json").write_text('{"format": "other"}')
    with pytest.raises(RuntimeInputError, match="not a tapeout trace map"):
        TraceMap.load(tmp_path)


def test_layouts_back_to_the_ir():
    rng = np.random.default_rng(1)
    ir = rng.normal(size=(2, 4, 5, 3))  # [N, H, W, C]
    cf = ir.transpose(0, 3, 1, 2)
    t = TracedTensor("v", "conv", 0, "v", "v", perm=(0, 2, 3, 1))
    assert np.array_equal(to_ir_layout(t, cf, ir.shape), ir)
    # A flatten stored in channels-first element order.
    flat_cf = cf.reshape(2, -1)
    t = TracedTensor("f", "flatten", 1, "f", "f", flat_from=(3, 4, 5))
    assert np.array_equal(to_ir_layout(t, flat_cf, (2, 60)), ir.reshape(2, -1))
    # An integer tensor is dequantized with its scale and zero point; hls4ml's flat rows are reshaped.
    t = TracedTensor("q", "dense", 2, "q", "q", scale=0.5, zero_point=-2)
    assert np.array_equal(to_ir_layout(t, np.array([[-2, 0, 4]], np.int8), (1, 3)), [[0.0, 1.0, 3.0]])
    t = TracedTensor("h", "conv", 0, "h", "h")
    assert to_ir_layout(t, ir.reshape(2, -1), ir.shape).shape == ir.shape


def _rows(sqnrs, ros=None):
    ros = ros or [None] * len(sqnrs)
    return [{"name": f"l{i}", "op": "conv", "index": i, "sqnr_db": s, "rmse_over_scale": r}
            for i, (s, r) in enumerate(zip(sqnrs, ros))]


def _map(n, kind="int8", **kw):
    return TraceMap("model.onnx", kind, [TracedTensor(f"l{i}", "conv", i, f"l{i}", f"layer{i}", **kw)
                                         for i in range(n)])


def test_first_jump_rule():
    # Float-like: everything far above NOISY_DB never jumps, however large the drop.
    assert first_jump(_rows([300, 140, 120]), _map(3)) is None
    # Int8-like: noisy but no drop and RMSE in steps below the flag: no jump.
    assert first_jump(_rows([42, 37, 38, 34], [0.3, 0.4, 0.55, 0.6]), _map(4)) is None
    # A drop of JUMP_DB or more into the noisy region.
    j = first_jump(_rows([42, 37, NOISY_DB - 1 - JUMP_DB, 2]), _map(4))
    assert j["name"] == "l2" and j["metric"] == "sqnr_db"
    assert j["suggestion"].startswith("--keep-float layer2")
    # Noisy, small drop, but many quantization steps of error.
    j = first_jump(_rows([35, 28, 27], [0.3, MAX_RMSE_OVER_SCALE + 0.1, 2.0]), _map(3))
    assert j["name"] == "l1" and j["metric"] == "rmse_over_scale"
    # The first layer already noisy: a jump from a clean input.
    assert first_jump(_rows([12, 11]), _map(2))["name"] == "l0"
    # Non-finite values are a jump.
    assert first_jump(_rows([40, None]), _map(2))["name"] == "l1"


def test_suggestions_follow_clipping_and_kind():
    ref = {"l0": np.full((10, 4), 40.0), "l1": np.linspace(0, 1, 40).reshape(10, 4)}
    rows = _rows([5.0, 3.0])
    # 100% of l0's values beyond its int8 range [0, 4]: recalibrate.
    j = first_jump(rows, _map(2, scale=4 / 255, lo=0.0, hi=4.0, dtype="int8"), ref)
    assert j["name"] == "l0" and j["suggestion"].startswith("recalibrate layer0") and "100%" in j["detail"]
    fixed = _map(2, "fixed", scale=2.0 ** -10, lo=-32.0, hi=32.0, dtype="ap_fixed<16,6>")
    j = first_jump(rows, fixed, ref)  # clipping: more integer bits
    assert j["suggestion"] == "--precision layer0=ap_fixed<20,10>"
    j = first_jump(rows, TraceMap(".", "fixed", [TracedTensor(f"l{i}", "conv", i, "x", f"layer{i}", scale=2.0 ** -10,
                                                                lo=-64.0, hi=64.0, dtype="ap_fixed<17,7>")
                                                   for i in range(2)]), ref)
    assert j["suggestion"] == "--precision layer0=ap_fixed<21,7>"  # no clipping: more fractional bits


def test_compare_layers_graph_order_and_missing_values():
    ref = {"l0": np.ones((3, 2)), "l1": np.full((3, 2), 2.0), "l2": np.zeros((3, 2))}
    got = {"l1": np.full((3, 2), 2.5), "l0": np.ones((3, 2))}  # l2 not exposed
    rows = compare_layers(_map(3), ref, got)
    assert [r["name"] for r in rows] == ["l0", "l1"]
    assert rows[1]["max_abs"] == 0.5 and rows[1]["cosine"] == 1.0
    assert set(rows[0]) == {"name", "op", "index", "max_abs", "mean_abs", "sqnr_db", "cosine", "rmse_over_scale"}


def test_collect_gathers_a_shared_artifact_tensor_once(tmp_path):
    """Two IR values one artifact tensor holds each get every sample once (not twice per batch), and
    a fixed batch-1 model runs sample by sample."""
    import onnx
    from onnx import TensorProto, helper

    from tapeout.runtime.data import Dataset
    from tapeout.runtime.trace import collect

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "model.onnx")
    tmap = TraceMap("model.onnx", "float", [TracedTensor("a", "relu", 0, "r", "a"),
                                            TracedTensor("b", "relu", 1, "r", "b")])
    x = np.linspace(-1, 1, 28, dtype=np.float32).reshape(7, 4)
    got = collect(tmp_path, tmap, Dataset({"x": x}, None, "npz"), samples=5, batch_size=2)
    for k in ("a", "b"):
        np.testing.assert_array_equal(got[k], np.maximum(x[:5], 0))
