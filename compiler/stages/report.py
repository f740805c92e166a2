"""The report stage: the graph's summary, and report.json / report.html written beside the artifacts."""

from __future__ import annotations

from pathlib import Path

from tapeout.compiler.ir import Graph
from tapeout.compiler.ops import graph_macs, graph_params
from tapeout.compiler.report import CompileReport


def graph_summary(graph: Graph) -> dict:
    def io(name: str) -> dict:
        t = graph.type_of(name)
        return {"name": name, "shape": list(t.shape), "dtype": t.dtype, "layout": graph.io_layouts.get(name)}

    return {
        "name": graph.name,
        "inputs": [io(i) for i in graph.inputs],
        "outputs": [io(o) for o in graph.outputs],
        "nodes": len(graph.nodes),
        "params": graph_params(graph),
        "macs": graph_macs(graph),
    }


def write(report: CompileReport, folder: Path, timings: bool) -> list[str]:
    """report.json and report.html (compiler.report_html, from the same dict) into ``folder``."""
    from tapeout.compiler.report_html import write_html

    report.write(folder / "report.json", timings)
    write_html(report.to_json(timings), folder / "report.html")
    return ["report.html", "report.json"]
