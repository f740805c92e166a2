"""tflite:int8 with every layer kept float (--keep-float on all of them, or --fallback reverting
every unit): the annotations quantize nothing, so the artifact must compute in float.

Found on the corpus's MobileNetV2: --fallback kept all 65 nodes float, its simulation met
cosine/agreement 1.0, yet the artifact verified at cosine 0.970 and agreement 0.875. With no
FakeQuant in the model TensorFlow's converter is no longer in its quantization-aware mode:
``Optimize.DEFAULT`` without representative data is post-training dynamic-range quantization,
which stored every conv/dense weight in int8."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.calibration import calibrate
from tapeout.compiler.errors import UsageError
from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import Activation, Graph
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.quantize import Quantize, SplitActivations
from tapeout.targets.base import EmitContext


def _model(cases) -> Graph:
    m = cases.GraphMaker(x=((8, 8, 3), "NHWC"))
    y = m.conv("x", 64, (3, 3), pads=((1, 1), (1, 1)), activation=Activation.of("relu"))
    y = m.node("global_avg_pool", y, keepdims=False)
    y = m.dense(y, 32, activation=Activation.of("relu"))
    return m.done(m.dense(y, 5))


def _all_float(graph: Graph) -> Graph:
    split = Pipeline([SplitActivations()]).run(graph).graph
    feeds = {"x": np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype(np.float32)}
    every = [n.name for n in split.nodes]
    return Pipeline([Quantize("int8", every)]).run(calibrate(split, feeds)).graph


def test_every_layer_kept_float_gives_a_float_model(cases, tmp_path) -> None:
    from tapeout.targets.tflite.flatbuffer import read_model
    from tapeout.targets.tflite.target import TfliteTarget

    g = _all_float(_model(cases))
    assert not [tq for tq in g.quant.tensors.values() if tq.is_integer]
    target = TfliteTarget("int8")
    target.emit(g, EmitContext(tmp_path))
    info = read_model((tmp_path / "model.tflite").read_bytes())
    assert {t.dtype for t in info.tensors} <= {"FLOAT32", "INT32"}, sorted({t.dtype for t in info.tensors})
    x = np.random.default_rng(1).normal(size=(16, 8, 8, 3)).astype(np.float32)
    with target.runner(tmp_path) as runner:
        got = runner.infer({"x": x})[g.outputs[0]]
    np.testing.assert_allclose(got, run(g, {"x": x})[g.outputs[0]], rtol=1e-4, atol=1e-4)


def test_integer_io_with_every_layer_float_is_a_usage_error(cases, tmp_path) -> None:
    from tapeout.targets.tflite.target import TfliteTarget

    with pytest.raises(UsageError, match="no quantized input"):
        TfliteTarget("int8", io="int8").emit(_all_float(_model(cases)), EmitContext(tmp_path))
