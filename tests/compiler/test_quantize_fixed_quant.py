"""The quantize pass on quantization-aware graphs: a fixed_quant whose grid an int8 (int16) tensor
holds exactly (one grid, scale 2**-f, zero point 0, <= 8 bits with the sign) gives its output that
scale instead of a calibrated one; the quantizer itself computes in float. ONNX QDQ and TFLite int8
run such a graph as the quantization simulation does; tflite:fp16 keeps a grid of up to 15 bits
exact (its constants are float16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import BATCH, Activation, Graph, Node, TensorType
from tapeout.compiler.ops import infer_node
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize, SplitActivations, simulate


def _graph(hidden: tuple = (0, 3, 4)) -> Graph:
    """x -> q(1,2,5) -> dense+relu -> q(hidden) -> dense: weights already on 4-6 bit grids."""
    rng = np.random.default_rng(3)
    g = Graph("qat", ["x"], [])
    g.types["x"] = TensorType((BATCH, 16))

    def node(op: str, *ins: str, **attrs) -> str:
        name = g.unique_name(op)
        n = Node(op, name, list(ins), [name], attrs)
        g.nodes.append(n)
        g.types[name] = infer_node(n, [g.type_of(i) for i in ins], g)[0]
        return name

    def quant(x: str, k, i, f) -> str:
        kif = [g.add_constant(n, np.asarray(v, np.int8)) for n, v in (("k", k), ("i", i), ("f", f))]
        return node("fixed_quant", x, *kif, rounding="AP_RND", overflow="AP_SAT")

    def w(shape: tuple, bits: int, frac: int) -> str:
        v = rng.integers(-2 ** (bits - 1), 2 ** (bits - 1), shape) / 2.0**frac
        return g.add_constant("w", v.astype(np.float32))

    h = node("dense", quant("x", 1, 2, 5), w((16, 8), 4, 3), w((8,), 6, 4), activation=Activation.of("relu"))
    h = node("dense", quant(h, *hidden), w((8, 5), 5, 4), w((5,), 6, 3))
    g.outputs = [h]
    g.check()
    return g


def _quantized(g: Graph, scheme: str = "int8") -> Graph:
    split = Pipeline([SplitActivations()]).run(g).graph
    feeds = {"x": (np.random.default_rng(0).normal(size=(256, 16)) * 2).astype(np.float32)}
    return Pipeline([Quantize(scheme)]).run(calibrate(split, feeds, method="minmax")).graph


def test_trained_grid_replaces_the_calibrated_scale() -> None:
    q = _quantized(_graph())
    t = q.quant.tensors
    assert t["fixed_quant"].scale == (2.0**-5,) and t["fixed_quant"].zero_point == (0,)
    assert t["fixed_quant"].rmin == (-4.0,) and t["fixed_quant"].rmax == (4.0 - 2.0**-5,)
    assert t["fixed_quant_1"].scale == (2.0**-4,) and t["fixed_quant_1"].zero_point == (0,)  # unsigned 7 bits
    assert t["dense"].zero_point != (0,) or t["dense"].scale != (2.0**-5,)  # the others stay calibrated
    assert set(q.quant.float_nodes) == {"fixed_quant", "fixed_quant_1"}
    assert "x" not in t  # the input only feeds a float quantizer


@pytest.mark.parametrize("hidden", [(0, 4, 4), (1, 3, 5), ([0] * 7 + [1], 3, 4)])
def test_grids_an_int8_tensor_cannot_hold_are_calibrated(hidden) -> None:
    """8 bits unsigned, 9 bits signed, a grid per element: calibrated as any activation."""
    t = _quantized(_graph(hidden)).quant.tensors["fixed_quant_1"]
    assert t.zero_point != (0,) or t.scale[0] not in (2.0**-4, 2.0**-5)


def test_int16_holds_a_wider_grid() -> None:
    t = _quantized(_graph((1, 3, 5)), "int16x8").quant.tensors["fixed_quant_1"]
    assert t.dtype == "int16" and t.scale == (2.0**-5,)


def test_onnx_qdq_and_tflite_int8_match_the_simulation(tmp_path: Path) -> None:
    import onnxruntime as ort

    from tapeout.targets.base import EmitContext
    from tapeout.targets.onnx.qdq import graph_to_qdq
    from tapeout.targets.tflite.target import TfliteTarget

    g = _graph()
    q = _quantized(g)
    out = g.outputs[0]
    x = {"x": (np.random.default_rng(1).normal(size=(500, 16)) * 2).astype(np.float32)}
    sim = simulate(q, x)[out]
    assert np.max(np.abs(sim - run(g, x)[out])) < 0.1 * np.max(np.abs(sim))
    model = graph_to_qdq(q)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(got, sim, atol=1e-5)
    target = TfliteTarget("int8")
    target.emit(q, EmitContext(tmp_path))
    with target.runner(tmp_path) as runner:
        np.testing.assert_allclose(runner.infer(x)[out], sim, atol=1e-5)


def _wide_modes(k: int, i: int, f: int) -> Graph:
    """Every rounding x overflow mode on one ``(k, i, f)`` grid, read straight from the input."""
    from tapeout.compiler.fixedpoint.types import OVERFLOW, ROUNDING

    g = Graph("modes", ["x"], [])
    g.types["x"] = TensorType((BATCH, 16))
    for j, (r, o) in enumerate((r, o) for r in ROUNDING for o in OVERFLOW):
        kif = [g.add_constant(n, np.asarray(v, np.int8)) for n, v in (("k", k), ("i", i), ("f", f))]
        n = Node("fixed_quant", f"q{j}", ["x", *kif], [f"q{j}"], {"rounding": r, "overflow": o})
        g.nodes.append(n)
        g.types[n.outputs[0]] = infer_node(n, [g.type_of(v) for v in n.inputs], g)[0]
    g.outputs = [n.outputs[0] for n in g.nodes]
    g.check()
    return g


def test_fp16_warns_where_float16_cannot_hold_the_grid() -> None:
    wide = Pipeline([Quantize("fp16")]).run(_wide_modes(1, 1, 38))
    assert wide.records[0].warnings and "'q0'" in wide.records[0].warnings[0]
    narrow = Pipeline([Quantize("fp16")]).run(_wide_modes(1, 7, 6))
    assert narrow.records[0].warnings == []
    # Pinned to float32 (tensorrt:fp16 computes them so): float16 holds integers exactly only to 2**11.
    assert set(narrow.graph.quant.float_nodes) == {n.name for n in narrow.graph.nodes}


def test_tflite_fp16_reproduces_a_14_bit_grid(tmp_path: Path) -> None:
    """tflite:fp16 stores every constant in float16: the lowering keeps only powers of two there (the
    saturation bound 2**13 - 1 is computed at run time), so a 14-bit grid stays exact."""
    from tapeout.targets.base import EmitContext
    from tapeout.targets.tflite.target import TfliteTarget

    g = _wide_modes(1, 7, 6)
    target = TfliteTarget("fp16")
    target.emit(Pipeline([Quantize("fp16")]).run(g).graph, EmitContext(tmp_path))
    x = (np.random.default_rng(0).standard_normal((300, 16)) * 200).astype(np.float32)
    x[:100] = np.round(x[:100] * 64) / 128  # ties on the 1/64 grid
    want = run(g, {"x": x})
    with target.runner(tmp_path) as runner:
        got = runner.infer({"x": x})
    for o in g.outputs:
        np.testing.assert_array_equal(got[o].reshape(want[o].shape), want[o], err_msg=o)


def test_a_dynamic_dimension_beyond_the_batch_reads_the_grid_from_the_constants() -> None:
    """tensor_kif needs no sample shape: a per-tensor quantizer on [N, T, 4] (T unknown) is one grid."""
    from tapeout.compiler.fixedpoint.qat import per_tensor_type, tensor_kif
    from tapeout.compiler.passes.quantize import trained_grid

    g = Graph("dyn", ["x"], [])
    g.types["x"] = TensorType((BATCH, "T", 4))
    kif = [g.add_constant(n, np.asarray(v, np.int8)) for n, v in (("k", 1), ("i", 2), ("f", 5))]
    n = Node("fixed_quant", "q", ["x", *kif], ["q"], {"rounding": "AP_RND", "overflow": "AP_SAT"})
    assert tensor_kif(g, n) == (1, 2, 5)
    assert per_tensor_type(g, n).width == 8
    assert trained_grid(g, n, "int8").scale == (2.0**-5,)
