"""Models exported by other tools (PyTorch's two ONNX exporters, Keras through tf2onnx) to hls4ml
(issue 13, failures 4 and 5, acceptance 4).

The PyTorch fixtures come from scripts/export_torch_mlp.py (a jet-tagger-like 16-64-32-32-5 MLP
with ReLU and Softmax, trained on synthetic 5-class data; torch is not needed here). Their input is
named ``input.1`` and their nodes ``/net/net.0/Gemm``: hls4ml writes layer names into C++ type
names and the input's name as a variable, so such names once gave C++ that did not compile, and
the failed build was reported as a missing tool (exit 3).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
OPSET13 = FIXTURES / "torch_mlp_opset13.onnx"  # torch.onnx.export(dynamo=False), TorchScript exporter
OPSET18 = FIXTURES / "torch_mlp_opset18.onnx"  # torch.onnx.export(dynamo=True)
EVAL = FIXTURES / "torch_mlp_eval.npz"
CALIB = FIXTURES / "torch_mlp_calib.npz"

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH: no hls4ml C simulation")


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from tapeout.compiler.cli import main

    code = main(args)
    return code, capsys.readouterr().err


# ------------------------------------------------------------------ acceptance 4
@pytest.fixture(scope="module")
def acceptance(tmp_path_factory) -> tuple[int, dict, Path]:
    """One `tapeout compile` of the TorchScript export to hls4ml, tflite:int8 and onnx (one C-sim build)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    pytest.importorskip("ai_edge_litert")
    from tapeout.compiler.cli import main

    out = tmp_path_factory.mktemp("torch-mlp") / "out"
    code = main(["compile", str(OPSET13), "-t", "hls4ml", "-t", "tflite:int8", "-t", "onnx", "-o", str(out),
                 "--eval", str(EVAL), "--calibration", str(CALIB)])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return code, report, out


def test_fixtures_are_real_torch_exports():
    """The fixtures are what PyTorch writes: Gemm/Relu/Softmax, dotted names, a dynamic batch."""
    import onnx

    for path, opset in ((OPSET13, 13), (OPSET18, 18)):
        m = onnx.load(path)
        assert m.opset_import[0].version == opset and m.producer_name == "pytorch"
        assert [n.op_type for n in m.graph.node] == ["Gemm", "Relu"] * 3 + ["Gemm", "Softmax"]
        assert [i.name for i in m.graph.input] == ["input.1"]
        assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert any("/net/net.0/" in n.name for n in onnx.load(OPSET13).graph.node)
    data = np.load(EVAL)
    assert sorted(data.files) == ["input.1", "y"] and data["input.1"].shape[1] == 16
    assert set(np.unique(data["y"])) == set(range(5))


def test_acceptance_4_torch_mlp_to_hls4ml_tflite_int8_onnx(acceptance):
    code, report, _ = acceptance
    assert code == 0
    kinds = {f"{t['target']}:{t['variant']}": t for t in report["targets"]}
    assert set(kinds) == {"hls4ml:vitis", "tflite:int8", "onnx:fp32"}
    for name, t in kinds.items():
        v = t["verification"]
        assert v["passed"] and v["data"] == "eval" and v["samples"] == 500, name
        assert v["top1_agreement"] >= 0.99, name
        assert v["accuracy"]["source"] > 0.9  # a trained model, not a random one
    h = kinds["hls4ml:vitis"]["hls4ml"]
    assert h["precision"]["met"] and h["precision"]["data"] == {"kind": "calibration", "samples": 500}
    csim = h["csim"]
    # 4 dense + 3 relu layers, each equal to the NumPy bit-accurate model (softmax: within a table step).
    assert csim["built"] and csim["checked_layers"] == 7 and csim["bit_exact_layers"] == 7 and not csim["mismatched"]
    assert csim["csim_agreement"] >= 0.995
    assert kinds["hls4ml:vitis"]["verification"]["top1_agreement"] >= 0.995


def test_acceptance_4_project_uses_identifiers(acceptance):
    """The dotted ONNX names reach the C++ only as identifiers; the runner keeps the source names."""
    _, _, out = acceptance
    project = out / "hls4ml-vitis"
    cpp = (project / "firmware/myproject.cpp").read_text()
    assert re.search(r"\binput_t input_1\[16\]", cpp)
    assert "_net_net_0_Gemm_output_0" in cpp and "net.0" not in cpp
    manifest = json.loads((project / "tapeout_csim.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input.1"]
    assert [o["name"] for o in manifest["outputs"]] == ["probs"]


@needs_gxx
def test_dynamo_export_project_compiles(tmp_path, capsys):
    """The dynamo (opset 18) export: the generated C++ compiles (syntax check of the file that failed)."""
    code, err = _cli(["compile", str(OPSET18), "-t", "hls4ml", "-o", str(tmp_path / "o"), "--no-verify",
                      "--calibration", str(CALIB), "--target-option", "hls4ml.build_csim=false"], capsys)
    assert code == 0, err
    project = tmp_path / "o/hls4ml-vitis"
    proc = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-Ifirmware/ap_types", "-include",
                           "firmware/tapeout_weights_dir.h", "firmware/myproject.cpp"], cwd=project,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[:2000]


# ------------------------------------------------------ failed builds are exit 4
def _broken_project(root: Path) -> Path:
    project = root / "p"
    (project / "firmware").mkdir(parents=True)
    (project / "firmware/myproject.cpp").write_text("int f() { return undeclared_name; }\nint g() { return x; }\n")
    (project / "build_lib.sh").write_text("#!/bin/bash\nset -e\nCC=g++\n"
                                          "${CC} -c firmware/myproject.cpp -o myproject.o\n")
    return project


@needs_gxx
def test_cpp_build_failure_is_internal_error_with_first_compiler_error(tmp_path):
    from tapeout.compiler.errors import InternalError
    from tapeout.targets.hls4ml.project import build_csim

    with pytest.raises(InternalError) as e:
        build_csim(_broken_project(tmp_path))
    assert e.value.exit_code == 4
    msg = str(e.value)
    assert "undeclared_name" in msg and "myproject.cpp:1:" in msg and "'x'" not in msg and "\n" not in msg


def test_missing_compiler_is_still_exit_3(tmp_path, monkeypatch):
    from tapeout.compiler.errors import MissingToolError
    from tapeout.targets.hls4ml.project import build_csim

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("bash") or "/bin/bash", bin_dir / "bash")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(MissingToolError, match="g\\+\\+") as e:
        build_csim(_broken_project(tmp_path))
    assert e.value.exit_code == 3


@needs_gxx
def test_cli_exits_4_when_generated_cpp_does_not_compile(tmp_path, capsys, monkeypatch):
    """A generated project that g++ rejects: exit 4 and the compiler's first error, one line (was exit 3)."""
    from tapeout.targets.hls4ml import project

    relocatable = project.make_relocatable

    def corrupt(outdir: Path) -> None:
        relocatable(outdir)
        cpp = outdir / "firmware/myproject.cpp"
        cpp.write_text(cpp.read_text().replace("// hls-fpga-machine-learning insert layers",
                                               "tapeout_not_declared = 1;", 1))

    monkeypatch.setattr(project, "make_relocatable", corrupt)
    code, err = _cli(["compile", str(OPSET18), "-t", "hls4ml", "-o", str(tmp_path / "o"), "--no-verify",
                      "--precision", "ap_fixed<16,6>"], capsys)
    assert code == 4
    assert len(err.strip().splitlines()) == 1
    assert "does not compile" in err and "tapeout_not_declared" in err and "error:" in err


# ------------------------------------------------------------- names -> C++
def test_cpp_identifier():
    from tapeout.targets.keras.emit import cpp_identifier

    cases = {"/net/net.0/Gemm": "_net_net_0_Gemm", "input.1": "input_1", "gpu_0/data_0": "gpu_0_data_0",
             "onnx::Gemm_0": "onnx__Gemm_0", "0": "_0", "7up": "_7up", "": "layer", "x-y z": "x_y_z",
             "input": "input_", "class": "class_", "w2": "w2_", "layer4_out": "layer4_out_", "result_t": "result_t_",
             "config3": "config3_", "N_INPUT_1_1": "N_INPUT_1_1_", "dense": "dense", "fc1": "fc1", "é": "_"}
    for raw, want in cases.items():
        got = cpp_identifier(raw)
        assert got == want, raw
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", got)


def test_keras_names_for_hls4ml_are_unique_regardless_of_case():
    """hls4ml lowercases some type names (``fc_weight_t``): 'FC' and 'fc' must not both exist."""
    from tapeout.compiler.ir import Graph
    from tapeout.compiler.keras_model import BuildContext

    ctx = BuildContext(Graph("g", [], []), identifiers=True)
    names = [ctx.unique(n) for n in ("FC", "fc", "a.b", "a_b", "a/b")]
    assert names == ["FC", "fc_1", "a_b", "a_b_1", "a_b_2"]
    plain = BuildContext(Graph("g", [], []))
    assert [plain.unique(n) for n in ("FC", "fc", "a.b")] == ["FC", "fc", "a.b"]  # other targets unchanged


# ------------------------------------------------------ failure 5: width 0
@pytest.fixture(scope="module")
def keras_dead_layer(tmp_path_factory) -> Path:
    """A Keras dense MLP exported to ONNX by tf2onnx, with a dead hidden layer (zero kernel and bias:
    its ReLU output is constant zero) in front of a Dense + softmax whose bias is all zeros (Keras's
    initializer): the logits are constant zero."""
    tf2onnx = pytest.importorskip("tf2onnx")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    from tapeout.compiler.quiet import captured_output

    keras.utils.set_random_seed(5)
    L = keras.layers
    x = keras.Input((16,), name="x")
    dead = L.Dense(16, activation="relu", name="fc2")
    h = dead(L.Dense(32, activation="relu", name="fc1")(x))
    model = keras.Model(x, L.Dense(5, activation="softmax", name="out")(h))
    dead.set_weights([np.zeros((32, 16), np.float32), np.zeros(16, np.float32)])
    path = tmp_path_factory.mktemp("keras-dead") / "dead.onnx"
    with captured_output():
        tf2onnx.convert.from_keras(model, input_signature=(tf.TensorSpec((None, 16), tf.float32, name="x"),),
                                   opset=13, output_path=str(path))
    return path


def _legal(t) -> bool:
    return 1 <= t.width <= 64


def test_constant_zero_logits_search_gives_legal_types(keras_dead_layer):
    """The search once narrowed the constant-zero logits to ap_fixed<1,1>: hls4ml's softmax then
    derives inp_norm_t = ap_ufixed<0,0> ("width 0 out of range 1..64")."""
    from tapeout.compiler.fixedpoint import hls_layers
    from tapeout.compiler.fixedpoint.model import _alias_map, softmax_types
    from tapeout.compiler.fixedpoint.search import Budget, search
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.registry import default_pipeline

    graph = default_pipeline().run(load_model(keras_dead_layer)[0]).graph
    feeds = {graph.inputs[0]: np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)}
    res = search(graph, feeds, Budget(0.995))
    assert res.met
    layers = hls_layers(graph)
    assert all(_legal(t) for lp in res.plan.layers.values() for t in lp.types().values())
    assert all(_legal(t) for t in res.plan.inputs.values())
    alias = _alias_map(graph)
    for layer in layers:
        if layer.kind == "softmax":
            src = alias.get(layer.inputs[0], layer.inputs[0])
            prev = next(p for p in layers if p.output == src)
            st = softmax_types(res.plan.layers[layer.name], res.plan.layers[prev.name].result)
            assert _legal(st.inp_norm)


@needs_gxx
def test_constant_zero_logits_compile_and_verify_on_hls4ml(keras_dead_layer, tmp_path, capsys):
    code, err = _cli(["compile", str(keras_dead_layer), "-t", "hls4ml", "-o", str(tmp_path / "o")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "o/report.json").read_text())
    t = report["targets"][0]
    assert t["verification"]["passed"]
    assert t["hls4ml"]["csim"]["built"] and not t["hls4ml"]["csim"]["mismatched"]


# ------------------------------------------------------------------ input normalization in exports
@needs_gxx
def test_per_channel_constant_add_compiles_and_verifies_on_hls4ml(tmp_path, capsys):
    """The opset-7 CNN of old exporters adds a per-channel constant after its conv stack (Add of a
    [C, 1, 1] initializer). It was refused ("op 'add' with a constant operand has no hls4ml layer");
    hls4ml computes it as a BatchNormalization of scale 1, and the C simulation must agree."""
    import onnx

    from tests.compiler.frontends.old_opset_builders import cnn

    path = tmp_path / "cnn7.onnx"
    onnx.save(cnn(7, seed=3), path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", **{"input.1": rng.standard_normal((32, 3, 16, 16)).astype(np.float32)})
    code, err = _cli(["compile", str(path), "-t", "hls4ml", "-o", str(tmp_path / "out"), "--calibration",
                      str(tmp_path / "cal.npz"), "--eval", str(tmp_path / "cal.npz"), "--json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    h = report["targets"][0]
    assert h["verification"]["passed"]
    shift = next(r for r in h["hls4ml"]["layers"] if r["layer"] == "shifted")
    assert shift["kind"] == "batch_norm"
    cpp = (tmp_path / "out" / "hls4ml-vitis" / "firmware" / "myproject.cpp").read_text()
    assert "nnet::normalize<" in cpp


def test_constant_scale_and_shift_are_one_normalize_in_the_fixed_point_model():
    """add/mul of a per-channel constant: (scale 1, shift c) and (scale c, shift 0); a constant that is
    not one value per channel is refused in one line naming the node."""
    from tapeout.compiler.fixedpoint.model import hls_layers, scale_shift
    from tapeout.compiler.fixedpoint.types import FixedTypeError
    from tapeout.compiler.ir import Graph, Node, TensorType

    g = Graph("g", ["x"], ["z"])
    g.types["x"] = TensorType((None, 4, 4, 3), "float32")
    g.constants["c"] = np.array([1.0, 2.0, 3.0], np.float32)
    g.constants["k"] = np.full((4, 1), 2.0, np.float32)
    g.nodes = [Node("add", "shift", ["c", "x"], ["y"]), Node("mul", "scale", ["y", "c"], ["z"])]
    g.types["y"] = g.types["z"] = g.types["x"]
    s, t = scale_shift(g, g.nodes[0])
    np.testing.assert_array_equal(s, [1, 1, 1])
    np.testing.assert_array_equal(t, [1, 2, 3])
    s, t = scale_shift(g, g.nodes[1])
    np.testing.assert_array_equal(s, [1, 2, 3])
    np.testing.assert_array_equal(t, [0, 0, 0])
    assert [(l.name, l.kind, l.inputs) for l in hls_layers(g)] == [("shift", "batch_norm", ("x",)),
                                                                   ("scale", "batch_norm", ("y",))]
    g.nodes[1] = Node("mul", "scale", ["y", "k"], ["z"])
    with pytest.raises(FixedTypeError, match=r"node .scale.: op .mul. with a constant of shape \(4, 1\)"):
        hls_layers(g)
