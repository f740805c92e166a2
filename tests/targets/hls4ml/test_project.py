"""The written hls4ml project: deterministic, relocatable; the C-sim runner imports no framework."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tests.targets.hls4ml.conftest import _models, mixed_plan


def _write(tmp_path, name):
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.registry import default_pipeline
    from tapeout.targets.hls4ml.config import Hls4mlOptions
    from tapeout.targets.hls4ml.lower import lower

    model = _models()["mlp"]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    graph = default_pipeline().run(load_model(path)[0]).graph
    project = tmp_path / name
    lower(model, graph, mixed_plan(graph), project, variant="vitis", options=Hls4mlOptions())
    return project


def test_project_is_byte_identical_and_has_no_absolute_paths(tmp_path):
    a, b = _write(tmp_path, "a"), _write(tmp_path, "b")
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert {"build_prj.tcl", "firmware/myproject.cpp", "firmware/parameters.h", "tapeout_csim.json"} <= {
        str(p) for p in files_a}
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} differs between two builds"
        data = (a / rel).read_bytes()
        assert str(tmp_path).encode() not in data, f"{rel} holds an absolute path"
    params = (a / "firmware/parameters.h").read_text() + (a / "firmware/defines.h").read_text()
    assert "ap_fixed<8,1,AP_RND," in params.replace(" ", "")  # the plan's weight type reached the C++


def test_runner_imports_no_framework():
    code = ("import sys, tapeout.runtime.runners.hls4ml_csim as m; "
            "bad = [k for k in ('tensorflow', 'keras', 'hls4ml') if k in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_runner_refuses_a_folder_without_manifest(tmp_path):
    import pytest

    from tapeout.runtime.errors import RuntimeInputError
    from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

    with pytest.raises(RuntimeInputError):
        Hls4mlCsimRunner(tmp_path).open()
    assert np is not None


def test_make_deterministic_replaces_quoted_and_plain_stamps(tmp_path):
    """hls4ml's stamp is 8 random hex digits; YAML quotes it when they are all decimal digits."""
    from tapeout.targets.hls4ml.project import STAMP, make_deterministic

    for stamp in ("'61316341'", "6a3f0c1e"):
        (tmp_path / "hls4ml_config.yml").write_text(f"ProjectName: myproject\nStamp: {stamp}\nVersion: 1.0.0\n")
        (tmp_path / "build_lib.sh").write_text(f"LIB_STAMP={stamp.strip(chr(39))}\n")
        make_deterministic(tmp_path)
        assert (tmp_path / "hls4ml_config.yml").read_text() == f"ProjectName: myproject\nStamp: {STAMP}\nVersion: 1.0.0\n"
        assert (tmp_path / "build_lib.sh").read_text() == f"LIB_STAMP={STAMP}\n"
