"""Typed target options (issue 16): checked when the target is built, CLI text and typed values
normalize equal (the build cache hashes ``normalized()``), defaults are today's."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tapeout.compiler.errors import UsageError
from tapeout.targets.base import Target, TargetOptions
from tapeout.targets.registry import TARGETS

DIGITS = Path(__file__).resolve().parents[2] / "samples" / "digits_cnn" / "model.keras"


def _cli(args: list[str]) -> tuple[int, str]:
    from tapeout.compiler.cli import main

    err = io.StringIO()
    code = main(args, io.StringIO(), err)
    return code, err.getvalue()


# ------------------------------------------------------------------ the CLI
def test_misspelled_onnx_option_exits_2_before_the_model_loads(tmp_path) -> None:
    out = tmp_path / "o"
    code, err = _cli(["compile", str(DIGITS), "-t", "onnx", "--target-option", "onnx.opest=18", "--no-verify",
                      "-o", str(out)])
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "onnx: unknown option 'opest' (did you mean 'opset'?); options: opset" in err
    assert not out.exists()


# One bad value per target, as the CLI spells it (VALUE is JSON when it parses, else text).
BAD_VALUES = [
    ("onnx", "onnx.opset=eighteen", "onnx: option opset: expected an integer, not 'eighteen'"),
    ("onnx", "onnx.opset=12", "onnx: option opset: 12 is not supported"),
    ("tflite:int8", "tflite.c_array=maybe", "tflite: option c_array: expected true or false, not 'maybe'"),
    ("tflite:int8", "tflite.io=int4", "tflite: option io: expected one of float, int8, uint8, int16, not 'int4'"),
    ("tensorrt", "tensorrt.workspace_mib=lots", "tensorrt: option workspace_mib: expected an integer, not 'lots'"),
    ("hls4ml", "hls4ml.clock_period=fast", "hls4ml: option clock_period: expected a number, not 'fast'"),
    ("hls4ml", "hls4ml.strategy=fastest", "hls4ml: option strategy: expected one of latency, resource"),
]


@pytest.mark.parametrize("target,option,message", BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_bad_value_exits_2_in_one_line(tmp_path, target, option, message) -> None:
    out = tmp_path / "o"
    code, err = _cli(["compile", str(DIGITS), "-t", target, "--target-option", option, "--no-verify",
                      "--calibration", "synthetic", "-o", str(out)])
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


# ------------------------------------------------------------------ every target's class
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_declares_typed_options(name) -> None:
    cls = TARGETS[name]
    assert cls.Options is not TargetOptions and issubclass(cls.Options, TargetOptions)
    t = cls()
    assert isinstance(t.opts, cls.Options)
    norm = t.opts.normalized()
    assert list(norm) == sorted(norm) and norm == cls.Options.from_mapping({}, target=name).normalized()
    assert json.loads(json.dumps(norm)) == norm  # plain JSON types: hashable by the cache
    with pytest.raises(UsageError, match=rf"^{name}: unknown option 'colour'; options: "):
        cls(colour="red")


def test_defaults_are_todays() -> None:
    from tapeout.targets.onnx.emit import MIN_OPSET
    from tapeout.targets.onnx.target import DEFAULT_OPSET
    from tapeout.targets.tensorrt.plan import BuildOptions

    assert DEFAULT_OPSET == MIN_OPSET
    assert TARGETS["onnx"]().options == {"opset": MIN_OPSET}
    assert TARGETS["tflite"]().options == {"arena_headroom": 0, "array_name": None, "c_array": True, "io": None,
                                           "mcu": False}
    trt = TARGETS["tensorrt"]()
    assert trt.build_options == BuildOptions()
    assert trt.options["require_engine"] is False and trt.options["cache_dir"] is None
    hls = TARGETS["hls4ml"]()
    from tapeout.targets.hls4ml.target import Settings

    assert hls.settings == Settings()


# (target, CLI text, the same options typed as a TOML file would give them)
SPELLINGS = [
    ("onnx", {"opset": "18"}, {"opset": 18}),
    ("tflite", {"c_array": "false", "array_name": "g_m", "io": "int8"}, {"c_array": False, "array_name": "g_m",
                                                                         "io": "int8"}),
    ("tensorrt", {"min_batch": "2", "max_batch": "8", "require_engine": "false", "opt_level": "4"},
     {"min_batch": 2, "opt_batch": 2, "max_batch": 8, "opt_level": 4}),
    ("hls4ml", {"reuse_factor": "4", "clock_period": "5", "io_type": "io_stream", "synth": "no"},
     {"reuse_factor": [4], "clock_period": 5.0, "io_type": "stream"}),
]


@pytest.mark.parametrize("name,text,typed", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_cli_text_and_typed_values_normalize_equal(name, text, typed) -> None:
    cls = TARGETS[name]
    a = cls.Options.from_mapping(text, target=name, variant=cls.default_variant if name != "tflite" else "int8")
    b = cls.Options.from_mapping(typed, target=name, variant=cls.default_variant if name != "tflite" else "int8")
    assert a == b and a.normalized() == b.normalized()
    assert a.normalized() != cls.Options.from_mapping({}, target=name).normalized()  # the options did count


def test_hls4ml_config_file_is_merged_into_the_options(tmp_path) -> None:
    """The file's content, not only its path, is in normalized(): editing it changes the cache key."""
    cfg = tmp_path / "hls.toml"
    cfg.write_text('reuse_factor = 2\nstrategy = "resource"\n[layers.fc1]\nprecision = "ap_fixed<8,3>"\n')
    cls = TARGETS["hls4ml"]
    o = cls.Options.from_mapping({"config": str(cfg), "strategy": "latency"}, target="hls4ml").normalized()
    assert o["strategy"] == "latency"  # the flag wins over the file
    assert o["reuse_factor"] == ["2"]
    assert o["precision"] == ["fc1=ap_fixed<8,3>"]
    cfg.write_text('reuse_factor = 3\n')
    assert cls.Options.from_mapping({"config": str(cfg)}, target="hls4ml").normalized()["reuse_factor"] == ["3"]


# ------------------------------------------------------------------ the machinery
@dataclass(frozen=True)
class _Demo(TargetOptions):
    count: int = 1
    scale: float = 1.0
    on: bool = True
    mode: Literal["a", "b"] = "a"
    colour: str = field(default="red", metadata={"choices": ("red", "green")})
    name: str | None = None
    items: tuple[str, ...] = ()


def _demo(**values):
    return _Demo.from_mapping(values, target="demo")


def test_conversions_from_text() -> None:
    d = _demo(count="3", scale="2.5", on="OFF", mode="b", colour="green", name="null", items="x")
    assert d == _Demo(count=3, scale=2.5, on=False, mode="b", colour="green", name=None, items=("x",))
    assert _demo(scale=2, items=["a", 1]).normalized() == {"colour": "red", "count": 1, "items": ["a", "1"],
                                                           "mode": "a", "name": None, "on": True, "scale": 2.0}


@pytest.mark.parametrize("values,message", [
    ({"count": "1.5"}, "demo: option count: expected an integer, not '1.5'"),
    ({"count": True}, "demo: option count: expected an integer, not True"),
    ({"scale": "nan"}, "demo: option scale: expected a number, not 'nan'"),
    ({"on": 2}, "demo: option on: expected true or false, not 2"),
    ({"mode": "c"}, "demo: option mode: expected one of a, b, not 'c'"),
    ({"colour": "blue"}, "demo: option colour: expected one of red, green, not 'blue'"),
    ({"name": ["x"]}, "demo: option name: expected text, not ['x']"),
    ({"cuont": 2}, "demo: unknown option 'cuont' (did you mean 'count'?); options: count, scale, on, mode,"),
])
def test_bad_values_name_the_target_the_key_and_what_was_expected(values, message) -> None:
    with pytest.raises(UsageError) as e:
        _demo(**values)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_target_without_options_refuses_any() -> None:
    class Bare(Target):
        name = "bare"
        variants = ("x",)
        default_variant = "x"

    assert Bare().options == {}
    with pytest.raises(UsageError, match="^bare: unknown option 'x'; bare takes no options$"):
        Bare(x=1)
