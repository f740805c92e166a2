"""Faults around the output folder (issue 14): kill -9 mid-compile, a full disk, a read-only OUTDIR,
two compiles into one OUTDIR. compiler/staging.py holds the behaviour; docs/security.md says it."""

from __future__ import annotations

import hashlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tapeout.compiler import staging
from tapeout.compiler.cli import main



def _compile(model: Path) -> list[str]:
    return [sys.executable, "-m", "tapeout.compiler", "compile", str(model), "-t", "onnx", "--no-timings"]


def _cli(*argv: object) -> tuple[int, str]:
    err = io.StringIO()
    return main([str(a) for a in argv], io.StringIO(), err), err.getvalue()


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _stages(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if staging.STAGING_MARK in p.name]


def _one_line(code: int, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tapeout: error:") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, err)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """An ONNX MLP 4-160-160-3 (106 KB): no TensorFlow to import, so each compile process is quick."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate([(4, 160), (160, 160), (160, 3)]):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) * 0.1).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"]))
        x = f"g{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3])], inits)
    path = tmp_path_factory.mktemp("model") / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def built(model, tmp_path_factory) -> Path:
    """A finished build (in-process): the previous OUTDIR every fault must leave alone."""
    out = tmp_path_factory.mktemp("prev") / "out"
    code, err = _cli("compile", model, "-t", "onnx", "-o", out, "--no-timings")
    assert code == 0, err
    return out


def _previous(built: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    out = tmp_path / "out"
    shutil.copytree(built, out)
    return out, _snapshot(out)


def test_kill_9_mid_compile_keeps_outdir_and_the_next_run_cleans_the_stage(model, built, tmp_path):
    out, before = _previous(built, tmp_path)
    for _ in range(3):  # the stage lives for the emit and verify steps: catch the process inside them
        proc = subprocess.Popen([*_compile(model), "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not _stages(tmp_path):
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
    else:
        pytest.fail("the compile never ran long enough to be killed while staging")
    assert _stages(tmp_path), "killed while staging: its stage is still there"
    assert _snapshot(out) == before  # the previous build, untouched
    code, err = _cli("compile", model, "-t", "onnx", "-o", out, "--no-timings")
    assert code == 0, err
    assert _stages(tmp_path) == []  # the dead build's stage was cleaned
    assert _snapshot(out) == before  # and the rebuild is byte-identical


def test_a_stage_moved_aside_by_a_dead_install_is_put_back(tmp_path):
    """kill -9 between moving OUTDIR/onnx-fp32 aside and renaming the new one in: the next run restores it."""
    out = tmp_path / "out"
    out.mkdir()
    stage = tmp_path / f".out{staging.STAGING_MARK}abcd1234"
    (stage / f"{staging.OLD_PREFIX}onnx-fp32").mkdir(parents=True)
    (stage / f"{staging.OLD_PREFIX}onnx-fp32" / "model.onnx").write_bytes(b"previous")
    (stage / "onnx-fp32").mkdir()  # the dead build's new folder, never installed
    assert staging.clean_stale(out) == [stage]
    assert (out / "onnx-fp32" / "model.onnx").read_bytes() == b"previous"
    assert _stages(tmp_path) == []


def test_a_live_stage_is_never_cleaned(tmp_path):
    out = tmp_path / "out"
    live = staging.open_stage(out)  # locked by this (live) process
    try:
        dead = tmp_path / f".out{staging.STAGING_MARK}zzzz9999"
        dead.mkdir()
        other = tmp_path / f".outer{staging.STAGING_MARK}abcd1234"  # another OUTDIR's: not ours to clean
        other.mkdir()
        assert staging.clean_stale(out) == [dead]
        assert live.is_dir() and other.is_dir()
    finally:
        staging.close_stage(live)
    assert not live.exists()


def _fsize_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_is_one_line_exit_2_and_no_partial_artifact(model, built, tmp_path):
    """RLIMIT_FSIZE: model.onnx (tens of KB) cannot be written, as on a full disk (EFBIG/ENOSPC)."""
    out, before = _previous(built, tmp_path)
    assert max((out / f).stat().st_size for f in before) > 16384
    r = subprocess.run([*_compile(model), "-o", str(out)], capture_output=True, text=True, timeout=300,
                       preexec_fn=_fsize_limit(16384))
    assert r.returncode in (2, 3), r.stderr
    _one_line(r.returncode, r.stderr, "cannot write the build", str(out))
    assert _snapshot(out) == before  # no partial artifact, the previous build intact
    assert _stages(tmp_path) == []


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k,ro tmpfs /mnt"],
                       capture_output=True)
    return r.returncode == 0


def test_read_only_output_folder_is_one_line_exit_2(model, built, tmp_path):
    if os.geteuid() != 0:  # permission bits bind a normal user
        out, before = _previous(built, tmp_path)
        os.chmod(out, 0o555)
        try:
            r = subprocess.run([*_compile(model), "-o", str(out)], capture_output=True, text=True, timeout=300)
        finally:
            os.chmod(out, 0o755)
        assert _snapshot(out) == before
    elif _can_mount():  # root ignores them: a read-only tmpfs in a private mount namespace
        mnt = tmp_path / "ro"
        mnt.mkdir()
        script = (f'mount -t tmpfs -o size=4m tmpfs "{mnt}" && cp -r "{built}" "{mnt}/out" && '
                  f'mount -o remount,ro "{mnt}" && exec "$@"')
        r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *_compile(model), "-o", str(mnt / "out")],
                           capture_output=True, text=True, timeout=300)
    else:
        pytest.skip("running as root without mount namespaces: no way to make a folder read-only for root")
    assert r.returncode == 2, r.stderr
    _one_line(r.returncode, r.stderr, "cannot write the build", "read-only")


def test_installs_into_one_outdir_wait_for_each_other(tmp_path):
    """The install lock: a second install waits for the first (here a held lock) instead of interleaving."""
    out = tmp_path / "out"
    stage = staging.open_stage(out)
    (stage / "onnx-fp32").mkdir()
    (stage / "report.json").write_text("{}")
    held, released = threading.Event(), []

    def hold() -> None:
        with staging._parent_lock(out):
            held.set()
            time.sleep(0.5)
            released.append(time.monotonic())

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    staging.install(stage, out, ["onnx-fp32"], ["report.json"])
    done = time.monotonic()
    t.join()
    staging.close_stage(stage)
    assert released and done >= released[0]
    assert (out / "onnx-fp32").is_dir() and (out / "report.json").read_text() == "{}"


def test_two_compiles_into_one_outdir_at_once_give_one_consistent_build(model, built, tmp_path):
    out, before = _previous(built, tmp_path)
    shutil.rmtree(out)
    procs = [subprocess.Popen([*_compile(model), "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    assert _snapshot(out) == before  # the same inputs: exactly one whole build, byte for byte
    assert _stages(tmp_path) == []
    code, err = _cli("verify", model, out)  # report.json and the artifacts agree
    assert code == 0, err


def test_outdir_under_a_symlinked_folder_builds(model, tmp_path):
    """The install lock opens OUTDIR's parent, which users often reach through a symlink."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    code, err = _cli("compile", model, "-t", "onnx", "-o", tmp_path / "link" / "out", "--no-timings")
    assert code == 0, err
    assert (tmp_path / "real" / "out" / "report.json").is_file()
    assert _stages(tmp_path / "real") == []
