"""FPGA layer coverage (issue 13): standalone batch norm and affine, depthwise conv (1D/2D, strided),
zero padding (its own layer and a conv's), nearest upsampling, concatenation, global pooling after a
conv stack, relu6, in io_parallel and io_stream; a MobileNet-style and a U-Net-style block end to end.

hls4ml's own history is why nothing here is trusted: its Keras 3 reader compiled grouped convs that
computed wrong outputs, and in io_stream a depthwise conv with a depth multiplier of 2 compiles and
computes garbage. So every layer is compared, bit for bit, between hls4ml's C simulation (its
per-layer trace) and the NumPy fixed-point model, with types that round, truncate and saturate.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.errors import UsageError
from tapeout.compiler.fixedpoint import LayerPrecision, PrecisionPlan, fixed, hls_layers, run_fixed
from tests.targets.hls4ml.conftest import mixed_plan

BUILD_SECONDS: dict[str, float] = {}


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


def _randomize_bn(model) -> None:
    """Non-trivial moving statistics (a fresh BatchNormalization is the identity)."""
    rng = np.random.default_rng(5)
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2.0, g.shape), rng.normal(0, 0.5, b.shape),
                               rng.normal(0, 0.5, m.shape), rng.uniform(0.5, 2.0, v.shape)])


def cov2d():
    """BN on the inputs; a ZeroPadding2D a conv absorbs (its own layer for hls4ml); a strided
    depthwise conv with 'same' padding; an affine (Rescaling); upsampling; a concat with the skip;
    a standalone zero padding before max pooling; global average pooling after the conv stack."""
    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(11)
    x = keras.Input((8, 8, 3), name="x")
    h = L.BatchNormalization(name="bn_in")(x)
    c1 = L.Conv2D(4, 3, activation="relu", name="c1")(L.ZeroPadding2D(((0, 2), (1, 1)), name="zp_c1")(h))
    h = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(c1)
    h = L.Rescaling(0.5, offset=0.25, name="resc")(h)
    h = L.UpSampling2D(2, name="up")(h)
    h = L.Concatenate(name="cat")([c1, h])
    h = L.MaxPooling2D(2, name="mp")(L.ZeroPadding2D(1, name="zp")(h))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c2")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    m = keras.Model(x, L.Dense(3, name="fc")(h), name="cov2d")
    _randomize_bn(m)
    return m


def cov1d():
    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(12)
    x = keras.Input((16, 3), name="x")
    h = L.BatchNormalization(name="bn_in")(x)
    dw = L.DepthwiseConv1D(3, padding="same", activation="relu", name="dw")(h)
    res = L.Add(name="res")([dw, L.Conv1D(3, 1, name="pw")(dw)])  # a residual: io_stream clones dw
    h = L.Conv1D(4, 3, name="c")(L.ZeroPadding1D((2, 0), name="zp_c")(res))
    h = L.UpSampling1D(2, name="up")(L.MaxPooling1D(2, name="mp")(h))
    h = L.Concatenate(name="cat")([res, h])
    h = L.GlobalMaxPooling1D(name="gmp")(h)
    m = keras.Model(x, L.Dense(2, name="fc")(h), name="cov1d")
    _randomize_bn(m)
    return m


def mobilenet_block(relu6: bool = True):
    """Depthwise conv, BN, ReLU6, pointwise conv, BN, residual add (then a small classifier head)."""
    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(13)
    x = keras.Input((8, 8, 4), name="x")
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    h = L.BatchNormalization(name="dw_bn")(h)
    h = L.ReLU(max_value=6.0 if relu6 else None, name="dw_act")(h)
    h = L.Conv2D(4, 1, use_bias=False, name="pw")(h)
    h = L.BatchNormalization(name="pw_bn")(h)
    h = L.Add(name="res")([x, h])
    h = L.Flatten(name="flat")(h)
    m = keras.Model(x, L.Dense(5, name="fc")(h), name="mobilenet_block")
    _randomize_bn(m)
    return m


def unet_block():
    """Conv, downsample, conv, upsample, concat with the skip, conv: a per-pixel output."""
    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(14)
    x = keras.Input((8, 8, 4), name="x")
    skip = L.Conv2D(8, 3, padding="same", activation="relu", name="enc")(x)
    h = L.MaxPooling2D(2, name="down")(skip)
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="mid")(h)
    h = L.UpSampling2D(2, name="up")(h)
    h = L.Concatenate(name="cat")([skip, h])
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="dec")(h)
    return keras.Model(x, L.Conv2D(3, 1, name="head")(h), name="unet_block")


# ------------------------------------------------------------------ helpers
def _graph(model, path: Path):
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.registry import default_pipeline

    model.save(path)
    return default_pipeline().run(load_model(path)[0]).graph


def coverage_plan(graph) -> PrecisionPlan:
    """conftest's mixed types (truncated accumulators, rounding and saturating results), plus batch
    norm scale/bias types; padding/upsampling keep their input's type (hls4ml requires it)."""
    from tapeout.compiler.fixedpoint.search import _resolve_input_types

    plan = mixed_plan(graph)
    layers = hls_layers(graph)
    for layer in layers:
        if layer.kind == "batch_norm":
            plan.layers[layer.name] = LayerPrecision(result=fixed(14, 6, "AP_RND", "AP_SAT"),
                                                     weight=fixed(10, 3, "AP_RND"), bias=fixed(9, 4))
        elif layer.kind == "concat":
            plan.layers[layer.name] = LayerPrecision(result=fixed(13, 5, "AP_RND", "AP_SAT"))
    for layer in layers:
        if layer.kind in ("zero_pad", "resize"):
            t = _resolve_input_types(graph, plan, layers)[layer.inputs[0]]
            plan.layers[layer.name] = replace(plan.layers[layer.name], result=t)
    return plan


def _build(model, root: Path, io_type: str, plan_fn=coverage_plan):
    """IR -> hls4ml project (as the target writes it) -> C-simulation library; (graph, plan, project, names)."""
    from tapeout.targets.hls4ml.config import Hls4mlOptions
    from tapeout.targets.hls4ml.lower import check_io_type, keras_model, lower
    from tapeout.targets.hls4ml.project import build_csim
    from tapeout.targets.hls4ml.target import Hls4mlTarget

    graph = _graph(model, root / f"{model.name}.keras")
    layers = hls_layers(graph)
    check_io_type(layers, io_type)
    plan = plan_fn(graph)
    km = keras_model(graph)
    names = Hls4mlTarget._names(graph, layers, km)
    project = root / f"{model.name}-{io_type}"
    t0 = time.monotonic()
    lower(km.model, graph, plan, project, variant="vitis", options=Hls4mlOptions(io_type=io_type), names=names)
    build_csim(project)
    BUILD_SECONDS[f"{model.name}-{io_type}"] = round(time.monotonic() - t0, 1)
    return graph, plan, project, names


def _compare(graph, plan, project, names, n: int = 48) -> dict[str, str]:
    """Every hls layer, C simulation vs NumPy model, bit for bit; returns layer -> kind of those checked."""
    from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

    shape = tuple(int(d) for d in graph.type_of(graph.inputs[0]).shape[1:])
    x = np.random.default_rng(3).normal(0, 2.0, (n, *shape)).astype(np.float32)
    with Hls4mlCsimRunner(project) as r:
        outs, traces = r.run({graph.inputs[0]: x}, trace=True)
    back = {v: k for k, v in names.items()}
    traces = {back.get(k, k): v for k, v in traces.items()}
    model = run_fixed(graph, plan, {graph.inputs[0]: x}, keep_intermediates=True)
    checked = {}
    for layer in hls_layers(graph):
        assert layer.name in traces, f"{layer.name} ({layer.kind}) is not in the C simulation's trace"
        want = model[layer.name].to_float().reshape(n, -1)
        np.testing.assert_array_equal(traces[layer.name], want, err_msg=f"{layer.name} ({layer.kind})")
        checked[layer.name] = layer.kind
    last = hls_layers(graph)[-1]
    np.testing.assert_array_equal(outs[graph.outputs[0]].reshape(n, -1), model[last.name].to_float().reshape(n, -1))
    return checked


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: no hls4ml C simulation")
    return tmp_path_factory.mktemp("hls4ml-coverage")


# -------------------------------------------------------------- per layer
COV2D_KINDS = {"bn_in": "batch_norm", "c1_pad": "zero_pad", "c1": "conv", "dw": "conv", "resc": "batch_norm",
               "up": "resize", "cat": "concat", "zp": "zero_pad", "mp": "max_pool", "gap": "global_avg_pool",
               "fc": "dense"}


@pytest.mark.slow
@pytest.mark.parametrize("io_type", ["parallel", "stream"])
def test_2d_layers_are_bit_exact_in_csim(root, io_type):
    checked = _compare(*_build(cov2d(), root, io_type))
    assert {k: checked[k] for k in COV2D_KINDS} == COV2D_KINDS


@pytest.mark.slow
@pytest.mark.parametrize("io_type", ["parallel", "stream"])
def test_1d_layers_are_bit_exact_in_csim(root, io_type):
    checked = _compare(*_build(cov1d(), root, io_type))
    want = {"bn_in": "batch_norm", "dw": "conv", "dw_relu": "relu", "pw": "conv", "res": "add",
            "c_pad": "zero_pad", "c": "conv",
            "mp": "max_pool", "up": "resize", "cat": "concat", "gmp": "global_max_pool", "fc": "dense"}
    assert {k: checked[k] for k in want} == want


def test_relu6_in_io_stream_is_refused_before_any_cpp(tmp_path):
    """hls4ml 1.3 has relu6 in io_parallel only (its stream header has no relu_max): exit 2, one line."""
    from tapeout.compiler.api import compile_model

    path = tmp_path / "m.keras"
    mobilenet_block().save(path)
    with pytest.raises(UsageError, match=r"node 'dw': op 'conv' cannot be compiled with --io-type stream: relu6") as e:
        compile_model(path, ["hls4ml"], tmp_path / "out", target_options={"hls4ml": {"io_type": "stream"}})
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "out").rglob("*.cpp"))


# ---------------------------------------------------- acceptance 3: blocks
def _compile_block(model, root: Path):
    from tapeout.compiler.api import compile_model

    path = root / f"{model.name}.keras"
    model.save(path)
    shape = model.input_shape[1:]
    cal = root / f"{model.name}-cal.npz"
    np.savez(cal, x=np.random.default_rng(0).normal(0, 1, (300, *shape)).astype(np.float32))
    ev = root / f"{model.name}-eval.npz"
    np.savez(ev, x=np.random.default_rng(1).normal(0, 1, (200, *shape)).astype(np.float32))
    t0 = time.monotonic()
    report = compile_model(path, ["hls4ml"], root / model.name, calibration=cal, eval_data=ev)
    BUILD_SECONDS[f"{model.name}-compile"] = round(time.monotonic() - t0, 1)
    return report


@pytest.mark.slow
def test_mobilenet_block_compiles_and_verifies_bit_exact(root):
    report = _compile_block(mobilenet_block(), root)
    t = report.targets[0]
    h = t.extra["hls4ml"]
    kinds = {row["layer"]: row["kind"] for row in h["layers"]}
    # BN folded into both convs; the ReLU6 is the depthwise conv's own hls4ml activation layer.
    assert kinds == {"dw": "conv", "dw_relu6": "relu6", "pw": "conv", "res": "add", "fc": "dense"}
    assert h["csim"]["built"] and h["csim"]["mismatched"] == []
    assert h["csim"]["bit_exact_layers"] == h["csim"]["checked_layers"] == 5
    assert t.verification is not None and t.verification.passed, t.verification
    print(f"mobilenet block: {h['csim']['bit_exact_layers']}/{h['csim']['checked_layers']} layers bit-exact, "
          f"csim agreement {h['csim']['csim_agreement']}, build {BUILD_SECONDS}")


@pytest.mark.slow
def test_unet_block_compiles_and_verifies_bit_exact(root):
    report = _compile_block(unet_block(), root)
    t = report.targets[0]
    h = t.extra["hls4ml"]
    kinds = [row["kind"] for row in h["layers"]]
    assert kinds == ["conv", "relu", "max_pool", "conv", "relu", "resize", "concat", "conv", "relu", "conv"]
    assert h["csim"]["built"] and h["csim"]["mismatched"] == []
    assert h["csim"]["bit_exact_layers"] == h["csim"]["checked_layers"] == 10
    assert t.verification is not None and t.verification.passed, t.verification
    print(f"unet block: {h['csim']['bit_exact_layers']}/{h['csim']['checked_layers']} layers bit-exact, "
          f"build {BUILD_SECONDS}")


def test_standalone_batch_norm_reaches_hls4ml(tmp_path):
    """Issue 13, failure 6: a BatchNormalization normalizing the inputs (nothing before it to fold
    into; a ReLU after it keeps it from the dense) was refused ("op 'batch_norm' has no hls4ml
    fixed-point model"). It is hls4ml's BatchNormalization (nnet::normalize) now; the C simulation of
    such layers is checked above, so this one writes the project only."""
    from tapeout.compiler.api import compile_model

    keras = _keras()
    L = keras.layers
    keras.utils.set_random_seed(15)
    x = keras.Input((16,), name="x")
    h = L.ReLU(name="act")(L.BatchNormalization(name="bn_in")(x))
    m = keras.Model(x, L.Dense(5, activation="softmax", name="fc")(h), name="bn_mlp")
    _randomize_bn(m)
    m.save(tmp_path / "m.keras")
    report = compile_model(tmp_path / "m.keras", ["hls4ml"], tmp_path / "out", verify_artifacts=False,
                           target_options={"hls4ml": {"build_csim": False}})
    h = report.targets[0].extra["hls4ml"]
    bn = next(r for r in h["layers"] if r["layer"] == "bn_in")
    assert bn["kind"] == "batch_norm" and set(bn["types"]) == {"result", "weight", "bias"}
    cpp = (tmp_path / "out/hls4ml-vitis/firmware/myproject.cpp").read_text()
    assert "nnet::normalize<" in cpp and "// bn_in" in cpp
    defines = (tmp_path / "out/hls4ml-vitis/firmware/defines.h").read_text()
    scale = bn["types"]["weight"]
    full = scale[:-1] + ",AP_WRAP,0>" if "AP_RND>" in scale else scale
    assert f"typedef {full} bn_in_scale_t;" in defines


def test_estimates_count_the_batch_norm_multipliers(tmp_path):
    from tapeout.compiler.fixedpoint.search import uniform_plan
    from tapeout.targets.hls4ml.estimates import estimate

    graph = _graph(cov2d(), tmp_path / "cov2d.keras")
    plan = uniform_plan(graph, fixed(16, 6))
    for io_type, want in (("parallel", 8 * 8 * 3), ("stream", 3)):
        rows, totals = estimate(graph, plan, {}, variant="vitis", io_type=io_type, strategy="latency",
                                clock_period=5.0)
        bn = next(r for r in rows if r.layer == "bn_in")
        assert bn.multipliers == want and bn.dsp_multipliers == want and bn.weight_bits == 3 * 32
        assert totals["multipliers"] >= sum(r.multipliers for r in rows if r.kind == "conv") + want


def test_a_grouped_conv_is_refused_with_exit_2_before_any_cpp(tmp_path):
    """1 < groups < channels: hls4ml 1.3's Keras 3 reader compiled such convs and computed wrong outputs."""
    from tapeout.compiler.cli import main

    keras = _keras()
    x = keras.Input((6, 6, 4), name="x")
    m = keras.Model(x, keras.layers.Conv2D(4, 3, groups=2, name="gconv")(x))
    m.save(tmp_path / "g.keras")
    code = main(["compile", str(tmp_path / "g.keras"), "-t", "hls4ml", "-o", str(tmp_path / "out")])
    assert code == 2
    assert not list(tmp_path.rglob("*.cpp"))
    with pytest.raises(UsageError, match=r"^target hls4ml: node 'gconv': op 'conv' with 2 groups \(1 < groups < "
                                         r"channels\) is refused"):
        from tapeout.compiler.api import compile_model

        compile_model(tmp_path / "g.keras", ["hls4ml"], tmp_path / "out2")
