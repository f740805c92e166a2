"""compiler/project.py (issue 16): the tapeout.toml project file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tapeout.compiler.errors import UsageError
from tapeout.compiler.project import ModelSpec, load_project
from tapeout.compiler.stages.spec import BuildSpec


@pytest.fixture
def proj(tmp_path, monkeypatch):
    """Write tapeout.toml (plus the files it names) under tmp_path; load it as spelled from there."""
    (tmp_path / "models").mkdir()
    (tmp_path / "data").mkdir()
    for f in ("models/a.keras", "models/b.onnx", "models/arch.json", "models/w.h5", "data/cal.npz",
              "data/eval.npz"):
        (tmp_path / f).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)

    def write(text: str, name: str = "tapeout.toml"):
        (tmp_path / name).write_text(textwrap.dedent(text).lstrip("\n"))
        return load_project(name)

    return write


def _error(proj, text: str) -> str:
    with pytest.raises(UsageError) as e:
        proj(text)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


VALID = """
# the digits project
[defaults]
calibration = "data/cal.npz"
eval = "data/eval.npz"
targets = ["onnx"]
atol = 1
verify = true

[defaults.options.tflite]
c_array = false
io = "float"

[models.digits]
path = "models/a.keras"
targets = ["onnx", "tflite:int8", "hls4ml"]
outdir = "out/digits"
calibration_method = "percentile"
percentile = 99.9
keep_float = ["fc1"]

[models.digits.options."tflite:int8"]
io = "int8"

[models.digits.options.tflite]
io = "uint8"

[models.legacy]
path = "models/arch.json"
weights = "models/w.h5"
calibration = "synthetic"
verify = false
io_layout = "channels-last"
"""


def test_valid_project_round_trip(proj, tmp_path):
    p = proj(VALID)
    assert p.path == tmp_path / "tapeout.toml" and p.spelled == "tapeout.toml" and p.root == tmp_path
    assert list(p.models) == ["digits", "legacy"]
    d = p.models["digits"]
    assert isinstance(d, ModelSpec)
    assert d.build.model == tmp_path / "models" / "a.keras" and d.build.model.is_absolute()
    assert d.build.targets == ("onnx", "tflite:int8", "hls4ml")
    assert d.build.outdir == tmp_path / "out" / "digits"
    assert d.build.calibration == str(tmp_path / "data" / "cal.npz")
    assert d.build.eval_data == tmp_path / "data" / "eval.npz"
    assert d.build.atol == 1.0 and isinstance(d.build.atol, float) and d.build.rtol is None
    b = d.build
    assert (b.calibration_method, b.percentile, b.keep_float, b.verify) == ("percentile", 99.9, ("fc1",), True)
    # defaults' options under the model's own, key by key; the variant's table stays separate.
    assert d.build.target_options == {"tflite": {"c_array": False, "io": "uint8"}, "tflite:int8": {"io": "int8"}}
    assert d.spelled == {"path": "models/a.keras", "calibration": "data/cal.npz", "eval": "data/eval.npz",
                         "outdir": "out/digits"}
    assert d.line == 13
    assert d.input_files() == {"model": b.model, "calibration": Path(b.calibration), "eval": b.eval_data}

    leg = p.models["legacy"]
    assert leg.build.targets == ("onnx",)  # from [defaults]
    assert leg.build.outdir == tmp_path / "build" / "legacy" and leg.spelled["outdir"] == "build/legacy"
    assert leg.build.weights == tmp_path / "models" / "w.h5"
    assert leg.build.calibration == "synthetic" and "calibration" not in leg.input_files()
    assert (leg.build.verify, leg.build.io_layout) == (False, "channels-last")
    assert leg.build.target_options == {"tflite": {"c_array": False, "io": "float"}}

    # The build is the BuildSpec `tapeout compile` makes of the same flags; unset keys take its defaults.
    assert isinstance(d.build, BuildSpec) and d.build.verify is True
    assert leg.build.calibration_method == "minmax" and leg.build.timings is True

    assert [m.name for m in p.select()] == ["digits", "legacy"]
    assert [m.name for m in p.select(["legacy", "digits", "legacy"])] == ["legacy", "digits"]


def test_paths_relative_to_the_project_folder_not_cwd(proj, tmp_path, monkeypatch):
    sub = tmp_path / "proj"
    sub.mkdir()
    (sub / "m.onnx").write_bytes(b"x")
    (sub / "tapeout.toml").write_text('[models.m]\npath = "m.onnx"\ntargets = ["onnx"]\n'
                                      '[models.up]\npath = "../models/a.keras"\ntargets = ["onnx"]\n')
    monkeypatch.chdir(tmp_path / "data")
    p = load_project("../proj/tapeout.toml")
    assert p.spelled == "../proj/tapeout.toml"
    assert p.models["m"].build.model == sub / "m.onnx" and p.models["m"].build.outdir == sub / "build" / "m"
    assert p.models["up"].build.model == tmp_path / "models" / "a.keras"  # escaping the folder is fine
    assert p.models["up"].spelled["path"] == "../models/a.keras"


def test_path_options_are_relative_to_the_project_folder_too(proj, tmp_path, monkeypatch):
    """hls4ml.config and tensorrt.cache_dir name files: read from the project's folder, wherever
    `tapeout build` runs; on the CLI from the working folder. Both come out absolute."""
    from tapeout.compiler.stages.compile import check

    sub = tmp_path / "proj"
    sub.mkdir()
    (sub / "m.onnx").write_bytes(b"x")
    (sub / "hls.toml").write_text("reuse_factor = 4\n")
    (sub / "tapeout.toml").write_text('[models.m]\npath = "m.onnx"\ntargets = ["hls4ml", "tensorrt:fp16"]\n'
                                      '[models.m.options.hls4ml]\nconfig = "hls.toml"\n'
                                      '[models.m.options.tensorrt]\ncache_dir = "trt"\n')
    monkeypatch.chdir(tmp_path / "data")
    c = check(load_project("../proj/tapeout.toml").models["m"].build)
    hls, trt = c.built
    assert hls.opts.config == str(sub / "hls.toml") and hls.opts.reuse_factor == ("4",)
    assert trt.opts.cache_dir == str(sub / "trt")
    spec = BuildSpec.of(sub / "m.onnx", ["tensorrt:fp16"], tmp_path / "o",
                        target_options={"tensorrt": {"cache_dir": "trt"}})
    assert check(spec).built[0].opts.cache_dir == str(tmp_path / "data" / "trt")


def test_extends_inherits_everything_but_outdir(proj, tmp_path):
    p = proj("""
        [defaults]
        atol = 0.5

        [models.base]
        path = "models/a.keras"
        targets = ["onnx", "tflite:int8"]
        outdir = "out/base"
        rtol = 0.25
        calibration = "data/cal.npz"
        [models.base.options."tflite:int8"]
        io = "int8"
        c_array = true

        [models.mid]
        extends = "base"
        atol = 0.125
        [models.mid.options."tflite:int8"]
        io = "uint8"

        [models.leaf]
        extends = "mid"
        targets = ["tflite:int8"]
        """)
    leaf = p.models["leaf"]
    assert leaf.extends == "mid" and leaf.build.model == tmp_path / "models" / "a.keras"
    assert leaf.build.targets == ("tflite:int8",)
    assert (leaf.build.atol, leaf.build.rtol) == (0.125, 0.25)
    assert leaf.build.calibration == str(tmp_path / "data" / "cal.npz") and leaf.spelled["calibration"] == "data/cal.npz"
    assert leaf.build.target_options == {"tflite:int8": {"io": "uint8", "c_array": True}}
    assert leaf.build.outdir == tmp_path / "build" / "leaf"  # not base's out/base
    assert p.models["mid"].build.targets == ("onnx", "tflite:int8") and p.models["mid"].build.atol == 0.125
    assert p.models["base"].build.atol == 0.5 and p.models["base"].build.target_options["tflite:int8"]["io"] == "int8"


def test_unknown_key_names_the_key_and_line_with_a_suggestion(proj):
    msg = _error(proj, """
        [defaults]
        eval = "data/eval.npz"

        [models.digits]
        path = "models/a.keras"
        targets = ["onnx"]
        calibraton = "data/cal.npz"
        """)
    assert msg == "tapeout.toml:7: unknown key 'calibraton' in [models.digits] (did you mean 'calibration'?)"


@pytest.mark.parametrize("text,expected", [
    ('modles = 1\n[models.a]\npath = "models/a.keras"\ntargets = ["onnx"]\n',
     "tapeout.toml:1: unknown key 'modles' at the top level (did you mean 'models'?)"),
    ('[defaults]\n\nzzz = 1\n[models.a]\npath = "models/a.keras"\ntargets = ["onnx"]\n',
     "tapeout.toml:3: unknown key 'zzz' in [defaults]"),
    ('[defaults]\npath = "models/a.keras"\n[models.a]\ntargets = ["onnx"]\n',
     "tapeout.toml:2: key 'path' belongs in [models.NAME], not in [defaults]"),
    # dotted keys and inline tables are located too
    ('[models]\na.path = "models/a.keras"\na.targets = ["onnx"]\na.tragets = 1\n',
     "tapeout.toml:4: unknown key 'tragets' in [models.a] (did you mean 'targets'?)"),
    ('[models]\n\nb = { path = "models/a.keras", targets = ["onnx"], atoll = 1 }\n',
     "tapeout.toml:3: unknown key 'atoll' in [models.b] (did you mean 'atol'?)"),
])
def test_unknown_keys_elsewhere(proj, text, expected):
    assert _error(proj, text) == expected


def test_wrong_types(proj):
    head = '[models.a]\npath = "models/a.keras"\n'
    cases = {
        'targets = "onnx"': 'tapeout.toml:3: models.a.targets: expected a list of strings such as ["onnx", '
                            '"tflite:int8"], got \'onnx\'',
        "targets = [1, 2]": "tapeout.toml:3: models.a.targets: expected a list of strings",
        "targets = []": "tapeout.toml:3: models.a.targets is empty: name at least one target",
        'targets = ["onnx", "onnx"]': "tapeout.toml:3: models.a.targets: 'onnx' is listed twice",
        'targets = ["tflite int8"]': "tapeout.toml:3: models.a.targets: 'tflite int8' is not TARGET or TARGET:VARIANT",
        'targets = ["onnx"]\natol = "small"': "tapeout.toml:4: models.a.atol: expected a number >= 0, got 'small'",
        'targets = ["onnx"]\natol = true': "tapeout.toml:4: models.a.atol: expected a number >= 0, got True",
        'targets = ["onnx"]\nverify = "no"': "tapeout.toml:4: models.a.verify: expected true or false",
        'targets = ["onnx"]\nepochs = 1.5': "tapeout.toml:4: models.a.epochs: expected an integer >= 1",
        'targets = ["onnx"]\ncalibration_method = "minmx"':
            "tapeout.toml:4: models.a.calibration_method: expected one of 'minmax', 'percentile', 'entropy'",
        'targets = ["onnx"]\noptions = 3': "tapeout.toml:4: models.a.options: expected a table",
        'targets = ["onnx"]\noptions.tflite = 3':
            "tapeout.toml:4: models.a.options.tflite: expected a table of options, got 3",
        'targets = ["onnx"]\n[models.a.options.tflite]\nwhen = 2024-01-01':
            "tapeout.toml:5: models.a.options.tflite.when: dates and times are not option values",
        'targets = ["onnx"]\nweights = 5': "tapeout.toml:4: models.a.weights: expected a non-empty string, got 5",
    }
    for tail, expected in cases.items():
        msg = _error(proj, head + tail + "\n")
        assert msg.startswith(expected), (tail, msg)


def test_missing_required_keys_and_tables(proj):
    assert _error(proj, "[defaults]\natol = 1\n") == \
        "tapeout.toml: no models: add a [models.NAME] table with path and targets"
    assert _error(proj, '# no path\n[models.a]\ntargets = ["onnx"]\n') == \
        "tapeout.toml:2: models.a: no 'path' (the model file)"
    assert _error(proj, '[models.a]\npath = "models/a.keras"\n') == \
        "tapeout.toml:1: models.a: no 'targets' (a list such as [\"onnx\"])"
    assert _error(proj, '[models."a b"]\npath = "models/a.keras"\ntargets = ["onnx"]\n') == \
        "tapeout.toml:1: model name 'a b': use letters, digits, '_', '-' and '.'"


def test_toml_syntax_error_keeps_the_line(proj):
    msg = _error(proj, '[models.a]\npath = "models/a.keras"\ntargets = ["onnx",\n\natol = = 1\n')
    assert msg.startswith("tapeout.toml:5: invalid TOML: ") and "line 5" in msg


def test_missing_files(proj, tmp_path):
    msg = _error(proj, '[models.digits]\ntargets = ["onnx"]\n\n\npath = "samples/x.keras"\n')
    assert msg == "tapeout.toml:5: models.digits.path: samples/x.keras does not exist"
    msg = _error(proj, '[defaults]\neval = "data/nope.npz"\n[models.a]\npath = "models/a.keras"\ntargets = ["onnx"]\n')
    assert msg == "tapeout.toml:2: defaults.eval: data/nope.npz does not exist"  # the line that wrote it
    msg = _error(proj, '[models.a]\npath = "models"\ntargets = ["onnx"]\n')
    assert msg == "tapeout.toml:2: models.a.path: models is not a file"
    with pytest.raises(UsageError, match="^nothing.toml: no such project file$"):
        load_project("nothing.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[models]")
    with pytest.raises(UsageError, match="^bin.toml: not UTF-8 text"):
        load_project("bin.toml")


def test_extends_errors(proj):
    base = '[models.x]\npath = "models/a.keras"\ntargets = ["onnx"]\n'
    assert _error(proj, base + '[models.a]\nextends = "b"\n[models.b]\nextends = "c"\n[models.c]\nextends = "a"\n') \
        == "tapeout.toml:5: models a -> b -> c -> a extend each other in a cycle"
    assert _error(proj, base + '[models.a]\nextends = "a"\n') == \
        "tapeout.toml:5: models a -> a extend each other in a cycle"
    assert _error(proj, base + '[models.a]\n\nextends = "xx"\n') == \
        "tapeout.toml:6: models.a.extends: no model named 'xx' (did you mean 'x'?) (models: x, a)"


def test_select_unknown_name(proj):
    p = proj('[models.digits]\npath = "models/a.keras"\ntargets = ["onnx"]\n'
             '[models.resnet]\npath = "models/b.onnx"\ntargets = ["onnx"]\n')
    with pytest.raises(UsageError) as e:
        p.select(["digts"])
    assert str(e.value) == "tapeout.toml: no model named 'digts' (did you mean 'digits'?) (models: digits, resnet)"


def test_project_and_sweep_files_share_the_read_and_keep_their_own_texts(tmp_path, monkeypatch):
    """compiler/tomlfile.py reads both files and words both kinds of error; both name the line of a
    TOML syntax error, and only the sweep file's hints take a prefix ('obj')."""
    from tapeout.compiler.sweep.spec import load_sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "bin.toml").write_bytes(b"\xff[models]")
    (tmp_path / "bad.toml").write_text("[base]\n\nx = = 1\n")
    for load, what in ((load_project, "project file"), (load_sweep, "sweep file")):
        msgs = []
        for name in ("none.toml", "dir.toml", "bin.toml", "bad.toml"):
            with pytest.raises(UsageError) as e:
                load(name)
            msgs.append(str(e.value))
        assert msgs[:3] == [f"none.toml: no such {what}", f"dir.toml: is a folder, not a {what}",
                            "bin.toml: not UTF-8 text (byte 0)"]
        bad = "bad.toml:3: invalid TOML: "  # both name the line, as every other key error does
        assert msgs[3].startswith(bad) and "line 3" in msgs[3], msgs[3]
    (tmp_path / "p.toml").write_text('[models.a]\npath = "p.toml"\ntargets = ["onnx"]\n\ncal = 1\n')
    with pytest.raises(UsageError) as e:
        load_project("p.toml")
    assert str(e.value) == "p.toml:5: unknown key 'cal' in [models.a]"  # no prefix hint here
    (tmp_path / "s.toml").write_text("[sweep]\nmode = \"grid\"\nobj = 1\n")
    with pytest.raises(UsageError) as e:
        load_sweep("s.toml")
    assert str(e.value) == "s.toml:3: unknown key 'obj' in [sweep] (did you mean 'objectives'?)"
