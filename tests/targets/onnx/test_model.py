"""Whole-model properties of the ONNX back end: layouts and Transposes, I/O, determinism, target."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Activation
from tapeout.targets.base import EmitContext
from tapeout.targets.onnx.emit import graph_to_onnx


def _plain_cnn(maker, layout: str = "NHWC"):
    m = maker(x=((8, 8, 3), layout))
    y = m.conv("x", 4, (3, 3), pads=((1, 1), (1, 1)))
    y = m.node("batch_norm", y, m.const((4,)), m.const((4,)), m.const((4,)), m.const((4,), scale=0.1, offset=1.0))
    y = m.node("relu", y)
    y = m.node("max_pool", y, kernel=(2, 2), strides=(2, 2))
    y = m.conv(y, 5, (3, 3), strides=(2, 2), activation=Activation.of("relu"))
    y = m.dense(m.node("flatten", y), 3, activation=Activation.of("softmax", axis=-1))
    return m.done(y, layouts={y: "NC"})


def _transposes(model) -> list:
    return [n for n in model.graph.node if n.op_type == "Transpose"]


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_plain_cnn_has_only_the_input_transpose(maker, check) -> None:
    graph = _plain_cnn(maker)
    model = check(graph)
    transposes = _transposes(model)
    assert len(transposes) == 1
    assert list(transposes[0].input) == ["x"]
    assert [i.name for i in model.graph.input] == ["x"] and _dims(model.graph.input[0]) == ["N", 8, 8, 3]
    assert _dims(model.graph.output[0]) == ["N", 3]
    # IR node names survive as ONNX node names.
    assert {n.name for n in graph.nodes} <= {n.name for n in model.graph.node}


def test_channels_first_source_needs_no_transpose(maker, check) -> None:
    m = maker(x=((8, 8, 3), "NCHW"))
    y = m.node("avg_pool", m.conv("x", 4, (3, 3), activation=Activation.of("relu")), kernel=(2, 2), strides=(2, 2))
    model = check(m.done(y, layouts={y: "NCHW"}))
    assert _transposes(model) == []
    assert _dims(model.graph.input[0]) == ["N", 3, 8, 8]
    assert _dims(model.graph.output[0]) == ["N", 4, 3, 3]


def test_channels_last_output_gets_one_boundary_transpose(maker, check) -> None:
    m = maker(x=((8, 8, 3), "NHWC"))
    y = m.conv(m.conv("x", 4, (3, 3)), 2, (1, 1))
    model = check(m.done(y, layouts={y: "NHWC"}))
    assert len(_transposes(model)) == 2
    assert _dims(model.graph.output[0]) == ["N", 6, 6, 2]
    producer = {o: n for n in model.graph.node for o in n.output}[y]
    assert producer.op_type == "Transpose"


def test_channels_first_output_of_a_channels_last_value(maker, check) -> None:
    # The output tensor is computed channels-last (reshape) but the source layout is NCW.
    m = maker(x=((4, 6), "NWC"))
    y = m.node("reshape", "x", shape=(6, 4))
    model = check(m.done(y, layouts={y: "NCW"}))
    assert _dims(model.graph.output[0]) == ["N", 4, 6]
    assert [o.name for o in model.graph.output] == [y]


def test_flatten_without_dense_transposes_to_channels_last(maker, check) -> None:
    m = maker(x=((6, 6, 2), "NHWC"))
    model = check(m.done(m.node("flatten", m.conv("x", 3, (3, 3)))))
    # Input boundary plus one back to channels-last element order before Flatten.
    assert len(_transposes(model)) == 2


def test_double_emit_is_byte_identical(maker) -> None:
    graph = _plain_cnn(maker)
    first = graph_to_onnx(graph).SerializeToString()
    assert graph_to_onnx(graph.copy()).SerializeToString() == first
    model = graph_to_onnx(graph)
    assert model.producer_name == "tapeout" and model.opset_import[0].version == 17


@pytest.mark.parametrize("opset", [16, 10_000])
def test_unsupported_opset_is_a_usage_error(maker, opset: int) -> None:
    with pytest.raises(UsageError, match="opset"):
        graph_to_onnx(_plain_cnn(maker), opset=opset)


def test_target_emits_model(maker, tmp_path) -> None:
    from tapeout.targets.onnx.target import OnnxTarget

    graph = _plain_cnn(maker)
    target = OnnxTarget()
    result = target.emit(graph, EmitContext(tmp_path))
    assert result.artifacts == ["model.onnx"] and (tmp_path / "model.onnx").is_file()
    assert result.extra["transposes"] == 1 and result.notes
    assert (tmp_path / "model.onnx").read_bytes() == graph_to_onnx(graph).SerializeToString()


def test_target_runner_matches_reference(maker, tmp_path) -> None:
    pytest.importorskip("tapeout.runtime.runners.onnxrt")  # written in parallel by another engineer
    from tapeout.compiler.interpreter import run
    from tapeout.targets.onnx.target import OnnxTarget

    graph = _plain_cnn(maker)
    target = OnnxTarget()
    target.emit(graph, EmitContext(tmp_path))
    x = np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype(np.float32)
    with target.runner(tmp_path) as runner:
        got = runner.infer({"x": x})
    out = graph.outputs[0]
    np.testing.assert_allclose(got[out], run(graph, {"x": x})[out], rtol=1e-5, atol=1e-5)


def test_target_module_does_not_import_onnx() -> None:
    code = "import sys, tapeout.targets.onnx.target; print('onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_flatten_of_1x1_spatial_keeps_the_dense_weights(maker, check) -> None:
    m = maker(x=((4, 4, 2), "NHWC"))
    pooled = m.node("global_max_pool", m.conv("x", 3, (1, 1)), keepdims=True)
    model = check(m.done(m.dense(m.node("flatten", pooled), 2)))
    assert not any("rows_of" in t.name for t in model.graph.initializer)
    assert len(_transposes(model)) == 1


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_flatten_to_2_4_sparse_dense_keeps_the_pattern_along_k(maker, check, pattern) -> None:
    """Reordering a 2:4 dense's rows for a channels-first flatten scatters its groups of 4, so
    the emitter transposes to channels-last instead; without the pattern it reorders (no Transpose)."""
    from tapeout.compiler.passes.prune import PruneNM

    m = maker(x=((4, 4, 2), "NHWC"))
    y = m.dense(m.node("flatten", m.conv("x", 4, (1, 1))), 3)
    graph = m.done(y)
    if pattern:
        graph = PruneNM().run(graph).graph
        assert graph.metadata["sparsity_pattern"] == pattern
    model = check(graph)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    from onnx import numpy_helper

    w = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == gemm.input[1])
    if pattern:
        assert "rows_of" not in gemm.input[1] and len(_transposes(model)) == 2
        assert ((w.reshape(-1, 4, 3) != 0).sum(axis=1) <= 2).all()
    else:
        assert "rows_of" in gemm.input[1] and len(_transposes(model)) == 1
