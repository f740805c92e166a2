"""Pareto fronts of a sweep's results, one per pair of objectives: in the terminal and OUTDIR/pareto.html.

A point is on the front of (a, b) when no other measured point is at least as good in both and
better in one (accuracy and agreement higher, costs lower). Only measured points take part: status
ok, or failed (built but outside the verification tolerance: its numbers still describe it; marked).
The page reuses the compile report's machinery (compiler.report_html): plotly, inlined, offline,
fixed div ids, so the same results give the same bytes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from tapeout.compiler.sweep.results import as_number
from tapeout.compiler.sweep.spec import OBJECTIVES

MEASURED = ("ok", "failed")


@dataclass
class Front:
    x: str
    y: str
    points: list[dict[str, str]]  # every measured row with both values
    front: list[dict[str, str]]  # the non-dominated ones, by x


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "max" else a < b


def fronts(rows: Sequence[Mapping[str, str]], objectives: Sequence[str]) -> list[Front]:
    """A front for each pair of objectives that at least one measured row has both values of."""
    measured = [dict(r) for r in rows if r.get("status") in MEASURED]
    out = []
    for x, y in itertools.combinations(objectives, 2):
        pts = [r for r in measured if r.get(x) and r.get(y)]
        if not pts:
            continue
        dx, dy = OBJECTIVES[x], OBJECTIVES[y]

        def dominates(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
            ax, ay, bx, by = as_number(a[x]), as_number(a[y]), as_number(b[x]), as_number(b[y])
            no_worse = not _better(bx, ax, dx) and not _better(by, ay, dy)
            return no_worse and (_better(ax, bx, dx) or _better(ay, by, dy))

        front = [p for p in pts if not any(dominates(q, p) for q in pts)]
        front.sort(key=lambda r: (as_number(r[x]), as_number(r[y]), int(r["index"])))
        out.append(Front(x, y, pts, front))
    return out


def _axes_text(row: Mapping[str, str], axis_columns: Sequence[str]) -> str:
    return " ".join([row["target"]] + [f"{a}={row[a]}" for a in axis_columns if row.get(a, "") != ""])


def print_fronts(fs: Sequence[Front], axis_columns: Sequence[str], write: Any) -> None:
    for f in fs:
        write(f"pareto  {f.x} ({OBJECTIVES[f.x]}) x {f.y} ({OBJECTIVES[f.y]}): {len(f.front)} of "
              f"{len(f.points)} points\n")
        for r in f.front:
            mark = "  (failed verification)" if r["status"] == "failed" else ""
            write(f"  {r['id']}  {f.x} {r[f.x]:>10}  {f.y} {r[f.y]:>10}  {_axes_text(r, axis_columns)}{mark}\n")


def render(rows: Sequence[Mapping[str, str]], fs: Sequence[Front], columns: Sequence[str],
           axis_columns: Sequence[str], title: str, counts: Mapping[str, int]) -> str:
    """The page; ``counts``: rows per status (the sweep's result, counted once)."""
    from tapeout.compiler.report_html import CSS, Charts, escape, html_table

    charts = Charts()
    parts = [f"<h1>{escape(title)}</h1>\n"]
    parts.append("<p>" + ", ".join(f"{n} {escape(s)}" for s, n in sorted(counts.items())) + f" of {len(rows)} points. "
                 "A front holds the points no other point beats on both objectives (accuracy and agreement "
                 "higher, the rest lower).</p>\n")
    for f in fs:
        parts.append(f"<h2>{escape(f.x)} ({OBJECTIVES[f.x]}) &times; {escape(f.y)} ({OBJECTIVES[f.y]})</h2>\n")
        if charts.available:
            go = charts.go
            on = {r["id"] for r in f.front}
            rest = [r for r in f.points if r["id"] not in on]

            def trace(rs: list[dict[str, str]], name: str, **kw: Any) -> Any:
                return go.Scatter(x=[as_number(r[f.x]) for r in rs], y=[as_number(r[f.y]) for r in rs], name=name,
                                  text=[f"{r['id']} {_axes_text(r, axis_columns)}" for r in rs],
                                  hovertemplate="%{text}<br>%{x}, %{y}<extra></extra>", **kw)

            parts.append(charts.figure([trace(rest, "dominated", mode="markers", marker={"color": "#9aa0a6"}),
                                        trace(f.front, "Pareto front", mode="lines+markers",
                                              line={"shape": "hv"}, marker={"size": 9})],
                                       f"{f.x} vs {f.y}", f.x, f.y))
        parts.append(html_table(["id", f.x, f.y, "point", "status"],
                            [[escape(r["id"]), escape(r[f.x]), escape(r[f.y]), escape(_axes_text(r, axis_columns)), escape(r["status"])]
                             for r in f.front], numeric=(1, 2)))
    if not fs:
        parts.append('<p class="note">No front: no two objectives were measured on any point.</p>\n')
    parts.append("<h2>Every point</h2>\n")
    shown = [c for c in columns if c not in ("host",)]
    parts.append(html_table(shown, [[escape(r.get(c, "")) for c in shown] for r in sorted(rows, key=lambda r: int(r["index"]))]))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "".join(parts)
            + "</body>\n</html>\n")


def write_html(path: Path, *args: Any) -> Path:
    from tapeout.compiler.staging import write_if_changed

    write_if_changed(Path(path), render(*args).encode("utf-8"))
    return Path(path)
