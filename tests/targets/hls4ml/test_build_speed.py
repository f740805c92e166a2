"""The C-simulation build script tapeout writes (project.faster_build): -O1 for Vivado/Vitis, the
translation units compiled at once, a failing one still failing the build; the legacy switch."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tapeout.targets.hls4ml.project import LEGACY_BUILD_ENV, faster_build

TEMPLATES = Path(__import__("hls4ml").__file__).parent / "templates"


def _project(tmp_path: Path, template: str) -> Path:
    d = tmp_path / template
    d.mkdir()
    shutil.copy(TEMPLATES / template / "build_lib.sh", d / "build_lib.sh")
    return d


def test_vitis_script_is_o1_and_parallel(tmp_path, monkeypatch):
    monkeypatch.delenv(LEGACY_BUILD_ENV, raising=False)
    d = _project(tmp_path, "vivado")
    faster_build(d, "vitis")
    text = (d / "build_lib.sh").read_text()
    assert 'CFLAGS="-O1 -fPIC"' in text and "-O3" not in text
    assert text.count(".o &\npids+=($!)") == 2
    assert text.index('wait "$pid"') < text.index("-shared")


def test_quartus_keeps_o3_but_compiles_in_parallel(tmp_path, monkeypatch):
    monkeypatch.delenv(LEGACY_BUILD_ENV, raising=False)
    d = _project(tmp_path, "quartus")
    faster_build(d, "quartus")
    text = (d / "build_lib.sh").read_text()
    assert 'CFLAGS="-O3 ' in text
    assert text.count("pids+=($!)") == 2


def test_legacy_switch_leaves_the_script(tmp_path, monkeypatch):
    monkeypatch.setenv(LEGACY_BUILD_ENV, "legacy")
    d = _project(tmp_path, "vivado")
    before = (d / "build_lib.sh").read_text()
    faster_build(d, "vitis")
    assert (d / "build_lib.sh").read_text() == before


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("failing", ["myproject.o", "myproject_bridge.o"])
def test_a_failing_background_compile_fails_the_build(tmp_path, monkeypatch, failing):
    """Each background compile's exit status is waited for: either one failing stops the script
    before the link (a fake compiler stands in for g++)."""
    monkeypatch.delenv(LEGACY_BUILD_ENV, raising=False)
    d = _project(tmp_path, "vivado")
    faster_build(d, "vitis")
    fake = d / "fakecc"
    fake.write_text(f'#!/bin/bash\nfor a in "$@"; do [ "$a" = "{failing}" ] && exit 3; done\n'
                    'for a in "$@"; do [ "$a" = "-shared" ] && touch linked; done\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    script = d / "build_lib.sh"
    script.write_text(script.read_text().replace("CC=g++", "CC=./fakecc", 1))
    proc = subprocess.run(["bash", "build_lib.sh"], cwd=d, capture_output=True, text=True)
    assert proc.returncode != 0
    assert not (d / "linked").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_link_runs_when_both_compiles_pass(tmp_path, monkeypatch):
    monkeypatch.delenv(LEGACY_BUILD_ENV, raising=False)
    d = _project(tmp_path, "vivado")
    faster_build(d, "vitis")
    fake = d / "fakecc"
    fake.write_text('#!/bin/bash\nfor a in "$@"; do [ "$a" = "-shared" ] && touch linked; done\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    script = d / "build_lib.sh"
    script.write_text(script.read_text().replace("CC=g++", "CC=./fakecc", 1))
    proc = subprocess.run(["bash", "build_lib.sh"], cwd=d, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (d / "linked").exists()
