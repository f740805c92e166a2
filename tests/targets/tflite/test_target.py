"""The tflite target: fused ops, names, determinism, shared tracing, C array, arena, refusals."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.errors import UsageError
from tapeout.compiler.ir import Activation, Graph
from tapeout.targets.base import EmitContext


def _cnn(cases, *, bn: bool = True) -> Graph:
    """conv -> batch norm -> relu -> conv(relu6) -> pool -> flatten -> dense(relu) -> dense(softmax)."""
    m = cases.GraphMaker(image=((8, 8, 1), "NHWC"))
    y = m.conv("image", 4, (3, 3), pads=((1, 1), (1, 1)))
    if bn:
        y = m.node("batch_norm", y, m.const((4,), offset=1.0), m.const((4,)), m.const((4,)),
                   m.const((4,), scale=0.1, offset=1.0))
    y = m.node("relu", y)
    y = m.conv(y, 6, (3, 3), groups=2, pads=((1, 1), (1, 1)), activation=Activation.of("clip", min=0.0, max=6.0))
    y = m.node("max_pool", y, kernel=(2, 2), strides=(2, 2))
    y = m.dense(m.node("flatten", y), 8, activation=Activation.of("relu"))
    y = m.dense(y, 3, activation=Activation.of("softmax", axis=-1))
    return m.done(y)


def _optimized(graph: Graph) -> Graph:
    from tapeout.compiler.passes.registry import default_pipeline

    return default_pipeline().run(graph).graph


@pytest.fixture(scope="module")
def cnn(cases) -> Graph:
    return _optimized(_cnn(cases))


@pytest.fixture(scope="module")
def emitted(cnn, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """The CNN compiled to fp32, fp16 and dynamic in that order, as one command would."""
    from tapeout.targets.tflite import convert
    from tapeout.targets.tflite.target import TfliteTarget

    convert.clear_cache()
    out = {}
    for variant in ("fp32", "fp16", "dynamic"):
        folder = tmp_path_factory.mktemp(variant)
        before = dict(convert.STATS)
        result = TfliteTarget(variant).emit(cnn, EmitContext(folder))
        result.extra["_traced_here"] = convert.STATS["traces"] - before["traces"]  # test bookkeeping only
        out[variant] = (folder, result)
    return out


def test_fused_activations_and_folded_batch_norm_are_tflite_fused_ops(emitted) -> None:
    from tapeout.targets.tflite.flatbuffer import read_model

    folder, _ = emitted["fp32"]
    info = read_model((folder / "model.tflite").read_bytes())
    ops = info.op_names()
    # No separate RELU/RELU6/MUL/ADD: BN folded into the conv, activations fused into conv/FC.
    assert not {"RELU", "RELU6", "MUL", "ADD", "MINIMUM", "MAXIMUM"} & set(ops), ops
    fused = [(o.op, o.fused_activation) for o in info.ops if o.op in ("CONV_2D", "FULLY_CONNECTED")]
    assert fused == [("CONV_2D", "RELU"), ("CONV_2D", "RELU6"), ("FULLY_CONNECTED", "RELU"),
                     ("FULLY_CONNECTED", "NONE")]
    assert ops.count("SOFTMAX") == 1


def test_depthwise_relu6_is_one_fused_op(cases, convert_fn) -> None:
    from tapeout.targets.tflite.flatbuffer import read_model

    graph = cases.conv_cases()["depthwise_relu6_same"]
    info = read_model(convert_fn(graph))
    assert [(o.op, o.fused_activation) for o in info.ops] == [("DEPTHWISE_CONV_2D", "RELU6")]


@pytest.mark.parametrize("variant", ["fp32", "fp16", "dynamic"])
def test_variants_run_in_litert_and_match(emitted, cnn, variant: str) -> None:
    from tapeout.compiler.interpreter import run
    from tapeout.targets.tflite.target import TfliteTarget

    folder, result = emitted[variant]
    x = np.random.default_rng(0).random((7, 8, 8, 1), dtype=np.float32)
    with TfliteTarget(variant).runner(folder) as runner:
        assert [s.name for s in runner.input_specs()] == ["image"]
        assert runner.input_specs()[0].shape == ("N", 8, 8, 1)
        assert runner.output_names() == cnn.outputs
        got = runner.infer({"image": x})[cnn.outputs[0]]
    want = run(cnn, {"image": x})[cnn.outputs[0]]
    tol = 1e-5 if variant == "fp32" else 5e-2  # fp16 / int8 weights move the outputs a little
    np.testing.assert_allclose(got, want, atol=tol)
    assert result.artifacts == ["model.tflite", "model.cc", "model.h"]
    assert result.size_artifacts == ["model.tflite"]


def test_variant_sizes_and_ops(emitted) -> None:
    from tapeout.targets.tflite.flatbuffer import read_model

    size = {v: (f / "model.tflite").stat().st_size for v, (f, _) in emitted.items()}
    assert size["fp16"] < size["fp32"]
    fp16 = read_model((emitted["fp16"][0] / "model.tflite").read_bytes())
    assert "DEQUANTIZE" in fp16.op_names()  # fp16 weights, widened to float32 when the model loads
    assert {t.dtype for t in fp16.tensors if t.constant} >= {"FLOAT16"}


def test_dynamic_variant_stores_large_weights_as_int8(cases, convert_fn) -> None:
    from tapeout.targets.tflite.flatbuffer import read_model

    m = cases.GraphMaker(x=((64,), "NC"))
    graph = m.done(m.dense(m.dense("x", 64, activation=Activation.of("relu")), 10))
    fp32, dynamic = convert_fn(graph, "fp32"), convert_fn(graph, "dynamic")
    weights = [t for t in read_model(dynamic).tensors if t.constant and t.shape == (64, 64)]
    assert [t.dtype for t in weights] == ["INT8"]  # the converter skips tensors under 1024 elements
    assert len(dynamic) < 0.5 * len(fp32)


def test_later_variants_share_the_first_trace(emitted) -> None:
    traced = {v: r.extra["_traced_here"] for v, (_, r) in emitted.items()}
    assert traced == {"fp32": 1, "fp16": 0, "dynamic": 0}


def test_annotated_copy_of_the_graph_shares_the_trace(cnn) -> None:
    from tapeout.targets.tflite import convert

    first, _ = convert.trace(cnn)
    copy = cnn.copy()
    copy.metadata["note"] = "an annotated copy, as the quantize pass hands over"
    again, shared = convert.trace(copy)
    assert shared and again is first
    changed = cnn.copy()
    changed.constants[changed.nodes[0].inputs[1]] = changed.constants[changed.nodes[0].inputs[1]] * 2
    _, shared = convert.trace(changed)
    assert not shared  # other weights, another model


def test_same_graph_gives_byte_identical_tflite(cnn, emitted, tmp_path) -> None:
    from tapeout.targets.tflite import convert
    from tapeout.targets.tflite.target import TfliteTarget

    convert.clear_cache()  # a fresh Keras model and trace, not the cached one
    TfliteTarget("fp32").emit(cnn.copy(), EmitContext(tmp_path))
    for name in ("model.tflite", "model.cc", "model.h"):
        assert (tmp_path / name).read_bytes() == (emitted["fp32"][0] / name).read_bytes(), name


def test_byte_identical_across_processes(cnn, emitted, tmp_path) -> None:
    import pickle

    graph_file = tmp_path / "graph.pkl"
    graph_file.write_bytes(pickle.dumps(cnn))
    code = ("import pickle, sys; from pathlib import Path; from tapeout.targets.tflite.target import TfliteTarget; "
            "from tapeout.targets.base import EmitContext; g = pickle.loads(Path(sys.argv[1]).read_bytes()); TfliteTarget('dynamic').emit(g, EmitContext(Path(sys.argv[2])))")
    subprocess.run([sys.executable, "-c", code, str(graph_file), str(tmp_path)], check=True, capture_output=True)
    assert (tmp_path / "model.tflite").read_bytes() == (emitted["dynamic"][0] / "model.tflite").read_bytes()


def test_io_names_and_channels_first_layout(cases, convert_fn, run_fn, tmp_path) -> None:
    from tapeout.compiler.interpreter import run

    m = cases.GraphMaker(pixels=((6, 6, 2), "NCHW"), extra=((3,), "NC"))
    feat = m.node("global_avg_pool", m.conv("pixels", 3, (3, 3), activation=Activation.of("relu")))
    mixed = m.node("add", feat, m.dense("extra", 3))
    graph = m.done(m.node("conv", "pixels", m.const((1, 1, 2, 2)), groups=1), mixed,
                   layouts={"conv_1": "NCHW", mixed: "NC"})
    data = convert_fn(graph)
    rng = np.random.default_rng(2)
    feeds = {"pixels": rng.standard_normal((2, 2, 6, 6)).astype(np.float32),  # channels-first, as the source
             "extra": rng.standard_normal((2, 3)).astype(np.float32)}
    got = run_fn(data, feeds, tmp_path)
    want = run(graph, {"pixels": feeds["pixels"].transpose(0, 2, 3, 1), "extra": feeds["extra"]})
    assert sorted(got) == sorted(graph.outputs)  # TFLite signatures list names sorted, not in graph order
    np.testing.assert_allclose(got["conv_1"].transpose(0, 2, 3, 1), want["conv_1"], atol=1e-5)
    np.testing.assert_allclose(got[mixed], want[mixed], atol=1e-5)


# ----------------------------------------------------------------- C array
def _array_bytes(source: str) -> bytes:
    body = source[source.index("[] = {") + 6:source.index("};")]
    return bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))


def test_c_array_holds_the_tflite_bytes(emitted) -> None:
    for variant, (folder, result) in emitted.items():
        source = (folder / "model.cc").read_text()
        assert "TAPEOUT_ALIGN16 const unsigned char g_test_model[]" in source
        assert "#define TAPEOUT_ALIGN16 alignas(16)" in source
        data = (folder / "model.tflite").read_bytes()
        assert _array_bytes(source) == data
        assert f"const unsigned int g_test_model_len = {len(data)};" in source
        assert f"const unsigned int g_test_model_size = {len(data)};" in source
        header = (folder / "model.h").read_text()
        assert f"#define G_TEST_MODEL_SIZE {len(data)}" in header
        micro = result.extra["tflite_micro"]
        if variant == "fp32":  # TFLite Micro runs it: the measured arena is the constant
            assert f"#define G_TEST_MODEL_ARENA_BYTES {micro['arena_bytes']}" in header
            assert micro["arena_bytes"] >= micro["measured_minimum"] > 0
        elif variant == "fp16":  # fp16 weights: TFLite Micro's DEQUANTIZE refuses them, and says why
            assert "ARENA_BYTES" not in header and "dequantize" in micro["refused"], variant
            assert any("not run in TFLite Micro" in n for n in result.notes)
        else:  # dynamic: TFLite Micro refuses hybrid ops, but this CNN's small weights stay float (all fp32)
            assert ("refused" in micro) == ("ARENA_BYTES " not in header)


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None, reason="no gcc/g++")
def test_c_array_compiles_and_its_bytes_equal_the_file(emitted, tmp_path) -> None:
    folder, _ = emitted["fp32"]
    for name in ("model.cc", "model.h"):
        shutil.copy(folder / name, tmp_path / name)
    # gcc -c builds a .cc as C++ (TFLite Micro's case); the same file also builds as C11 and C99
    # (whose alignment is the GNU attribute: C99 has no alignas).
    objects = {"model.o": ["-std=c++11"], "model_c11.o": ["-x", "c", "-std=c11"], "model_c99.o": ["-x", "c", "-std=c99"]}
    for obj, flags in objects.items():
        subprocess.run(["gcc", *flags, "-Wall", "-Wextra", "-Werror", "-pedantic", "-c", "model.cc", "-o", obj],
                       cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "dump.cc").write_text(
        '#include <cstdio>\n#include <cstdint>\n#include "model.h"\n'
        "int main(int argc, char** argv) {\n"
        '  std::FILE* f = std::fopen(argv[1], "wb");\n'
        "  std::fwrite(g_test_model, 1, g_test_model_len, f);\n"
        "  std::fclose(f);\n"
        "  return reinterpret_cast<std::uintptr_t>(g_test_model) % 16 != 0;\n"
        "}\n")
    for obj in objects:
        subprocess.run(["g++", "-std=c++11", "dump.cc", obj, "-o", "dump"], cwd=tmp_path, check=True,
                       capture_output=True)
        subprocess.run([str(tmp_path / "dump"), str(tmp_path / "out.bin")], check=True)  # rc 1: misaligned
        assert (tmp_path / "out.bin").read_bytes() == (folder / "model.tflite").read_bytes(), obj


def test_c_array_can_be_switched_off_and_renamed(cnn, tmp_path) -> None:
    from tapeout.targets.tflite.target import TfliteTarget

    (tmp_path / "off").mkdir()
    off = TfliteTarget("fp32", c_array=False).emit(cnn, EmitContext(tmp_path / "off"))
    assert off.artifacts == ["model.tflite"] and not (tmp_path / "off" / "model.cc").exists()
    (tmp_path / "named").mkdir()
    TfliteTarget("fp32", array_name="digits").emit(cnn, EmitContext(tmp_path / "named"))
    assert "const unsigned char digits[]" in (tmp_path / "named" / "model.cc").read_text()


# ------------------------------------------------------------------- arena
def _chain(sizes: list[int], dtype: str = "FLOAT32"):
    """A model info for a chain of ops t0 -> t1 -> ... with the given byte sizes (float32)."""
    from tapeout.targets.tflite.flatbuffer import ModelInfo, OpInfo, TensorInfo

    tensors = [TensorInfo(f"t{i}", (s // 4,), dtype, False) for i, s in enumerate(sizes)]
    ops = [OpInfo("X", (i,), (i + 1,), None) for i in range(len(sizes) - 1)]
    return ModelInfo(ops, tensors, (0,), (len(sizes) - 1,))


def test_arena_plan_of_a_chain_is_the_largest_neighbour_pair() -> None:
    from tapeout.targets.tflite.arena import plan, planned_buffers

    # Aligned to 16: 112, 208, 64, 400. Live pairs: 320, 272, 464.
    assert plan(planned_buffers(_chain([100, 200, 52, 400]))) == 464


def test_arena_plan_reuses_memory_of_dead_tensors() -> None:
    from tapeout.targets.tflite.arena import estimate_arena, plan, planned_buffers
    from tapeout.targets.tflite.flatbuffer import ModelInfo, OpInfo, TensorInfo

    # A residual: t0 stays alive across two ops while t1 -> t2 run, then t3 = t0 + t2.
    t = [TensorInfo(f"t{i}", (n,), "FLOAT32", False) for i, n in enumerate([16, 32, 32, 16])]
    w = TensorInfo("weights", (10_000,), "FLOAT32", True)  # constants live in flash, not the arena
    ops = [OpInfo("CONV_2D", (0, 4), (1,), "RELU"), OpInfo("CONV_2D", (1, 4), (2,), "NONE"),
           OpInfo("ADD", (0, 2), (3,), "NONE")]
    info = ModelInfo(ops, [*t, w], (0,), (3,))
    # Peaks: op1 holds t0 (64) + t1 (128) + t2 (128) = 320; t3 reuses t1's place.
    assert plan(planned_buffers(info)) == 320
    est = estimate_arena(info)
    assert est.activations == 320 and est.counts["TfLiteEvalTensor data"] == 5
    assert est.total >= est.activations + est.tail and est.total % 16 == 0


def test_report_arena_estimate_of_the_cnn(emitted) -> None:
    _, result = emitted["fp32"]
    # Largest neighbours: two 8x8 maps of 4 and 6 channels (float32) = 1024 + 1536 bytes.
    assert result.extra["arena_activation_bytes"] == 2560
    # The analytic estimate is within 1% of TFLite Micro's measured minimum, and not below it (8 bytes over).
    measured = result.extra["tflite_micro"]["measured_minimum"]
    assert 0 <= result.extra["arena_bytes_estimate"] - measured <= 0.01 * measured
    assert result.extra["arena_estimate"]["total"] == result.extra["arena_bytes_estimate"]


# ---------------------------------------------------------------- refusals
def test_integer_variant_needs_annotations(cnn, tmp_path) -> None:
    from tapeout.targets.tflite.target import TfliteTarget

    with pytest.raises(UsageError, match="annotated by the quantize pass"):
        TfliteTarget("int8").emit(cnn, EmitContext(tmp_path))


def test_unknown_option_is_a_usage_error() -> None:
    from tapeout.targets.tflite.target import TfliteTarget

    with pytest.raises(UsageError, match="tflite: unknown option 'colour'"):
        TfliteTarget("fp32", colour="blue")


def test_3d_pooling_is_refused_with_the_node_named(cases, tmp_path) -> None:
    from tapeout.targets.tflite.target import TfliteTarget

    with pytest.raises(UsageError, match=r"'avg_pool' \(avg_pool, 3D\)"):
        TfliteTarget("fp32").emit(cases.pool_cases()["avg_pool3d"], EmitContext(tmp_path))


def test_target_module_imports_no_tensorflow() -> None:
    code = ("import sys, tapeout.targets.registry; "
            "print([m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'ai_edge_litert')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_targets_command_lists_tflite() -> None:
    import io
    import json

    from tapeout.compiler.cli import main

    buf = io.StringIO()
    assert main(["targets", "--json"], buf) == 0
    rows = {r["target"]: r for r in json.loads(buf.getvalue())}
    assert rows["tflite"]["variants"] == ["fp32", "fp16", "dynamic", "int8", "int16x8"]
    assert rows["tflite"]["default"] == "fp32"
