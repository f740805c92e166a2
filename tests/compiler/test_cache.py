"""compiler/cache.py (issue 16): the content-addressed cache of target builds."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tapeout.compiler import cache as cache_mod
from tapeout.compiler.cache import Cache, CorruptEntry, cache_dir, cache_key, file_sha256, parse_size, tool_versions
from tapeout.compiler.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"onnx": "1.0", "g++": "12.2.0"}


def _key(inputs, options=None, tools=None, version="0.1.0") -> str:
    return cache_key(inputs=inputs, options=options or {"target": "onnx:fp32", "opset": 17},
                     tools=tools or TOOLS, tapeout_version=version)


def _files(tmp_path: Path) -> list[Path]:
    a = tmp_path / "in" / "model.keras"
    b = tmp_path / "in" / "calibration.npz"
    a.parent.mkdir(parents=True)
    a.write_bytes(b"model-bytes" * 100)
    b.write_bytes(b"data-bytes" * 50)
    return [a, b]


def _artifact(tmp_path: Path, name="out") -> Path:
    d = tmp_path / name / "tflite-int8"
    (d / "sub").mkdir(parents=True)
    (d / "model.tflite").write_bytes(bytes(range(256)) * 40)
    (d / "sub" / "model_data.cc").write_text("const unsigned char model[] = {1, 2, 3};\n")
    (d / "empty.txt").write_bytes(b"")
    tool = d / "run.sh"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    return d


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- keys
def test_key_changes_with_every_ingredient_and_not_with_the_folder(tmp_path):
    files = _files(tmp_path)
    base = _key(files)
    assert len(base) == 64 and base == _key(files)  # deterministic
    assert _key(files, {"opset": 17, "target": "onnx:fp32"}) == base  # option order does not matter
    assert _key(files, {"target": "onnx:fp32", "opset": 18}) != base
    assert _key(files, tools={**TOOLS, "onnx": "1.1"}) != base
    assert _key(files, tools={**TOOLS, "hls4ml": "1.3.0"}) != base
    assert _key(files, version="0.1.1") != base
    assert _key(list(reversed(files))) != base  # roles are positional

    # The same bytes under the same names in another folder hit.
    moved = tmp_path / "elsewhere" / "deeper"
    moved.mkdir(parents=True)
    copies = [Path(shutil.copy2(f, moved / f.name)) for f in files]
    assert _key(copies) == base

    # One byte changed (same size, so only the content can tell).
    data = bytearray(files[1].read_bytes())
    data[7] ^= 1
    files[1].write_bytes(bytes(data))
    assert _key(files) != base


def test_key_with_roles(tmp_path):
    model, data = _files(tmp_path)
    k = _key({"model": model, "calibration": data, "eval": None})
    assert k == _key({"eval": None, "calibration": data, "model": model})
    assert k != _key({"model": model, "eval": data, "calibration": None})  # same bytes, other role
    with pytest.raises(TypeError):
        _key([model], options={"where": Path("x")})  # options must be JSON, not paths


def test_file_hash_memo_sees_a_rewrite(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"a" * 1000)
    first = file_sha256(f)
    f.write_bytes(b"b" * 1000)  # same size, probably the same coarse mtime: not memoized while fresh
    assert file_sha256(f) != first
    os.utime(f, ns=(1, 10**18))  # an old stamp: memoized from now on
    assert file_sha256(f) == file_sha256(f)


def test_tool_versions_read_metadata_without_imports():
    import numpy

    got = tool_versions(["numpy", "no-such-package-xyz", "g++"])
    assert got["numpy"] == numpy.__version__
    assert got["no-such-package-xyz"] == "absent"
    gxx = shutil.which("g++")
    if gxx:
        assert got["g++"] == subprocess.run([gxx, "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    else:
        assert got["g++"] == "absent"
    # A fresh interpreter asking for every default tool imports none of the frameworks.
    code = ("import sys; from tapeout.compiler.cache import tool_versions, DEFAULT_TOOLS; tool_versions(DEFAULT_TOOLS);"
            "bad = [m for m in ('tensorflow', 'onnx', 'onnxruntime', 'hls4ml', 'numpy', 'keras') if m in sys.modules];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


def test_a_source_checkout_keys_on_its_code(tmp_path):
    """An editable install (what `make` makes) keys on its code, not only on the version string:
    a checkout pulled to a newer commit of the same version must not restore the older one's builds."""
    for d in ("compiler", "targets/tflite", "runtime"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "compiler" / "a.py").write_text("x = 1\n")
    (tmp_path / "targets" / "tflite" / "b.py").write_text("y = 2\n")
    first = cache_mod.source_fingerprint(tmp_path)
    (tmp_path / "compiler" / "__pycache__").mkdir()
    (tmp_path / "compiler" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert cache_mod.source_fingerprint(tmp_path) == first  # bytecode is not code
    (tmp_path / "targets" / "tflite" / "b.py").write_text("y = 3\n")
    assert cache_mod.source_fingerprint(tmp_path) != first
    # This checkout is one, so its builds carry the version and the code's hash.
    from tapeout.compiler.version import __version__

    assert (REPO / "pyproject.toml").is_file()
    assert cache_mod.build_fingerprint() == f"{__version__}+src.{cache_mod.source_fingerprint(REPO)[:16]}"


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TAPEOUT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "tapeout"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tapeout"
    monkeypatch.setenv("TAPEOUT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert Cache().root == tmp_path / "mine"
    monkeypatch.setenv("TAPEOUT_CACHE_DIR", "")  # empty counts as unset
    assert cache_dir() == tmp_path / "xdg" / "tapeout"


@pytest.mark.parametrize("text,expected", [("1024", 1024), ("500M", 500 << 20), ("2G", 2 << 30), ("2g", 2 << 30),
                                           ("1.5K", 1536), ("10KiB", 10240), ("3 MB", 3 << 20), ("0", 0)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected
    assert Cache.parse_size(text) == expected


@pytest.mark.parametrize("junk", ["", "M", "-1G", "2X", "1e9", "lots", "1.2.3M"])
def test_parse_size_refuses_junk(junk):
    with pytest.raises(UsageError, match="expected bytes"):
        parse_size(junk)


# ---------------------------------------------------------------- entries
def test_miss_then_put_then_hit_restores_byte_identical(tmp_path):
    c = Cache(tmp_path / "cache")
    key = "ab" + "c" * 62
    assert c.get(key) is None
    assert not (tmp_path / "cache").exists()  # a miss writes nothing
    src = _artifact(tmp_path)
    entry = c.put(key, src, {"report": {"target": "tflite", "size_bytes": 10240}})
    assert entry.path == tmp_path / "cache" / "ab" / key
    assert sorted(f["path"] for f in entry.files) == ["empty.txt", "model.tflite", "run.sh", "sub/model_data.cc"]
    manifest = json.loads((entry.path / "manifest.json").read_text())
    assert manifest["meta"] == {"report": {"target": "tflite", "size_bytes": 10240}}

    hit = c.get(key)
    assert hit is not None and hit.meta == entry.meta and hit.size == entry.size
    dest = tmp_path / "restored" / "tflite-int8"
    assert sorted(hit.restore(dest)) == sorted(f["path"] for f in entry.files)
    assert _tree(dest) == _tree(src)
    assert os.access(dest / "run.sh", os.X_OK) and not os.access(dest / "model.tflite", os.X_OK)

    # A second restore over identical files writes nothing and keeps their mtimes (restat-friendly).
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    assert hit.restore(dest) == []
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before
    # A changed file is rewritten; a stale extra one goes only with remove_extra.
    (dest / "model.tflite").write_bytes(b"stale")
    (dest / "old.bin").write_bytes(b"old")
    assert hit.restore(dest) == ["model.tflite"]
    assert (dest / "old.bin").exists()
    hit.restore(dest, remove_extra=True)
    assert _tree(dest) == _tree(src)


def test_empty_folders_are_restored(tmp_path):
    """An hls4ml project's tb_data/ is empty until a testbench writes into it; Vitis C simulation
    writes its results there, so a restored project must have it."""
    c = Cache(tmp_path / "cache")
    src = _artifact(tmp_path)
    (src / "tb_data").mkdir()
    (src / "sub" / "deeper").mkdir()
    entry = c.put("ef" + "0" * 62, src)
    dest = tmp_path / "restored"
    c.get(entry.key).restore(dest)
    assert (dest / "tb_data").is_dir() and (dest / "sub" / "deeper").is_dir()
    assert _tree(dest) == _tree(src)


def test_restore_links_the_installed_files_that_match_and_copies_the_rest(tmp_path):
    c = Cache(tmp_path / "cache")
    key = "cd" + "e" * 62
    src = _artifact(tmp_path)
    entry = c.put(key, src)
    installed = tmp_path / "installed"
    assert entry.restore(installed) and _tree(installed) == _tree(src)
    (installed / "sub" / "model_data.cc").write_text("edited by hand\n")  # no longer the entry's bytes
    (installed / "run.sh").chmod(0o644)  # same bytes, lost its exec bit
    staged = tmp_path / "stage"
    entry.restore(staged, reuse=installed)
    assert _tree(staged) == _tree(src)
    same = {rel: (staged / rel).stat().st_ino == (installed / rel).stat().st_ino
            for rel in ("model.tflite", "empty.txt", "sub/model_data.cc", "run.sh")}
    assert same == {"model.tflite": True, "empty.txt": True, "sub/model_data.cc": False, "run.sh": False}
    assert os.access(staged / "run.sh", os.X_OK)


def test_truncated_file_is_detected_and_entry_removed(tmp_path):
    c = Cache(tmp_path / "cache")
    key = "1" * 64
    entry = c.put(key, _artifact(tmp_path), {})
    victim = entry.path / "files" / "model.tflite"
    victim.write_bytes(victim.read_bytes()[:100])
    assert c.get(key) is None
    assert not entry.path.exists()
    assert c.info()["entries"] == 0
    # Rebuilt: a put after that works again.
    assert c.put(key, _artifact(tmp_path, "again"), {}).path.exists()
    assert c.get(key) is not None


@pytest.mark.parametrize("damage", ["flip", "delete_file", "manifest_junk", "manifest_gone", "symlink_out"])
def test_corrupt_entries_are_misses(tmp_path, damage):
    c = Cache(tmp_path / "cache")
    key = "2" * 64
    entry = c.put(key, _artifact(tmp_path), {})
    target = entry.path / "files" / "sub" / "model_data.cc"
    outside = tmp_path / "outside.cc"
    outside.write_bytes(target.read_bytes())  # the same bytes, so only the link itself can give it away
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[0] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete_file":
        target.unlink()
    elif damage == "manifest_junk":
        (entry.path / "manifest.json").write_text("{not json")
    elif damage == "manifest_gone":
        (entry.path / "manifest.json").unlink()
    else:
        target.unlink()
        target.symlink_to(outside)
    assert c.get(key) is None
    assert not entry.path.exists()
    assert outside.exists()  # removing the entry did not touch what a link pointed at


def test_corruption_after_get_is_caught_by_restore(tmp_path):
    c = Cache(tmp_path / "cache")
    key = "3" * 64
    c.put(key, _artifact(tmp_path), {})
    hit = c.get(key)
    (hit.path / "files" / "model.tflite").write_bytes(b"x" * 10240)
    with pytest.raises(CorruptEntry, match="does not match its hash"):
        hit.restore(tmp_path / "dest")
    assert c.get(key) is None


def test_bad_keys_and_symlinks_in_put_are_refused(tmp_path):
    c = Cache(tmp_path / "cache")
    for bad in ["abc", "G" * 64, "A" * 64, "../" + "a" * 61, "a" * 65]:
        with pytest.raises(ValueError, match="64 lowercase hex"):
            c.get(bad)
        with pytest.raises(ValueError, match="64 lowercase hex"):
            c.put(bad, tmp_path, {})
    src = _artifact(tmp_path)
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="symlink"):
        c.put("4" * 64, src, {})
    assert c.info()["entries"] == 0 and not list((tmp_path / "cache" / "tmp").iterdir())


def test_put_keeps_an_existing_valid_entry(tmp_path):
    c = Cache(tmp_path / "cache")
    key = "5" * 64
    first = c.put(key, _artifact(tmp_path, "a"), {"n": 1})
    second = c.put(key, _artifact(tmp_path, "b"), {"n": 2})
    assert second.path == first.path and second.meta == {"n": 1}


@pytest.fixture(autouse=True)
def _own_tool_caches(monkeypatch):
    """Tool caches under each test's cache root: tests/conftest.py names a PCH folder the hls4ml
    tests share, which clear() and prune() here would otherwise empty."""
    monkeypatch.delenv("TAPEOUT_HLS4ML_PCH_DIR", raising=False)


def test_info_clear_and_prune_lru(tmp_path):
    c = Cache(tmp_path / "cache")
    keys = [f"{i:x}" * 64 for i in range(6, 10)]
    for i, key in enumerate(keys):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "blob").write_bytes(bytes([i]) * 1000)
        c.put(key, src, {})
    # last-used order: keys[2] oldest, then 0, 3, 1 (the most recent get).
    for k, t in zip([keys[2], keys[0], keys[3]], [1, 2, 3]):
        os.utime(c._entry_dir(k) / "last-used", ns=(t * 10**9, t * 10**9))
    assert c.get(keys[1]) is not None  # stamps it now
    info = c.info()
    assert info["entries"] == 4
    per_entry = info["bytes"] // 4
    assert 1000 < per_entry < 2000  # the blob plus manifest

    assert c.prune(info["bytes"]) == 0  # already small enough
    assert c.prune(2 * per_entry) == 2
    assert c.get(keys[2]) is None and c.get(keys[0]) is None
    assert c.get(keys[3]) is not None and c.get(keys[1]) is not None
    assert c.info()["entries"] == 2
    assert c.clear() == 2
    assert c.info() == {"root": str(tmp_path / "cache"), "entries": 0, "bytes": 0, "tool_bytes": 0}
    assert c.clear() == 0


def _pch_unit(folder, name: str, size: int, used_s: int):
    """A unit as targets/hls4ml/project.py writes one: a key folder holding a header and objects."""
    unit = folder / name
    (unit / "objects").mkdir(parents=True)
    (unit / "objects" / "a.o").write_bytes(b"o" * size)
    os.utime(unit, ns=(used_s * 10**9, used_s * 10**9))
    return unit


def test_tool_cache_units_are_evicted_with_the_entries_least_recently_used_first(tmp_path):
    c = Cache(tmp_path / "cache")
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob").write_bytes(b"e" * 1000)
    key = "a" * 64
    c.put(key, src, {})
    os.utime(c._entry_dir(key) / "last-used", ns=(2 * 10**9, 2 * 10**9))
    old = _pch_unit(tmp_path / "cache" / "hls4ml-pch", "1" * 32, 5000, 1)
    new = _pch_unit(tmp_path / "cache" / "hls4ml-pch", "2" * 32, 5000, 3)
    info = c.info()
    assert info["tool_bytes"] == 10000 and info["entries"] == 1
    assert c.prune(5000) == 2  # the old unit (used first), then the entry
    assert not old.exists() and new.is_dir() and c.get(key) is None
    assert c.info()["tool_bytes"] == 5000


def test_a_pch_folder_the_user_named_is_counted_and_cleared_of_units_alone(tmp_path, monkeypatch):
    named = tmp_path / "my-pch"
    monkeypatch.setenv("TAPEOUT_HLS4ML_PCH_DIR", str(named))
    unit = _pch_unit(named, "3" * 32, 700, 5)
    (named / "notes.txt").write_text("the user's, not tapeout's")
    (named / "other").mkdir()
    c = Cache(tmp_path / "cache")
    assert c.info()["tool_bytes"] == 700
    c.clear()
    assert not unit.exists() and (named / "notes.txt").is_file() and (named / "other").is_dir()
    monkeypatch.setenv("TAPEOUT_HLS4ML_PCH_DIR", "off")
    _pch_unit(tmp_path / "cache" / "hls4ml-pch", "4" * 32, 100, 5)
    assert c.info()["tool_bytes"] == 0  # off: no tool folder is tapeout's


def _put_worker(root: str, key: str, src: str, barrier, results) -> None:
    barrier.wait()
    entry = Cache(root).put(key, src, {"pid": os.getpid()})
    hit = Cache(root).get(key)
    results.put((entry.key, hit is not None and hit.path == entry.path))


def test_concurrent_puts_from_real_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    root = tmp_path / "cache"
    key = "e" * 64
    n = 6
    srcs = [_artifact(tmp_path, f"w{i}") for i in range(n)]
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_put_worker, args=(str(root), key, str(s), barrier, results)) for s in srcs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    assert [results.get(timeout=5) for _ in range(n)] == [(key, True)] * n
    assert [d.name for d in (root / "ee").iterdir()] == [key]
    assert not list((root / "tmp").iterdir())  # no staging left behind
    entry = Cache(root).get(key)
    assert entry.meta["pid"] in {p.pid for p in procs}
    entry.restore(tmp_path / "dest")
    assert _tree(tmp_path / "dest") == _tree(srcs[0])


def test_public_names_are_declared():
    # Importing no framework is tests/compiler/test_imports.py's test_light_modules_import_no_framework.
    assert cache_mod.__all__
