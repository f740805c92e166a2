"""OnnxRuntimeRunner on a hand-built Add+Relu model, and verify() between runners."""

import numpy as np
import pytest

from tapeout.runtime.compare import Tolerance
from tapeout.runtime.data import Dataset, synthesize
from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.protocol import IOSpec, Runner
from tapeout.runtime.verify import verify

pytest.importorskip("onnxruntime")
from tapeout.runtime.runners.onnxrt import OnnxRuntimeRunner  # noqa: E402

BIAS = np.array([1.0, -2.0, 0.5], dtype=np.float32)


def test_runner_specs_and_outputs(onnx_file) -> None:
    with OnnxRuntimeRunner(onnx_file(BIAS)) as runner:
        assert runner.name == "onnxruntime"
        assert runner.input_specs() == [IOSpec("x", ("N", 3), "float32")]
        assert runner.output_names() == ["y"]
        x = np.array([[0.0, 1.0, -1.0], [-2.0, 3.0, 0.25]])  # float64: the runner casts
        got = runner.infer({"x": x})
    np.testing.assert_allclose(got["y"], np.maximum(x + BIAS, 0).astype(np.float32))
    assert got["y"].dtype == np.float32


def test_runner_accepts_model_bytes(onnx_file) -> None:
    runner = OnnxRuntimeRunner(onnx_file(BIAS).read_bytes())
    assert runner.infer({"x": np.zeros((1, 3))})["y"].tolist() == [[1.0, 0.0, 0.5]]
    runner.close()


@pytest.mark.parametrize("content", [b"", b"definitely not protobuf \x00\xff" * 4])
def test_corrupt_model_is_one_line_input_error(tmp_path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(RuntimeInputError, match="bad.onnx: not a loadable ONNX model") as info:
        OnnxRuntimeRunner(path).open()
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_feeds(tmp_path, onnx_file) -> None:
    with pytest.raises(RuntimeInputError, match="no such ONNX model"):
        OnnxRuntimeRunner(tmp_path / "absent.onnx").open()
    with OnnxRuntimeRunner(onnx_file(BIAS)) as runner:
        with pytest.raises(RuntimeInputError, match="no data for input"):
            runner.infer({"other": np.zeros((1, 3))})
        with pytest.raises(RuntimeInputError, match="could not run") as info:
            runner.infer({"x": np.zeros((1, 4))})
    assert "\n" not in str(info.value)


def test_verify_a_model_against_itself_passes(onnx_file) -> None:
    path = onnx_file(BIAS)
    data = synthesize([IOSpec("x", ("N", 3))], num_samples=40, seed=1)
    result = verify(OnnxRuntimeRunner(path), OnnxRuntimeRunner(path), data, Tolerance(0.0, 0.0), batch_size=16)
    (out,) = result.outputs
    assert result.passed and out.name == "y" and out.max_abs_err == 0.0
    assert result.samples == 40 and out.shape == [40, 3] and result.data_kind == "synthetic"


def test_verify_against_a_perturbed_model_fails(onnx_file) -> None:
    ref = onnx_file(BIAS, name="ref.onnx")
    cand = onnx_file(BIAS + np.float32(0.01), name="cand.onnx")
    data = Dataset({"x": np.full((5, 3), 3.0, np.float32)}, None, "eval")  # relu passes everything through
    result = verify(OnnxRuntimeRunner(ref), OnnxRuntimeRunner(cand), data, Tolerance(1e-4, 1e-4), batch_size=2)
    (out,) = result.outputs
    assert not result.passed and out.mismatches == 15
    assert out.max_abs_err == pytest.approx(0.01, rel=1e-4)
    assert verify(OnnxRuntimeRunner(ref), OnnxRuntimeRunner(cand), data, Tolerance(atol=0.02)).passed


def test_verify_matches_a_lone_output_by_position_and_says_so(onnx_file) -> None:
    ref = onnx_file(BIAS, name="ref.onnx")
    cand = onnx_file(BIAS, name="cand.onnx", input_name="input_0", output_name="logits")
    data = synthesize([IOSpec("x", ("N", 3))], num_samples=4)
    result = verify(OnnxRuntimeRunner(ref), OnnxRuntimeRunner(cand), data)
    assert result.passed and [o.name for o in result.outputs] == ["y"]
    assert any("'y'" in n and "'logits'" in n for n in result.notes)
    assert any("'x'" in n and "'input_0'" in n for n in result.notes)


class _Counting(Runner):
    """Wraps a runner, counting batches, to check verify() opens/closes only what it opened."""

    name = "counting"

    def __init__(self, inner: Runner) -> None:
        super().__init__()
        self.inner, self.calls, self.closed = inner, 0, 0

    def input_specs(self) -> list[IOSpec]:
        return self.inner.input_specs()

    def output_names(self) -> list[str]:
        return self.inner.output_names()

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return self.inner.infer(feeds)

    def _close(self) -> None:
        self.closed += 1


def test_verify_batches_and_leaves_caller_opened_runners_open(onnx_file) -> None:
    path = onnx_file(BIAS)
    ref, cand = _Counting(OnnxRuntimeRunner(path)), _Counting(OnnxRuntimeRunner(path))
    ref.open()
    verify(ref, cand, synthesize(ref.input_specs(), num_samples=10), batch_size=4)
    assert ref.calls == cand.calls == 3
    assert ref.closed == 0 and cand.closed == 1



def test_artifact_runner_skips_the_old_opset_lift(tmp_path) -> None:
    """lift_old=False (tapeout's own artifacts, opset >= 17) runs the file as it is: no onnx parse."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "old",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "relu6.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=3), path)
    x = np.array([[-1.0, 0.0, 2.0]], np.float32)
    with OnnxRuntimeRunner(path) as source:
        assert source.infer({"x": x})["y"].tolist() == [[0.0, 0.0, 2.0]]
        assert source.notes == ["source runner: opset 6 upgraded to opset 7 for onnxruntime"]
    with OnnxRuntimeRunner(path, lift_old=False) as artifact:
        assert artifact.infer({"x": x})["y"].tolist() == [[0.0, 0.0, 2.0]]
        assert artifact.notes == []
