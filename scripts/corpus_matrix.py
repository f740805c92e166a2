"""Run every corpus model through every target that applies, with the `tapeout` CLI.

    .venv/bin/python scripts/corpus_matrix.py                 # the whole matrix (make corpus)
    .venv/bin/python scripts/corpus_matrix.py --fast          # the subset make test runs
    .venv/bin/python scripts/corpus_matrix.py --only NAME -t tflite:int8   # one cell
    .venv/bin/python scripts/corpus_matrix.py --materialize NAME DIR       # refilled model + data only

Each model is refilled (tests/corpus/refill.py) into a work folder with calibration.npz and
eval.npz keyed by the source's input names, then compiled with `tapeout compile --json` (a
subprocess, as a user would). Cells:

- pass: exit 0 and the target's verification passed (compile verifies every artifact against
  the source run in its own framework: onnxruntime for ONNX, Keras/tf-keras for Keras);
- refused: exit 2 with a one-line message that names the op/layer;
- fail: anything else (the exit code and the one-line error are recorded).

The non-hls4ml targets run in one command; when it exits with neither 0 nor 1 each target is
rerun alone so every cell has its own verdict. hls4ml runs alone. Results go to
tests/corpus/results.json (full runs) and the table into docs/corpus.md between markers.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"
RESULTS = CORPUS / "results.json"
DOC = ROOT / "docs" / "corpus.md"
PY = ROOT / ".venv" / "bin" / "python"
TAPEOUT = ROOT / ".venv" / "bin" / "tapeout"
TARGET_ORDER = ["onnx", "tflite:fp32", "tflite:int8", "tensorrt:fp16", "hls4ml"]
# A refusal must say what it refuses.
_NAMES_OP = re.compile(r"\b(op|operator|layer|node)\b", re.IGNORECASE)
TIMEOUT_S = int(os.environ.get("CORPUS_TIMEOUT_S", "1200"))


def refill_module():
    spec = importlib.util.spec_from_file_location("corpus_refill", CORPUS / "refill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    env.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    # One worker's tools should not take both cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    # Every cell is a measurement: built, never restored from (or stored in) the build cache.
    env["TAPEOUT_NO_CACHE"] = "1"
    return env


def materialize(name: str, workdir: Path) -> dict:
    """Refill one model in a subprocess (Keras/TF stay out of this process); returns paths."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(PY), str(Path(__file__).resolve()), "--materialize", name, str(workdir)],
                          capture_output=True, text=True, env=_env(), timeout=TIMEOUT_S)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"refill failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_cmd(paths: dict, targets: list[str], out: Path) -> list[str]:
    cmd = [str(TAPEOUT), "compile", paths["model"]]
    if paths.get("weights"):
        cmd += ["--weights", paths["weights"]]
    for t in targets:
        cmd += ["-t", t]
    cmd += ["-o", str(out), "--calibration", paths["calibration"], "--eval", paths["eval"], "--json", "--no-timings"]
    return cmd


def _one_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    err = [l for l in lines if l.startswith("tapeout: error:")]
    return (err[-1] if err else lines[-1] if lines else "").strip()[:400]


def _target_key(t: dict) -> str:
    return t["target"] if t["target"] == "hls4ml" else f"{t['target']}:{t['variant']}"


def _verification_line(v: dict | None) -> str:
    if not v:
        return "no verification"
    bits = []
    for k in ("max_abs_err", "cosine", "top1_agreement"):
        if v.get(k) is not None:
            bits.append(f"{k} {v[k]:.4g}")
    return "verification failed: " + ", ".join(bits)


def run_compile(paths: dict, targets: list[str], out: Path) -> dict[str, dict]:
    """One tapeout command; returns a cell per target."""
    cmd = compile_cmd(paths, targets, out)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=TIMEOUT_S)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        rc, stdout, stderr = "timeout", "", f"timed out after {TIMEOUT_S}s"
    seconds = round(time.time() - t0, 1)
    repro = shlex.join(cmd)
    cells = {}
    report = None
    if rc in (0, 1):
        try:
            report = json.loads(stdout)
        except json.JSONDecodeError:
            report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None
    for t in targets:
        cell = {"exit": rc, "seconds": seconds, "command": repro}
        if report is not None:
            found = next((x for x in report["targets"] if _target_key(x) == (t if ":" in t or t == "hls4ml"
                                                                                else f"{t}:fp32")), None)
            v = found.get("verification") if found else None
            if found is not None and v and v.get("passed"):
                cell.update(status="pass")
            elif found is not None and v is None and rc == 0:
                cell.update(status="pass", note="no verification")
            else:
                cell.update(status="fail", error=_verification_line(v) if found else "target missing from report")
        elif rc == 2:
            msg = _one_line(stderr)
            cell.update(status="refused" if _NAMES_OP.search(msg) else "fail", error=msg)
            if cell["status"] == "fail":
                cell["why"] = "exit 2 without naming an op"
        else:
            cell.update(status="fail", error=_one_line(stderr) or _one_line(stdout))
        cells[t] = cell
    return cells


def run_model(entry: dict, workdir: Path, targets: list[str] | None = None, log=print) -> dict:
    """Materialize and compile one model; returns {"model", "seconds", "cells": {target: cell}}."""
    t0 = time.time()
    wanted = [t for t in entry["targets"] if targets is None or t in targets]
    result = {"model": entry["name"], "family": entry["family"], "cells": {}}
    try:
        paths = materialize(entry["name"], workdir)
    except Exception as exc:  # a corpus-side error: every cell fails, recorded
        for t in wanted:
            result["cells"][t] = {"status": "fail", "exit": None, "error": str(exc)[:400],
                                  "command": f"{PY} scripts/corpus_matrix.py --materialize {entry['name']} {workdir}"}
        result["seconds"] = round(time.time() - t0, 1)
        return result
    result["refill_seconds"] = round(time.time() - t0, 1)
    plain = [t for t in wanted if t != "hls4ml"]
    if plain:
        cells = run_compile(paths, plain, workdir / "out")
        if len(plain) > 1 and any(c["exit"] not in (0, 1) for c in cells.values()):
            cells = {}
            for t in plain:
                cells.update(run_compile(paths, [t], workdir / f"out-{t.replace(':', '-')}"))
        result["cells"].update(cells)
    if "hls4ml" in wanted:
        result["cells"].update(run_compile(paths, ["hls4ml"], workdir / "out-hls4ml"))
    # Commands that reproduce each cell anywhere: refill into /tmp/corpus/NAME, then compile.
    fixed = f"/tmp/corpus/{entry['name']}"
    for c in result["cells"].values():
        c["command"] = c["command"].replace(str(workdir), fixed)
        c["repro"] = (f".venv/bin/python scripts/corpus_matrix.py --materialize {entry['name']} {fixed} && "
                      + c["command"].replace(str(TAPEOUT), ".venv/bin/tapeout").replace(" --json", ""))
    result["seconds"] = round(time.time() - t0, 1)
    log(f"{entry['name']:<48} " + " ".join(f"{t}={c['status']}" for t, c in result["cells"].items())
        + f"  ({result['seconds']}s)")
    for t, c in result["cells"].items():
        if c["status"] != "pass":
            log(f"    {t}: exit {c['exit']}: {c.get('error', '')}")
    return result


def reclassify(results: list[dict]) -> None:
    """Apply the current refusal rule to stored exit-2 cells (results of older runs)."""
    for r in results:
        for c in r["cells"].values():
            if c.get("exit") == 2:
                named = bool(_NAMES_OP.search(c.get("error", "")))
                c["status"] = "refused" if named else "fail"
                if not named:
                    c["why"] = "exit 2 without naming an op"
                else:
                    c.pop("why", None)


def totals(results: list[dict]) -> dict:
    tot = {t: {"pass": 0, "refused": 0, "fail": 0} for t in TARGET_ORDER}
    for r in results:
        for t, c in r["cells"].items():
            tot[t][c["status"]] += 1
    return tot


def table(results: list[dict]) -> str:
    sym = {"pass": "pass", "refused": "refused", "fail": "**FAIL**"}
    lines = ["| model | family | " + " | ".join(TARGET_ORDER) + " |",
             "|---|---|" + "---|" * len(TARGET_ORDER)]
    for r in sorted(results, key=lambda r: (r["family"], r["model"])):
        cells = []
        for t in TARGET_ORDER:
            c = r["cells"].get(t)
            cells.append("" if c is None else sym[c["status"]] + (f" (exit {c['exit']})" if c["status"] == "fail" else ""))
        lines.append(f"| {r['model']} | {r['family']} | " + " | ".join(cells) + " |")
    tot = totals(results)
    lines += ["", "| totals | " + " | ".join(TARGET_ORDER) + " |", "|---|" + "---|" * len(TARGET_ORDER)]
    for k in ("pass", "refused", "fail"):
        lines.append(f"| {k} | " + " | ".join(str(tot[t][k]) for t in TARGET_ORDER) + " |")
    notes = []
    for r in sorted(results, key=lambda r: r["model"]):
        for t in TARGET_ORDER:
            c = r["cells"].get(t)
            if c and c["status"] != "pass":
                notes.append(f"- `{r['model']}` / `{t}`: {c['status']}, exit {c['exit']}: {c.get('error', '')}")
    if notes:
        lines += ["", "Refusals and failures:", "", *notes]
    return "\n".join(lines)


def write_doc(results: list[dict], header: str) -> None:
    text = DOC.read_text() if DOC.is_file() else ""
    begin, end = "<!-- matrix:begin -->", "<!-- matrix:end -->"
    block = f"{begin}\n{header}\n\n{table(results)}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def write_failures(results: list[dict], path: Path, header: str) -> None:
    """The open failures, one block per cell, with the command that reproduces it."""
    lines = ["# Corpus matrix: open failures", "", header, "",
             "Each block: model / target, exit code, the one-line error, and the command that reproduces it "
             "(run from the repository root). Written by scripts/corpus_matrix.py --failures; see docs/corpus.md.", ""]
    n = 0
    for r in sorted(results, key=lambda r: (r["family"], r["model"])):
        for t in TARGET_ORDER:
            c = r["cells"].get(t)
            if not c or c["status"] == "pass":
                continue
            if c["status"] == "refused":
                continue
            n += 1
            if "repro" not in c:  # results of an older run: derive it
                cmd = re.sub(r"\S*/" + re.escape(r["model"]) + r"(?=/)", f"/tmp/corpus/{r['model']}", c["command"])
                c["repro"] = (f".venv/bin/python scripts/corpus_matrix.py --materialize {r['model']} "
                              f"/tmp/corpus/{r['model']} && "
                              + cmd.replace(str(TAPEOUT), ".venv/bin/tapeout").replace(" --json", ""))
            lines += [f"## {r['model']} / {t}  ({r['family']})", "",
                      f"- exit {c['exit']}: {c.get('error', '')}" + (f" ({c['why']})" if c.get("why") else ""),
                      f"- reproduce: `{c.get('repro', c['command'])}`", ""]
    refusals = [(r["model"], t, c) for r in results for t, c in r["cells"].items() if c["status"] == "refused"]
    if refusals:
        lines += ["## Refusals (exit 2 naming the op; allowed, listed for the FPGA/TFLite owners)", ""]
        lines += [f"- {m} / {t}: {c.get('error', '')}" for m, t, c in sorted(refusals)]
    by_kind: dict[str, int] = {}
    for r in results:
        for t, c in r["cells"].items():
            if c["status"] == "fail":
                kind = f"{t}, exit {c['exit']}" + (": verification" if c["exit"] == 1 else "")
                by_kind[kind] = by_kind.get(kind, 0) + 1
    summary = [f"{n} failing cells: " + "; ".join(f"{k} x{v}" for k, v in sorted(by_kind.items())) + "."]
    lines[3:3] = summary
    path.write_text("\n".join(lines) + "\n")


def select(models: list[dict], args) -> list[dict]:
    out = []
    for e in models:
        if args.only and e["name"] not in args.only:
            continue
        if args.fast and not e.get("fast"):
            continue
        if args.family and not any(f in e["family"] for f in args.family):
            continue
        if args.skip_heavy and e.get("heavy"):
            continue
        out.append(e)
    return out


def merge_results(old: list[dict], newer: list[dict]) -> list[dict]:
    """``old`` with ``newer``'s cells in place of the same model's and target's (a re-run of one
    target leaves the model's other cells as they were), sorted by model."""
    by_model = {r["model"]: r for r in old}
    for r in newer:
        prior = by_model.get(r["model"])
        by_model[r["model"]] = r if prior is None else {**prior, **{k: v for k, v in r.items() if k != "cells"},
                                                        "cells": {**prior["cells"], **r["cells"]}}
    return sorted(by_model.values(), key=lambda r: r["model"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="model name (repeatable)")
    ap.add_argument("--family", action="append", help="substring of the family (repeatable)")
    ap.add_argument("--fast", action="store_true", help="only the models marked fast")
    ap.add_argument("--skip-heavy", action="store_true")
    ap.add_argument("-t", "--target", action="append", choices=TARGET_ORDER)
    ap.add_argument("--jobs", type=int, default=2, help="models compiled at once (at most 2)")
    ap.add_argument("--workdir", help="keep the refilled models and outputs here (default: a temp folder)")
    ap.add_argument("--results", help=f"results JSON (default {RESULTS.relative_to(ROOT)} for a full run)")
    ap.add_argument("--merge", action="store_true", help="update the results file's entries for the models run")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite the table in docs/corpus.md")
    ap.add_argument("--failures", metavar="MD", help="write the failing cells (of the results file when merging) "
                    "with reproduction commands to this markdown file")
    ap.add_argument("--report-only", action="store_true", help="rewrite docs/corpus.md's table (and --failures) "
                    "from tests/corpus/results.json without running anything")
    ap.add_argument("--merge-from", action="append", metavar="JSON",
                    help="with --report-only: first merge this results file (from --results) into the results")
    ap.add_argument("--materialize", nargs=2, metavar=("NAME", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    R = refill_module()
    manifest = R.load_manifest()
    if args.materialize:
        name, d = args.materialize
        entry = next((e for e in manifest["models"] if e["name"] == name), None)
        if entry is None:
            print(f"no model {name!r} in the manifest", file=sys.stderr)
            return 2
        paths = R.materialize(entry, d)
        print(json.dumps({k: str(v) for k, v in paths.items() if v is not None}))
        return 0
    if args.report_only:  # rewrite the table (and failures) from the results file
        data = json.loads(RESULTS.read_text())
        reran = []
        for extra in args.merge_from or []:  # results of partial runs written elsewhere
            newer = json.loads(Path(extra).read_text())["results"]
            data["results"] = merge_results(data["results"], newer)
            reran += [f"{r['model']} ({', '.join(sorted(r['cells']))})" for r in newer]
        known = {e["name"] for e in manifest["models"]}
        data["results"] = [r for r in data["results"] if r["model"] in known]
        reclassify(data["results"])
        data["totals"] = totals(data["results"])
        data["models"] = len(data["results"])
        if reran:
            data["header"] = (f"{data.get('header', '').rstrip()} Re-run "
                              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} and merged cell by cell: "
                              f"{'; '.join(reran)}.").strip()
        RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        write_doc(data["results"], data.get("header", f"{data['models']} models."))
        if args.failures:
            write_failures(data["results"], Path(args.failures), data.get("header", ""))
        return 0
    models = select(manifest["models"], args)
    full = not (args.only or args.family or args.fast or args.skip_heavy or args.target)
    jobs = max(1, min(args.jobs, 2))
    workroot = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tapeout-corpus-"))
    t0 = time.time()
    results = []
    # Heaviest first so the two workers finish together.
    order = sorted(models, key=lambda e: (not e.get("heavy"), e["name"]))
    # Every finished model is kept at once: an interrupted run (a heavy one takes hours) leaves
    # what it finished for `--report-only --merge-from PARTIAL`.
    partial = workroot / "partial-results.json"
    print(f"finished models are written to {partial} as they end", flush=True)
    with cf.ThreadPoolExecutor(jobs) as pool:
        futs = [pool.submit(run_model, e, workroot / e["name"], args.target) for e in order]
        for f in cf.as_completed(futs):
            results.append(f.result())
            partial.write_text(json.dumps({"results": sorted(results, key=lambda r: r["model"])},
                                          indent=1, sort_keys=True) + "\n")
    wall = round(time.time() - t0, 1)
    results.sort(key=lambda r: r["model"])
    out_path = Path(args.results) if args.results else (RESULTS if full or args.merge else None)
    if out_path is not None:
        if args.merge and out_path.is_file():
            old = json.loads(out_path.read_text())
            known = {e["name"] for e in manifest["models"]}  # drop models no longer in the corpus
            results_all = [r for r in merge_results(old["results"], results) if r["model"] in known]
            reclassify(results_all)
        else:
            results_all = results
        header = (f"{'Last full run' if full else 'Results'}: {len(results_all)} models, {jobs} workers"
                  + (f", {wall / 60:.1f} min wall" if not args.merge else " (partial runs merged)")
                  + f", {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
        data = {"wall_seconds": wall if not args.merge else None, "jobs": jobs, "models": len(results_all),
                "header": header, "totals": totals(results_all), "results": results_all}
        out_path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        if not args.no_doc and out_path == RESULTS:
            write_doc(results_all, header)
        if args.failures:
            write_failures(results_all, Path(args.failures),
                           f"From {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path} "
                           f"({len(results_all)} models), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    elif args.failures:
        write_failures(results, Path(args.failures), f"{len(results)} models, "
                       f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    if not args.workdir:
        shutil.rmtree(workroot, ignore_errors=True)
    tot = totals(results)
    print(f"\n{len(results)} models in {wall:.0f}s")
    for t in TARGET_ORDER:
        print(f"  {t:<14} pass {tot[t]['pass']:>3}  refused {tot[t]['refused']:>3}  fail {tot[t]['fail']:>3}")
    fails = sum(tot[t]["fail"] for t in TARGET_ORDER)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
