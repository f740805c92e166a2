"""Run the back end's HLS tool (``--synth``) and read its synthesis report.

Only the Vivado/Vitis HLS report (``<project>_prj/solution1/syn/report/<top>_csynth.xml``) is
parsed; the other back ends' tools run and their output tail is kept.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from tapeout.compiler.errors import MissingToolError
from tapeout.targets.hls4ml.config import PROJECT

TOOLS = {"vitis": "vitis_hls", "vivado": "vivado_hls", "quartus": "i++", "oneapi": "icpx", "catapult": "catapult"}
RESOURCES = ("BRAM_18K", "DSP", "FF", "LUT", "URAM")


def require_tool(variant: str) -> str:
    """The tool's path, or MissingToolError (exit 3) naming it."""
    tool = TOOLS[variant]
    path = shutil.which(tool)
    if path is None:
        raise MissingToolError(f"--synth needs {tool} on PATH for hls4ml:{variant} (not found); "
                               "install it or drop --synth to use the pre-synthesis estimates")
    return path


def _command(variant: str, tool: str) -> list[str]:
    if variant in ("vitis", "vivado"):
        return [tool, "-f", "build_prj.tcl", "reset=1 synth=1 csim=0 cosim=0 validation=0 export=0 vsynth=0"]
    if variant == "quartus":
        return ["make", f"{PROJECT}-fpga"]
    if variant == "catapult":
        return [tool, "-shell", "-file", "build_prj.tcl"]
    return ["cmake", "--build", "build", "--target", "report"]


def run_synthesis(project: Path, variant: str, timeout: float | None = None) -> dict[str, Any]:
    tool = require_tool(variant)
    if variant == "oneapi":
        (project / "build").mkdir(exist_ok=True)
        subprocess.run(["cmake", ".."], cwd=project / "build", capture_output=True, text=True, timeout=timeout)
    proc = subprocess.run(_command(variant, tool), cwd=project, capture_output=True, text=True, timeout=timeout)
    out: dict[str, Any] = {"tool": Path(tool).name, "returncode": proc.returncode,
                           "log_tail": (proc.stdout + proc.stderr).strip().splitlines()[-5:]}
    report = find_report(project)
    if report is not None:
        out.update(parse_csynth_xml(report))
        out["report"] = str(report.relative_to(project))
    return out


def find_report(project: Path) -> Path | None:
    found = sorted(project.glob(f"{PROJECT}_prj/*/syn/report/{PROJECT}_csynth.xml"))
    return found[0] if found else None


def _int(node: ET.Element | None) -> int | None:
    if node is None or node.text is None:
        return None
    text = node.text.strip()
    try:
        return int(text)
    except ValueError:
        return None  # "undef" for data-dependent latency


def _float(node: ET.Element | None) -> float | None:
    if node is None or node.text is None:
        return None
    try:
        return float(node.text.strip().split()[0])
    except ValueError:
        return None


def parse_csynth_xml(path: Path) -> dict[str, Any]:
    """Latency, interval, clock and resources of a Vivado/Vitis HLS ``*_csynth.xml``."""
    root = ET.parse(path).getroot()
    perf = root.find("PerformanceEstimates")
    lat = perf.find("SummaryOfOverallLatency") if perf is not None else None
    timing = perf.find("SummaryOfTimingAnalysis") if perf is not None else None
    area = root.find("AreaEstimates")

    def resources(tag: str) -> dict[str, int]:
        node = area.find(tag) if area is not None else None
        out: dict[str, int] = {}
        if node is None:
            return out
        for child in node:
            key = "DSP" if child.tag.startswith("DSP") else child.tag  # DSP48E (Vivado HLS) / DSP (Vitis)
            value = _int(child)
            if key in RESOURCES and value is not None:
                out[key] = value
        return out

    user = root.find("UserAssignments")
    return {
        "part": user.findtext("Part") if user is not None else None,
        "top": user.findtext("TopModelName") if user is not None else None,
        "target_clock_ns": _float(user.find("TargetClockPeriod")) if user is not None else None,
        "estimated_clock_ns": _float(timing.find("EstimatedClockPeriod")) if timing is not None else None,
        "latency_cycles": {"best": _int(lat.find("Best-caseLatency")) if lat is not None else None,
                           "worst": _int(lat.find("Worst-caseLatency")) if lat is not None else None},
        "interval_cycles": {"min": _int(lat.find("Interval-min")) if lat is not None else None,
                            "max": _int(lat.find("Interval-max")) if lat is not None else None},
        "resources": resources("Resources"),
        "available": resources("AvailableResources"),
    }
