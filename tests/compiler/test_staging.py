"""The install step keeps unchanged outputs: an artifact whose bytes did not change keeps its file
and mtime (Ninja's restat then stops downstream rebuilds), a changed one is replaced, and
report.json, the build's stamp, is always rewritten."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from tapeout.compiler.cli import main
from tapeout.compiler.staging import close_stage, install, keep_unchanged, open_stage

OLD = 1_600_000_000 * 10**9  # an mtime long past, in ns


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The build cache, if any, is this test's own: a user's cache neither helps nor fills."""
    monkeypatch.setenv("TAPEOUT_CACHE_DIR", str(tmp_path / "cache"))


def _age(path: Path) -> None:
    os.utime(path, ns=(OLD, OLD))


def _stage(outdir: Path, files: dict[str, bytes]) -> Path:
    stage = open_stage(outdir)
    for rel, data in files.items():
        p = stage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return stage


def test_install_keeps_identical_files_and_replaces_changed(tmp_path):
    outdir = tmp_path / "out"
    stage = _stage(outdir, {"t/same.bin": b"same", "t/sub/deep.txt": b"deep", "t/changed.bin": b"v1",
                            "t/gone.bin": b"x", "report.json": b"{}"})
    install(stage, outdir, ["t"], ["report.json"])
    close_stage(stage)
    for p in (outdir / "t").rglob("*"):
        if p.is_file():
            _age(p)
    _age(outdir / "report.json")
    inode = (outdir / "t/same.bin").stat().st_ino

    stage = _stage(outdir, {"t/same.bin": b"same", "t/sub/deep.txt": b"deep", "t/changed.bin": b"v2",
                            "t/new.bin": b"n", "report.json": b"{}"})
    install(stage, outdir, ["t"], ["report.json"])
    close_stage(stage)
    same = (outdir / "t/same.bin").stat()
    assert same.st_mtime_ns == OLD and same.st_ino == inode
    assert (outdir / "t/sub/deep.txt").stat().st_mtime_ns == OLD
    assert (outdir / "t/changed.bin").read_bytes() == b"v2"
    assert (outdir / "t/changed.bin").stat().st_mtime_ns > OLD
    assert (outdir / "t/new.bin").exists() and not (outdir / "t/gone.bin").exists()
    assert (outdir / "report.json").stat().st_mtime_ns > OLD  # the stamp: always fresh
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no stage left


def test_a_staged_link_to_the_installed_file_is_kept_and_leaves_nothing_behind(tmp_path):
    """A cache restore links unchanged installed files into the stage; rename() between two links to
    one file does nothing, so install must not try it (it left '*.tapeout-staging-link' files)."""
    outdir = tmp_path / "out"
    stage = _stage(outdir, {"t/a.bin": b"a", "report.json": b"{}"})
    install(stage, outdir, ["t"], ["report.json"])
    close_stage(stage)
    _age(outdir / "t/a.bin")
    stage = _stage(outdir, {"report.json": b"{}"})
    (stage / "t").mkdir()
    os.link(outdir / "t/a.bin", stage / "t/a.bin")
    install(stage, outdir, ["t"], ["report.json"])
    close_stage(stage)
    assert sorted(p.name for p in (outdir / "t").iterdir()) == ["a.bin"]
    assert (outdir / "t/a.bin").stat().st_mtime_ns == OLD


def test_keep_unchanged_needs_same_mode_and_falls_back_to_mtime(tmp_path, monkeypatch):
    installed, staged = tmp_path / "i", tmp_path / "s"
    for d in (installed, staged):
        d.mkdir()
        (d / "run.sh").write_bytes(b"#!/bin/sh\n")
        (d / "data").write_bytes(b"d")
    (installed / "run.sh").chmod(0o755)
    _age(installed / "data")
    def refuse(*args: object, **kwargs: object) -> None:  # a file system without hard links
        raise PermissionError(1, "no links")

    monkeypatch.setattr(os, "link", refuse)
    assert keep_unchanged(installed, staged) == 1  # run.sh differs in mode: the new one wins
    assert (staged / "data").stat().st_mtime_ns == OLD  # no hard link: the old mtime is carried over
    assert (staged / "run.sh").stat().st_mtime_ns > OLD


def _compile(model: Path, outdir: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["compile", str(model), "-t", "onnx", "-o", str(outdir), "--no-timings", "--quiet"], out, err)
    assert (code, out.getvalue(), err.getvalue()) == (0, "", "")


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_identical_recompile_keeps_artifact_mtimes(tiny_cnn_path, tmp_path, monkeypatch, cached):
    if not cached:  # the second compile builds again instead of restoring (TAPEOUT_NO_CACHE, compiler.cache)
        monkeypatch.setenv("TAPEOUT_NO_CACHE", "1")
    outdir = tmp_path / "out"
    _compile(tiny_cnn_path, outdir)
    artifacts = sorted(p for p in (outdir / "onnx-fp32").iterdir())
    assert artifacts
    for p in [*artifacts, outdir / "report.json"]:
        _age(p)
    report = (outdir / "report.json").read_bytes()
    _compile(tiny_cnn_path, outdir)
    assert [p.stat().st_mtime_ns for p in artifacts] == [OLD] * len(artifacts)
    assert (outdir / "report.json").read_bytes() == report  # byte-identical with --no-timings
    assert (outdir / "report.json").stat().st_mtime_ns > OLD


def test_changed_artifact_is_replaced(tiny_cnn_path, tmp_path):
    outdir = tmp_path / "out"
    _compile(tiny_cnn_path, outdir)
    model = outdir / "onnx-fp32" / "model.onnx"
    good = model.read_bytes()
    model.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # as an older build's differing bytes
    _age(model)
    _compile(tiny_cnn_path, outdir)
    assert model.read_bytes() == good and model.stat().st_mtime_ns > OLD


def test_no_timestamps_so_source_date_epoch_changes_nothing(tiny_cnn_path, tmp_path, monkeypatch):
    """The outputs hold no timestamp and no OUTDIR path: two folders, with and without
    SOURCE_DATE_EPOCH, hold the same bytes."""
    _compile(tiny_cnn_path, tmp_path / "a")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    _compile(tiny_cnn_path, tmp_path / "b")
    for p in sorted((tmp_path / "a").rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes(), p
