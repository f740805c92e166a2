"""The `tapeout` command: a thin layer over tapeout.compiler.api.

Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 missing tool,
4 internal error (a bug: rerun with --debug for the traceback), 130 interrupted.
Nothing heavy is imported at module level: `tapeout --help` must stay instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence, TextIO

from tapeout.compiler.version import __version__

EXIT_OK, EXIT_VERIFY, EXIT_USAGE, EXIT_TOOL, EXIT_INTERNAL = 0, 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"tapeout: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tapeout", description="Compile trained Keras/ONNX models into verified deployment "
                "artifacts (ONNX, TFLite, TensorRT, hls4ml).",
                epilog="exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 missing tool, "
                       "4 internal error")
    p.add_argument("--version", action="version", version=f"tapeout {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("compile", parents=[common], help="compile a model for one or more targets and verify each artifact")
    c.add_argument("model", metavar="MODEL", help=".keras, Keras 2 .h5, architecture .json (with --weights) or .onnx")
    c.add_argument("--weights", metavar="W", help="weights .h5 for an architecture .json")
    c.add_argument("-t", "--target", dest="targets", action="append", metavar="TARGET[:VARIANT]", required=True,
                   help="repeatable; `tapeout targets` lists them (onnx = onnx:fp32)")
    c.add_argument("-o", "--output", dest="outdir", metavar="OUTDIR", required=True,
                   help="artifacts go to OUTDIR/TARGET-VARIANT/, the report to OUTDIR/report.json")
    c.add_argument("--calibration", metavar="DATA",
                   help=".npz/.npy calibration inputs for quantized targets (int8 needs them), or 'synthetic' "
                        "for random inputs (the report says so)")
    c.add_argument("--calibration-method", choices=("minmax", "percentile", "entropy"), default="minmax",
                   help="how activation ranges are chosen from the calibration data (default minmax)")
    c.add_argument("--percentile", type=float, metavar="P",
                   help="with --calibration-method percentile: keep the (100-P)..P percentiles (default 99.99)")
    c.add_argument("--keep-float", action="append", default=[], metavar="LAYER",
                   help="leave this layer in float in quantized targets (repeatable)")
    c.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="int8/int16x8: leave the conv/dense biases as trained (by default they absorb the mean "
                        "offset that rounding the weights causes, measured on the calibration data)")
    c.add_argument("--io", choices=("float", "int8", "uint8", "int16"),
                   help="input/output type of the integer tflite variants: float (default), int8 or uint8 "
                        "(tflite:int8), int16 (tflite:int16x8); the runner still takes and gives floats")
    c.add_argument("--io-layout", choices=("source", "channels-last"),
                   help="layout of a channels-first (NCHW) source's rank-3/4/5 inputs and outputs in the "
                        "artifacts: channels-last (NHWC; default for tflite) or source (default for the others); "
                        "data files and verify keep the source's layout")
    c.add_argument("--target-option", dest="target_options", action="append", default=[],
                   metavar="TARGET[:VARIANT].KEY=VALUE",
                   help="an option for one target's emitter, e.g. tflite.c_array=false or onnx.opset=18 "
                        "(VALUE read as JSON when it parses, else as text; repeatable)")
    c.add_argument("--eval", dest="eval_data", metavar="DATA", help=".npz with inputs and optional labels y")
    _hls4ml_flags(c)
    _tensorrt_flags(c)
    c.add_argument("--prune", metavar="SPEC",
                   help="prune after the default passes: magnitude:S (unstructured, fraction S of the weights; "
                        "end layers stay dense while under 10%% of the weights, :all prunes them, :keep-ends "
                        "keeps them), "
                        "channels:R (remove fraction R of the channels), 2:4 (N:M sparsity), auto or "
                        "channels:auto (the largest within --max-accuracy-drop on the --eval labels); "
                        "artifacts are then verified against the pruned graph")
    c.add_argument("--prune-exclude", action="append", default=[], metavar="LAYER",
                   help="with --prune: leave this conv/dense layer (a name or a glob such as 'fc*') unpruned "
                        "(repeatable)")
    c.add_argument("--train", metavar="DATA",
                   help="with --prune: fine-tune the pruned model on this .npz (inputs and labels y, as --eval), "
                        "pruned weights held at zero, seeded")
    c.add_argument("--epochs", type=int, metavar="N",
                   help="with --train: exactly N epochs on all the data; without it, train until within "
                        "--max-accuracy-drop (default 1 point) of unpruned on a held-out fifth, or no longer "
                        "improving (at most 100 epochs; a missed budget is exit 1)")
    c.add_argument("--learning-rate", type=float, metavar="LR",
                   help="fine-tuning learning rate (Adam) with --train (default 1e-3 with --epochs, else 3e-3, "
                        "halved on plateaus)")
    c.add_argument("--max-accuracy-drop", type=float, metavar="P",
                   help="fail (exit 1) when a quantized artifact loses more than P percentage points of top-1 "
                        "accuracy on the --eval labels; with --prune --train and no --epochs, also the "
                        "fine-tuning budget (default 1)")
    c.add_argument("--fallback", action="store_true",
                   help="keep the most sensitive layers of quantized targets in float until the accuracy budget "
                        "(or, without one, cosine/top-1 agreement >= 0.99) holds")
    _tolerance_flags(c)
    c.add_argument("--no-verify", action="store_true", help="emit artifacts without running them")
    _trace_flag(c)
    c.add_argument("--no-timings", action="store_true",
                   help="write seconds as null so identical builds give byte-identical reports")
    c.add_argument("--model-explorer", metavar="FILE.json",
                   help="also write per-node error in Google Model Explorer's node-data format (docs/report.md)")
    shown = c.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    shown.add_argument("--quiet", action="store_true", help="print nothing on success (errors and failed "
                       "verifications: one line on stderr), for build tools")
    c.add_argument("--depfile", metavar="FILE", help="also write a Make-format depfile (gcc -MD -MP style): "
                   "OUTDIR/report.json depends on every file the compile read (docs/cli.md#build-tools)")
    _cache_flags(c)

    b = sub.add_parser("build", parents=[common], help="build the models of a tapeout.toml project (cached, "
                       "-j parallel targets)")
    b.add_argument("names", nargs="*", metavar="NAME", help="models to build (default: all)")
    b.add_argument("-f", "--file", dest="project", default="tapeout.toml", metavar="PROJECT",
                   help="the project file (default tapeout.toml)")
    b.add_argument("--dry-run", action="store_true", help="print what would be rebuilt and why; build nothing")
    b.add_argument("--no-timings", action="store_true",
                   help="write seconds as null so identical builds give byte-identical reports")
    shown_b = b.add_mutually_exclusive_group()
    shown_b.add_argument("--json", action="store_true", help="print every model's report as JSON")
    shown_b.add_argument("--quiet", action="store_true", help="print nothing on success")
    b.add_argument("--depfile", metavar="FILE", help="also write a Make-format depfile: the project's stamp "
                   "(.tapeout/stamp.json beside the project file) depends on every file the build read")
    _cache_flags(b)

    k = sub.add_parser("cache", parents=[common], help="the content-addressed build cache: info, clear, prune")
    k.add_argument("action", choices=("info", "clear", "prune"))
    k.add_argument("--max-size", metavar="SIZE", help="prune: evict least recently used entries until the "
                   "cache holds at most SIZE (e.g. 500M, 2G)")
    k.add_argument("--json", action="store_true", help="print the result as JSON")

    i = sub.add_parser("inspect", parents=[common], help="show the imported graph: nodes, shapes, parameters, MACs")
    i.add_argument("model", metavar="MODEL")
    i.add_argument("--weights", metavar="W")
    i.add_argument("--optimize", action="store_true", help="show the graph after the default passes")
    i.add_argument("--dump", action="store_true", help="print the IR text form instead of the table")
    i.add_argument("--json", action="store_true")

    v = sub.add_parser("verify", parents=[common], help="compare an artifact, or every artifact of a build, "
                       "against its source model")
    v.add_argument("source", metavar="SOURCE")
    v.add_argument("artifact", metavar="ARTIFACT|OUTDIR",
                   help="an artifact file, an hls4ml project folder, or the OUTDIR of a compile (every artifact "
                        "its report.json lists is verified, as compile verifies it)")
    v.add_argument("--weights", metavar="W", help="weights .h5 when SOURCE is an architecture .json")
    v.add_argument("--data", metavar="FILE", help=".npz/.npy inputs (synthetic when omitted)")
    _trace_flag(v)
    v.add_argument("--max-accuracy-drop", type=float, metavar="P",
                   help="with OUTDIR: fail (exit 1) when a quantized artifact loses more than P percentage points "
                        "of top-1 accuracy on the --data labels")
    v.add_argument("--model-explorer", metavar="FILE.json",
                   help="with OUTDIR: write per-node error in Model Explorer's node-data format")
    _tolerance_flags(v)
    v.add_argument("--json", action="store_true")

    t = sub.add_parser("targets", parents=[common], help="list targets, variants and whether their tools are installed")
    t.add_argument("--json", action="store_true")

    from tapeout.compiler.sweep.command import add_parser as add_sweep_parser  # standard library only

    add_sweep_parser(sub, common)
    return p


def _hls4ml_flags(p: argparse.ArgumentParser) -> None:
    h = p.add_argument_group("hls4ml target (docs/hls4ml.md)")
    h.add_argument("--precision", action="append", metavar="auto|TYPE|LAYER=TYPE",
                   help="auto (default: searched on the calibration data) or ap_fixed<W,I> for the model, "
                        "or LAYER=ap_fixed<W,I> for one layer (repeatable)")
    h.add_argument("--min-agreement", type=float, metavar="A", help="auto precision: top-1 agreement budget (0.995)")
    h.add_argument("--max-abs-error", type=float, metavar="E", help="auto precision: max |output error| budget")
    h.add_argument("--reuse-factor", action="append", metavar="N|LAYER=N", help="reuse factor, global or per layer")
    h.add_argument("--strategy", choices=("latency", "resource", "distributed_arithmetic"))
    h.add_argument("--io-type", choices=("parallel", "stream"))
    h.add_argument("--part", metavar="PART", help="FPGA part (default per back end)")
    h.add_argument("--clock-period", type=float, metavar="NS", help="target clock period in ns (default 5)")
    h.add_argument("--hls-config", metavar="FILE", help="TOML file with [layers.NAME] precision / reuse_factor")
    h.add_argument("--synth", action="store_true", help="run the back end's HLS synthesis (needs its tool on PATH)")


_HLS4ML_FLAGS = ("precision", "min_agreement", "max_abs_error", "reuse_factor", "strategy", "io_type", "part",
                 "clock_period", "hls_config", "synth")


def _tolerance_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--atol", type=float, metavar="X", help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, metavar="X", help="relative tolerance (default 1e-4); an element "
                   "passes when within atol OR rtol")


# ---------------------------------------------------------------- output
def _console(stream: TextIO):
    from rich.console import Console

    # Piped output (CI logs, build systems) gets a wide fixed width so table cells are never cut.
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    return Console(file=stream, highlight=False, soft_wrap=False, width=None if is_tty else 200)


def _fmt_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(x: float | None, spec: str = ".2e") -> str:
    return "-" if x is None else format(x, spec)


def print_compile_summary(report: Any, out: TextIO, footer: bool = True) -> None:
    from rich.table import Table

    con = _console(out)
    g = report.graph
    con.print(f"source  {report.source['path']} ({report.source['format']}), {g['source_nodes']} nodes "
              f"-> {g['nodes']} after passes, {g['params']:,} params, {g['macs']:,} MACs")
    changed = [p["name"] for p in report.passes if p["changed"]]
    con.print(f"passes  {', '.join(changed) if changed else 'nothing to change'}")
    pr = getattr(report, "pruning", None)
    if pr:
        b, a = pr["before"], pr["after"]
        con.print(f"prune   {pr['spec']}: params {b['params']:,} -> {a['params']:,} ({a['nonzero_params']:,} "
                  f"non-zero), MACs {b['macs']:,} -> {a['macs']:,} ({a['nonzero_macs']:,} with non-zero weights)"
                  + (", one-shot (no fine-tuning)" if pr["one_shot"] else ""), markup=False)
        for c in (pr.get("search") or {}).get("curve", []):
            con.print(f"search  {pr['search']['kind']}:{c['sparsity']:g} accuracy {c['accuracy']:.4f} "
                      f"(drop {c['drop_pt']:.2f} pt, {'within' if c['within_budget'] else 'over'} budget)",
                      markup=False)
        ft = pr.get("fine_tuning")
        if ft and ft.get("curve"):  # until done: the validation run, in one line
            v, c = ft["validation"], ft["curve"]
            accs = [e["val_accuracy"] for e in c if e["val_accuracy"] is not None]
            got = (f"validation accuracy {accs[0]:.4f} -> {max(accs):.4f} best (unpruned {v['unpruned_accuracy']:.4f}, "
                   f"target {v['target_accuracy']:.4f})"
                   if accs and v["unpruned_accuracy"] is not None else f"validation loss {c[0]['val_loss']:.4f} -> "
                   f"{min(e['val_loss'] for e in c):.4f}")
            con.print(f"prune   until done: {v['epochs']} epochs on {v['train_samples']} samples, {got}, lr "
                      f"{c[0]['learning_rate']:g} -> {c[-1]['learning_rate']:g}; stopped: {v['stopped']}", markup=False)
        if ft:
            con.print(f"prune   fine-tuned {ft['epochs']} epochs on {ft['samples']} samples of {ft['data']} "
                      f"(seed {ft['seed']}, {ft['loss']}), loss {ft['losses'][0]:.4f} -> {ft['losses'][-1]:.4f}",
                      markup=False)
        budget = (ft or {}).get("budget")
        if budget:
            con.print(f"prune   accuracy budget met: {budget['drop_pt']:.2f} points lost on {budget['samples']} "
                      f"{budget['judged_on']} samples, {budget['max_accuracy_drop']:g} allowed" if budget["met"]
                      else f"prune   {budget['note']}", markup=False)
        acc = pr.get("accuracy")
        if acc and acc["pruned"] is not None:
            shot = acc.get("pruned_one_shot")
            if shot is not None:
                con.print(f"prune   top-1 accuracy {shot:.4f} pruned before fine-tuning", markup=False)
            con.print(f"prune   top-1 accuracy {acc['unpruned']:.4f} unpruned -> {acc['pruned']:.4f} pruned "
                      f"({acc['samples']} {acc['data']} samples)", markup=False)
    for note in report.notes:
        con.print(f"note    {note}", markup=False)
    d = report.data
    if d["kind"]:
        con.print(f"data    {d['kind']}, {d['samples']} samples" +
                  (" (synthetic inputs: no --eval or --calibration data file given)" if d["kind"] == "synthetic" else ""))
    for t in report.targets:
        q = t.extra.get("quantization")
        if q:
            cal = q["calibration"]
            how = "no calibration"
            if cal:
                method = f"percentile {cal['percentile']:g}" if cal["method"] == "percentile" else cal["method"]
                how = f"calibration {method} on {cal['samples']} {cal['data']} samples"
            kept = f", kept float: {', '.join(q['float_layers'])}" if q["float_layers"] else ""
            con.print(f"quant   {t.target}:{t.variant} {q['scheme']}, {how}{kept}", markup=False)
            for w in q.get("warnings", []):
                con.print(f"warning {t.target}:{t.variant}: {w}", markup=False)
            ac = q.get("accuracy_control")
            if ac:
                for k, st in enumerate(ac["steps"]):
                    what = f"float {', '.join(st['kept_float'])}" if st["kept_float"] else "as calibrated"
                    acc = "" if st["accuracy"] is None else f", accuracy {st['accuracy']:.4f}"
                    agree = "" if st["top1_agreement"] is None else f", top-1 agreement {st['top1_agreement']:.4f}"
                    con.print(f"fallback {t.target}:{t.variant} step {k}: {what}{acc}, cosine {st['cosine']:.6f}"
                              f"{agree} ({'meets' if st['passed'] else 'misses'} {ac['criterion']})", markup=False)
    table = Table(title=None, show_edge=False)
    for col in ("target", "artifact", "size", "seconds", "verified", "max abs err", "cosine", "top-1 agree",
                "accuracy src/art"):
        table.add_column(col, justify="left" if col in ("target", "artifact", "verified") else "right")
    for t in report.targets:
        v = t.verification
        verdict = "skipped" if v is None else ("[green]pass[/green]" if v.passed else "[red]FAIL[/red]")
        acc = "-"
        if v is not None and v.accuracy:
            acc = f"{v.accuracy['source']:.4f}/{v.accuracy['artifact']:.4f}"
        table.add_row(f"{t.target}:{t.variant}", ", ".join(t.artifacts), _fmt_size(t.size_bytes),
                      "cached" if t.source == "cache" else f"{t.seconds:.2f}", verdict, _fmt(v.max_abs_err if v else None),
                      _fmt(v.cosine if v else None, ".6f"), _fmt(v.top1_agreement if v else None, ".4f"), acc)
        for c in t.cross_checks:  # the same artifact in the target's other runtimes (TFLite Micro)
            cacc = f"{c.accuracy['source']:.4f}/{c.accuracy['artifact']:.4f}" if c.accuracy else "-"
            table.add_row(f"  in {c.runner.split(' vs ')[0]}", "", "", "",
                          "[green]pass[/green]" if c.passed else "[red]FAIL[/red]", _fmt(c.max_abs_err),
                          _fmt(c.cosine, ".6f"), _fmt(c.top1_agreement, ".4f"), cacc)
    con.print(table)
    if footer:
        con.print(f"report  {os.path.join(report.outdir, 'report.json')}")


def print_inspect(result: Any, out: TextIO) -> None:
    from rich.table import Table

    con = _console(out)
    table = Table(show_edge=False)
    for col in ("node", "op", "output", "params", "MACs"):
        table.add_column(col, justify="right" if col in ("params", "MACs") else "left")
    for r in result.rows:
        table.add_row(r.name, r.op, r.shape, f"{r.params:,}", f"{r.macs:,}")
    tot = result.totals
    table.add_section()
    table.add_row("total", f"{tot['nodes']} nodes", "", f"{tot['params']:,}", f"{tot['macs']:,}")
    con.print(table)


def print_comparison(result: Any, out: TextIO) -> None:
    con = _console(out)
    for o in result.outputs:
        verdict = "pass" if o.passed else "FAIL"
        if o.max_abs_err is None:  # missing output or shape mismatch: no numbers to show
            con.print(f"{verdict}  {o.name}: {o.reason or 'not comparable'}", markup=False)
            continue
        extra = f", top-1 agreement {o.top1_agreement:.4f}" if o.top1_agreement is not None else ""
        if o.error_model is not None:  # judged by the error model: its numbers, not elementwise mismatches
            em = o.error_model
            judged = (f"error model: RMSE vs float64 IR artifact {em['e_art']:.3e} <= bound {em['bound']:.3e}"
                      if o.passed or o.reason is None else o.reason)
        else:
            judged = f"{o.mismatches} of {o.elements} elements out of tolerance"
        con.print(f"{verdict}  {o.name}: max abs err {o.max_abs_err:.3e}, mean {_fmt(o.mean_abs_err, '.3e')}, "
                  f"cosine {_fmt(o.cosine, '.6f')}, {judged}{extra}", markup=False)
    for note in result.notes:
        con.print(f"note  {note}", markup=False)
    if result.accuracy:
        con.print(f"accuracy  source {result.accuracy['source']:.4f}, artifact {result.accuracy['artifact']:.4f}")
    con.print(f"{'PASSED' if result.passed else 'FAILED'} on {result.samples} samples ({result.data_kind} data)")


def _trace_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", action="store_true",
                   help="compare every intermediate tensor the artifact exposes with the reference interpreter's "
                        "(onnx, tflite, hls4ml; report.json \"trace\", docs/report.md) and name the first layer "
                        "whose error jumps")


TRACE_WORST = 3  # layers shown per target: the lowest SQNR first


def print_trace(entries: Sequence[tuple[str, Any]], out: TextIO) -> None:
    """--trace: per target, the worst layers by SQNR and the first jump with its suggestion."""
    from rich.table import Table

    con = _console(out)
    table = Table(show_edge=False)
    for col in ("target", "layer", "op", "SQNR dB", "cosine", "max abs err", "RMSE/scale"):
        table.add_column(col, justify="left" if col in ("target", "layer", "op") else "right")
    lines = []
    for name, tr in entries:
        if not tr:
            continue
        if tr.get("untraced") and not tr.get("layers"):
            lines.append(f"trace   {name}: not traced: {tr['untraced']}")
            continue
        rows = tr["layers"]
        worst = sorted(rows, key=lambda r: (r["sqnr_db"] is not None, r["sqnr_db"] or 0.0, r["index"]))[:TRACE_WORST]
        for r in worst:
            table.add_row(name, r["name"], r["op"], _fmt(r["sqnr_db"], ".1f"), _fmt(r["cosine"], ".6f"),
                          _fmt(r["max_abs"]), _fmt(r["rmse_over_scale"], ".2f"))
        jump = tr.get("first_jump")
        lines.append(f"trace   {name}: {len(rows)} layers traced; " + (
            f"first jump at {jump['name']} ({jump.get('detail') or jump['metric']}): try {jump['suggestion']}"
            if jump else "no layer's error jumps"))
        if tr.get("untraced"):
            lines.append(f"trace   {name}: {tr['untraced']}")
    if table.row_count:
        con.print(f"trace   the {TRACE_WORST} worst layers per target by SQNR (every layer: report.json \"trace\")",
                  markup=False)
        con.print(table)
    for line in lines:
        con.print(line, markup=False)


# -------------------------------------------------------------- commands
def _check_model_explorer(path: str | None) -> None:
    """--model-explorer FILE is refused before any work when it cannot be written there."""
    if not path:
        return
    from pathlib import Path

    from tapeout.compiler.errors import UsageError

    p = Path(path)
    if p.is_dir() or not p.parent.is_dir():
        raise UsageError(f"--model-explorer {path}: " + ("is a folder" if p.is_dir() else
                                                         f"folder {p.parent} does not exist"))


def _cmd_compile(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tapeout.compiler.api import compile_model
    from tapeout.compiler.quiet import captured_output

    _check_model_explorer(args.model_explorer)
    if args.depfile:
        from tapeout.compiler.depfile import check_depfile

        check_depfile(args.depfile)
    status = _Status(err, enabled=not (args.json or args.quiet))
    with status, captured_output(enabled=not args.debug):
        report = compile_model(args.model, args.targets, args.outdir, weights=args.weights,
                               calibration=args.calibration, eval_data=args.eval_data, atol=args.atol,
                               rtol=args.rtol, calibration_method=args.calibration_method,
                               percentile=args.percentile, keep_float=args.keep_float,
                               bias_correction=args.bias_correction, prune=args.prune,
                               prune_exclude=args.prune_exclude,
                               train=args.train, epochs=args.epochs, learning_rate=args.learning_rate,
                               target_options=_target_options(args), max_accuracy_drop=args.max_accuracy_drop,
                               fallback=args.fallback, io_layout=args.io_layout,
                               verify_artifacts=not args.no_verify,
                               timings=not args.no_timings, progress=status.update, trace=args.trace,
                               jobs=args.jobs, cache=_cache_of(args))
    if args.model_explorer:
        from tapeout.compiler.report_html import write_model_explorer

        write_model_explorer(report.to_json(timings=False), args.model_explorer)
    if args.depfile:  # written whenever the outputs were, a failed verification included
        _write_compile_depfile(args)
    if args.json:
        out.write(report.dumps(timings=not args.no_timings))
    elif args.quiet:
        if report.exit_code != EXIT_OK:
            from tapeout.compiler.api import failing_artifacts

            err.write(f"tapeout: verification failed: {'; '.join(failing_artifacts(report))}\n")
    else:
        print_compile_summary(report, out)
        if args.trace:
            print_trace([(f"{t.target}:{t.variant}", t.extra.get("trace")) for t in report.targets], out)
    return report.exit_code


def _write_compile_depfile(args: argparse.Namespace) -> None:
    """--depfile: OUTDIR/report.json depends on the model, weights and every data or config file read."""
    from tapeout.compiler.depfile import files_read, stamp_of, write_depfile

    write_depfile(args.depfile, stamp_of(args.outdir),
                  files_read(args.model, args.weights, args.calibration, args.eval_data, args.train,
                             args.hls_config))


_TENSORRT_FLAGS = ("min_batch", "opt_batch", "max_batch", "cache_dir", "require_engine")


def _tensorrt_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tensorrt")
    g.add_argument("--min-batch", type=int, metavar="N", help="smallest batch of the engine's optimization "
                   "profile (default 1)")
    g.add_argument("--opt-batch", type=int, metavar="N", help="batch the engine is tuned for (default: --min-batch)")
    g.add_argument("--max-batch", type=int, metavar="N", help="largest batch the engine accepts (default 32)")
    g.add_argument("--cache-dir", metavar="DIR", help="keep TensorRT's timing cache here (default "
                   "OUTDIR/tensorrt-cache) so rebuilds are fast")
    g.add_argument("--require-engine", action="store_true", help="fail (exit 3) when no TensorRT engine can be "
                   "built here (no tensorrt package or no CUDA GPU) instead of writing ONNX + plan.json only")


def _target_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """--target-option TARGET[:VARIANT].KEY=VALUE (and --io, for tflite) -> compile_model's target_options."""
    from tapeout.compiler.errors import UsageError

    options: dict[str, dict[str, Any]] = {}
    if args.io is not None:
        options.setdefault("tflite", {})["io"] = args.io
    for key in _HLS4ML_FLAGS:
        value = getattr(args, key, None)
        if value not in (None, False):
            options.setdefault("hls4ml", {})["config" if key == "hls_config" else key] = value
    for key in _TENSORRT_FLAGS:
        value = getattr(args, key, None)
        if value is not None and value is not False:  # not `in (None, False)`: 0 == False, and 0 is a bad batch
            options.setdefault("tensorrt", {})[key] = value
    for spec in args.target_options:
        where, eq, value = spec.partition("=")
        target, dot, key = where.rpartition(".")
        if not (eq and dot and target and key):
            raise UsageError(f"--target-option {spec!r}: expected TARGET[:VARIANT].KEY=VALUE, "
                             "e.g. tflite.c_array=false")
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        options.setdefault(target, {})[key] = parsed
    return options


def _cache_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                   help="emit and verify up to N targets of a model at once (default 1)")
    p.add_argument("--no-cache", action="store_true",
                   help="neither restore from nor store in the build cache ($TAPEOUT_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/tapeout, else ~/.cache/tapeout; TAPEOUT_NO_CACHE=1 also turns it off)")


def _cache_of(args: argparse.Namespace) -> Any:
    """The build cache, unless --no-cache or TAPEOUT_NO_CACHE=1."""
    if args.no_cache or os.environ.get("TAPEOUT_NO_CACHE", "") not in ("", "0"):
        return None
    from tapeout.compiler.cache import Cache

    return Cache()


def _cmd_build(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tapeout.compiler import build as project_build
    from tapeout.compiler.stages.spec import check_jobs

    check_jobs(args.jobs)
    if args.depfile:
        from tapeout.compiler.depfile import check_depfile

        check_depfile(args.depfile)
    cache = _cache_of(args)
    if args.dry_run:
        plan = project_build.dry_run(args.project, args.names, cache=cache)
        if args.json:
            out.write(json.dumps([p.__dict__ for p in plan], indent=2) + "\n")
        else:
            for p in plan:
                out.write(f"{p.action:8s} {p.model} {p.target}: {p.why}\n")
        return EXIT_OK
    from tapeout.compiler.quiet import captured_output

    status = _Status(err, enabled=not (args.json or args.quiet))
    with status, captured_output(enabled=not args.debug):
        result = project_build.build(args.project, args.names, jobs=args.jobs, cache=cache,
                                     timings=not args.no_timings, progress=status.update)
    if args.depfile:
        from tapeout.compiler.depfile import files_read, write_depfile

        stamp = os.path.relpath(result.stamp) if not os.path.isabs(args.project) else str(result.stamp)
        write_depfile(args.depfile, stamp, files_read(args.project, *result.files_read()))
    if args.json:
        out.write(json.dumps({m.name: m.report.to_json(not args.no_timings) for m in result.models}, indent=2) + "\n")
    elif args.quiet:
        if result.exit_code != EXIT_OK:
            from tapeout.compiler.api import failing_artifacts

            failed = [f"{m.name}: {'; '.join(failing_artifacts(m.report))}" for m in result.models if not m.report.passed]
            err.write(f"tapeout: verification failed: {' | '.join(failed)}\n")
    else:
        for m in result.models:
            out.write(f"== {m.name} ({m.spec.model} -> {m.spec.outdir})\n")
            print_compile_summary(m.report, out, footer=False)
        cached = sum(t.source == "cache" for m in result.models for t in m.report.targets)
        total = sum(len(m.report.targets) for m in result.models)
        out.write(f"{len(result.models)} model(s), {total} target(s): {total - cached} built, {cached} from the cache\n")
    return result.exit_code


def _cmd_cache(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tapeout.compiler.cache import Cache, parse_size
    from tapeout.compiler.errors import UsageError

    if args.action == "prune" and args.max_size is None:
        raise UsageError("tapeout cache prune needs --max-size SIZE (e.g. 500M)")
    if args.action != "prune" and args.max_size is not None:
        raise UsageError("--max-size applies to tapeout cache prune")
    cache = Cache()
    if args.action == "info":
        info = cache.info()
    elif args.action == "clear":
        info = {"root": str(cache.root), "removed": cache.clear()}
    else:
        info = {"root": str(cache.root), "removed": cache.prune(parse_size(args.max_size)), **cache.info()}
    if args.json:
        out.write(json.dumps(info, indent=2, default=str) + "\n")
    else:
        width = max(map(len, info))
        out.write("".join(f"{k:{width}s} {v}\n" for k, v in info.items()))
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tapeout.compiler.api import inspect_model
    from tapeout.compiler.quiet import captured_output

    with captured_output(enabled=not args.debug):
        result = inspect_model(args.model, args.weights, optimize=args.optimize)
    if args.json:
        out.write(json.dumps(result.to_json(), indent=2) + "\n")
    elif args.dump:
        out.write(result.graph.dump() + "\n")
    else:
        print_inspect(result, out)
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tapeout.compiler.api import verify_artifact
    from tapeout.compiler.quiet import captured_output

    from tapeout.compiler.api import is_build_folder

    if is_build_folder(args.artifact):
        _check_model_explorer(args.model_explorer)
        return _verify_build(args, out, err)
    if args.max_accuracy_drop is not None or args.model_explorer:
        from tapeout.compiler.errors import UsageError

        flag = "--max-accuracy-drop" if args.max_accuracy_drop is not None else "--model-explorer"
        raise UsageError(f"{flag} applies to a whole build: give the OUTDIR of a compile")
    with captured_output(enabled=not args.debug):
        result = verify_artifact(args.source, args.artifact, weights=args.weights, data=args.data,
                                 atol=args.atol, rtol=args.rtol, trace=args.trace)
    if args.json:
        out.write(json.dumps({**result.to_json(), **({"trace": result.trace} if args.trace else {})}, indent=2)
                  + "\n")
    else:
        print_comparison(result, out)
        if args.trace:
            print_trace([(str(args.artifact), result.trace)], out)
    return EXIT_OK if result.passed else EXIT_VERIFY


def _verify_build(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`tapeout verify SOURCE OUTDIR`: every artifact of the build, compile's table, the failing ones named."""
    from tapeout.compiler.api import failing_artifacts, verify_build
    from tapeout.compiler.quiet import captured_output

    status = _Status(err, enabled=not args.json)
    with status, captured_output(enabled=not args.debug):
        report = verify_build(args.source, args.artifact, weights=args.weights, data=args.data, atol=args.atol,
                              rtol=args.rtol, max_accuracy_drop=args.max_accuracy_drop, trace=args.trace,
                              progress=status.update)
        if args.model_explorer:
            from tapeout.compiler.report_html import write_model_explorer

            write_model_explorer(report.to_json(timings=False), args.model_explorer)
    if args.json:
        out.write(report.dumps(timings=False))
    else:
        print_compile_summary(report, out, footer=False)
        if args.trace:
            print_trace([(f"{t.target}:{t.variant}", t.extra.get("trace")) for t in report.targets], out)
        for t in report.targets:
            for v in (t.verification, *t.cross_checks):
                if v is not None and v.error:
                    _console(out).print(f"error   {t.target}:{t.variant}: {v.error}", markup=False)
        failing = failing_artifacts(report)
        _console(out).print(f"FAILED: {'; '.join(failing)}" if failing else
                            f"PASSED: {len(report.targets)} artifact(s) of {args.artifact}", markup=False)
    return report.exit_code


def _cmd_targets(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tapeout.targets.registry import TARGETS

    rows = [{"target": name, "variants": list(cls.variants), "default": cls.default_variant,
             "missing": cls.missing_requirements(), "description": cls.description}
            for name, cls in sorted(TARGETS.items())]
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return EXIT_OK
    from rich.table import Table

    table = Table(show_edge=False)
    for col in ("target", "variants (default first)", "tools", "what"):
        table.add_column(col)
    for r in rows:
        variants = [r["default"]] + [v for v in r["variants"] if v != r["default"]]
        tools = "installed" if not r["missing"] else "missing: " + ", ".join(r["missing"])
        table.add_row(r["target"], ", ".join(variants), tools, r["description"])
    _console(out).print(table)
    return EXIT_OK


def _cmd_sweep(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from tapeout.compiler.sweep.command import run

    return run(args, out, err)


COMMANDS = {"compile": _cmd_compile, "build": _cmd_build, "cache": _cmd_cache, "inspect": _cmd_inspect,
            "verify": _cmd_verify, "targets": _cmd_targets, "sweep": _cmd_sweep}


class _Status:
    """A spinner naming the current step, on an interactive stderr only."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self._enabled = enabled and stream.isatty()
        self._stream = stream
        self._status = None

    def __enter__(self) -> "_Status":
        if self._enabled:
            # A duplicate of fd 2: the real terminal stays reachable while library output is captured.
            dup = os.fdopen(os.dup(self._stream.fileno()), "w")
            self._status = _console(dup).status("starting")
            self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)

    def update(self, step: str) -> None:
        if self._status is not None:
            self._status.update(step)


def _exit_code_of(exc: BaseException) -> int | None:
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) else None


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(out)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args, out, err)
    except KeyboardInterrupt:
        err.write("tapeout: interrupted; nothing was written to the output folder\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        code = _exit_code_of(exc)
        if args.debug:
            import traceback

            traceback.print_exc(file=err)
        if code is not None:
            err.write(f"tapeout: error: {exc}\n")
            return code
        err.write(f"tapeout: internal error: {type(exc).__name__}: {exc} "
                  f"(a bug in tapeout; rerun with --debug for the traceback)\n")
        return EXIT_INTERNAL
