"""``--strategy distributed_arithmetic``: hls4ml 1.3's DA code generator (da4ml) turns each
dense/conv kernel into a multiplier-free adder graph.

What hls4ml's DA pass does differently from the latency strategy, and how tapeout follows it:

- It reads the layer's weights and bias as given (the Keras model's float32), not as
  ``weight_t``/``bias_t``: a float32 kernel becomes a 24-bit-per-weight adder graph (minutes of
  solving, far more LUTs) and the C simulation no longer computes the plan's types. tapeout hands
  it the weights already in the plan's types (the values the NumPy model uses), exact in float32.
- It sums the exact products and the bias, then rounds once to ``result_t``; ``accum_t`` is not
  used. The NumPy model of a DA build gives each dense/conv an accumulator that holds every sum
  exactly (``da_plan``), so the C simulation stays bit-exact to it.
- Only Vivado/Vitis, reuse factor 1, and dense and (non-depthwise) conv layers.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from tapeout.compiler.errors import UsageError
from tapeout.compiler.fixedpoint.model import PrecisionPlan, hls_layers, is_depthwise, written_weights
from tapeout.compiler.fixedpoint.types import FixedType, fixed
from tapeout.compiler.ir import Graph

DA = "distributed_arithmetic"
DA_VARIANTS = ("vitis", "vivado")  # hls4ml 1.3's DA pass writes Vivado/Vitis HLS only (asserts the backend)


def check_variant(variant: str | None) -> None:
    if variant is not None and variant not in DA_VARIANTS:
        raise UsageError(f"hls4ml:{variant}: --strategy {DA} needs the vitis or vivado back end "
                         f"(hls4ml 1.3's distributed arithmetic writes Vivado/Vitis HLS only)")


def check_reuse(reuse_factor: int, layer_reuse: dict[str, int]) -> None:
    bad = {k: v for k, v in layer_reuse.items() if v != 1}
    if reuse_factor != 1 or bad:
        which = f"--reuse-factor {reuse_factor}" if reuse_factor != 1 else \
            ", ".join(f"--reuse-factor {k}={v}" for k, v in sorted(bad.items()))
        raise UsageError(f"hls4ml: --strategy {DA} needs reuse factor 1 (each layer is one fully parallel "
                         f"adder graph), not {which}")


def _weighted(graph: Graph) -> list[Any]:
    layers = [layer for layer in hls_layers(graph) if layer.kind in ("dense", "conv")]
    for layer in layers:
        if is_depthwise(graph, layer.node):
            raise UsageError(f"hls4ml: --strategy {DA}: layer {layer.name!r} is a depthwise conv, which hls4ml "
                             f"1.3's distributed arithmetic does not implement; use --strategy latency")
    return layers


def _written(graph: Graph, node: Any, idx: int, t: FixedType | None) -> np.ndarray | None:
    if len(node.inputs) <= idx or not node.inputs[idx] or t is None:
        return None
    return written_weights(graph.constants[node.inputs[idx]], t).to_float()


def da_graph(graph: Graph, plan: PrecisionPlan) -> Graph:
    """A copy of ``graph`` whose dense/conv weights and biases are the plan's fixed-point values
    (as the NumPy model holds them), for the Keras model handed to hls4ml's DA pass."""
    out = graph.copy()
    for layer in _weighted(graph):
        lp = plan.of(layer.name)
        for idx, t in ((1, lp.weight), (2, lp.bias or lp.weight)):
            v = _written(graph, layer.node, idx, t)
            if v is None:
                continue
            v32 = v.astype(np.float32)
            if not np.array_equal(v32.astype(np.float64), v):
                raise UsageError(f"hls4ml: --strategy {DA}: layer {layer.name!r}'s {t} values are not exact in "
                                 f"float32, in which hls4ml reads them; use a type of at most 24 bits")
            out.constants[layer.node.inputs[idx]] = v32
    return out


def da_plan(graph: Graph, plan: PrecisionPlan) -> PrecisionPlan:
    """``plan`` with each dense/conv accumulator wide enough that no sum of the input type's
    values times the weights, plus the bias, rounds or wraps: DA's exact sum."""
    from tapeout.compiler.fixedpoint.search import _resolve_input_types

    layers = hls_layers(graph)
    src = _resolve_input_types(graph, plan, layers)
    out = PrecisionPlan(dict(plan.inputs), dict(plan.layers))
    for layer in _weighted(graph):
        lp = plan.of(layer.name)
        x = src[layer.inputs[0]]
        w = _written(graph, layer.node, 1, lp.weight)
        bt = lp.bias or lp.weight
        b = _written(graph, layer.node, 2, bt)
        assert w is not None and lp.weight is not None
        w2 = np.abs(w.reshape(-1, w.shape[-1]))
        bound = float(np.max(w2.sum(axis=0) * max(abs(x.min), abs(x.max)) + (np.abs(b).ravel() if b is not None else 0)))
        frac = max(x.frac + lp.weight.frac, bt.frac if b is not None else 0)
        # Signed, holding [-bound, bound] (one bit more than needed at an exact power of two).
        integer = max(1, math.floor(math.log2(bound)) + 2) if bound > 0 else 1
        if integer + frac > 64:
            raise UsageError(f"hls4ml: --strategy {DA}: layer {layer.name!r}'s exact sum needs {integer + frac} bits, "
                             f"more than the 64 the fixed-point model holds; narrow its input or weight type")
        out.layers[layer.name] = replace(lp, accum=fixed(integer + frac, integer))
    return out


def da_costs(model: Any, graph: Graph, names: dict[str, str]) -> dict[str, tuple[float, int]]:
    """tapeout layer -> (da4ml's cost of its adder graph, kernels instantiated in parallel), read
    from hls4ml's ModelGraph after its DA pass (``da_kernel_cost``: the solution's adder bits)."""
    out: dict[str, tuple[float, int]] = {}
    for layer in _weighted(graph):
        node = model.graph.get(names.get(layer.name, layer.name))
        if node is None or node.get_attr("da_kernel_cost", None) is None:
            continue
        parallel = 1
        if layer.kind == "conv" and node.get_attr("n_partitions", None):
            positions = int(np.prod(node.get_output_variable().shape[:-1]))
            parallel = max(1, positions // int(node.get_attr("n_partitions")))
        out[layer.name] = (float(node.get_attr("da_kernel_cost")), parallel)
    return out


# A DA kernel is thousands of lines of straight-line ap_fixed code, each line its own pair of
# widths: g++ spends its time instantiating and optimizing ap_fixed's templates. On the jet MLP's
# four kernels (2 shared cores) -O3 ran past 10 minutes; -O0 builds in about 2 but runs 2,000
# samples in 45 s; -O1 builds in about 3 and runs them in 2 s. The C simulation is as exact at
# any level.
def csim_at_o1(outdir: Any) -> None:
    """Build the project's C-simulation library at -O1 (build_lib.sh's CFLAGS)."""
    script = outdir / "build_lib.sh"
    if script.is_file():
        text = script.read_text()
        script.write_text(text.replace('CFLAGS="-O3 -fPIC"', 'CFLAGS="-O1 -fPIC"', 1))
