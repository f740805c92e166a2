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


def _fake_compiler_project(tmp_path: Path, script: str) -> Path:
    """A Vitis build_lib.sh as tapeout writes it, with CC a bash script standing in for g++."""
    d = _project(tmp_path, "vivado")
    faster_build(d, "vitis")
    fake = d / "fakecc"
    fake.write_text("#!/bin/bash\n" + script)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    build = d / "build_lib.sh"
    build.write_text(build.read_text().replace("CC=g++", "CC=./fakecc", 1))
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
    d = _fake_compiler_project(tmp_path, f'for a in "$@"; do [ "$a" = "{failing}" ] && exit 3; done\n'
                                         'for a in "$@"; do [ "$a" = "-shared" ] && touch linked; done\nexit 0\n')
    proc = subprocess.run(["bash", "build_lib.sh"], cwd=d, capture_output=True, text=True)
    assert proc.returncode != 0
    assert not (d / "linked").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_link_runs_when_both_compiles_pass(tmp_path, monkeypatch):
    monkeypatch.delenv(LEGACY_BUILD_ENV, raising=False)
    d = _fake_compiler_project(tmp_path, 'for a in "$@"; do [ "$a" = "-shared" ] && touch linked; done\nexit 0\n')
    proc = subprocess.run(["bash", "build_lib.sh"], cwd=d, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (d / "linked").exists()


# ---- the precompiled header (project.pch_folder, build_lib.sh's PCH block) ----
# A small Vitis-style project: hls4ml's own ap_types and nnet_utils, two translation units that
# use them (nnet_helpers.h's weight loader spells its header's path into the library).
_SOURCE = """#include "myproject.h"
#include "parameters.h"
void myproject(input_t x[4], result_t y[2]) {
    static input_t w[4];
    nnet::load_weights_from_txt<input_t, 4>(w, "w.txt");
    for (int i = 0; i < 2; i++) y[i] = x[i] * w[i] + x[i + 2];
    nnet::save_layer_output<result_t>(y, "y", 2);  // asserts: __FILE__ names nnet_helpers.h
}
"""
_HEADER = """#ifndef MYPROJECT_H_
#define MYPROJECT_H_
#include "ap_fixed.h"
typedef ap_fixed<16,6> input_t;
typedef ap_fixed<18,8> result_t;
void myproject(input_t x[4], result_t y[2]);
#endif
"""
_BRIDGE = """#include "firmware/myproject.h"
#include "firmware/nnet_utils/nnet_helpers.h"
extern "C" void run(double *in, double *out) {
    input_t x[4]; result_t y[2];
    nnet::convert_data<double, input_t, 4>(in, x);
    myproject(x, y);
    for (int i = 0; i < 2; i++) out[i] = y[i].to_double();
}
"""


def _csim_project(tmp_path: Path, name: str = "p") -> Path:
    from tapeout.targets.hls4ml.project import STAMP, make_relocatable

    d = _project(tmp_path, "vivado") if name == "vivado" else tmp_path / name
    if name != "vivado":
        d.mkdir()
        shutil.copy(TEMPLATES / "vivado" / "build_lib.sh", d / "build_lib.sh")
    fw = d / "firmware"
    shutil.copytree(TEMPLATES / "vivado" / "ap_types", fw / "ap_types")
    shutil.copytree(TEMPLATES / "vivado" / "nnet_utils", fw / "nnet_utils")
    (fw / "nnet_utils" / "nnet_code_gen.h").write_text("// generated per project\n")
    (fw / "parameters.h").write_text('#include "nnet_utils/nnet_helpers.h"\n#include "nnet_utils/nnet_dense.h"\n')
    (fw / "myproject.h").write_text(_HEADER)
    (fw / "myproject.cpp").write_text(_SOURCE)
    (d / "myproject_bridge.cpp").write_text(_BRIDGE)
    script = d / "build_lib.sh"
    script.write_text(script.read_text().replace("LIB_STAMP=mystamp", f"LIB_STAMP={STAMP}"))
    make_relocatable(d)
    faster_build(d, "vitis")
    return d


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


needs_gxx = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("bash") is None,
                               reason="needs bash and g++")


@pytest.fixture
def pch_env(tmp_path, monkeypatch):
    from tapeout.targets.hls4ml.project import PCH_DIR_ENV, PCH_ENV

    monkeypatch.delenv(LEGACY_BUILD_ENV, raising=False)
    monkeypatch.delenv(PCH_ENV, raising=False)
    root = tmp_path / "pch_cache"
    monkeypatch.setenv(PCH_DIR_ENV, str(root))
    return root


def test_the_pch_block_is_vivado_and_vitis_only_and_holds_no_path(tmp_path, monkeypatch):
    monkeypatch.delenv(LEGACY_BUILD_ENV, raising=False)
    vitis, quartus = _project(tmp_path, "vivado"), _project(tmp_path, "quartus")
    faster_build(vitis, "vitis")
    faster_build(quartus, "quartus")
    text = (vitis / "build_lib.sh").read_text()
    assert "TAPEOUT_HLS4ML_PCH" in text and text.index("TAPEOUT_HLS4ML_PCH") < text.index(" -c ")
    assert str(tmp_path) not in text and "/.cache" not in text
    assert "TAPEOUT_HLS4ML_PCH" not in (quartus / "build_lib.sh").read_text()


def test_a_pch_folder_in_use_is_touched_so_prune_keeps_it(tmp_path, pch_env):
    """`tapeout cache prune` evicts tool-cache units by their folder's time: each use renews it."""
    import os

    from tapeout.compiler.cache import HLS4ML_PCH
    from tapeout.targets.hls4ml.project import pch_folder

    project = _project(tmp_path, "vivado")
    faster_build(project, "vitis")
    folder = pch_folder(project)
    assert folder is not None and HLS4ML_PCH.units(tmp_path) == [folder]  # a unit of the folder the env names
    os.utime(folder, (1, 1))
    assert pch_folder(project) == folder and folder.stat().st_mtime > 1


@needs_gxx
def test_the_pch_is_used_and_the_library_is_the_same(tmp_path, monkeypatch, pch_env):
    """With the PCH: the .gch is in the cache, g++ takes it (-Winvalid-pch says nothing), and the
    project folder, library included, is byte-identical to a build without it."""
    from tapeout.targets.hls4ml.project import PCH_DIR_ENV, PCH_ENV, build_csim, library_path, pch_folder

    plain, fast = _csim_project(tmp_path, "plain"), _csim_project(tmp_path, "fast")
    monkeypatch.setenv(PCH_DIR_ENV, "off")
    assert pch_folder(plain) is None
    build_csim(plain)
    monkeypatch.setenv(PCH_DIR_ENV, str(pch_env))
    build_csim(fast)
    folder = pch_folder(fast)
    assert folder is not None and folder.parent == pch_env
    assert (folder / "tapeout_pch.h.gch").stat().st_size > 1_000_000
    assert sorted(p.name for p in folder.iterdir()) == ["objects", "tapeout_pch.h", "tapeout_pch.h.gch"]
    assert "nnet_code_gen.h" not in (folder / "tapeout_pch.h").read_text()
    assert _files(plain) == _files(fast)
    lib = library_path(fast).read_bytes()
    assert b"firmware/nnet_utils/nnet_helpers.h" in lib and str(tmp_path).encode() not in lib
    proc = subprocess.run(["bash", "build_lib.sh"], cwd=fast, capture_output=True, text=True,
                          env={**__import__("os").environ, PCH_ENV: str(folder)})
    assert proc.returncode == 0 and "precompiled header" not in proc.stderr and "invalid-pch" not in proc.stderr
    assert library_path(fast).read_bytes() == lib


@needs_gxx
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_gch_falls_back_to_the_plain_build(tmp_path, monkeypatch, pch_env, damage):
    from tapeout.targets.hls4ml.project import PCH_DIR_ENV, build_csim, library_path, pch_folder

    plain, fast = _csim_project(tmp_path, "plain"), _csim_project(tmp_path, "fast")
    monkeypatch.setenv(PCH_DIR_ENV, "off")
    build_csim(plain)
    monkeypatch.setenv(PCH_DIR_ENV, str(pch_env))
    build_csim(fast)
    gch = pch_folder(fast) / "tapeout_pch.h.gch"
    good = gch.read_bytes()
    gch.write_bytes(b"not a precompiled header" if damage == "garbage" else good[:len(good) // 3])
    library_path(fast).unlink()
    shutil.rmtree(gch.parent / "objects")  # else both units are copied from the object cache, no .gch read
    build_csim(fast)  # garbage: g++ warns and parses the text; truncated: g++ fails, built again plainly
    assert library_path(fast).read_bytes() == library_path(plain).read_bytes()
    assert not gch.exists()  # dropped, so the next build makes a good one
    build_csim(fast)
    assert gch.read_bytes()[:8] == good[:8] and gch.stat().st_size > 1_000_000


@needs_gxx
def test_concurrent_builds_share_one_gch(tmp_path, pch_env):
    """Two builds at once with an empty cache: both libraries right, one .gch, no temporary
    file or folder left (each writes its own and renames it into place)."""
    from concurrent.futures import ThreadPoolExecutor

    from tapeout.targets.hls4ml.project import build_csim, library_path

    projects = [_csim_project(tmp_path, f"p{i}") for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(build_csim, projects))
    assert library_path(projects[0]).read_bytes() == library_path(projects[1]).read_bytes()
    entries = list(pch_env.iterdir())
    assert len(entries) == 1
    assert sorted(p.name for p in entries[0].iterdir()) == ["objects", "tapeout_pch.h", "tapeout_pch.h.gch"]
    assert all(p.suffix == ".o" for p in (entries[0] / "objects").iterdir())  # no temporary file left


# ---- the object cache (build_lib.sh's tapeout_obj, project.prune_objects) ----
@pytest.fixture
def gxx_log(tmp_path, monkeypatch):
    """g++ on PATH logs each command line, then runs the real compiler."""
    real = shutil.which("g++")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "gxx.log"
    wrapper = bindir / "g++"
    wrapper.write_text(f'#!/bin/bash\necho "$*" >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    return log


def _compiled(log: Path) -> list[str]:
    """The translation units g++ compiled (-c), not the preprocessing (-E) or the link."""
    lines = log.read_text().splitlines() if log.exists() else []
    return sorted(line.split(" -c ")[1].split()[0] for line in lines if " -c " in f" {line} ")


@needs_gxx
def test_an_identical_unit_is_copied_not_compiled(tmp_path, monkeypatch, pch_env, gxx_log):
    """The second project is the first with another folder: g++ compiles nothing, only preprocesses
    and links, and the library is byte-identical. A changed type in myproject.h changes both
    units' preprocessed text, so both compile again."""
    from tapeout.targets.hls4ml.project import build_csim, library_path, pch_folder

    first, second, third = (_csim_project(tmp_path, n) for n in ("first", "second", "third"))
    build_csim(first)
    assert _compiled(gxx_log) == ["firmware/myproject.cpp", "myproject_bridge.cpp"]
    objects = pch_folder(first) / "objects"
    assert len(list(objects.glob("*.o"))) == 2
    gxx_log.unlink()
    build_csim(second)
    assert _compiled(gxx_log) == []
    assert any(" -E " in f" {line} " for line in gxx_log.read_text().splitlines())
    assert library_path(second).read_bytes() == library_path(first).read_bytes()
    gxx_log.unlink()
    header = third / "firmware" / "myproject.h"
    header.write_text(header.read_text().replace("ap_fixed<18,8> result_t", "ap_fixed<20,8> result_t"))
    build_csim(third)
    assert _compiled(gxx_log) == ["firmware/myproject.cpp", "myproject_bridge.cpp"]
    assert len(list(objects.glob("*.o"))) == 4


@needs_gxx
def test_a_damaged_object_falls_back_and_is_dropped(tmp_path, pch_env):
    from tapeout.targets.hls4ml.project import build_csim, library_path, pch_folder

    good, again = _csim_project(tmp_path, "good"), _csim_project(tmp_path, "again")
    build_csim(good)
    objects = pch_folder(good) / "objects"
    for o in objects.glob("*.o"):
        o.write_bytes(b"not an object")
    build_csim(again)  # the link fails on the cached objects; built again without the caches
    assert library_path(again).read_bytes() == library_path(good).read_bytes()
    assert not objects.exists() or not list(objects.glob("*.o"))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_failing_compile_fails_the_build_with_the_object_cache_on(tmp_path, monkeypatch):
    """The failing unit's status comes back through tapeout_obj, and nothing is kept for it."""
    from tapeout.targets.hls4ml.project import OBJ_ENV

    monkeypatch.delenv(LEGACY_BUILD_ENV, raising=False)
    d = _fake_compiler_project(tmp_path, 'for a in "$@"; do [ "$a" = "myproject.o" ] && exit 3; done\n'
                                         'for a in "$@"; do [ "$a" = "-E" ] && echo preprocessed && exit 0; done\n'
                                         'for a in "$@"; do [ "$a" = "-shared" ] && touch linked; done\n'
                                         'prev=; for a in "$@"; do [ "$prev" = "-o" ] && touch "$a"; prev="$a"; '
                                         'done\nexit 0\n')
    objects = tmp_path / "objects"
    objects.mkdir()
    proc = subprocess.run(["bash", "build_lib.sh"], cwd=d, capture_output=True, text=True,
                          env={**__import__("os").environ, OBJ_ENV: str(objects)})
    assert proc.returncode != 0 and not (d / "linked").exists()
    assert len(list(objects.iterdir())) == 1  # the bridge's object only


def test_prune_objects_drops_the_least_recently_used(tmp_path):
    import os
    import time

    from tapeout.targets.hls4ml.project import prune_objects

    for i in range(5):
        f = tmp_path / f"{i}.o"
        f.write_bytes(b"x" * 100)
        os.utime(f, (1000 + i, 1000 + i))
    (tmp_path / "keep.txt").write_bytes(b"x" * 1000)  # not an object: never touched
    for name, age in ((".k1.12.34", 7200), (".k2.56.78", 60)):  # temporary copies: a dead build's, a live one's
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (time.time() - age, time.time() - age))
    prune_objects(tmp_path, limit=250)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k2.56.78", "3.o", "4.o", "keep.txt"]
