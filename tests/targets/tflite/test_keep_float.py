"""tflite:int8 with some layers kept float (--keep-float, --fallback): those layers must run in
float in the artifact, and the artifact must compute what the quantization simulation does.

Found on the corpus's zoo SqueezeNet: --fallback kept 8 layers float (two 3x3 expand convs, the
concat they feed, the classifier conv, ...) and its simulation met cosine 0.992, yet every one of
them came out int8 and the artifact read cosine 0.51. TensorFlow's quantizer propagates the
scale of a quantized neighbour: a concat gives all its inputs and its output the scale of one
quantized input, and the conv writing into it is then quantized with that scale."""

from __future__ import annotations

import numpy as np

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.ir import Activation, Graph
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize, SplitActivations, simulate
from tapeout.targets.base import EmitContext

SAME = ((1, 1), (1, 1))


def _fire(cases) -> Graph:
    """A SqueezeNet fire module: squeeze, then a 1x1 and a 3x3 expand concatenated, then a 1x1 head."""
    m = cases.GraphMaker(x=((8, 8, 3), "NHWC"))
    s = m.conv("x", 8, (1, 1), activation=Activation.of("relu"))
    e1 = m.conv(s, 16, (1, 1), activation=Activation.of("relu"))
    e3 = m.conv(s, 16, (3, 3), pads=SAME, activation=Activation.of("relu"))
    cat = m.node("concat", e1, e3, axis=3)
    return m.done(m.conv(cat, 4, (1, 1)))


def _annotated(graph: Graph, keep: list[str]) -> Graph:
    split = Pipeline([SplitActivations()]).run(graph).graph
    feeds = {"x": np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype(np.float32)}
    return Pipeline([Quantize("int8", keep)]).run(calibrate(split, feeds)).graph


def _float_outputs(path) -> set[str]:
    """Names of the tensors written by CONV_2D / CONCATENATION ops of a .tflite file that compute in
    float: every input float32, weights included (a hybrid op, int8 weights and float activations,
    also writes float32)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    return {tensors[o]["name"] for op in it._get_ops_details() if op["op_name"] in ("CONV_2D", "CONCATENATION")
            and all(tensors[i]["dtype"] == np.float32 for i in op["inputs"] if i >= 0)
            for o in op["outputs"] if tensors[o]["dtype"] == np.float32}


def test_kept_conv_and_concat_run_in_float_and_match_the_simulation(cases, tmp_path) -> None:
    from tapeout.targets.tflite.target import TfliteTarget

    graph = _fire(cases)
    e3, cat = graph.nodes[2].name, graph.nodes[3].name
    g = _annotated(graph, [e3, cat])
    assert set(g.quant.float_nodes) >= {e3, cat}
    target = TfliteTarget("int8")
    target.emit(g, EmitContext(tmp_path))
    floats = _float_outputs(tmp_path / "model.tflite")
    assert any(e3 in name for name in floats), floats
    assert any(cat in name for name in floats), floats
    assert not any(graph.nodes[1].name in name for name in floats)  # the other expand stays int8
    x = np.random.default_rng(1).normal(size=(16, 8, 8, 3)).astype(np.float32)
    with target.runner(tmp_path) as runner:
        got = runner.infer({"x": x})[g.outputs[0]]
    want = simulate(g, {"x": x})[g.outputs[0]]
    step = float(g.quant.tensors[g.outputs[0]].scale[0])
    assert np.max(np.abs(got - want)) <= 2 * step  # a rounding step or two apart, no more


def test_nothing_kept_float_adds_no_barrier(cases, tmp_path) -> None:
    from tapeout.targets.tflite.target import TfliteTarget

    g = _annotated(_fire(cases), [])
    TfliteTarget("int8").emit(g, EmitContext(tmp_path))
    assert not _float_outputs(tmp_path / "model.tflite")


def test_kept_float_layers_with_the_mcu_option_are_refused_saying_why(cases, tmp_path) -> None:
    """TFLite Micro has no SIGN kernel, so it cannot run the barrier that keeps a layer float: one line, exit 2."""
    import pytest

    from tapeout.compiler.errors import UsageError
    from tapeout.targets.tflite.target import TfliteTarget

    graph = _fire(cases)
    g = _annotated(graph, [graph.nodes[2].name])
    with pytest.raises(UsageError, match=r"no kernel for SIGN.*kept float \(--keep-float, --fallback\)"):
        TfliteTarget("int8", mcu=True).emit(g, EmitContext(tmp_path))
