"""--io-layout: a channels-first (PyTorch-born) source compiled to TFLite takes NHWC by default.

The IR is channels-last inside, so channels-last I/O means no TRANSPOSE at the model's
edges. Data files, `tapeout verify` and the report's source side keep the source's layout:
the runtime transposes with the perm recorded in tapeout_io.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.cli import main
from tests.cli_run import run_cli


def _save(nodes, inputs, outputs, inits, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, path.stem, inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _resnet_block(path: Path) -> None:
    """NCHW: conv-bn-relu, conv, residual add, relu ('feat', also an output), global pool, flatten, gemm."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)

    def w(name: str, *shape: int):
        return nh.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)

    def v(name: str, n: int, offset: float = 0.0):
        return nh.from_array((offset + 0.1 * rng.standard_normal(n)).astype(np.float32), name)

    inits = [w("c1.w", 8, 3, 3, 3), v("c1.b", 8), v("bn.s", 8, 1.0), v("bn.b", 8), v("bn.m", 8),
             nh.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn.v"),
             w("c2.w", 8, 8, 3, 3), v("c2.b", 8), w("fc.w", 10, 8), v("fc.b", 10)]
    nodes = [helper.make_node("Conv", ["input.1", "c1.w", "c1.b"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["a", "bn.s", "bn.b", "bn.m", "bn.v"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("Conv", ["c", "c2.w", "c2.b"], ["d"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["d", "c"], ["e"]),
             helper.make_node("Relu", ["e"], ["feat"]),
             helper.make_node("GlobalAveragePool", ["feat"], ["g"]),
             helper.make_node("Flatten", ["g"], ["h"]),
             helper.make_node("Gemm", ["h", "fc.w", "fc.b"], ["logits"], transB=1)]
    _save(nodes, [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 12, 12])],
          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
           helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 8, 12, 12])], inits, path)


def _conv1d(path: Path) -> None:
    """NCW in, NCW out: Conv1D + ReLU."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(1)
    inits = [nh.from_array((rng.standard_normal((6, 4, 3)) / 3.5).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1]), helper.make_node("Relu", ["y"], ["out"])]
    _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 20])],
          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 6, 20])], inits, path)


def _ops_and_io(path: Path) -> tuple[list[str], list[tuple[int, ...]], list[tuple[int, ...]], list[str]]:
    """Op list, input and output shapes of the .tflite, and the ops reading an input or writing an output."""
    from tapeout.targets.tflite.flatbuffer import read_model

    info = read_model(path.read_bytes())
    edge = [o.op for o in info.ops if set(o.inputs) & set(info.inputs) or set(o.outputs) & set(info.outputs)]
    return (info.op_names(), [info.tensors[i].shape for i in info.inputs],
            [info.tensors[i].shape for i in info.outputs], edge)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resnet")
    _resnet_block(root / "model.onnx")
    rng = np.random.default_rng(2)
    np.savez(root / "eval.npz", **{"input.1": rng.standard_normal((12, 3, 12, 12)).astype(np.float32)})
    return root / "model.onnx", root / "eval.npz"


@pytest.fixture(scope="module")
def builds(resnet, tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    """The block compiled with the default layout (channels-last for tflite) and with --io-layout source."""
    model, data = resnet
    out = {}
    for name, flags in (("default", []), ("source", ["--io-layout", "source"])):
        folder = tmp_path_factory.mktemp(name)
        code, _, err = run_cli("compile", model, "-t", "tflite", "-t", "tflite:int8", "-t", "onnx", "-o", folder,
                               "--eval", data, "--calibration", data, "--no-timings", *flags)
        out[name] = (code, err, folder)
    return out


def _targets(folder: Path) -> dict[str, dict]:
    report = json.loads((folder / "report.json").read_text())
    return {f"{t['target']}:{t['variant']}": t for t in report["targets"]}


def test_nchw_source_gives_nhwc_tflite_without_edge_transposes(builds) -> None:
    code, err, folder = builds["default"]
    assert code in (0, 1), err
    ops, ins, outs, edge = _ops_and_io(folder / "tflite-fp32" / "model.tflite")
    assert "TRANSPOSE" not in ops, ops  # was: TRANSPOSE at the input and before the 'feat' output
    assert ins == [(1, 12, 12, 3)]
    assert sorted(outs) == [(1, 10), (1, 12, 12, 8)]
    assert edge and "TRANSPOSE" not in edge
    t = _targets(folder)
    assert t["tflite:fp32"]["verification"]["passed"]
    io_ = t["tflite:fp32"]["interface"]
    ports = {p["name"]: p for p in (*io_["inputs"], *io_["outputs"])}
    assert (ports["input.1"]["layout"], ports["input.1"]["shape"], ports["input.1"]["perm"]) == \
        ("NHWC", ["N", 12, 12, 3], [0, 2, 3, 1])
    assert (ports["input.1"]["source_layout"], ports["feat"]["layout"], ports["logits"]["layout"]) == \
        ("NCHW", "NHWC", "NC")
    assert any("--io-layout channels-last" in n for n in t["tflite:fp32"]["notes"])
    # The int8 variant is channels-last too; other targets keep the source layout by default.
    _, ins8, _, _ = _ops_and_io(folder / "tflite-int8" / "model.tflite")
    assert ins8 == [(1, 12, 12, 3)]
    assert t["onnx:fp32"]["interface"]["inputs"][0]["layout"] == "NCHW"


def test_io_layout_source_keeps_nchw_at_the_edges(builds) -> None:
    code, err, folder = builds["source"]
    assert code in (0, 1), err
    ops, ins, outs, edge = _ops_and_io(folder / "tflite-fp32" / "model.tflite")
    assert ins == [(1, 3, 12, 12)] and sorted(outs) == sorted([(1, 10), (1, 8, 12, 12)])
    assert edge.count("TRANSPOSE") == 2, ops
    t = _targets(folder)
    assert t["tflite:fp32"]["verification"]["passed"]
    assert t["tflite:fp32"]["interface"]["inputs"][0]["layout"] == "NCHW"
    assert t["tflite:fp32"]["interface"]["inputs"][0]["perm"] is None


def test_both_layouts_compute_the_same(builds) -> None:
    """Same source-layout results: fp32 within float rounding, int8 with the same cosine."""
    a, b = _targets(builds["default"][2]), _targets(builds["source"][2])
    for key in ("tflite:fp32", "tflite:int8"):
        va, vb = a[key]["verification"], b[key]["verification"]
        assert va["samples"] == vb["samples"] == 12
        assert va["cosine"] == pytest.approx(vb["cosine"], abs=1e-6)
    assert a["tflite:fp32"]["verification"]["max_abs_err"] < 1e-4


@pytest.mark.parametrize("layout", ["default", "source"])
@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_verify_feeds_each_artifact_in_its_own_layout(resnet, builds, layout, variant) -> None:
    model, data = resnet
    folder = builds[layout][2]
    code, text, err = run_cli("verify", model, folder / f"tflite-{variant}" / "model.tflite", "--data", data,
                              "--atol", "1e-4", "--rtol", "1e-4", "--json") if variant == "fp32" else \
        run_cli("verify", model, folder / f"tflite-{variant}" / "model.tflite", "--data", data, "--json")
    assert code in (0, 1), err
    result = json.loads(text)
    assert result["samples"] == 12
    cos = {o["name"]: o["cosine"] for o in result["outputs"]}
    assert min(cos.values()) > (0.9999 if variant == "fp32" else 0.99), cos
    if variant == "fp32":
        assert code == 0 and result["passed"]


def test_the_runner_takes_source_layout_data(builds, resnet) -> None:
    from tapeout.runtime.runners.litert import LiteRTRunner
    from tapeout.runtime.runners.select import runner_for

    folder = builds["default"][2] / "tflite-fp32"
    x = np.load(resnet[1])["input.1"][:2]
    with runner_for(folder / "model.tflite") as mapped, LiteRTRunner(folder / "model.tflite") as raw:
        assert [tuple(s.shape) for s in mapped.input_specs()] == [("N", 3, 12, 12)]
        assert [tuple(s.shape) for s in raw.input_specs()] == [("N", 12, 12, 3)]
        got = mapped.infer({"input.1": x})
        want = raw.infer({"input.1": x.transpose(0, 2, 3, 1)})
    np.testing.assert_array_equal(got["feat"], want["feat"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(got["logits"], want["logits"])


def test_rank3_ncw_becomes_nwc(tmp_path) -> None:
    _conv1d(tmp_path / "c1.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((8, 4, 20)).astype(np.float32))
    code, _, err = run_cli("compile", tmp_path / "c1.onnx", "-t", "tflite", "-o", tmp_path / "out",
                           "--eval", tmp_path / "eval.npz")
    assert code == 0, err
    ops, ins, outs, _ = _ops_and_io(tmp_path / "out" / "tflite-fp32" / "model.tflite")
    assert ins == [(1, 20, 4)] and outs == [(1, 20, 6)] and "TRANSPOSE" not in ops
    io_ = _targets(tmp_path / "out")["tflite:fp32"]["interface"]
    assert [(p["layout"], p["perm"]) for p in (*io_["inputs"], *io_["outputs"])] == [("NWC", [0, 2, 1])] * 2
    code, _, err = run_cli("verify", tmp_path / "c1.onnx", tmp_path / "out" / "tflite-fp32" / "model.tflite",
                           "--data", tmp_path / "eval.npz")
    assert code == 0, err


def test_onnx_target_can_be_channels_last_too(tmp_path) -> None:
    import onnx

    _conv1d(tmp_path / "c1.onnx")
    code, _, err = run_cli("compile", tmp_path / "c1.onnx", "-t", "onnx", "-o", tmp_path / "out",
                           "--io-layout", "channels-last")
    assert code == 0, err
    model = onnx.load(tmp_path / "out" / "onnx-fp32" / "model.onnx")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [20, 4]
    code, _, err = run_cli("verify", tmp_path / "c1.onnx", tmp_path / "out" / "onnx-fp32" / "model.onnx")
    assert code == 0, err


def test_keras_source_is_unaffected(tiny_cnn_path, tiny_eval_path, tmp_path) -> None:
    """An NHWC source: the same bytes with either layout, and no perm recorded."""
    runs = {}
    for name, flags in (("default", []), ("source", ["--io-layout", "source"])):
        code, _, err = run_cli("compile", tiny_cnn_path, "-t", "tflite", "-o", tmp_path / name,
                               "--eval", tiny_eval_path, *flags)
        assert code == 0, err
        runs[name] = (tmp_path / name / "tflite-fp32" / "model.tflite").read_bytes()
        io_ = _targets(tmp_path / name)["tflite:fp32"]["interface"]
        assert [(p["name"], p["layout"], p["perm"]) for p in io_["inputs"]] == [("image", "NHWC", None)]
    assert runs["default"] == runs["source"]
    assert "TRANSPOSE" not in _ops_and_io(tmp_path / "default" / "tflite-fp32" / "model.tflite")[0]


def test_bad_io_layout_is_a_usage_error(tmp_path, capsys) -> None:
    from tapeout.compiler.api import compile_model
    from tapeout.compiler.errors import UsageError

    with pytest.raises(SystemExit) as e:
        main(["compile", "m.onnx", "-t", "tflite", "-o", str(tmp_path / "o"), "--io-layout", "nhwc"])
    assert e.value.code == 2 and "--io-layout" in capsys.readouterr().err
    with pytest.raises(UsageError, match="io-layout"):
        compile_model("m.onnx", ["tflite"], tmp_path / "o", io_layout="nhwc")
