"""tensorrt target: ONNX + plan.json everywhere (acceptance 1 and 3), the engine where a GPU is.

Tests that need TensorRT and a CUDA GPU skip with the reason ``tensorrt_status`` gives; the
rest check our own logic (plan, schema, trtexec line, fp16 emulation, builder configuration
against a stand-in tensorrt module) and never pretend an engine was built.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import types
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.cli import main
from tapeout.runtime.runners.tensorrt import tensorrt_status

jsonschema = pytest.importorskip("jsonschema")

NO_ENGINE = tensorrt_status()  # None where TensorRT and a CUDA GPU are present
gpu_only = pytest.mark.skipif(NO_ENGINE is not None, reason=f"needs TensorRT and a CUDA GPU: {NO_ENGINE}")


def _schema() -> dict:
    from tapeout.targets.tensorrt.plan import load_schema

    return load_schema()


def _compile(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(["compile", *args], out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_cnn_path, tiny_eval_path) -> Path:
    """Acceptance 1's command, plus onnx:int8 from the same calibration for comparison."""
    outdir = tmp_path_factory.mktemp("trt") / "out"
    rc, out, err = _compile([str(tiny_cnn_path), "-t", "tensorrt:fp16", "-t", "tensorrt:int8", "-t", "onnx:int8",
                             "--calibration", str(tiny_eval_path), "--opt-batch", "4", "--max-batch", "16",
                             "-o", str(outdir), "--no-timings", "--json"])
    assert rc == 0, err
    return outdir


def _plan(outdir: Path, variant: str) -> dict:
    return json.loads((outdir / f"tensorrt-{variant}" / "plan.json").read_text())


def _report_target(outdir: Path, variant: str) -> dict:
    report = json.loads((outdir / "report.json").read_text())
    return next(t for t in report["targets"] if t["target"] == "tensorrt" and t["variant"] == variant)


# ------------------------------------------------------------------ acceptance 1
@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_acceptance1_onnx_and_plan_written_and_verified(built, variant):
    folder = built / f"tensorrt-{variant}"
    assert (folder / "model.onnx").is_file() and (folder / "plan.json").is_file()
    t = _report_target(built, variant)
    v = t["verification"]
    assert v["passed"], v
    if NO_ENGINE is not None:
        assert not (folder / "model.plan").exists()
        assert t["engine"] == {"built": False, "reason": NO_ENGINE}
        assert any(n.startswith("engine not built: ") for n in t["notes"])
        assert v["runner"].startswith("onnxruntime")
    if variant == "fp16":
        # tiny_cnn ends in softmax: a classifier, so fp16 is judged by cosine/agreement, tighter than int8's.
        assert v["outputs"][0]["tolerance"]["min_cosine"] == 0.999
        assert v["outputs"][0]["tolerance"]["min_top1_agreement"] == 0.99
        assert any(n.startswith("softmax outputs: fp16 judged by cosine") for n in t["notes"])
        if NO_ENGINE is not None:
            assert "fp16 emulated" in v["runner"]
            assert v["max_abs_err"] > 0  # fp16 rounding is visible on a CPU
    else:
        assert v["outputs"][0]["tolerance"]["min_cosine"] == 0.99


@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_acceptance1_plan_validates_against_schema(built, variant):
    plan = _plan(built, variant)
    jsonschema.validate(plan, _schema())
    assert plan["variant"] == variant
    assert plan["profiles"] == [{"min_batch": 1, "opt_batch": 4, "max_batch": 16}]
    import hashlib

    assert plan["model"]["sha256"] == hashlib.sha256((built / f"tensorrt-{variant}" / "model.onnx").read_bytes()).hexdigest()
    assert plan["builder"]["timing_cache"] == "tensorrt-cache/timing.cache"
    # The compiler folded bn1 and fused relu1 into conv1 (tiny_cnn is conv/bn/relu/...).
    groups = {g["layer"]: g for g in plan["fusion_groups"]}
    assert groups["conv1"]["ops"] == ["conv", "batch_norm", "relu"]
    assert groups["conv1"]["source_layers"] == ["conv1", "bn1", "relu1"]
    assert groups["conv1"]["formed_by"] == "compiler"
    assert "conv1" in groups["conv1"]["onnx_nodes"]


def test_schema_rejects_broken_plans(built):
    schema, plan = _schema(), _plan(built, "fp16")
    for mutate in (lambda p: p.pop("trtexec"), lambda p: p.update(variant="int4"),
                   lambda p: p["inputs"][0]["profile"].update(max=[0, 8, 8, 1]),
                   lambda p: p["precision"]["layers"][0].update(precision="bf16"),
                   lambda p: p.update(build={"gpu": "x"})):
        broken = json.loads(json.dumps(plan))
        mutate(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


@pytest.mark.parametrize("variant,flag", [("fp16", "--fp16"), ("int8", "--int8")])
def test_acceptance1_trtexec_line_is_well_formed(built, variant, flag):
    import onnx

    plan = _plan(built, variant)
    args = shlex.split(plan["trtexec"]["command"])
    assert args == plan["trtexec"]["args"]
    assert plan["trtexec"]["cwd"] == f"tensorrt-{variant}"
    assert args[0] == "trtexec"
    opts = {}
    for a in args[1:]:
        assert a.startswith("--"), a
        key, _, value = a.partition("=")
        assert key not in opts, f"{key} given twice"
        opts[key] = value
    assert opts["--onnx"] == "model.onnx" and opts["--saveEngine"] == "model.plan"
    assert flag in opts and not ({"--fp16", "--int8", "--best"} - {flag}) & set(opts)
    assert opts["--timingCacheFile"] == "../tensorrt-cache/timing.cache"
    assert opts["--memPoolSize"] == "workspace:1024MiB"
    assert opts["--builderOptimizationLevel"] == "3"
    # Shapes: one entry per dynamic input, in the ONNX input's own layout, batch from the profile.
    model = onnx.load(built / f"tensorrt-{variant}" / "model.onnx")
    (inp,) = model.graph.input
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    for key, batch in (("--minShapes", 1), ("--optShapes", 4), ("--maxShapes", 16)):
        m = re.fullmatch(r"([\w./-]+):(\d+(?:x\d+)*)", opts[key])
        assert m, opts[key]
        assert m.group(1) == inp.name
        assert [int(d) for d in m.group(2).split("x")] == [batch, *dims]


def test_int8_onnx_is_the_onnx_targets_qdq_model(built):
    """tensorrt:int8 carries the IR's Q/DQ (the same bytes as onnx:int8 from the same calibration)."""
    import onnx

    trt_bytes = (built / "tensorrt-int8" / "model.onnx").read_bytes()
    assert trt_bytes == (built / "onnx-int8" / "model.onnx").read_bytes()
    ops = [n.op_type for n in onnx.load_from_string(trt_bytes).graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    plan = _plan(built, "int8")
    assert plan["quantization"]["explicit_qdq"] is True
    assert plan["quantization"]["quantize_nodes"] == ops.count("QuantizeLinear")
    assert {r["layer"]: r["precision"] for r in plan["precision"]["layers"]}["conv1"] == "int8"


# ------------------------------------------------------------------ acceptance 3
def test_acceptance3_two_builds_are_byte_identical(tmp_path, tiny_cnn_path, tiny_eval_path):
    dirs = []
    for k in range(2):
        outdir = tmp_path / f"b{k}"
        rc, _, err = _compile([str(tiny_cnn_path), "-t", "tensorrt:fp16", "-t", "tensorrt:int8", "-t", "tensorrt",
                               "--calibration", str(tiny_eval_path), "-o", str(outdir), "--no-verify", "--no-timings"])
        assert rc == 0, err
        dirs.append(outdir)
    for variant in ("fp32", "fp16", "int8"):
        for name in ("model.onnx", "plan.json"):
            a = (dirs[0] / f"tensorrt-{variant}" / name).read_bytes()
            assert a == (dirs[1] / f"tensorrt-{variant}" / name).read_bytes(), f"{variant}/{name} differs"
    assert (dirs[0] / "report.json").read_bytes() == (dirs[1] / "report.json").read_bytes()


# ------------------------------------------------------------------ flags and errors
@pytest.mark.skipif(NO_ENGINE is None, reason="TensorRT and a GPU are present here: the engine can be built")
def test_require_engine_without_tensorrt_exits_3_with_one_line(tmp_path, tiny_cnn_path):
    rc, out, err = _compile([str(tiny_cnn_path), "-t", "tensorrt:fp16", "--require-engine", "-o", str(tmp_path / "o")])
    assert rc == 3
    assert err.count("\n") == 1 and err.startswith("tapeout: error: tensorrt:fp16: --require-engine")
    assert NO_ENGINE in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags", [["--min-batch", "4", "--max-batch", "2"], ["--opt-batch", "0"],
                                   ["--target-option", "tensorrt.opt_level=9"],
                                   ["--target-option", "tensorrt.bogus=1"]])
def test_bad_build_options_are_usage_errors(tmp_path, tiny_cnn_path, flags):
    rc, _, err = _compile([str(tiny_cnn_path), "-t", "tensorrt", *flags, "-o", str(tmp_path / "o")])
    assert rc == 2 and err.count("\n") == 1 and "tensorrt" in err


def test_batch_flags_without_tensorrt_target_are_refused(tmp_path, tiny_cnn_path):
    rc, _, err = _compile([str(tiny_cnn_path), "-t", "onnx", "--max-batch", "8", "-o", str(tmp_path / "o")])
    assert rc == 2 and "tensorrt" in err


def test_keep_float_pins_layers_to_fp32(tmp_path, tiny_cnn_path):
    outdir = tmp_path / "o"
    rc, _, err = _compile([str(tiny_cnn_path), "-t", "tensorrt:fp16", "--keep-float", "probabilities",
                           "-o", str(outdir), "--no-timings"])
    assert rc == 0, err
    plan = _plan(outdir, "fp16")
    rows = {r["layer"]: r for r in plan["precision"]["layers"]}
    assert rows["probabilities"]["pinned"] and rows["probabilities"]["precision"] == "fp32"
    assert rows["conv1"]["precision"] == "fp16" and not rows["conv1"]["pinned"]
    assert plan["precision"]["constraints"] == "obey"
    args = dict(a.partition("=")[::2] for a in plan["trtexec"]["args"][1:])
    assert args["--precisionConstraints"] == "obey"
    assert set(args["--layerPrecisions"].split(",")) == {f"{n}:fp32" for n in rows["probabilities"]["onnx_nodes"]}


# ------------------------------------------------------------------ fp16 emulation
def test_fp16_emulation_rounds_and_respects_pinned_nodes(built):
    import onnx

    from tapeout.runtime.runners.onnxrt import OnnxRuntimeRunner
    from tapeout.targets.tensorrt.fp16 import emulate_fp16

    model = onnx.load(built / "tensorrt-fp16" / "model.onnx")
    x = {model.graph.input[0].name: np.random.default_rng(3).standard_normal((6, 8, 8, 1)).astype(np.float32) * 3}

    def run(m: onnx.ModelProto) -> np.ndarray:
        with OnnxRuntimeRunner(m.SerializeToString()) as r:
            return next(iter(r.infer(x).values()))

    exact = run(model)
    half = run(emulate_fp16(model))
    diff = np.abs(half - exact)
    assert 0 < diff.max() < 1e-2  # fp16 rounding shows, and is fp16-sized
    # Every node pinned to fp32: nothing is rounded, so the outputs are bit-identical.
    assert np.array_equal(run(emulate_fp16(model, [n.name for n in model.graph.node])), exact)
    casts = [n for n in emulate_fp16(model).graph.node if n.op_type == "Cast"]
    assert casts and len(casts) % 2 == 0


# ------------------------------------------------------------------ builder config (our logic, fake tensorrt)
class _FakeLayer:
    def __init__(self, name: str) -> None:
        self.name, self.num_outputs, self.precision, self.output_types = name, 1, None, {}

    def set_output_type(self, k: int, t: str) -> None:
        self.output_types[k] = t


def _fake_trt() -> types.SimpleNamespace:
    calls: dict = {"flags": [], "profiles": []}

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict = {}

        def set_shape(self, name, lo, opt, hi) -> None:
            self.shapes[name] = (lo, opt, hi)

    class Config:
        builder_optimization_level = None
        profiling_verbosity = None

        def set_memory_pool_limit(self, pool, size) -> None:
            calls["pool"] = (pool, size)

        def set_flag(self, flag) -> None:
            calls["flags"].append(flag)

        def add_optimization_profile(self, p) -> None:
            calls["profiles"].append(p.shapes)

        def create_timing_cache(self, data) -> tuple:
            return ("cache", data)

        def set_timing_cache(self, cache, ignore_mismatch) -> None:
            calls["cache"] = (cache, ignore_mismatch)

    class Builder:
        def create_builder_config(self) -> Config:
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self) -> Profile:
            return Profile()

    flags = types.SimpleNamespace(FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY")
    return types.SimpleNamespace(BuilderFlag=flags, MemoryPoolType=types.SimpleNamespace(WORKSPACE="WS"),
                                 ProfilingVerbosity=types.SimpleNamespace(DETAILED="DETAILED"), float32="f32",
                                 calls=calls, Builder=Builder)


def test_configure_applies_the_plan(tmp_path, tiny_cnn_path):
    from tapeout.targets.tensorrt.engine import configure

    outdir = tmp_path / "o"
    rc, _, err = _compile([str(tiny_cnn_path), "-t", "tensorrt:fp16", "--keep-float", "probabilities",
                           "--min-batch", "2", "--opt-batch", "8", "--max-batch", "64", "--target-option",
                           "tensorrt.workspace_mib=512", "--target-option", "tensorrt.opt_level=5",
                           "-o", str(outdir), "--no-verify"])
    assert rc == 0, err
    plan = _plan(outdir, "fp16")
    trt = _fake_trt()
    # TensorRT names layers after ONNX nodes, adding suffixes for nodes it splits.
    names = ["conv1", "conv1/relu", "probabilities", "probabilities_bias_add", "probabilities/softmax", "pool1"]
    layers = [_FakeLayer(n) for n in names]
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    done = configure(trt, trt.Builder(), network, plan, b"old cache")
    cfg = trt.calls["config"]
    assert trt.calls["pool"] == ("WS", 512 << 20)
    assert cfg.builder_optimization_level == 5 and cfg.profiling_verbosity == "DETAILED"
    assert trt.calls["flags"] == ["FP16", "OBEY"]
    assert trt.calls["profiles"] == [{"image": ((2, 8, 8, 1), (8, 8, 8, 1), (64, 8, 8, 1))}]
    assert trt.calls["cache"] == (("cache", b"old cache"), False)
    assert done.pinned_layers == ["probabilities", "probabilities_bias_add", "probabilities/softmax"]
    assert [l.precision for l in layers] == [None, None, "f32", "f32", "f32", None]
    assert layers[2].output_types == {0: "f32"}


def test_layer_info_reads_the_inspector_json():
    from tapeout.targets.tensorrt.engine import layer_info

    doc = {"Layers": [
        {"Name": "conv1 + conv1/relu", "LayerType": "CaskConvolution",
         "Outputs": [{"Name": "x", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "probabilities", "LayerType": "CaskGemm", "Outputs": [{"Format/Datatype": "Row major linear Int8"}]},
        "Reformatting CopyNode for Input Tensor 0"], "Bindings": ["image", "probabilities"]}
    rows = layer_info(json.dumps(doc))
    assert rows[0]["fused"] == ["conv1", "conv1/relu"] and rows[0]["precisions"] == ["fp16"]
    assert rows[1]["precisions"] == ["int8"] and rows[1]["type"] == "CaskGemm"
    assert rows[2]["name"].startswith("Reformatting") and rows[2]["precisions"] == []


# ------------------------------------------------------------------ runner and GPU
@pytest.mark.skipif(NO_ENGINE is None, reason="TensorRT and a GPU are present here")
def test_tensorrt_runner_says_why_it_cannot_run(tmp_path):
    from tapeout.runtime.errors import RuntimeUnavailable
    from tapeout.runtime.runners.tensorrt import TensorRTRunner

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(RuntimeUnavailable) as exc:
        TensorRTRunner(plan).open()
    assert "\n" not in str(exc.value) and ("tensorrt" in str(exc.value) or "CUDA" in str(exc.value))


@gpu_only
def test_gpu_engines_build_for_every_variant(tmp_path, tiny_cnn_path, tiny_eval_path):
    outdir = tmp_path / "o"
    rc, _, err = _compile([str(tiny_cnn_path), "-t", "tensorrt:fp32", "-t", "tensorrt:fp16", "-t", "tensorrt:int8",
                           "--calibration", str(tiny_eval_path), "--require-engine", "-o", str(outdir)])
    assert rc == 0, err
    for variant in ("fp32", "fp16", "int8"):
        assert (outdir / f"tensorrt-{variant}" / "model.plan").stat().st_size > 0
        plan = _plan(outdir, variant)
        jsonschema.validate(plan, _schema())
        assert plan["build"]["tensorrt_version"] and plan["build"]["gpu"]
        t = _report_target(outdir, variant)
        assert t["engine"]["built"] and t["engine"]["layers"]
        assert t["verification"]["runner"].startswith("tensorrt") and t["verification"]["passed"]
    assert (outdir / "tensorrt-cache" / "timing.cache").stat().st_size > 0


# ------------------------------------------------------------------ fp16 tolerance: classifiers vs the rest
def _linear_onnx(path: Path) -> Path:
    """A regression head (MatMul + Add, no softmax): judged by its cosine, not by agreement."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 0.1, (8, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, 3).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Add", ["h", "b"], ["y"], name="bias")],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=[w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_fp16_without_softmax_output_is_judged_by_scale_relative_cosine(tmp_path):
    outdir = tmp_path / "o"
    rc, _, err = _compile([str(_linear_onnx(tmp_path / "linear.onnx")), "-t", "tensorrt:fp16", "-o", str(outdir),
                           "--no-timings", "--json"])
    assert rc == 0, err
    t = _report_target(outdir, "fp16")
    v = t["verification"]
    assert v["passed"] and v["cosine"] >= 0.9995
    assert v["outputs"][0]["tolerance"]["min_cosine"] == 0.9995
    assert v["outputs"][0]["tolerance"]["min_top1_agreement"] is None
    assert v["max_abs_err"] < 1e-3  # a shallow head in fp16 still moves by less than an ulp-scale 1e-3
    assert not any(n.startswith("softmax outputs") for n in t["notes"])


def test_fp16_classifier_with_explicit_tolerance_is_elementwise(tmp_path, tiny_cnn_path, tiny_eval_path):
    outdir = tmp_path / "o"
    rc, _, err = _compile([str(tiny_cnn_path), "-t", "tensorrt:fp16", "--calibration", str(tiny_eval_path),
                           "--atol", "0.01", "--rtol", "0.01", "-o", str(outdir), "--no-timings", "--json"])
    assert rc == 0, err
    v = _report_target(outdir, "fp16")["verification"]
    assert v["atol"] == v["rtol"] == 0.01
    assert v["outputs"][0]["tolerance"]["min_cosine"] is None


# ------------------------------------------------------------------ 2:4 sparsity (issue 7, acceptance 3)
def test_unpruned_plan_does_not_request_sparse_weights(built):
    plan = _plan(built, "fp16")
    assert plan["builder"]["sparse_weights"] is False and plan["builder"]["sparse_layers"] == []
    assert "SPARSE_WEIGHTS" not in plan["precision"]["builder_flags"]
    assert "--sparsity=enable" not in plan["trtexec"]["args"]


def test_2_4_pruned_plan_requests_sparse_weights(tmp_path, tiny_cnn_path):
    from tapeout.targets.tensorrt.engine import configure

    outdir = tmp_path / "o"
    rc, _, err = _compile([str(tiny_cnn_path), "--prune", "2:4", "-t", "tensorrt:fp16", "-t", "tensorrt:int8",
                           "--calibration", "synthetic", "-o", str(outdir), "--no-timings", "--json"])
    assert rc == 0, err
    plan = _plan(outdir, "fp16")
    jsonschema.validate(plan, _schema())
    assert plan["builder"]["sparse_weights"] is True
    assert plan["precision"]["builder_flags"] == ["FP16", "SPARSE_WEIGHTS"]
    args = plan["trtexec"]["args"]
    assert args[args.index("--fp16") + 1] == "--sparsity=enable"
    assert any(n.startswith("2:4 sparse weights requested") for n in _report_target(outdir, "fp16")["notes"])
    assert _report_target(outdir, "fp16")["verification"]["passed"]
    # The weights the engine is built from hold the pattern along K as the ONNX stores them: the
    # emitter flattens channels-last here rather than permute the dense rows (which would scatter
    # the groups). conv1 has one input channel, so the pass left it dense.
    import onnx
    from onnx import numpy_helper

    model = onnx.load(outdir / "tensorrt-fp16" / "model.onnx")
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    w = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == gemm.input[1])
    assert w.shape == (64, 5)
    assert ((w.reshape(16, 4, 5) == 0).sum(axis=1) >= 2).all()
    assert plan["builder"]["sparse_layers"] == ["probabilities"]
    # int8: the zeros survive quantization (symmetric weights), so the Q/DQ model keeps the pattern too.
    plan8 = _plan(outdir, "int8")
    assert plan8["precision"]["builder_flags"] == ["INT8", "SPARSE_WEIGHTS"]
    assert plan8["builder"]["sparse_layers"] == ["probabilities"]
    # The builder gets the flag through the same configure() a real build uses.
    trt = _fake_trt()
    trt.BuilderFlag.SPARSE_WEIGHTS = "SPARSE"
    network = types.SimpleNamespace(num_layers=0, get_layer=lambda i: None)
    configure(trt, trt.Builder(), network, plan, None)
    assert trt.calls["flags"][:2] == ["FP16", "SPARSE"]
