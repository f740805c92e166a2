"""ONNX Slice and Split (every form, several opsets) against onnxruntime, and a ShuffleNet unit end to end.

Slice-1 (attributes), Slice-10 (inputs), Slice-11/13 (negative axes, steps); Split-2/11
(attribute ``split``), Split-13 (input ``split``), Split-18 (``num_outputs``, uneven).
Each runs on a value the importer stores channels-last (a Conv before it: the sliced ONNX
axis must be remapped to where the IR stores it) and on a value kept in ONNX order. The
interpreter and the ONNX artifact must both match onnxruntime.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tapeout.compiler.errors import FrontendError
from tapeout.compiler.frontends.onnx import load_onnx
from tapeout.compiler.ir import Graph
from tapeout.compiler.passes.registry import default_pipeline
from tapeout.compiler.reference_runner import ReferenceRunner
from tapeout.targets.onnx.emit import graph_to_onnx

sys.path.insert(0, str(Path(__file__).parent))
import onnx_builders as B  # noqa: E402

INT64_MAX, INT64_MIN = 2**63 - 1, -2**63
X4 = ["N", 8, 5, 6]  # NCHW


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def check(model: onnx.ModelProto, folder: Path, batch: int = 2) -> Graph:
    """Import ``model``; the interpreter and the ONNX artifact must match onnxruntime exactly enough."""
    path = B.save(model, folder)
    graph = load_onnx(path)
    src = _session(path)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.uniform(-2, 2, [d if isinstance(d, int) else batch for d in i.shape]).astype(np.float32)
             for i in src.get_inputs()}
    want = _run(src, feeds)
    got = ReferenceRunner(graph, source_layout=True).infer(feeds)
    again = _run(_session(graph_to_onnx(default_pipeline().run(graph).graph)), feeds)
    assert list(got) == list(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=1e-5, err_msg=f"interpreter, {k}")
        np.testing.assert_allclose(again[k], want[k], atol=1e-5, rtol=1e-5, err_msg=f"artifact, {k}")
    return graph


def _i(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def _pre(conv: bool, inits: dict[str, np.ndarray]) -> tuple[list, str]:
    """A 1x1 Conv in front (its output is stored channels-last), or the input as is."""
    if not conv:
        return [], "x"
    inits["pre.w"] = B.rand(np.random.default_rng(3), 8, 8, 1, 1)
    return [B.node("Conv", ["x", "pre.w"], "pre")], "pre"


# ------------------------------------------------------------------ Slice
# id -> (opset, attrs (Slice-1) or None, inputs starts/ends/axes/steps (Slice-10+) or None)
SLICES: dict[str, tuple[int, dict | None, tuple | None]] = {
    "opset9_attrs_channels": (9, {"starts": [0], "ends": [4], "axes": [1]}, None),
    "opset9_attrs_no_axes": (9, {"starts": [0, 2, 1], "ends": [INT64_MAX, 7, -1]}, None),
    "opset10_inputs_no_steps": (10, None, (_i(4), _i(INT64_MAX), _i(1))),
    "opset11_negative_axes": (11, None, (_i(-3, 1), _i(-1, 5), _i(-2, -1), _i(1, 1))),
    "opset13_steps": (13, None, (_i(1, 0, 5), _i(8, 5, 0), _i(1, 2, 3), _i(3, 2, -2))),
    "opset13_flip_channels": (13, None, (_i(-1), _i(-INT64_MAX), _i(1), _i(-1))),
    "opset13_batch_axis_whole": (13, None, (_i(0, 2), _i(INT64_MAX, 6), _i(0, 1))),
    "opset18_clamped_both": (18, None, (_i(-100, 2), _i(100, 100), _i(2, 3))),
}


@pytest.mark.parametrize("conv", [True, False], ids=["channels_last", "onnx_order"])
@pytest.mark.parametrize("case", sorted(SLICES))
def test_slice_matches_onnxruntime(case: str, conv: bool, tmp_path: Path) -> None:
    opset, attrs, ins = SLICES[case]
    inits: dict[str, np.ndarray] = {}
    nodes, x = _pre(conv, inits)
    if ins is None:
        nodes.append(B.node("Slice", [x], "y", **attrs))
    else:
        names = ["starts", "ends", "axes", "steps"][:len(ins)]
        inits.update(zip(names, ins))
        nodes.append(B.node("Slice", [x, *names], "y"))
    graph = check(B.make_model(nodes, {"x": X4}, {"y": None}, inits, opset=opset), tmp_path)
    if conv:  # the slice runs where the conv left the data: no transpose to ONNX order and back
        assert not any(n.op == "transpose" for n in graph.nodes)


def test_noop_slice_emits_nothing(tmp_path: Path) -> None:
    nodes = [B.node("Slice", ["x", "s", "e"], "y")]
    inits = {"s": _i(0, 0), "e": _i(INT64_MAX, INT64_MAX)}
    graph = check(B.make_model(nodes, {"x": X4}, {"y": None}, inits, opset=13), tmp_path)
    assert [n.op for n in graph.nodes] == ["identity"]


# ------------------------------------------------------------------ Split
# id -> (opset, attrs, split input or None, number of outputs)
SPLITS: dict[str, tuple[int, dict, np.ndarray | None, int]] = {
    "opset7_attr_sizes": (7, {"axis": 1, "split": [3, 5]}, None, 2),
    "opset11_equal_negative_axis": (11, {"axis": -1}, None, 3),
    "opset11_attr_three": (11, {"axis": 2, "split": [1, 3, 1]}, None, 3),
    "opset13_input_sizes": (13, {"axis": 1}, _i(2, 2, 4), 3),
    "opset13_equal_no_input": (13, {"axis": 1}, None, 2),
    "opset18_num_outputs": (18, {"axis": 1, "num_outputs": 2}, None, 2),
    "opset18_num_outputs_uneven": (18, {"axis": 1, "num_outputs": 3}, None, 3),  # 3, 3, 2
    "opset18_input_sizes": (18, {"axis": 3}, _i(4, 2), 2),
}


@pytest.mark.parametrize("conv", [True, False], ids=["channels_last", "onnx_order"])
@pytest.mark.parametrize("case", sorted(SPLITS))
def test_split_matches_onnxruntime(case: str, conv: bool, tmp_path: Path) -> None:
    opset, attrs, sizes, count = SPLITS[case]
    inits: dict[str, np.ndarray] = {}
    nodes, x = _pre(conv, inits)
    ins = [x]
    if sizes is not None:
        inits["sizes"] = sizes
        ins.append("sizes")
    outs = [f"y{i}" for i in range(count)]
    nodes.append(B.node("Split", ins, outs, name="the_split", **attrs))
    graph = check(B.make_model(nodes, {"x": X4}, {o: None for o in outs}, inits, opset=opset), tmp_path)
    assert sum(n.op == "slice" for n in graph.nodes) == count  # one slice per part
    if conv:
        assert not any(n.op == "transpose" for n in graph.nodes)


def test_split_unused_part_is_dropped(tmp_path: Path) -> None:
    inits: dict[str, np.ndarray] = {}
    nodes, x = _pre(True, inits)
    nodes += [B.node("Split", [x], ["a", "b"], axis=1), B.node("Relu", ["b"], "y")]
    graph = check(B.make_model(nodes, {"x": X4}, {"y": None}, inits, opset=13), tmp_path)
    assert sum(n.op == "slice" for n in graph.nodes) == 1


def test_graph_input_split_then_conv_is_stored_channels_last(tmp_path: Path) -> None:
    """A Split between the input and its convs does not keep the input in ONNX order."""
    rng = np.random.default_rng(5)
    inits = {"wa": B.rand(rng, 4, 4, 3, 3), "wb": B.rand(rng, 4, 4, 3, 3)}
    nodes = [B.node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
             B.node("Conv", ["a", "wa"], "ca", pads=[1, 1, 1, 1]),
             B.node("Conv", ["b", "wb"], "cb", pads=[1, 1, 1, 1]),
             B.node("Concat", ["ca", "cb"], "y", axis=1)]
    graph = check(B.make_model(nodes, {"x": X4}, {"y": None}, inits, opset=18), tmp_path)
    assert graph.io_layouts["x"] == "NCHW" and graph.types["x"].shape[-1] == 8
    assert not any(n.op == "transpose" for n in graph.nodes)


# -------------------------------------------------------------- refusals
def _refused(model: onnx.ModelProto, folder: Path) -> str:
    path = B.save(model, folder, "bad")
    with pytest.raises(FrontendError) as info:
        load_onnx(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_slice_of_the_batch_axis_is_refused(tmp_path: Path) -> None:
    model = B.make_model([B.node("Slice", ["x", "s", "e", "a"], "y")], {"x": X4}, {"y": None},
                         {"s": _i(0), "e": _i(1), "a": _i(0)}, opset=13)
    msg = _refused(model, tmp_path)
    assert "(Slice)" in msg and "batch axis" in msg


def test_open_end_with_a_negative_step_is_refused(tmp_path: Path) -> None:
    """The spec makes x[-1:INT64_MAX:-1] empty, onnxruntime the whole axis reversed: refused, not guessed."""
    model = B.make_model([B.node("Slice", ["x", "s", "e", "a", "st"], "y")], {"x": X4}, {"y": None},
                         {"s": _i(-1), "e": _i(INT64_MAX), "a": _i(3), "st": _i(-1)}, opset=13)
    msg = _refused(model, tmp_path)
    assert "(Slice)" in msg and "negative step" in msg


def test_split_of_the_batch_axis_is_refused(tmp_path: Path) -> None:
    model = B.make_model([B.node("Split", ["x"], ["a", "b"], axis=0)], {"x": [4, 8, 5, 6]}, {"a": None, "b": None},
                         opset=13)
    msg = _refused(model, tmp_path)
    assert "(Split)" in msg and "batch axis" in msg


# ----------------------------------------------------- ShuffleNet unit
def shuffle_unit(opset: int = 13, split_op: str = "Slice", width: int = 8, size: int = 8,
                 seed: int = 0) -> onnx.ModelProto:
    """A ShuffleNetV2 stride-1 unit in NCHW, as torchvision's exports write it.

    stem conv -> channel split (two Slices or one Split) -> branch: 1x1 conv, 3x3 depthwise,
    1x1 conv -> Concat with the untouched half -> channel shuffle (Reshape [N, 2, C/2, H, W],
    Transpose (0, 2, 1, 3, 4), Reshape [N, C, H, W]) -> pool -> Gemm.
    """
    rng = np.random.default_rng(seed)
    c, h = width, width // 2
    inits: dict[str, Any] = {
        "stem.w": B.rand(rng, c, 3, 3, 3, scale=0.4), "stem.b": B.rand(rng, c, scale=0.1),
        "pw1.w": B.rand(rng, h, h, 1, 1, scale=0.7), "pw1.b": B.rand(rng, h, scale=0.1),
        "dw.w": B.rand(rng, h, 1, 3, 3, scale=0.4), "dw.b": B.rand(rng, h, scale=0.1),
        "pw2.w": B.rand(rng, h, h, 1, 1, scale=0.7), "pw2.b": B.rand(rng, h, scale=0.1),
        "fc.w": B.rand(rng, 5, c, scale=0.5), "fc.b": B.rand(rng, 5, scale=0.1),
        "groups": _i(1, 2, h, size, size),
        "merge": _i(1, c, size, size),
    }
    nodes = [B.node("Conv", ["images", "stem.w", "stem.b"], "stem", pads=[1, 1, 1, 1]),
             B.node("Relu", ["stem"], "stem_relu")]
    if split_op == "Slice":
        inits.update({"lo": _i(0), "mid": _i(h), "hi": _i(INT64_MAX), "ax": _i(1)})
        nodes += [B.node("Slice", ["stem_relu", "lo", "mid", "ax"], "x1"),
                  B.node("Slice", ["stem_relu", "mid", "hi", "ax"], "x2")]
    else:
        nodes += [B.node("Split", ["stem_relu"], ["x1", "x2"], axis=1, num_outputs=2)]
    nodes += [B.node("Conv", ["x2", "pw1.w", "pw1.b"], "pw1"), B.node("Relu", ["pw1"], "pw1_relu"),
              B.node("Conv", ["pw1_relu", "dw.w", "dw.b"], "dw", pads=[1, 1, 1, 1], group=h),
              B.node("Conv", ["dw", "pw2.w", "pw2.b"], "pw2"), B.node("Relu", ["pw2"], "pw2_relu"),
              B.node("Concat", ["x1", "pw2_relu"], "cat", axis=1),
              B.node("Reshape", ["cat", "groups"], "grouped"),
              B.node("Transpose", ["grouped"], "swapped", perm=[0, 2, 1, 3, 4]),
              B.node("Reshape", ["swapped", "merge"], "shuffled"),
              B.node("GlobalAveragePool", ["shuffled"], "pool"), B.node("Flatten", ["pool"], "flat"),
              B.node("Gemm", ["flat", "fc.w", "fc.b"], "logits", transB=1)]
    return B.make_model(nodes, {"images": [1, 3, size, size]}, {"logits": [1, 5]}, inits, opset=opset,
                        name="shuffle_unit")


@pytest.mark.parametrize("opset,split_op", [(11, "Slice"), (13, "Slice"), (18, "Split")])
def test_shuffle_unit_imports_with_one_transpose(opset: int, split_op: str, tmp_path: Path) -> None:
    graph = check(shuffle_unit(opset, split_op), tmp_path, batch=1)
    ops = [n.op for n in graph.nodes]
    assert ops.count("slice") == 2 and ops.count("transpose") == 1  # the shuffle itself, nothing else


def _cli(*argv: object) -> tuple[int, str, str]:
    from tapeout.compiler.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("split_op", ["Slice", "Split"])
def test_shuffle_unit_compiles_and_verifies_on_every_target(split_op: str, tmp_path: Path) -> None:
    model = B.save(shuffle_unit(13 if split_op == "Slice" else 18, split_op), tmp_path)
    rng = np.random.default_rng(2)
    data = tmp_path / "data.npz"
    np.savez(data, images=rng.standard_normal((32, 3, 8, 8)).astype(np.float32))
    code, _, err = _cli("compile", model, "-t", "onnx", "-t", "tflite:fp32", "-t", "tflite:int8",
                        "-t", "tensorrt:fp16", "-o", tmp_path / "out", "--eval", data, "--calibration", data)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    cells = {f"{t['target']}:{t['variant']}": t["verification"]["passed"] for t in report["targets"]}
    assert cells == {"onnx:fp32": True, "tflite:fp32": True, "tflite:int8": True, "tensorrt:fp16": True}


def test_shuffle_unit_is_refused_by_hls4ml_before_any_cpp(tmp_path: Path) -> None:
    """hls4ml has no slice in tapeout's fixed-point model: one line naming the op, exit 2, no project."""
    model = B.save(shuffle_unit(13, "Slice"), tmp_path)
    out = tmp_path / "out"
    code, _, err = _cli("compile", model, "-t", "hls4ml", "-o", out, "--no-verify")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "'slice'" in err
    assert not list(out.rglob("*.cpp"))


# ------------------------------------------------ x[0] of a batch-1 model
def test_index_0_of_a_batch1_model_imports_tied_to_batch_1(tmp_path: Path) -> None:
    """PyTorch's x[0] (Slice axis 0 [0:1], Squeeze axis 0) on a [1, 1, 5] input: identical at batch 1."""
    nodes = [B.node("Slice", ["x"], "first", starts=[0], ends=[1], axes=[0]),
             B.node("Squeeze", ["first"], "y", axes=[0])]
    graph = check(B.make_model(nodes, {"x": [1, 1, 5]}, {"y": None}, opset=9), tmp_path, batch=1)
    assert graph.types["y"].shape == ("N", 5)
    assert any("ties the model to batch 1" in note for note in graph.metadata["notes"])


def test_index_0_of_a_dynamic_batch_is_refused(tmp_path: Path) -> None:
    nodes = [B.node("Slice", ["x", "s", "e", "a"], "first"), B.node("Squeeze", ["first", "a"], "y")]
    model = B.make_model(nodes, {"x": ["N", 1, 5]}, {"y": None}, {"s": _i(0), "e": _i(1), "a": _i(0)}, opset=13)
    msg = _refused(model, tmp_path)
    assert "(Slice)" in msg and "batch axis" in msg
