"""`tapeout sweep SWEEP.toml`: the command-line side (compiler/cli.py adds it; nothing heavy imported here)."""

from __future__ import annotations

import argparse
from typing import Any, TextIO


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("sweep", parents=[common], help="sweep a design space (targets, precisions, reuse factors, "
                       "pruning, ...): a full verified compile per point, results CSV and Pareto fronts")
    s.add_argument("sweep", metavar="SWEEP.toml", nargs="?", help="base build and axes (docs/sweeps.md)")
    s.add_argument("-o", "--output", metavar="OUTDIR", help="results.csv, pareto.html and points/ go here "
                   "(default: the sweep file's [sweep] output, else build/sweep-STEM beside it)")
    s.add_argument("-j", "--jobs", type=int, metavar="N", help="points at once in the local pool (default: "
                   "the number of cores)")
    s.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="run each point as a Ray task on the "
                   "cluster at ADDRESS (HOST:PORT, ray://HOST:PORT or auto; default $RAY_ADDRESS, else a local "
                   "Ray instance); needs tapeout[ray]")
    s.add_argument("--resume", action="store_true", help="skip the points already in OUTDIR/results.csv")
    s.add_argument("--max-retries", type=int, metavar="N", help="run a point whose worker died up to N more "
                   "times (default: the sweep file's, else 2)")
    s.add_argument("--no-cache", action="store_true", help="neither restore from nor store in the build cache")
    s.add_argument("--quiet", action="store_true", help="print nothing but errors")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import os
    from dataclasses import replace
    from pathlib import Path

    from tapeout.compiler.errors import UsageError
    from tapeout.compiler.sweep.executors import executor_for
    from tapeout.compiler.sweep.pareto import print_fronts
    from tapeout.compiler.sweep.run import run_sweep
    from tapeout.compiler.sweep.spec import load_sweep

    if args.sweep is None:  # `--ray sweep.toml`: argparse gave the file to --ray's optional ADDRESS
        if not (args.ray and args.ray.endswith(".toml")):
            raise UsageError("tapeout sweep needs the sweep file: tapeout sweep SWEEP.toml")
        args.sweep, args.ray = args.ray, ""
    sweep = load_sweep(args.sweep, output=args.output)
    if args.max_retries is not None:
        if args.max_retries < 0:
            raise UsageError(f"--max-retries must be at least 0, got {args.max_retries}")
        sweep = replace(sweep, max_retries=args.max_retries)
    if args.ray is not None and args.jobs is not None:
        raise UsageError("-j sizes the local pool; with --ray the cluster's resources decide (cpus_per_point)")
    use_cache = not (args.no_cache or os.environ.get("TAPEOUT_NO_CACHE", "") not in ("", "0"))
    executor = executor_for(args.ray or None, args.ray is not None, args.jobs, cpus_per_point=sweep.cpus_per_point,
                            synth_resource=sweep.synth_resource, max_retries=sweep.max_retries,
                            log=None if args.debug else Path(sweep.output) / "workers.log", verbose=args.debug)
    if hasattr(executor, "connect"):
        executor.connect()  # an unreachable cluster is exit 3 before any point is counted
    say = (lambda s: None) if args.quiet else (lambda s: (out.write(s + "\n"), out.flush()))
    for note in sweep.notes:
        say(f"note    {note}")
    say(f"sweep   {len(sweep.points)} points of {sweep.spelled} ({sweep.mode}) on {executor.describe()} "
        f"-> {sweep.output}")
    try:
        result = run_sweep(sweep, executor, resume=args.resume, use_cache=use_cache,
                           progress=lambda s: say(f"point   {s}"))
    except KeyboardInterrupt:
        err.write(f"tapeout: interrupted; the points finished are in {Path(sweep.output) / 'results.csv'}: "
                  "rerun with --resume to finish the sweep\n")
        return 130
    if not args.quiet:
        print_fronts(result.fronts, sweep.axis_columns, out.write)
        counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
        out.write(f"done    {len(result.rows)} points ({counts}); {result.ran} run now, {result.skipped} from "
                  f"before; {result.results}, {result.page}\n")
    return 0
