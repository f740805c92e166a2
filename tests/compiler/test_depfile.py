"""--depfile: gcc -MD -MP format, escaping that real Make and Ninja read back, written atomically and
only when changed; `tapeout compile --depfile/--quiet` through the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tapeout.compiler.cli import main
from tapeout.compiler.depfile import escape, files_read, render, stamp_of, write_depfile
from tapeout.compiler.errors import UsageError

ODD = ["plain.npz", "a b.npz", "x$y#z.npz", "back\\ slash.npz"]  # names Make syntax must escape


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The build cache, if any, is this test's own: a user's cache neither helps nor fills."""
    monkeypatch.setenv("TAPEOUT_CACHE_DIR", str(tmp_path / "cache"))


def run_cli(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out, err)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ format
def test_escape_as_gcc():
    assert escape("a b") == "a\\ b"
    assert escape("x$y#z") == "x$$y\\#z"
    assert escape("tab\there") == "tab\\\there"
    assert escape("back\\ slash") == "back\\\\\\ slash"  # the backslash before a blank doubles
    assert escape("dir\\file") == "dir\\file"  # elsewhere it stays
    with pytest.raises(UsageError, match="line break"):
        escape("two\nlines")


def test_render_first_rule_then_phony_rules():
    deps = ["m/model.keras"] + [f"data/calibration_{i:02d}.npz" for i in range(4)]
    text = render("out/report.json", deps)
    first, _, rest = text.partition("\n\n")
    lines = first.split("\n")
    assert lines[0].startswith("out/report.json: m/model.keras")
    assert all(len(line) <= 77 for line in lines)  # wrapped as gcc wraps
    assert all(line.endswith(" \\") for line in lines[:-1]) and len(lines) > 1
    assert first.replace(" \\\n", "").split()[1:] == deps
    assert rest == "".join(f"{d}:\n\n" for d in deps).rstrip("\n") + "\n"


@pytest.mark.parametrize("outdir, stamp", [("out", "out/report.json"), ("out/", "out/report.json"),
                                           ("./b/out", "./b/out/report.json"), ("/abs/o", "/abs/o/report.json"),
                                           (".", "./report.json")])
def test_stamp_spelled_as_given(outdir, stamp):
    assert stamp_of(outdir) == stamp


def test_files_read_drops_synthetic_and_none():
    assert files_read("m.keras", None, "synthetic", "e.npz", "m.keras") == ["m.keras", "e.npz"]


def test_onnx_external_data_files_follow_the_model(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    (tmp_path / "m").mkdir()
    onnx.save_model(helper.make_model(graph), tmp_path / "m" / "net.onnx", save_as_external_data=True,
                    location="net.weights", size_threshold=0)
    monkeypatch.chdir(tmp_path)
    assert files_read("m/net.onnx", "d.npz") == ["m/net.onnx", "m/net.weights", "d.npz"]


def test_written_only_when_changed(tmp_path):
    path = tmp_path / "sub" / "x.d"  # missing folders are made, as -o makes OUTDIR
    assert write_depfile(path, "out/report.json", ["m.keras"]) is True
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    before = path.stat().st_mtime_ns
    assert write_depfile(path, "out/report.json", ["m.keras"]) is False
    assert path.stat().st_mtime_ns == before
    assert write_depfile(path, "out/report.json", ["m.keras", "c.npz"]) is True
    assert "c.npz:" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.d"]  # no temporary left behind
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_refuses_a_folder(tmp_path):
    with pytest.raises(UsageError, match="is a folder"):
        write_depfile(tmp_path, "o/report.json", ["m"])


# ------------------------------------------------ real Make and Ninja read it
def _odd_tree(tmp_path: Path) -> list[str]:
    for name in ODD:
        (tmp_path / name).write_text(name)
    write_depfile(tmp_path / "out.d", "out", ODD)
    (tmp_path / "out").write_text("built")
    return ODD


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU Make is not installed")
def test_make_reads_escaped_names(tmp_path):
    _odd_tree(tmp_path)
    (tmp_path / "Makefile").write_text("out:\n\ttouch out\n-include out.d\n")
    old = (tmp_path / "out").stat().st_mtime_ns - 10**9
    for name in ODD:
        os.utime(tmp_path / name, ns=(old, old))
    q = lambda: subprocess.run(["make", "-q", "out"], cwd=tmp_path).returncode  # noqa: E731
    assert q() == 0
    for name in ODD:  # each escaped name is the very file: a newer one makes out stale
        newer = (tmp_path / "out").stat().st_mtime_ns + 10**9
        os.utime(tmp_path / name, ns=(newer, newer))
        assert q() == 1, name
        os.utime(tmp_path / "out", ns=(newer + 10**9, newer + 10**9))
        assert q() == 0
    (tmp_path / ODD[1]).unlink()  # the phony rules: a deleted input is no error
    assert subprocess.run(["make", "out"], cwd=tmp_path, capture_output=True).returncode == 0


def _ninja() -> str | None:
    import sys

    here = Path(sys.executable).parent / "ninja"
    return str(here) if here.exists() else shutil.which("ninja")


@pytest.mark.skipif(_ninja() is None, reason="ninja is not installed (pip install ninja)")
def test_ninja_deps_gcc_reads_escaped_names(tmp_path):
    for name in ODD:
        (tmp_path / name).write_text(name)
    write_depfile(tmp_path / "pre.d", "out", ODD)
    (tmp_path / "build.ninja").write_text(
        "rule gen\n  command = cp pre.d out.d && touch out\n  depfile = out.d\n  deps = gcc\n  restat = 1\n"
        "build out: gen\n")
    subprocess.run([_ninja()], cwd=tmp_path, check=True, capture_output=True)
    deps = subprocess.run([_ninja(), "-t", "deps", "out"], cwd=tmp_path, check=True, capture_output=True,
                          text=True).stdout
    listed = [line.strip() for line in deps.splitlines()[1:] if line.strip()]
    assert listed == ODD


# --------------------------------------------------------------------- CLI
def test_compile_depfile_and_quiet(tiny_cnn_path, tiny_eval_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_cnn_path, "model.keras")
    shutil.copy(tiny_eval_path, "eval data.npz")
    code, out, err = run_cli("compile", "model.keras", "-t", "onnx", "-o", "build/out", "--eval", "eval data.npz",
                             "--calibration", "synthetic", "--depfile", "deps/m.d", "--quiet", "--no-timings")
    assert (code, out, err) == (0, "", "")
    assert Path("deps/m.d").read_text() == ("build/out/report.json: model.keras eval\\ data.npz\n\n"
                                            "model.keras:\n\neval\\ data.npz:\n")
    assert json.loads(Path("build/out/report.json").read_text())["passed"] is True


def test_compile_depfile_written_when_verification_fails(tiny_cnn_path, tmp_path, monkeypatch):
    from tapeout.targets.onnx.target import OnnxTarget

    original = OnnxTarget.emit

    def emit(self, graph, *rest):  # a broken back end: the first weight is off
        g = graph.copy()
        name = next(n for n in sorted(g.constants) if g.constants[n].size > 1)
        g.constants[name] = g.constants[name] + np.float32(0.5)
        return original(self, g, *rest)

    monkeypatch.setattr(OnnxTarget, "emit", emit)
    dep = tmp_path / "o.d"
    code, out, err = run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", tmp_path / "o", "--depfile", dep,
                             "--quiet")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("tapeout: verification failed: onnx:fp32"), err
    assert dep.read_text().startswith(f"{tmp_path}/o/report.json: {tiny_cnn_path}")  # absolute as given


def test_compile_depfile_bad_path_is_usage_error_before_work(tiny_cnn_path, tmp_path):
    (tmp_path / "file").write_text("")
    code, out, err = run_cli("compile", tiny_cnn_path, "-t", "onnx", "-o", tmp_path / "o",
                             "--depfile", tmp_path / "file" / "x.d")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a folder" in err, err
    assert not (tmp_path / "o").exists()


def test_quiet_and_json_exclude_each_other(tiny_cnn_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compile", str(tiny_cnn_path), "-t", "onnx", "-o", str(tmp_path / "o"), "--quiet", "--json"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
