"""Packaging: every package folder is in pyproject, imports go through `tapeout.`, --help stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = {"compiler": "tapeout.compiler", "targets": "tapeout.targets", "runtime": "tapeout.runtime"}
BARE = ("compiler", "targets", "runtime")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_folders() -> dict[str, Path]:
    found = {}
    for folder, dotted in SOURCE_DIRS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found[".".join([dotted, *rel.parts])] = init.parent
    return found


def test_every_package_folder_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert set(_package_folders()) == listed


def test_every_folder_with_python_files_is_a_package():
    for folder in SOURCE_DIRS:
        for py in (ROOT / folder).rglob("*.py"):
            assert (py.parent / "__init__.py").exists(), f"{py.parent} has Python files but no __init__.py"


def test_package_dir_mapping():
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert mapping == {dotted: folder for folder, dotted in SOURCE_DIRS.items()}


def _python_files():
    for base in ("compiler", "targets", "runtime", "tests", "samples", "benchmarks"):
        yield from (ROOT / base).rglob("*.py")


def _imported_modules(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_no_bare_imports_of_the_source_folders():
    # `import compiler` from the repo root would load a second copy of the package.
    bad = []
    for py in _python_files():
        for line, mod in _imported_modules(ast.parse(py.read_text(), str(py))):
            if mod.split(".")[0] in BARE:
                bad.append(f"{py.relative_to(ROOT)}:{line}: import {mod}")
    assert not bad, "use `tapeout.` imports:\n" + "\n".join(bad)


def test_runtime_imports_nothing_from_compiler_or_targets():
    bad = []
    for py in (ROOT / "runtime").rglob("*.py"):
        for line, mod in _imported_modules(ast.parse(py.read_text(), str(py))):
            if mod.startswith(("tapeout.compiler", "tapeout.targets")):
                bad.append(f"{py.relative_to(ROOT)}:{line}: import {mod}")
    assert not bad, "\n".join(bad)


def test_help_does_not_import_tensorflow():
    code = ("import sys\nfrom tapeout.compiler.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'onnx', "
            "'onnxruntime', 'hls4ml')]\nassert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr


def test_targets_command_does_not_import_tensorflow():
    code = ("import sys, io\nfrom tapeout.compiler.cli import main\nassert main(['targets'], io.StringIO()) == 0\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_wheel_contains_every_package(tmp_path):
    # `pip install .` builds this wheel; check what it would install.
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("tapeout-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for dotted, folder in _package_folders().items():
        assert f"{dotted.replace('.', '/')}/__init__.py" in names
        for py in folder.glob("*.py"):
            assert f"{dotted.replace('.', '/')}/{py.name}" in names
    assert not any(n.startswith(("compiler/", "targets/", "runtime/")) for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
