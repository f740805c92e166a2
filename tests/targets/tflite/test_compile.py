"""compile_model with several tflite variants: verification, shared trace, sizes, identical reports."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def compiled(tiny_cnn_path, tiny_eval_path, tmp_path_factory):
    from tapeout.compiler.api import compile_model
    from tapeout.targets.tflite import convert

    out = tmp_path_factory.mktemp("compiled")
    targets = ["tflite:fp32", "tflite:fp16", "tflite:dynamic"]
    convert.clear_cache()
    traces = convert.STATS["traces"]
    first = compile_model(tiny_cnn_path, targets, out / "run0", eval_data=tiny_eval_path, timings=False)
    first.traces = convert.STATS["traces"] - traces  # type: ignore[attr-defined]
    convert.clear_cache()  # the second build starts cold too
    second = compile_model(tiny_cnn_path, targets, out / "run1", eval_data=tiny_eval_path, timings=False)
    return out, [first, second]


def test_every_variant_verifies(compiled) -> None:
    _, (report, _) = compiled
    assert report.passed and report.exit_code == 0
    by_variant = {t.variant: t for t in report.targets}
    assert list(by_variant) == ["fp32", "fp16", "dynamic"]
    assert by_variant["fp32"].verification.max_abs_err < 1e-4
    assert by_variant["fp32"].verification.runner == "litert vs keras"
    for variant in ("fp16", "dynamic"):  # judged by cosine and top-1 agreement, not elementwise
        out = by_variant[variant].verification.outputs[0]
        assert out["tolerance"]["min_cosine"] == 0.99 and out["cosine"] >= 0.99


def test_trace_is_shared_and_size_counts_the_tflite_only(compiled) -> None:
    out, (report, _) = compiled
    assert report.traces == 1  # three variants, one Keras build and trace
    for t in report.targets:
        assert t.artifacts == [f"tflite-{t.variant}/model.tflite", f"tflite-{t.variant}/model.cc",
                               f"tflite-{t.variant}/model.h"]
        assert t.size_bytes == (out / "run0" / t.artifacts[0]).stat().st_size


def test_identical_builds_give_identical_reports_and_artifacts(compiled) -> None:
    out, (first, second) = compiled
    assert first.dumps(timings=False) == second.dumps(timings=False)
    assert (out / "run0" / "report.json").read_bytes() == (out / "run1" / "report.json").read_bytes()
    for t in first.targets:
        for a in t.artifacts:
            assert (out / "run0" / a).read_bytes() == (out / "run1" / a).read_bytes(), a
    entry = json.loads((out / "run0" / "report.json").read_text())["targets"][0]
    assert entry["arena_bytes_estimate"] > entry["arena_activation_bytes"] > 0


def test_cli_io_and_target_options(tiny_cnn_path, tmp_path) -> None:
    import io

    from tapeout.compiler.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(["compile", str(tiny_cnn_path), "-t", "tflite:int8", "-t", "tflite:fp32", "-o", str(tmp_path / "o"),
                 "--calibration", "synthetic", "--io", "int8", "--target-option", "tflite.c_array=false",
                 "--target-option", "tflite:fp32.c_array=true", "--target-option", "tflite:fp32.array_name=fp",
                 "--json", "--no-verify"], out, err)
    assert code == 0, err.getvalue()
    targets = {t["variant"]: t for t in json.loads(out.getvalue())["targets"]}
    assert targets["int8"]["io"] == "int8" and targets["int8"]["artifacts"] == ["tflite-int8/model.tflite"]
    assert any("--io int8 applies to the integer variants" in n for n in targets["fp32"]["notes"])
    # The per-variant option wins over the target-wide one.
    assert targets["fp32"]["c_array"] == "fp" and (tmp_path / "o" / "tflite-fp32" / "model.cc").is_file()


@pytest.mark.parametrize("args,message", [
    (["--target-option", "c_array=false"], "expected TARGET[:VARIANT].KEY=VALUE"),
    (["--target-option", "onnx.opset=18"], "not among the chosen targets"),
    (["--target-option", "tflite.colour=1"], "tflite: unknown option 'colour'"),
    (["--io", "int16"], "takes --io float or int8 or uint8"),
])
def test_cli_bad_target_options_are_usage_errors(tiny_cnn_path, tmp_path, args, message) -> None:
    import io

    from tapeout.compiler.cli import main

    err = io.StringIO()
    code = main(["compile", str(tiny_cnn_path), "-t", "tflite:int8", "-o", str(tmp_path / "o"),
                 "--calibration", "synthetic", *args], io.StringIO(), err)
    assert code == 2 and message in err.getvalue(), err.getvalue()
