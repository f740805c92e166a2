"""The runtime must load on an edge device: NumPy only, no compiler, targets or frameworks at import."""

import subprocess
import sys


def test_runtime_imports_no_compiler_target_or_framework() -> None:
    code = ("import tapeout.runtime.compare, tapeout.runtime.data, tapeout.runtime.verify, "
            "tapeout.runtime.runners.onnxrt, tapeout.runtime.runners.keras, sys; "
            "bad = [m for m in sys.modules if m.startswith(('tapeout.compiler', 'tapeout.targets', "
            "'tensorflow', 'keras', 'onnxruntime'))]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
