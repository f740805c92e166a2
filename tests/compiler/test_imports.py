"""The compiler does not import targets (issue 16): only the driver modules, which run the targets
through their registry, may. Every import counts, function-level ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

COMPILER = Path(__file__).resolve().parents[2] / "compiler"
# Drivers: they build the chosen targets (compile, build, sweep, CLI), so they import targets by design.
DRIVERS = ("api.py", "cli.py", "stages/*", "build*.py", "sweep/*")


def _is_driver(path: Path) -> bool:
    rel = path.relative_to(COMPILER)
    return any(rel.match(p) and (len(rel.parts) == 1 or "/" in p) for p in DRIVERS)


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in the tree, at any depth; ``from X import y`` also gives X.y."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _imports_targets(module: str) -> bool:
    return module == "tapeout.targets" or module.startswith("tapeout.targets.")


def _modules() -> list[Path]:
    return sorted(p for p in COMPILER.rglob("*.py") if not _is_driver(p))


def test_the_walk_sees_the_compiler_and_skips_only_the_drivers():
    names = {str(p.relative_to(COMPILER)) for p in _modules()}
    assert {"finetune.py", "keras_model.py", "passes/pipeline.py", "frontends/onnx.py"} <= names
    assert not names & {"api.py", "cli.py"} and not any(n.startswith(("stages/", "sweep/")) for n in names)
    assert _is_driver(COMPILER / "stages" / "emit.py") and _is_driver(COMPILER / "build.py")
    assert not _is_driver(COMPILER / "passes" / "build_x.py")  # build*.py at the top only


def test_the_check_sees_function_level_imports():
    tree = ast.parse("def f():\n    from tapeout.targets.keras.emit import graph_to_keras\n"
                     "def g():\n    import tapeout.targets.onnx\nfrom tapeout import targets\n")
    assert sorted((line, m) for line, m in _imported(tree) if _imports_targets(m)) == [
        (2, "tapeout.targets.keras.emit"), (2, "tapeout.targets.keras.emit.graph_to_keras"),
        (4, "tapeout.targets.onnx"), (5, "tapeout.targets")]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(COMPILER)))
def test_compiler_module_imports_no_target(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    bad = [f"line {line}: {m}" for line, m in _imported(tree) if _imports_targets(m)]
    assert not bad, f"compiler/{path.relative_to(COMPILER)} imports targets: {', '.join(bad)}"


# What a no-op `tapeout build` imports: the project file, the cache, the stamp and depfile writers
# and the flag checks' names. A framework among them would cost seconds on every rebuild.
LIGHT = ("cache", "project", "build", "schemes", "depfile", "staging")
FRAMEWORKS = ("numpy", "tensorflow", "onnx", "onnxruntime", "hls4ml", "keras", "rich")


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_import_no_framework(module):
    import subprocess
    import sys

    code = (f"import sys, tapeout.compiler.{module};"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
