"""Quantization-aware graphs (fixed_quant, as the HGQ2 and QONNX front ends write them) through
hls4ml: the quantizers fix the types (no search), and the C simulation equals the reference
interpreter bit for bit, on 2,000 random inputs per model."""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest

from tapeout.compiler.errors import UsageError
from tapeout.compiler.fixedpoint import run_fixed
from tapeout.compiler.fixedpoint.qat import qat_plan
from tapeout.compiler.fixedpoint.types import OVERFLOW, ROUNDING
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import BATCH, Activation, Graph, Node, TensorType
from tapeout.compiler.ops import infer_node

pytest.importorskip("hls4ml")
pytest.importorskip("keras")

SAMPLES = 2000


class Maker:
    def __init__(self, shape: tuple[int, ...], layout: str, seed: int = 0) -> None:
        self.g = Graph("qat", ["x"], [])
        self.g.types["x"] = TensorType((BATCH, *shape))
        self.g.io_layouts["x"] = layout
        self.rng = np.random.default_rng(seed)

    def node(self, op: str, *ins: str, **attrs: Any) -> str:
        name = self.g.unique_name(op)
        n = Node(op, name, list(ins), [name], attrs)
        self.g.nodes.append(n)
        self.g.types[name] = infer_node(n, [self.g.type_of(i) for i in ins], self.g)[0]
        return name

    def quant(self, x: str, k: Any, i: Any, f: Any, rounding: str = "AP_TRN", overflow: str = "AP_WRAP") -> str:
        kif = [self.g.add_constant(n, np.asarray(v, np.int8)) for n, v in (("k", k), ("i", i), ("f", f))]
        return self.node("fixed_quant", x, *kif, rounding=rounding, overflow=overflow)

    def weights(self, shape: tuple[int, ...], bits: int, frac: int) -> str:
        """Constants already on a grid (a front end that folded its weight quantizers)."""
        v = self.rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), shape) / 2.0**frac
        return self.g.add_constant("w", v.astype(np.float32))

    def float_weights(self, shape: tuple[int, ...]) -> str:
        return self.g.add_constant("w", self.rng.normal(0, 0.5, shape).astype(np.float32))

    def done(self, *outputs: str) -> Graph:
        self.g.outputs = list(outputs)
        self.g.check()
        return self.g


def mlp() -> Graph:
    """Per-tensor input quantizer; a weight quantizer left as a node on float constants (folded by
    canonicalize); per-element hidden quantizer with a pruned (0-bit) element and a negative f."""
    m = Maker((16,), "NC")
    h = m.quant("x", 1, 2, 4, "AP_RND", "AP_SAT")
    w = m.quant(m.float_weights((16, 8)), 1, 0, 3, "AP_RND", "AP_SAT")
    h = m.node("dense", h, w, m.weights((8,), 6, 4), activation=Activation.of("relu"))
    k, i, f = [0] * 8, [2, 3, 1, 0, 2, 3, 4, 1], [3, 2, 4, 0, 1, 3, -1, 2]  # element 3: 0 bits
    h = m.quant(h, k, i, f, "AP_RND_CONV", "AP_WRAP")
    h = m.node("dense", h, m.weights((8, 5), 5, 4), m.weights((5,), 6, 3))
    return m.done(m.quant(h, 1, 3, 3, "AP_TRN", "AP_WRAP"))


def cnn() -> Graph:
    """Per-channel input quantizer with ties-to-even (the input type keeps 25 guard bits), conv + relu,
    per-tensor quantizer, max pool, conv, flatten, dense, per-element output quantizer."""
    m = Maker((8, 8, 2), "NHWC", seed=1)
    h = m.quant("x", [1, 1], [1, 2], [3, 2], "AP_RND_CONV", "AP_SAT")
    h = m.node("conv", h, m.weights((3, 3, 2, 4), 4, 3), m.weights((4,), 5, 3), groups=1,
               pads=((1, 1), (1, 1)), activation=Activation.of("relu"))
    h = m.quant(h, 0, 3, 2, "AP_RND", "AP_SAT")
    h = m.node("max_pool", h, kernel=(2, 2), strides=(2, 2))
    h = m.node("conv", h, m.weights((3, 3, 4, 3), 4, 2), m.weights((3,), 4, 2), groups=1)
    h = m.node("flatten", h)
    h = m.node("dense", h, m.weights((12, 3), 4, 3), m.weights((3,), 5, 2))
    return m.done(m.quant(h, 1, [3, 4, 2], [2, 3, 1], "AP_TRN", "AP_WRAP"))


def modes() -> Graph:
    """Every rounding x overflow mode, alternately per tensor (a linear activation) and per element
    (a FixedPointQuantizer), read from a 1/16 grid: half the values tie on the 1/8 grid."""
    m = Maker((16,), "NC", seed=2)
    fine = m.quant("x", 1, 3, 4, "AP_TRN", "AP_SAT")
    outs = []
    for j, (r, o) in enumerate((r, o) for r in ROUNDING for o in OVERFLOW):
        if j % 2:
            k = m.rng.integers(0, 2, 16)
            i = m.rng.integers(-1, 4, 16)
            f = m.rng.integers(-1, 5, 16)
            outs.append(m.quant(fine, k, i, f, r, o))
        else:
            outs.append(m.quant(fine, j % 4 // 2, 1 + j % 3, 3 - j % 2, r, o))
    return m.done(*outs)


def activations() -> Graph:
    """Activations between two per-tensor quantizers: exact lookup tables (hls4ml's UnaryLUT)."""
    m = Maker((16,), "NC", seed=9)
    h = m.node("dense", m.quant("x", 1, 2, 5, "AP_RND", "AP_SAT"), m.weights((16, 6), 4, 3), m.weights((6,), 5, 3))
    e = m.quant(h, [1, 0, 1, 1, 0, 1], [2, 3, 1, 0, 2, 3], [3, 2, 4, 5, 1, 2], "AP_RND", "AP_SAT")  # per element
    h = m.quant(h, 1, 3, 4, "AP_RND_CONV", "AP_SAT")
    return m.done(m.quant(m.node("sigmoid", e), 1, 1, 7, "AP_RND", "AP_SAT"),  # a table over the union grid
                  m.quant(m.node("sigmoid", h), 0, 0, 8, "AP_RND", "AP_SAT"),
                  m.quant(m.node("tanh", h), 1, 0, 6, "AP_TRN", "AP_SAT"),
                  m.quant(m.node("swish", h), 1, 3, 3, "AP_RND", "AP_WRAP"),
                  m.quant(m.node("gelu", h, approximate=False), 1, 3, 4, "AP_RND_CONV", "AP_SAT"))


def flat_input() -> Graph:
    """An image flattened before its per-element quantizer (the input type looks through flatten)."""
    m = Maker((4, 4, 2), "NHWC", seed=8)
    h = m.node("flatten", "x")
    h = m.quant(h, 1, m.rng.integers(0, 3, 32), m.rng.integers(1, 5, 32), "AP_RND", "AP_WRAP")
    h = m.node("dense", h, m.weights((32, 4), 4, 3), m.weights((4,), 5, 3), activation=Activation.of("relu"))
    return m.done(m.quant(h, 0, 4, 2, "AP_RND_ZERO", "AP_SAT"))


def cnn_per_tensor() -> Graph:
    """Only per-tensor quantizers (linear activations): io_stream and every back end take them."""
    m = Maker((8, 8, 2), "NHWC", seed=6)
    h = m.quant("x", 1, 2, 3, "AP_RND_CONV", "AP_SAT")
    h = m.node("conv", h, m.weights((3, 3, 2, 4), 4, 3), m.weights((4,), 5, 3), groups=1,
               pads=((1, 1), (1, 1)), activation=Activation.of("relu"))
    h = m.quant(h, 0, 3, 2, "AP_RND", "AP_SAT")
    h = m.node("flatten", m.node("max_pool", h, kernel=(2, 2), strides=(2, 2)))
    h = m.node("dense", h, m.weights((64, 3), 4, 3), m.weights((3,), 5, 2))
    return m.done(m.quant(h, 1, 4, 2, "AP_TRN_ZERO", "AP_WRAP"))


def feeds(graph: Graph, seed: int = 5) -> dict[str, np.ndarray]:
    shape = tuple(int(d) for d in graph.type_of("x").shape[1:])
    rng = np.random.default_rng(seed)
    return {"x": (rng.standard_normal((SAMPLES, *shape)) * 3).astype(np.float32)}


def prepared(graph: Graph) -> Graph:
    from tapeout.compiler.passes.registry import default_pipeline

    return default_pipeline().run(graph).graph


def compile_hls(graph: Graph, outdir, variant: str = "vitis", **options: Any) -> tuple[Graph, Any, Any]:
    """Through the target as a build runs it: canonicalize/fuse, the precision pass, emit (C-sim built)."""
    from tapeout.compiler.fixedpoint.precision import PrecisionSearch
    from tapeout.targets.base import EmitContext
    from tapeout.targets.hls4ml.target import Hls4mlTarget

    target = Hls4mlTarget(variant, **options)
    g = PrecisionSearch(target.precision_request(), None).run(prepared(graph)).graph
    outdir.mkdir(parents=True, exist_ok=True)
    return g, target, target.emit(g, EmitContext(outdir))


# ------------------------------------------------------------ NumPy model, no C++
@pytest.mark.parametrize("make", [mlp, cnn, modes, flat_input, activations])
def test_numpy_model_equals_interpreter(make) -> None:
    g = prepared(make())
    assert not any(n.op == "fixed_quant" and n.inputs[0] in g.constants for n in g.nodes)
    plan, _ = qat_plan(g)
    x = feeds(g)
    want = run(g, x)
    got = run_fixed(g, plan, x)
    for o in g.outputs:
        np.testing.assert_array_equal(got[o].to_float().reshape(want[o].shape), want[o], err_msg=o)


@pytest.mark.parametrize("rounding", ROUNDING)
@pytest.mark.parametrize("overflow", ["AP_WRAP", "AP_SAT"])
def test_per_element_input_quantizer_rounds_as_from_the_float(rounding: str, overflow: str) -> None:
    """The input type truncates before the quantizers round: exact for every mode (guard bits)."""
    m = Maker((12,), "NC", seed=4)
    g = m.done(m.quant("x", m.rng.integers(0, 2, 12), m.rng.integers(0, 3, 12), m.rng.integers(0, 5, 12),
                       rounding, overflow))
    plan, _ = qat_plan(g)
    x = feeds(g)
    x["x"] = np.concatenate([x["x"], np.round(x["x"] * 16) / 16 + np.float32(2.0**-20)])  # just above ties
    np.testing.assert_array_equal(run_fixed(g, plan, x)[g.outputs[0]].to_float(), run(g, x)[g.outputs[0]])


def test_types_come_from_the_quantizers() -> None:
    g = prepared(mlp())
    plan, notes = qat_plan(g)
    assert str(plan.inputs["x"]) == "ap_fixed<7,3,AP_RND,AP_SAT>" and notes == []
    dense = plan.of("dense")
    assert str(dense.weight) == "ap_fixed<4,1>"  # the folded ap_fixed<4,1,RND,SAT> weight grid
    assert dense.accum == dense.result and dense.accum.frac == 4 + 3  # every product bit kept
    assert str(plan.of("fixed_quant_2").result) == "ap_ufixed<8,4>"  # the per-element quantizer's union


def test_explicit_precision_is_ignored_with_a_note() -> None:
    from tapeout.compiler.fixedpoint.precision import PrecisionSearch
    from tapeout.targets.hls4ml.target import Hls4mlTarget

    request = Hls4mlTarget("vitis", precision=("ap_fixed<16,6>",)).precision_request()
    fixed = PrecisionSearch(request, None).run(prepared(mlp())).graph.fixed
    assert fixed.info["mode"] == "quantizers" and str(fixed.plan.inputs["x"]) == "ap_fixed<7,3,AP_RND,AP_SAT>"
    assert any("--precision ignored" in n for n in fixed.notes)


# ------------------------------------------------------------ C simulation
@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Any]:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    root = tmp_path_factory.mktemp("qat")
    return {make.__name__: (make, *compile_hls(make(), root / make.__name__), root / make.__name__)
            for make in (mlp, cnn, modes, flat_input, activations)}


@pytest.mark.parametrize("name", ["mlp", "cnn", "modes", "flat_input", "activations"])
def test_csim_equals_interpreter_bit_for_bit(compiled, name) -> None:
    from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

    _, g, _, emitted, outdir = compiled[name]
    x = feeds(g)
    want = run(g, x)
    with Hls4mlCsimRunner(outdir) as r:
        got, _ = r.run(x)
    compared = 0
    for o in g.outputs:
        np.testing.assert_array_equal(got[o].reshape(want[o].shape), want[o], err_msg=f"{name}: {o}")
        compared += want[o].size
    assert compared >= SAMPLES * 3
    report = emitted.extra["hls4ml"]
    assert report["precision"]["mode"] == "quantizers" and report["precision"]["quantizers"] >= 2
    assert not any("synthetic" in note for note in emitted.notes)  # no precision is chosen on data


@pytest.mark.parametrize("variant, io_type", [("vitis", "stream"), ("quartus", "parallel")])
def test_per_tensor_quantizers_in_io_stream_and_quartus(tmp_path, variant: str, io_type: str) -> None:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    g, target, _ = compile_hls(cnn_per_tensor(), tmp_path / "o", variant, io_type=io_type)
    x = feeds(g)
    want = run(g, x)[g.outputs[0]]
    with target.runner(tmp_path / "o") as r:
        got = r.infer(x)[g.outputs[0]]
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_distributed_arithmetic_stays_bit_exact(tmp_path) -> None:
    """hls4ml's adder graphs sum exactly; the quantizers still round as the interpreter does."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    g, target, emitted = compile_hls(mlp(), tmp_path / "o", strategy="distributed_arithmetic")
    x = feeds(g)
    want = run(g, x)[g.outputs[0]]
    with target.runner(tmp_path / "o") as r:
        got = r.infer(x)[g.outputs[0]]
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    assert emitted.extra["hls4ml"]["estimates"]["totals"]["dsp"] == 0


def test_confirm_reports_the_interpreter_comparison(compiled) -> None:
    _, g, target, emitted, outdir = compiled["mlp"]
    extra = {"hls4ml": dict(emitted.extra["hls4ml"])}
    notes: list[str] = []
    target.confirm(g, outdir, None, emitted, extra, notes)
    csim = extra["hls4ml"]["csim"]
    assert csim["interpreter_mismatches"] == 0 and csim["interpreter_compared"] > 0
    assert csim["mismatched"] == [] and csim["bit_exact_layers"] == csim["checked_layers"] > 0


def test_per_element_quantizer_is_a_fixed_point_quantizer(compiled) -> None:
    _, g, _, _, outdir = compiled["mlp"]
    code = (outdir / "firmware" / "nnet_utils" / "nnet_code_gen.h").read_text()
    assert "out[3] = 0;" in code  # the pruned element
    assert "ap_ufixed<5,2,AP_RND_CONV,AP_WRAP>(inp[0])" in code
    assert "ap_ufixed<3,4,AP_RND_CONV,AP_WRAP>(inp[6])" in code  # f = -1: I > W


# ------------------------------------------------------------ refusals: one line, exit 2, the node named
def _refused(graph: Graph, tmp_path, variant: str = "vitis", **options: Any) -> str:
    with pytest.raises(UsageError) as e:
        compile_hls(graph, tmp_path / "o", variant, **options)
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    return msg


def test_per_element_quantizer_refused_in_io_stream(tmp_path) -> None:
    msg = _refused(mlp(), tmp_path, io_type="stream")
    assert "'fixed_quant_2'" in msg and "io_parallel" in msg


@pytest.mark.parametrize("variant", ["quartus", "catapult"])
def test_per_element_quantizer_refused_off_vivado_vitis(tmp_path, variant: str) -> None:
    msg = _refused(mlp(), tmp_path, variant)
    assert "'fixed_quant_2'" in msg and f"hls4ml:{variant}" in msg


def test_lookup_table_refused_off_vivado_vitis(tmp_path) -> None:
    m = Maker((6,), "NC")
    msg = _refused(m.done(m.quant(m.node("sigmoid", m.quant("x", 1, 2, 3)), 0, 0, 6)), tmp_path, "quartus")
    assert "'sigmoid'" in msg and "UnaryLUT" in msg


def test_table_activation_without_quantizers_keeps_hls4ml_tables() -> None:
    m = Maker((6,), "NC")
    h = m.node("dense", m.quant("x", 1, 2, 2), m.weights((6, 3), 4, 2), activation=Activation.of("sigmoid"))
    plan, notes = qat_plan(prepared(m.done(m.quant(h, 1, 2, 4))))
    assert plan.of("dense_sigmoid").table is not None and "not bit-exact" in notes[0] and "dense_sigmoid" in notes[0]


def test_input_without_quantizer_refused(tmp_path) -> None:
    m = Maker((6,), "NC")
    h = m.node("dense", "x", m.weights((6, 3), 4, 2))
    msg = _refused(m.done(m.quant(h, 1, 2, 2)), tmp_path)
    assert "graph input 'x'" in msg and "'dense'" in msg


def test_unquantized_weights_refused(tmp_path) -> None:
    m = Maker((6,), "NC")  # float32 weights spread over binades: more than 24 bits to hold exactly
    h = m.node("dense", m.quant("x", 1, 2, 2), m.float_weights((6, 8)))
    msg = _refused(m.done(m.quant(h, 1, 2, 2)), tmp_path)
    assert "'dense'" in msg and "not quantized" in msg


def test_average_pooling_refused(tmp_path) -> None:
    m = Maker((4, 4, 2), "NHWC")
    h = m.node("avg_pool", m.quant("x", 1, 2, 2), kernel=(2, 2), strides=(2, 2))
    msg = _refused(m.done(m.quant(h, 1, 2, 2)), tmp_path)
    assert "'avg_pool'" in msg and "divides" in msg


def _qonnx_per_channel(folder) -> Any:
    """A QONNX file: one Quant with a scale per channel (2**-c, 6 bits) on the input: a per-element fixed_quant."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in
             (("scale", 2.0 ** -np.arange(8)), ("zeropt", 0.0), ("bitwidth", 6.0))]
    node = helper.make_node("Quant", ["x", "scale", "zeropt", "bitwidth"], ["y"], name="Quant_0",
                            domain="qonnx.custom_op.general", signed=1, narrow=0, rounding_mode="ROUND")
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [None, 8]) for k in "xy"]
    graph = helper.make_graph([node], "pc", io[:1], io[1:], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("qonnx.custom_op.general", 1)])
    path = folder / "pc.onnx"
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("flags", [["-t", "hls4ml", "--io-type", "stream"], ["-t", "hls4ml:quartus"]])
def test_cli_refuses_a_per_element_quantizer_in_one_line(tmp_path, flags: list[str]) -> None:
    pytest.importorskip("qonnx")
    from tests.cli_run import run_cli

    code, _, err = run_cli("compile", _qonnx_per_channel(tmp_path), *flags, "-o", tmp_path / "o", "--no-cache")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "node 'y': fixed_quant with a grid per element" in err
