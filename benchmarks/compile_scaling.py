"""Compile time against node count: a chain of N ONNX Relu nodes, N = 5k, 10k, 20k, 40k.

    python benchmarks/compile_scaling.py [--sizes 5000 10000 20000 40000] [--repeat 1]

Issue 14, finding 5: passes that rescanned the graph per node made this chain quadratic
(5k in 6 s, 10k in 43 s, 20k in 94 s). Each row is one `tapeout compile chain.onnx -t onnx`
in this process (import, passes, ONNX emit and its verification with onnxruntime against the
reference interpreter; the command line adds a fixed start-up), the median of --repeat runs.
The ratio to the previous row, whose N is half, stays near 2 when compile time is linear;
quote ratios, these machines are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tapeout.compiler.quiet import captured_output, quiet_environment


def relu_chain(n: int) -> onnx.ModelProto:
    """x -> Relu -> Relu -> ... (n nodes) -> y, on [N, 8] float32."""
    names = ["x", *(f"t{i}" for i in range(n - 1)), "y"]
    nodes = [helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu{i}") for i in range(n)]
    graph = helper.make_graph(nodes, "relu_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 40000])
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    quiet_environment()

    with captured_output():
        from tapeout.compiler.api import compile_model

    work = Path(tempfile.mkdtemp(prefix="tapeout-bench-"))
    warm = work / "warm.onnx"
    onnx.save(relu_chain(10), warm)
    with captured_output():
        compile_model(warm, ["onnx"], work / "warm")  # first-call imports (onnxruntime, onnxscript)

    print(f"Chain of N Relu nodes, tapeout compile -t onnx with verification; median of {args.repeat} run(s)")
    print(f"{'nodes':>8} {'seconds':>9} {'ms/1k nodes':>12} {'x previous':>11}")
    prev: tuple[int, float] | None = None
    for n in args.sizes:
        src = work / f"chain{n}.onnx"
        onnx.save(relu_chain(n), src)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            with captured_output():
                report = compile_model(src, ["onnx"], work / f"out{n}", timings=False)
            times.append(time.perf_counter() - t0)
            if not report.passed or report.targets[0].verification is None:
                print(f"chain of {n}: the artifact failed verification", file=sys.stderr)
                return 1
        t = statistics.median(times)
        ratio = f"{t / prev[1]:.2f} (N x{n / prev[0]:g})" if prev else "-"
        print(f"{n:>8} {t:>9.2f} {1e6 * t / n:>12.1f} {ratio:>11}", flush=True)
        prev = (n, t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
