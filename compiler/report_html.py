"""OUTDIR/report.html: the compile report as a page people can open anywhere, and Model Explorer node data.

The page is one self-contained file: no network and no CDN, so it opens on an air-gapped
machine. Charts are plotly's, with its JavaScript inlined once (about 4.8 MB of the page):
matplotlib's static SVG would be smaller but is not installed with tapeout, while plotly is
the `report` extra, and its charts keep hover values (the per-layer numbers) that a picture
drops. The digits CNN with three targets stays under the 5 MB budget of issue 15. Without
plotly the page keeps every table and says the charts need `pip install 'tapeout[report]'`.

Deterministic: the same report gives the same bytes (fixed div ids, no timestamps; the seconds
are null with --no-timings). Built from report.json's dict only, so `tapeout verify OUTDIR`
and tests can render any report. Docs: docs/report.md.
"""

from __future__ import annotations

import html
import json
import math
import platform
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

# Distributions whose versions the environment section lists (importlib.metadata: no framework import).
PACKAGES = ("tapeout", "numpy", "onnx", "onnxruntime", "tensorflow", "tf_keras", "keras", "hls4ml",
            "ai-edge-litert", "tensorrt", "plotly")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#1b1b1f;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ddd;padding:3px 8px;font-size:.9em}
th{background:#f3f3f7;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#0a7d32;font-weight:600}.fail{color:#b3261e;font-weight:600}.note{color:#555;font-size:.9em}
code{font-size:.9em}
"""


def escape(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: Any, spec: str = ".3e") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return escape(x)
    if isinstance(x, float) and not math.isfinite(x):
        return escape(x)
    return format(x, spec) if isinstance(x, float) else f"{x:,}"


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """Rows of already escaped cells; ``numeric`` columns right-aligned."""
    num = set(numeric)
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in num else ""}>{c}</td>' for i, c in enumerate(r))
                   + "</tr>\n" for r in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>\n"


def _verdict(v: Mapping[str, Any] | None) -> str:
    if v is None:
        return "skipped"
    return '<span class="pass">pass</span>' if v.get("passed") else '<span class="fail">FAIL</span>'


def _label(t: Mapping[str, Any]) -> str:
    return f"{t['target']}:{t['variant']}"


# ------------------------------------------------------------------ charts
class Charts:
    """plotly figures as divs with fixed ids; plotly.js inlined with the first one."""

    def __init__(self) -> None:
        try:
            import plotly.graph_objects as go
        except ImportError:
            self.go = None
        else:
            self.go = go
        self.count = 0

    @property
    def available(self) -> bool:
        return self.go is not None

    def figure(self, traces: list[Any], title: str, xtitle: str, ytitle: str, *, ylog: bool = False,
               categories: Sequence[str] | None = None) -> str:
        if self.go is None:
            return ('<p class="note">(chart omitted: plotly is not installed; '
                    "<code>pip install 'tapeout[report]'</code>)</p>\n")
        fig = self.go.Figure(traces)
        xaxis: dict[str, Any] = {"title": {"text": xtitle}}
        if categories is not None:
            xaxis.update(type="category", categoryorder="array", categoryarray=list(categories))
        fig.update_layout(title={"text": title}, xaxis=xaxis,
                          yaxis={"title": {"text": ytitle}, "type": "log" if ylog else "linear"},
                          template="plotly_white", height=420, margin={"l": 60, "r": 20, "t": 50, "b": 100})
        self.count += 1
        # Fixed div ids (plotly draws a random uuid otherwise): byte-identical pages for identical reports.
        return fig.to_html(full_html=False, include_plotlyjs=self.count == 1, div_id=f"tapeout-chart-{self.count}",
                           config={"displaylogo": False, "responsive": True})


# ----------------------------------------------------------------- sections
def _summary(report: Mapping[str, Any]) -> str:
    rows = []
    for t in report.get("targets", []):
        v = t.get("verification")
        acc = (v or {}).get("accuracy")
        rules = sorted({o.get("rule", "-") for o in (v or {}).get("outputs", [])}) if v else []
        rows.append([escape(_label(t)), "<br>".join(escape(a) for a in t.get("artifacts", [])), _num(t.get("size_bytes")),
                     _num(t.get("seconds"), ".2f"), _verdict(v), escape(", ".join(rules) or "-"),
                     _num((v or {}).get("max_abs_err")), _num((v or {}).get("cosine"), ".6f"),
                     _num((v or {}).get("top1_agreement"), ".4f"),
                     "-" if not acc else f"{acc['source']:.4f} / {acc['artifact']:.4f}"])
        for c in t.get("cross_checks", []):  # the same artifact in the target's other runtimes
            cacc = c.get("accuracy")
            rows.append([f"&nbsp;&nbsp;in {escape(str(c.get('runner')).split(' vs ')[0])}", "", "", "", _verdict(c), "",
                         _num(c.get("max_abs_err")), _num(c.get("cosine"), ".6f"), _num(c.get("top1_agreement"), ".4f"),
                         "-" if not cacc else f"{cacc['source']:.4f} / {cacc['artifact']:.4f}"])
    return "<h2>Summary</h2>\n" + html_table(
        ["target", "artifacts", "bytes", "seconds", "verified", "rule", "max abs err", "cosine", "top-1 agree",
         "accuracy source / artifact"], rows, numeric=(2, 3, 6, 7, 8))


def _header(report: Mapping[str, Any]) -> str:
    src, g, d = report.get("source", {}), report.get("graph", {}), report.get("data", {})
    verdict = '<span class="pass">PASSED</span>' if report.get("passed") else '<span class="fail">FAILED</span>'
    lines = [f"<h1>tapeout report: {escape(src.get('path'))}</h1>",
             f"<p>{verdict} &middot; tapeout {escape(report.get('tapeout_version'))} &middot; source "
             f"{escape(src.get('format'))}, {_num(g.get('source_nodes'))} nodes &rarr; {_num(g.get('nodes'))} after passes, "
             f"{_num(g.get('params'))} params, {_num(g.get('macs'))} MACs &middot; verification data "
             f"{escape(d.get('kind'))}, {_num(d.get('samples'))} samples{', labelled' if d.get('labels') else ''}</p>"]
    for n in report.get("notes", []):
        lines.append(f'<p class="note">note: {escape(n)}</p>')
    return "\n".join(lines) + "\n"


def _per_target(report: Mapping[str, Any]) -> str:
    out = ["<h2>Accuracy and error against the source, per target</h2>\n"]
    for t in report.get("targets", []):
        v = t.get("verification")
        out.append(f"<h3>{escape(_label(t))} &middot; {_verdict(v)}</h3>\n")
        if v is None:
            out.append('<p class="note">not verified (--no-verify)</p>\n')
            continue
        out.append(f'<p class="note">{escape(v.get("runner"))}, {_num(v.get("samples"))} {escape(v.get("data"))} samples'
                   + (f"; accuracy source {v['accuracy']['source']:.4f}, artifact {v['accuracy']['artifact']:.4f}"
                      if v.get("accuracy") else "")
                   + (f"; --max-accuracy-drop {v['max_accuracy_drop']:g}" if v.get("max_accuracy_drop") is not None
                      else "") + "</p>\n")
        if v.get("error"):
            out.append(f'<p class="fail">{escape(v["error"])}</p>\n')
        rows = []
        for o in v.get("outputs", []):
            em, ex = o.get("error_model") or {}, o.get("expected_error") or {}
            rows.append([escape(o.get("name")), escape(o.get("rule")), '<span class="pass">pass</span>' if o.get("passed")
                         else '<span class="fail">FAIL</span>', _num(o.get("max_abs_err")), _num(o.get("mean_abs_err")),
                         _num(o.get("p99_abs_err")), _num(o.get("cosine"), ".6f"), _num(o.get("top1_agreement"), ".4f"),
                         _num(em.get("e_art")), _num(em.get("bound")),
                         escape(ex.get("basis")) if ex else "-", _num(ex.get("bound")), _num(ex.get("max_abs_over_bound"),
                                                                                         ".3g"),
                         escape(o.get("reason") or "")])
        out.append(html_table(["output", "rule", "verdict", "max abs", "mean abs", "p99 abs", "cosine", "top-1 agree",
                           "RMSE vs float64", "error-model bound", "expected error from", "expected bound",
                           "max abs / expected", "why it failed"], rows, numeric=range(3, 13)))
        for n in t.get("notes", []):
            out.append(f'<p class="note">{escape(n)}</p>\n')
    return "".join(out)


def _trace(report: Mapping[str, Any], charts: Charts) -> str:
    traced = [(t, t["trace"]) for t in report.get("targets", []) if isinstance(t.get("trace"), Mapping)]
    if not traced:
        return ""
    out = ["<h2>Per-layer error (trace)</h2>\n"]
    names = _merged_order([[lay["name"] for lay in tr.get("layers", [])] for _, tr in traced])
    if names and charts.available:
        go = charts.go
        for key, title, ylog in (("sqnr_db", "SQNR per layer (dB, higher is better)", False),
                                 ("max_abs", "max abs error per layer (against the reference interpreter)", True)):
            traces = []
            for t, tr in traced:
                layers = [lay for lay in tr.get("layers", []) if _finite(lay.get(key))]
                traces.append(go.Scatter(x=[lay["name"] for lay in layers], y=[lay[key] for lay in layers],
                                         mode="lines+markers", name=_label(t)))
            out.append(charts.figure(traces, title, "layer (graph order)", key, ylog=ylog, categories=names))
    elif names:
        out.append(charts.figure([], "", "", ""))
    rows = []
    for t, tr in traced:
        jump = tr.get("first_jump")
        rows.append([escape(_label(t)), _num(len(tr.get("layers", []))),
                     escape(f"{jump['name']} ({jump.get('metric')}): {jump.get('suggestion')}") if jump else "-",
                     escape(tr.get("untraced") or "")])
    out.append(html_table(["target", "layers traced", "first jump", "not traced"], rows, numeric=(1,)))
    for t, tr in traced:
        rows = [[escape(lay.get("index")), escape(lay.get("name")), escape(lay.get("op")), _num(lay.get("max_abs")),
                 _num(lay.get("mean_abs")), _num(lay.get("sqnr_db"), ".2f"), _num(lay.get("cosine"), ".6f"),
                 _num(lay.get("rmse_over_scale"), ".3f")] for lay in tr.get("layers", [])]
        if rows:
            out.append(f"<h3>{escape(_label(t))}</h3>\n" + html_table(
                ["#", "layer", "op", "max abs", "mean abs", "SQNR dB", "cosine", "RMSE / scale"], rows,
                numeric=(0, 3, 4, 5, 6, 7)))
    return "".join(out)


def _merged_order(lists: Sequence[Sequence[str]]) -> list[str]:
    """One x axis for every target: each trace lists its layers in graph order (``index`` is a position in
    that target's own emitted graph, so not comparable across targets); a name first seen in a later
    list goes right after the name it follows there."""
    merged: list[str] = []
    for names in lists:
        prev = None
        for n in names:
            if n not in merged:
                merged.insert(0 if prev is None else merged.index(prev) + 1, n)
            prev = n
    return merged


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _quantization(report: Mapping[str, Any]) -> str:
    out = []
    for t in report.get("targets", []):
        q = t.get("quantization")
        if not q:
            continue
        cal = q.get("calibration")
        how = "no calibration" if not cal else (f"calibration {cal['method']} on {cal['samples']} {cal['data']} "
                                                "samples")
        out.append(f"<h3>{escape(_label(t))}: {escape(q.get('scheme'))}, {escape(how)}</h3>\n")
        if q.get("float_layers"):
            out.append(f'<p class="note">kept in float: {escape(", ".join(q["float_layers"]))}</p>\n')
        for w in q.get("warnings", []):
            out.append(f'<p class="fail">warning: {escape(w)}</p>\n')
        ranges = q.get("ranges") or []
        if ranges:
            out.append(html_table(["tensor", "dtype", "min", "max", "scale", "zero point"],
                              [[escape(r["tensor"]), escape(r["dtype"]), _num(r.get("min"), ".4g"), _num(r.get("max"), ".4g"),
                                _num(r.get("scale"), ".4g"), escape(r.get("zero_point"))] for r in ranges],
                              numeric=(2, 3, 4, 5)))
        else:
            out.append('<p class="note">no per-tensor ranges recorded for this scheme</p>\n')
    return "<h2>Quantization ranges per layer</h2>\n" + "".join(out) if out else ""


def _hls4ml(report: Mapping[str, Any]) -> str:
    out = []
    for t in report.get("targets", []):
        h = t.get("hls4ml")
        if not h:
            continue
        p = h.get("precision") or {}
        out.append(f"<h3>{escape(_label(t))}: {escape(h.get('part'))}, {escape(h.get('clock_period_ns'))} ns, "
                   f"{escape(h.get('io_type'))}/{escape(h.get('strategy'))}, precision {escape(p.get('mode'))}</h3>\n")
        rows = []
        for lay in h.get("layers", []):
            ty, est = lay.get("types") or {}, lay.get("estimate") or {}
            rows.append([escape(lay.get("layer")), escape(lay.get("kind")), escape(ty.get("result")), escape(ty.get("weight", "-")),
                         escape(ty.get("bias", "-")), escape(ty.get("accum", "-")), _num(lay.get("range"), ".4g"),
                         _num(lay.get("max_abs_error")), _num(lay.get("rel_rms_error")),
                         _num(est.get("reuse_factor")), _num(est.get("multipliers")), _num(est.get("dsp")),
                         _num(est.get("bram18")), _num(est.get("latency_cycles")), _num(est.get("interval_cycles"))])
        out.append(html_table(["layer", "kind", "result", "weight", "bias", "accum", "range", "max abs err",
                           "rel RMS err", "reuse", "multipliers", "DSP", "BRAM18", "latency (cycles)", "II"],
                          rows, numeric=range(6, 15)))
    return "<h2>hls4ml precision per layer, with estimates</h2>\n" + "".join(out) if out else ""


def _pruning(report: Mapping[str, Any], charts: Charts) -> str:
    pr = report.get("pruning")
    if not pr:
        return ""
    b, a = pr.get("before", {}), pr.get("after", {})
    out = ["<h2>Pruning</h2>\n",
           f"<p>{escape(pr.get('spec'))}: params {_num(b.get('params'))} &rarr; {_num(a.get('params'))} "
           f"({_num(a.get('nonzero_params'))} non-zero), MACs {_num(b.get('macs'))} &rarr; {_num(a.get('macs'))}"
           f"{', one-shot (no fine-tuning)' if pr.get('one_shot') else ''}</p>\n"]
    search = pr.get("search")
    if search and search.get("curve") and charts.available:
        curve = sorted(search["curve"], key=lambda c: c["sparsity"])
        go = charts.go
        traces = [go.Scatter(x=[c["sparsity"] for c in curve], y=[c["accuracy"] for c in curve],
                             mode="lines+markers", name="accuracy"),
                  go.Scatter(x=[curve[0]["sparsity"], curve[-1]["sparsity"]],
                             y=[search["baseline_accuracy"] - search["max_accuracy_drop"] / 100.0] * 2,
                             mode="lines", name="budget", line={"dash": "dash"})]
        out.append(charts.figure(traces, f"pruning curve ({search.get('kind')}; chosen {search.get('chosen')})",
                                 "sparsity", "top-1 accuracy"))
    layers = pr.get("layers") or []
    if layers:
        if charts.available:
            go = charts.go
            out.append(charts.figure([go.Bar(x=[lay["name"] for lay in layers],
                                             y=[lay.get("sparsity_after") for lay in layers], name="sparsity")],
                                     "sparsity per layer after pruning", "layer", "sparsity",
                                     categories=[lay["name"] for lay in layers]))
        out.append(html_table(["layer", "op", "shape before", "shape after", "sparsity before", "sparsity after",
                           "MACs before", "MACs after"],
                          [[escape(lay.get("name")), escape(lay.get("op")), escape(lay.get("shape_before")),
                            escape(lay.get("shape_after")), _num(lay.get("sparsity_before"), ".3f"),
                            _num(lay.get("sparsity_after"), ".3f"), _num(lay.get("macs_before")),
                            _num(lay.get("macs_after"))] for lay in layers], numeric=range(4, 8)))
    acc = pr.get("accuracy")
    if acc and acc.get("pruned") is not None:
        out.append(f"<p>top-1 accuracy {acc['unpruned']:.4f} unpruned &rarr; {acc['pruned']:.4f} pruned</p>\n")
    return "".join(out)


def environment() -> list[tuple[str, str]]:
    """(name, version) of Python and each distribution in PACKAGES that is installed."""
    from importlib import metadata

    rows = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return rows


def _environment() -> str:
    return "<h2>Environment</h2>\n" + html_table(["tool", "version"], [[escape(n), escape(v)] for n, v in environment()])


def render(report: Mapping[str, Any]) -> str:
    """The page for one report.json dict."""
    charts = Charts()
    parts = [_header(report), _summary(report), _per_target(report), _trace(report, charts),
             _quantization(report), _hls4ml(report), _pruning(report, charts), _environment()]
    title = escape(f"tapeout report: {report.get('source', {}).get('path', '')}")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "".join(parts)
            + "</body>\n</html>\n")


def write_html(report: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render(report), encoding="utf-8")
    return path


# ------------------------------------------------------------ Model Explorer
def model_explorer_data(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per target ("target:variant"), node data in Model Explorer's format for one graph:
    {"results": {node key: {"value": max abs error}}, "gradient": [...]}. Keys are the traced
    layers' names when the target was traced (--trace), else its outputs' names (the only
    values compared). Model Explorer matches a key to a node id or to an output tensor name."""
    found = {}
    for t in report.get("targets", []):
        tr = t.get("trace") if isinstance(t.get("trace"), Mapping) else None
        if tr and tr.get("layers"):
            values = {lay["name"]: lay.get("max_abs") for lay in tr["layers"]}
        else:
            values = {o["name"]: o.get("max_abs_err") for o in ((t.get("verification") or {}).get("outputs") or [])}
        results = {k: {"value": float(v)} for k, v in values.items() if _finite(v)}
        if results:
            # Low error green, high red (Model Explorer maps stop 0 to the smallest value, 1 to the largest).
            found[_label(t)] = {"results": results,
                                "gradient": [{"stop": 0, "bgColor": "#e6f4ea"}, {"stop": 0.5, "bgColor": "#fde293"},
                                             {"stop": 1, "bgColor": "#f28b82"}]}
    return found


def write_model_explorer(report: Mapping[str, Any], path: str | Path) -> list[Path]:
    """FILE.json: the first target's node data; with several targets, each also in FILE.TARGET-VARIANT.json.
    Returns the files written."""
    path = Path(path)
    data = model_explorer_data(report)
    written = []
    if not data:
        path.write_text(json.dumps({"results": {}}, indent=2) + "\n")
        return [path]
    first = next(iter(data.values()))
    path.write_text(json.dumps(first, indent=2, sort_keys=True) + "\n")
    written.append(path)
    if len(data) > 1:
        for label, d in data.items():
            p = path.with_name(f"{path.stem}.{label.replace(':', '-')}{path.suffix or '.json'}")
            p.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
            written.append(p)
    return written
