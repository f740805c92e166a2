"""hls4ml automatic precision: the first search (fewest bits, 10x agreement margin) against the
cost search (fewest estimated DSP/LUT resources, Clopper-Pearson guard + held-out check), side by side.

Models: the bundled jet MLP (samples/jet_mlp) and a 16-64-32-32-5 MLP trained here on jet-like data
(samples/jet_mlp/train.py's generator with another seed, 30,000 samples, 40 epochs: larger weights
than the sample's). For each and each objective: the search, the target's emit (one C++ build),
then the C simulation on the held-out eval data against the Keras model. Columns: top-1 agreement,
weight bits over uniform ap_fixed<16,6>'s, estimated DSPs, LUTs of LUT-built multipliers,
DSP+LUT cost in LUT-equivalents (compiler/fixedpoint/cost.py: LUTs + 140 x DSPs), EBOPs, seconds.
Run: python benchmarks/precision_search.py [--objectives bits resources ebops]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder leads sys.path and benchmarks/hls4ml.py would shadow the hls4ml package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
OBJECTIVES = ("bits", "resources")


def train_jet_tagger(out: Path, seed: int = 1, samples: int = 30000, epochs: int = 40) -> Path:
    """A 16-64-32-32-5 MLP on jet-like data; writes model.keras, calibration.npz, eval.npz (2,000 each)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    spec = importlib.util.spec_from_file_location("jet_train", ROOT / "samples" / "jet_mlp" / "train.py")
    assert spec is not None and spec.loader is not None
    jet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(jet)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    x, y = jet.make_data(samples + 4000, np.random.default_rng(seed))
    mu, sd = x[:samples].mean(0), x[:samples].std(0)
    x = ((x - mu) / sd).astype(np.float32)
    model = jet.build_model()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(x[:samples], y[:samples], epochs=epochs, batch_size=256, verbose=0, shuffle=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras", include_optimizer=False)
    np.savez_compressed(out / "calibration.npz", x=x[samples:samples + 2000], y=y[samples:samples + 2000])
    np.savez_compressed(out / "eval.npz", x=x[samples + 2000:], y=y[samples + 2000:])
    return out


def run(name: str, d: Path, objective: str, work: Path) -> dict:
    from tapeout.compiler.fixedpoint.cost import ebops, resource_cost
    from tapeout.compiler.fixedpoint.precision import PrecisionSearch
    from tapeout.compiler.frontends.loader import load_model
    from tapeout.compiler.passes.registry import default_pipeline
    from tapeout.compiler.stages.data import BuildData
    from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner
    from tapeout.runtime.runners.keras import KerasRunner
    from tapeout.targets.base import EmitContext
    from tapeout.targets.hls4ml.target import Hls4mlTarget

    graph = default_pipeline().run(load_model(d / "model.keras")[0]).graph
    target = Hls4mlTarget("vitis", precision_objective=objective)
    data = BuildData(d / "calibration.npz", d / "eval.npz")
    t0 = time.perf_counter()
    graph = PrecisionSearch(target.precision_request(), data).run(graph).graph
    searched = time.perf_counter() - t0
    out = work / f"{name}-{objective}"
    out.mkdir()
    emitted = target.emit(graph, EmitContext(out, data))
    seconds = time.perf_counter() - t0
    x = np.load(d / "eval.npz")["x"]
    with KerasRunner(d / "model.keras") as src:
        ref = next(iter(src.infer({graph.inputs[0]: x}).values()))
    with Hls4mlCsimRunner(out) as r:
        got = r.infer({graph.inputs[0]: x})[graph.outputs[0]]
    h = emitted.extra["hls4ml"]
    res = target._resources(graph, graph.fixed.plan)

    return {"model": name, "objective": objective,
            "agreement": float(np.mean(np.argmax(ref, -1) == np.argmax(got, -1))),
            "bits_ratio": h["totals"]["weight_memory_bits"] / h["totals"]["uniform_16_6_weight_memory_bits"],
            "dsp": res["dsp"], "luts": res["luts"], "cost": resource_cost(res["dsp"], res["luts"]),
            "ebops": ebops(graph, graph.fixed.plan), "search_s": searched, "seconds": seconds}


def table(rows: list[dict]) -> str:
    lines = ["| model | search | C-sim agreement (eval, held out) | weight bits / ap_fixed<16,6> | est. DSPs "
             "| est. LUTs (LUT multipliers) | DSP+LUT cost (LUT-eq.) | EBOPs | search (s) | search+emit (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['objective']} | {r['agreement']:.4f} | {r['bits_ratio']:.3f} | "
                     f"{r['dsp']:,} | {r['luts']:,} | {r['cost']:,.0f} | {r['ebops']:,} | {r['search_s']:.1f} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), choices=("bits", "resources", "ebops"))
    p.add_argument("--models", nargs="*", default=["jet_mlp", "jet_tagger"], choices=("jet_mlp", "jet_tagger"))
    args = p.parse_args(argv)
    from tapeout.compiler.quiet import captured_output, quiet_environment

    quiet_environment()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dirs = {"jet_mlp": ROOT / "samples" / "jet_mlp"}
        if "jet_tagger" in args.models:
            t0 = time.perf_counter()
            with captured_output():
                dirs["jet_tagger"] = train_jet_tagger(work / "jet_tagger")
            print(f"trained jet_tagger (16-64-32-32-5) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for name in args.models:
            for obj in args.objectives:
                with captured_output():
                    rows.append(run(name, dirs[name], obj, work))
                r = rows[-1]
                print(f"{name} {obj}: agreement {r['agreement']:.4f}, bits {r['bits_ratio']:.3f}, "
                      f"cost {r['cost']:,.0f}, {r['seconds']:.1f} s", file=sys.stderr)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
