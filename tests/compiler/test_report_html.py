"""OUTDIR/report.html (issue 15 s4): self-contained, deterministic, every section, and it opens in a real
headless Chromium with no console errors and no network requests (a screenshot goes to tmp_path).
Also --model-explorer's node data against Model Explorer's documented format."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest

from tapeout.compiler.cli import main
from tapeout.compiler.report_html import environment, model_explorer_data, render, write_model_explorer

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "digits_cnn"
TARGETS = ("tflite:int8", "onnx:int8", "onnx")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAYERS = ["conv1", "conv2", "pool", "conv3", "gap", "fc1", "probabilities"]


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main([str(a) for a in argv], out, err), out.getvalue(), err.getvalue()


def _compile(outdir: Path) -> Path:
    args = ["compile", SAMPLE / "model.keras", "-o", outdir, "--calibration", SAMPLE / "calibration.npz",
            "--eval", SAMPLE / "eval.npz", "--no-timings", "--trace"]
    for t in TARGETS:
        args += ["-t", t]
    code, out, err = run_cli(*args)
    assert code == 0, out + err
    return outdir


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    return _compile(tmp_path_factory.mktemp("report_html") / "out")


def with_trace(report: dict) -> dict:
    """The report with a hand-made trace block per target (the --trace schema of docs/report.md)."""
    r = copy.deepcopy(report)
    for k, t in enumerate(r["targets"]):
        layers = [{"name": n, "op": "Conv", "index": i, "max_abs": 1e-3 * (i + 1) * (k + 1),
                   "mean_abs": 1e-4 * (i + 1), "sqnr_db": 45.0 - 3 * i - k, "cosine": 0.9999,
                   "rmse_over_scale": 0.29 + 0.01 * i} for i, n in enumerate(LAYERS)]
        t["trace"] = {"layers": layers, "untraced": None,
                      "first_jump": {"name": "conv3", "metric": "sqnr_db", "suggestion": "--keep-float conv3"}}
    r["pruning"] = {"spec": "magnitude:auto", "before": {"params": 16810, "macs": 456832},
                    "after": {"params": 16810, "nonzero_params": 8405, "macs": 456832}, "one_shot": True,
                    "layers": [{"name": n, "op": "Conv", "shape_before": [3, 3], "shape_after": [3, 3],
                                "sparsity_before": 0.0, "sparsity_after": 0.5, "macs_before": 10,
                                "macs_after": 10} for n in LAYERS[:3]],
                    "search": {"kind": "magnitude", "max_accuracy_drop": 1.0, "baseline_accuracy": 0.9889,
                               "chosen": 0.5, "curve": [
                                   {"sparsity": s, "accuracy": a, "drop_pt": (0.9889 - a) * 100,
                                    "within_budget": (0.9889 - a) * 100 <= 1.0}
                                   for s, a in ((0.25, 0.9889), (0.5, 0.9861), (0.75, 0.95))]}}
    return r


def test_written_beside_report_json(build):
    page = (build / "report.html").read_text()
    report = json.loads((build / "report.json").read_text())
    assert page.startswith("<!DOCTYPE html>")
    assert page == render(report)  # written from the same dict
    for t in report["targets"]:
        assert f"{t['target']}:{t['variant']}" in page
    # Quantization ranges per layer, from report.json's quantization.ranges.
    ranges = report["targets"][0]["quantization"]["ranges"]
    assert ranges and {"tensor", "dtype", "min", "max", "scale", "zero_point"} <= set(ranges[0])
    assert all(r["max"] >= r["min"] for r in ranges)
    assert "Quantization ranges per layer" in page and ranges[-1]["tensor"] in page
    assert "expected error from" in page and "int8 output scale" in page


def test_deterministic(build, tmp_path):
    again = _compile(tmp_path / "again")
    assert (again / "report.html").read_bytes() == (build / "report.html").read_bytes()
    report = with_trace(json.loads((build / "report.json").read_text()))
    first = render(report)
    assert render(report) == first
    assert "tapeout-chart-1" in first and not re.search(r'id="[0-9a-f]{8}-[0-9a-f]{4}-', first)


def test_self_contained_and_small(build, tmp_path):
    page = render(with_trace(json.loads((build / "report.json").read_text())))
    size = len(page.encode())
    assert size < 5_000_000, f"{size} bytes"
    # Nothing fetched: no external script, stylesheet, image or font (plotly.js's own text holds URLs in
    # strings it never loads; the browser test checks requests).
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)
    assert not re.search(r'<script[^>]+src=', page)
    assert not re.search(r'<link[^>]+href=', markup)
    assert not re.search(r'(src|href)="(https?:)?//', markup)
    assert page.count("tapeout-chart-") >= 4  # SQNR, max abs, pruning curve, sparsity


def test_sections(build):
    report = with_trace(json.loads((build / "report.json").read_text()))
    page = render(report)
    for heading in ("Summary", "Accuracy and error against the source, per target", "Per-layer error (trace)",
                    "Quantization ranges per layer", "Pruning", "Environment"):
        assert f"<h2>{heading}</h2>" in page
    assert "--keep-float conv3" in page
    for name, version in environment():
        assert f"<td>{name}</td><td>{version}</td>" in page
    assert ("numpy", metadata.version("numpy")) in environment()
    assert ("tapeout", metadata.version("tapeout")) in environment()
    # The trace plot: one line per target, layers in graph order.
    m = re.search(r'"categoryarray":\[([^\]]*)\]', page)
    assert m and json.loads(f"[{m.group(1)}]") == LAYERS
    assert page.count('"mode":"lines+markers"') >= 2 * len(report["targets"])


def test_real_trace_plotted(build):
    """The build's own --trace block: every traced layer of every target on the plot's x axis, in graph order."""
    report = json.loads((build / "report.json").read_text())
    page = (build / "report.html").read_text()
    assert len(page.encode()) < 5_000_000
    m = re.search(r'"categoryarray":\[([^\]]*)\]', page)
    axis = json.loads(f"[{m.group(1)}]")
    for t in report["targets"]:
        names = [lay["name"] for lay in t["trace"]["layers"]]
        assert names and all(n in axis for n in names)
        assert [axis.index(n) for n in names] == sorted(axis.index(n) for n in names)
        assert f'"name":"{t["target"]}:{t["variant"]}"' in page


def test_hls4ml_section():
    report = {"source": {"path": "m.keras"}, "passed": True, "targets": [
        {"target": "hls4ml", "variant": "vitis", "artifacts": [], "verification": None, "notes": [],
         "hls4ml": {"part": "xcvu13p", "clock_period_ns": 5.0, "io_type": "parallel", "strategy": "latency",
                    "precision": {"mode": "auto"},
                    "layers": [{"layer": "fc1", "kind": "dense",
                                "types": {"result": "ap_fixed<11,4,AP_RND,AP_SAT>", "weight": "ap_fixed<8,2>"},
                                "range": 4.0, "max_abs_error": 0.006, "rel_rms_error": 0.002,
                                "estimate": {"reuse_factor": 2, "multipliers": 144, "dsp": 72, "bram18": 0,
                                             "latency_cycles": 65, "interval_cycles": 64}}]}}]}
    page = render(report)
    assert "<h2>hls4ml precision per layer, with estimates</h2>" in page
    assert "ap_fixed&lt;11,4,AP_RND,AP_SAT&gt;" in page and "<td class=n>72</td>" in page


# ------------------------------------------------------------------ browser
def _chromium_load(page: Path, profile: Path, screenshot: Path) -> dict:
    """Open ``page`` in headless Chromium over the DevTools protocol; console errors, exceptions,
    every request's URL, the number of plotly charts drawn, and a screenshot."""
    websocket = pytest.importorskip("websocket", reason="websocket-client (test extra) drives Chromium")
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "--window-size=1400,1000", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            url = m.group(1) if m else None
            if not line and proc.poll() is not None:
                break
        assert url, "Chromium did not start its DevTools endpoint"
        ws = websocket.create_connection(url, timeout=60, suppress_origin=True)  # Chromium refuses foreign origins
        ids = iter(range(1, 10_000))
        events: list[dict] = []

        def send(method: str, params: dict | None = None, session: str | None = None) -> dict:
            n = next(ids)
            msg = {"id": n, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            ws.send(json.dumps(msg))
            while True:
                got = json.loads(ws.recv())
                if got.get("id") == n:
                    assert "error" not in got, got
                    return got["result"]
                events.append(got)

        target = send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            send(f"{domain}.enable", session=session)
        events.clear()
        send("Page.navigate", {"url": page.as_uri()}, session=session)
        deadline = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in events) and time.monotonic() < deadline:
            events.append(json.loads(ws.recv()))
        time.sleep(1.0)  # plotly draws after load
        charts = send("Runtime.evaluate", {"expression": "document.querySelectorAll('.js-plotly-plot .main-svg')"
                                           ".length > 0 ? document.querySelectorAll('.js-plotly-plot').length : 0",
                                           "returnByValue": True}, session=session)["result"]["value"]
        shot = send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        ws.settimeout(0.5)
        try:
            while True:
                events.append(json.loads(ws.recv()))
        except websocket.WebSocketTimeoutException:
            pass
        ws.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    mine = [e for e in events if e.get("sessionId") == session]
    errors = [e["params"] for e in mine if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")]
    requests = [e["params"]["request"]["url"] for e in mine if e.get("method") == "Network.requestWillBeSent"]
    return {"errors": errors, "requests": requests, "charts": charts}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_opens_in_headless_chromium(build, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render(with_trace(json.loads((build / "report.json").read_text()))))
    screenshot = tmp_path / "report.png"
    got = _chromium_load(page, tmp_path / "profile", screenshot)
    assert got["errors"] == []
    # The page itself is the only request: no CDN, no fonts, no beacons.
    assert got["requests"] == [page.as_uri()]
    assert got["charts"] == 4
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


# ------------------------------------------------------------ Model Explorer
def _check_node_data(d: dict) -> None:
    """Model Explorer's GraphNodeData (node_data_builder.py): results keyed by node id or output tensor
    name, each {"value": number}; an optional gradient of {stop in [0, 1], bgColor} with stops 0 and 1."""
    assert set(d) <= {"results", "thresholds", "gradient"}
    assert isinstance(d["results"], dict) and d["results"]
    for key, res in d["results"].items():
        assert isinstance(key, str) and set(res) <= {"value", "bgColor", "textColor"}
        assert isinstance(res["value"], (int, float))
    stops = [g["stop"] for g in d["gradient"]]
    assert stops == sorted(stops) and stops[0] == 0 and stops[-1] == 1
    assert all(re.fullmatch(r"#[0-9a-f]{6}", g["bgColor"]) for g in d["gradient"])


def test_model_explorer_from_trace(build, tmp_path):
    report = with_trace(json.loads((build / "report.json").read_text()))
    data = model_explorer_data(report)
    assert list(data) == ["tflite:int8", "onnx:int8", "onnx:fp32"]
    for label, d in data.items():
        _check_node_data(d)
        assert list(d["results"]) == LAYERS
    assert data["onnx:int8"]["results"]["conv3"]["value"] == pytest.approx(1e-3 * 4 * 2)
    written = write_model_explorer(report, tmp_path / "me.json")
    assert [p.name for p in written] == ["me.json", "me.tflite-int8.json", "me.onnx-int8.json", "me.onnx-fp32.json"]
    assert json.loads(written[0].read_text()) == data["tflite:int8"]


def test_model_explorer_without_trace_from_verify_outdir(build, tmp_path):
    """No trace: the outputs' errors, keyed by output name; written by `verify OUTDIR --model-explorer`."""
    path = tmp_path / "nodes.json"
    code, out, err = run_cli("verify", SAMPLE / "model.keras", build, "--data", SAMPLE / "eval.npz",
                             "--model-explorer", path)
    assert code == 0, out + err
    d = json.loads(path.read_text())
    _check_node_data(d)
    report = json.loads((build / "report.json").read_text())
    assert d["results"] == {"probabilities": {"value": report["targets"][0]["verification"]["max_abs_err"]}}
