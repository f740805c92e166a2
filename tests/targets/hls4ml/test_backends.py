"""Acceptance 6: vivado, quartus, oneapi and catapult projects are generated with the chosen
precisions, deterministically; C simulation runs and verifies where g++ suffices."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.targets.hls4ml.conftest import _models

FILES = {"vivado": ["build_prj.tcl", "build_lib.sh", "firmware/myproject.cpp", "firmware/defines.h"],
         "quartus": ["Makefile", "build_lib.sh", "firmware/myproject.cpp", "firmware/defines.h"],
         "catapult": ["build_prj.tcl", "build_lib.sh", "firmware/myproject.cpp", "firmware/defines.h"],
         "oneapi": ["CMakeLists.txt", "src/firmware/myproject.cpp", "src/firmware/defines.h"]}


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlp") / "mlp.keras"
    _models()["mlp"].save(path)
    return path


def _headers(project) -> str:
    return "".join(p.read_text() for p in sorted(project.rglob("firmware/*.h")))


@pytest.mark.parametrize("backend", ["vivado", "quartus", "catapult", "oneapi"])
def test_backend_project(mlp_file, tmp_path, backend):
    from tapeout.compiler.api import compile_model

    csim = backend != "oneapi" and shutil.which("g++") is not None
    rep = compile_model(mlp_file, [f"hls4ml:{backend}"], tmp_path / "o", calibration="synthetic",
                        verify_artifacts=csim)
    project = tmp_path / "o" / f"hls4ml-{backend}"
    for f in FILES[backend]:
        assert (project / f).is_file(), f"{backend}: {f} missing"
    h = rep.targets[0].extra["hls4ml"]
    assert h["backend"] == backend
    headers = _headers(project)
    for row in h["layers"]:
        if row["kind"] == "dense":
            w, i = re.match(r"ap_fixed<(\d+),(\d+)", row["types"]["weight"]).groups()
            # ap_fixed<W,I,...> on AMD back ends, ac_fixed<W,I,true,...> on Intel/Siemens ones.
            assert re.search(rf"a[pc]_fixed<{w},\s*{i}[,>]", headers), f"{backend}: {row['layer']} weight type"
    text = "".join(p.read_text() for p in project.rglob("*") if p.suffix in (".txt", ".sh", ".yml", ".tcl"))
    assert str(tmp_path) not in text and "tapeout" in text  # relative paths, fixed stamp
    if csim:
        assert h["csim"]["built"] and rep.targets[0].verification.passed
        assert (project / "firmware/myproject-tapeout.so").is_file()
    else:
        assert not h["csim"]["built"]
        with pytest.raises(Exception, match="icpx"):
            from tapeout.targets.hls4ml.target import Hls4mlTarget

            Hls4mlTarget(backend).runner(project)


def test_oneapi_project_is_byte_identical(mlp_file, tmp_path):
    from tapeout.compiler.api import compile_model

    for name in ("a", "b"):
        compile_model(mlp_file, ["hls4ml:oneapi"], tmp_path / name, calibration="synthetic", verify_artifacts=False)
    a, b = tmp_path / "a/hls4ml-oneapi", tmp_path / "b/hls4ml-oneapi"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} differs"
