"""TFLite Micro's op coverage (targets/tflite/mcu.py), judged by the real TFLite Micro interpreter:
the checked-in op sets against a fresh probe of the pinned build, models TensorFlow's converter
makes with ops TFLite Micro lacks, and the digits sample's variants (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tflite_micro")

from tapeout.targets.tflite import mcu  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[3] / "samples" / "digits_cnn"


def test_checked_in_sets_are_what_the_pinned_build_registers() -> None:
    assert mcu.installed_version() == mcu.TFLM_VERSION
    verdicts = mcu.probe()
    builtins, custom = mcu.probed_sets(verdicts)
    assert builtins == mcu.TFLM_BUILTINS
    assert custom == mcu.TFLM_CUSTOM_OPS
    # the probe asked about every builtin of the schema the model reader names ops with
    from tapeout.targets.tflite.flatbuffer import schema

    names = {k for k in vars(schema().BuiltinOperator) if not k.startswith("_")} - {"CUSTOM"}
    assert names <= set(verdicts)
    assert {"TOPK_V2", "TILE", "GELU"} <= {k for k, v in verdicts.items() if v == "missing"}


def test_custom_and_unknown_codes_are_named() -> None:
    # probe_model's second op is a builtin code beyond the schema: named by its number
    assert mcu.unsupported_ops(mcu.probe_model(32, "FlexTopKV2")) == ["99999 x1", "CUSTOM:FlexTopKV2 x1"]
    assert mcu.unsupported_ops(mcu.probe_model(32, "TFLite_Detection_PostProcess")) == ["99999 x1"]
    assert mcu.unsupported_ops(mcu.probe_model(3)) == ["99999 x1"]  # CONV_2D
    for junk in (b"\x00" * 16, b"\xff" * 4 + b"TFL3" + b"\xff" * 8):
        with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
            mcu.model_op_counts(junk)


# ------------------------------------------------------------------ TensorFlow-made models
@pytest.fixture(scope="module")
def tf_models() -> dict[str, bytes]:
    tf = pytest.importorskip("tensorflow")

    def convert(fn) -> bytes:
        conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
        return conv.convert()

    @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
    def tile_topk(x):
        y = tf.tile(x, [1, 2]) * 2.0
        y = tf.tile(y, [1, 2])
        return tf.math.top_k(y, k=3)[0]

    @tf.function(input_signature=[tf.TensorSpec([1, 1 << 20], tf.float32)])
    def wide(x):  # 4 MiB in, 4 MiB out: more than the first arena tried
        return x * 2.0 + 1.0

    return {"tile_topk": convert(tile_topk), "wide": convert(wide)}


def test_ops_tflm_lacks_are_all_named_and_tflm_agrees(tf_models) -> None:
    from tapeout.runtime import tflm

    data = tf_models["tile_topk"]
    assert mcu.model_op_counts(data) == {"MUL": 1, "TILE": 2, "TOPK_V2": 1}
    assert mcu.unsupported_ops(data) == ["TILE x2", "TOPK_V2 x1"]
    # the real interpreter stops at the first it meets: one of those named
    with pytest.raises(tflm.TflmError, match=r"Didn't find op for builtin opcode '(TILE|TOPK_V2)'"):
        tflm.load(data, 1 << 20)
    refusal = mcu.tflm_refusal(data)
    assert refusal is not None and refusal.startswith("Didn't find op for builtin opcode 'TILE'")
    problem = mcu.mcu_problem(data)
    assert problem == (f"TFLite Micro ({mcu.TFLM_VERSION}) has no kernel for 2 ops of this model: "
                       "TILE x2, TOPK_V2 x1")


def test_a_short_arena_is_grown_not_reported(tf_models) -> None:
    data = tf_models["wide"]
    assert mcu.unsupported_ops(data) == []
    assert mcu.tflm_refusal(data) is None  # needs about 8 MiB; the search starts at 1 MiB


# ------------------------------------------------------------------ the digits sample
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, bytes]:
    from tapeout.compiler.api import compile_model

    out = tmp_path_factory.mktemp("digits_mcu")
    variants = ("fp32", "int8", "fp16", "dynamic")
    compile_model(SAMPLE / "model.keras", [f"tflite:{v}" for v in variants], out,
                  calibration=SAMPLE / "calibration.npz", timings=False)
    return {v: (out / f"tflite-{v}" / "model.tflite").read_bytes() for v in variants}


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_digits_runs_in_tflm(digits, variant) -> None:
    data = digits[variant]
    assert set(mcu.model_op_counts(data)) <= mcu.TFLM_BUILTINS
    assert mcu.unsupported_ops(data) == []
    assert mcu.tflm_refusal(data) is None
    assert mcu.mcu_problem(data) is None


def test_digits_fp16_and_dynamic_are_refused_with_tflms_reason(digits) -> None:
    # every op has a kernel, but not for these tensor types: only the interpreter knows
    assert mcu.unsupported_ops(digits["fp16"]) == mcu.unsupported_ops(digits["dynamic"]) == []
    fp16 = mcu.tflm_refusal(digits["fp16"])
    assert fp16 is not None and fp16.startswith("Node DEQUANTIZE (number 0) failed to prepare: ")
    assert "input->type == kTfLiteInt8" in fp16 and "\n" not in fp16
    dynamic = mcu.tflm_refusal(digits["dynamic"])
    assert dynamic is not None and dynamic.startswith("Node CONV_2D (number ")
    assert dynamic.endswith("Hybrid models are not supported on TFLite Micro.")
    assert mcu.mcu_problem(digits["dynamic"]) == f"TFLite Micro ({mcu.TFLM_VERSION}) refuses this model: {dynamic}"
