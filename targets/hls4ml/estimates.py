"""Hardware estimates before synthesis, from the precision plan and the reuse factors.

Counting rules (docs/hls4ml.md lists them with their assumptions):

- Multipliers: a dense/conv layer instantiates ``ceil(nonzero weights / reuse factor)`` of them;
  weights that quantize to zero are pruned by HLS. A conv reuses its multipliers over output
  positions (one position per ``reuse factor`` cycles in io_parallel, one per input pixel in
  io_stream).
- DSP or LUT: a product of an ``a``-bit activation and a ``w``-bit weight maps to LUTs when the
  narrower operand has fewer than ``LUT_BELOW`` (10) bits, as Vivado/Vitis HLS does; otherwise to
  ``ceil(max/P) * ceil(min/Q)`` DSP slices of the family's multiplier shape (Xilinx DSP48E2:
  27x18; Intel variable-precision DSP: 27x27).
- Weight storage: weights and biases are constants in the logic (registers/LUTs) with
  io_parallel + latency; with the resource strategy or io_stream they sit in BRAM, ``reuse
  factor`` words deep and ``ceil(n/RF) * w`` bits wide, one BRAM18 per 36 bits x 512 words.
- Latency (clock cycles): a dense is ``RF`` multiply cycles (+1 when on DSPs), then an adder tree
  of ``ceil(log2 n_in)`` levels, ``ADDERS_PER_CYCLE`` levels per 5 ns clock; a conv repeats that
  per output position; relu/linear/table activations take 1 cycle; softmax 3 + its adder tree;
  pooling 1 + a comparator/adder tree. The initiation interval is the slowest layer's.
- Distributed arithmetic (``da_costs``): a dense/conv has no multipliers and no weight storage
  (the weights are shifts in its adder graph); its LUTs are da4ml's cost of that graph (the
  adder bits it solved for, one LUT each with the carry chain) times the kernels HLS
  instantiates; latency as above without the multiply cycle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from tapeout.compiler.fixedpoint.arith import from_float
from tapeout.compiler.fixedpoint.model import GLOBAL_POOLS, POOLS, HlsLayer, PrecisionPlan, hls_layers, pool_cells
from tapeout.compiler.fixedpoint.search import _resolve_input_types
from tapeout.compiler.ir import Graph

LUT_BELOW = 10  # a product whose narrower operand is below this many bits is built in LUTs
DSP_SHAPES = {"vitis": (27, 18), "vivado": (27, 18), "catapult": (27, 18), "quartus": (27, 27), "oneapi": (27, 27)}
ADDERS_PER_CYCLE = 4  # adder-tree levels per clock cycle at 5 ns (scaled with the clock period)
BRAM_BITS_WIDE, BRAM_WORDS = 36, 512  # one BRAM18 as 512 x 36


@dataclass
class LayerEstimate:
    layer: str
    kind: str
    reuse_factor: int
    multipliers: int
    dsp_multipliers: int
    lut_multipliers: int
    dsp: int
    operand_bits: list[int]  # [activation, weight] widths of each product
    weight_bits: int
    storage: str  # "registers", "BRAM" or "none"
    bram18: int
    latency_cycles: int
    interval_cycles: int
    da_luts: int | None = None  # distributed arithmetic: the adder graphs' LUTs (da4ml's cost)

    def to_json(self) -> dict:
        d = asdict(self)
        if d["da_luts"] is None:
            del d["da_luts"]
        return d


def dsp_per_multiplier(a: int, b: int, shape: tuple[int, int]) -> int:
    """DSP slices for one a x b product, 0 when it is built in LUTs."""
    lo, hi = sorted((a, b))
    if lo < LUT_BELOW:
        return 0
    p, q = shape
    return math.ceil(hi / p) * math.ceil(lo / q)


def _tree(n: int, clock_period: float) -> int:
    levels = math.ceil(math.log2(n)) if n > 1 else 0
    per_cycle = max(1, round(ADDERS_PER_CYCLE * clock_period / 5.0))
    return math.ceil(levels / per_cycle)


def _dims(graph: Graph, layer: HlsLayer) -> tuple[int, int, int]:
    """(n_in, n_out, output positions) of a dense/conv layer."""
    w = graph.constants[layer.node.inputs[1]]
    n_out = int(w.shape[-1])
    n_in = int(np.prod(w.shape[:-1]))
    out_shape = graph.type_of(layer.node.outputs[0]).shape
    positions = int(np.prod([int(d) for d in out_shape[1:-1]])) if layer.kind == "conv" else 1
    return n_in, n_out, positions


def estimate(graph: Graph, plan: PrecisionPlan, reuse: dict[str, int], *, variant: str, io_type: str,
             strategy: str, clock_period: float,
             da_costs: dict[str, tuple[float, int]] | None = None,
             layers: list[HlsLayer] | None = None) -> tuple[list[LayerEstimate], dict]:
    """Per-layer estimates and their totals for ``plan`` with ``reuse`` (layer -> reuse factor);
    ``da_costs`` (layer -> (da4ml cost, parallel kernels)) for a distributed-arithmetic build;
    ``layers``: the graph's hls_layers, when the caller has them (the precision search, per plan)."""
    layers = hls_layers(graph) if layers is None else layers
    src = _resolve_input_types(graph, plan, layers)
    shape = DSP_SHAPES[variant]
    in_bram = strategy == "resource" or io_type == "stream"
    rows: list[LayerEstimate] = []
    for layer in layers:
        lp = plan.of(layer.name)
        if layer.kind in ("dense", "conv") and lp.weight is not None:
            n = layer.node
            n_in, n_out, positions = _dims(graph, layer)
            rf = reuse.get(layer.name, 1)
            wq = from_float(np.asarray(graph.constants[n.inputs[1]], np.float64), lp.weight)
            nonzero = int(np.count_nonzero(wq))
            mults = math.ceil(nonzero / rf)
            a = src[layer.inputs[0]].width
            per = dsp_per_multiplier(a, lp.weight.width, shape)
            wbits = int(wq.size) * lp.weight.width
            if len(n.inputs) > 2 and n.inputs[2] and lp.bias is not None:
                wbits += int(graph.constants[n.inputs[2]].size) * lp.bias.width
            if da_costs is not None and layer.name in da_costs:
                cost, parallel = da_costs[layer.name]
                one = 1 + _tree(n_in + 1, clock_period)
                steps = 1
                if layer.kind == "conv":  # the kernel(s) run once per output position (io_stream: input pixel)
                    steps = math.ceil(positions / parallel) if io_type == "parallel" else int(np.prod(
                        [int(d) for d in graph.type_of(n.inputs[0]).shape[1:-1]]))
                rows.append(LayerEstimate(layer.name, layer.kind, 1, 0, 0, 0, 0, [a, lp.weight.width], wbits, "none", 0,
                                          steps + one - 1, steps, da_luts=math.ceil(cost) * parallel))
                continue
            bram = 0
            if in_bram:
                width = math.ceil(wq.size / rf) * lp.weight.width
                bram = math.ceil(width / BRAM_BITS_WIDE) * math.ceil(rf / BRAM_WORDS)
            one = rf + (1 if per else 0) + _tree(n_in + 1, clock_period)
            if layer.kind == "conv":
                steps = positions if io_type == "parallel" else int(np.prod(
                    [int(d) for d in graph.type_of(layer.node.inputs[0]).shape[1:-1]]))
                latency, interval = steps * rf + one - rf, steps * rf
            else:
                latency, interval = one, rf
            rows.append(LayerEstimate(layer.name, layer.kind, rf, mults, mults if per else 0, 0 if per else mults,
                                      mults * per, [a, lp.weight.width], wbits, "BRAM" if in_bram else "registers",
                                      bram, latency, interval))
            continue
        if layer.kind == "batch_norm" and lp.weight is not None and lp.bias is not None:
            # nnet::normalize: one product per element (io_parallel) or per channel of a pixel (io_stream).
            # It holds one scale and one bias per channel (scale_shift's arrays: the last axis).
            out_shape = [int(d) for d in graph.type_of(layer.node.outputs[0]).shape[1:]]
            pixels = int(np.prod(out_shape[:-1])) if len(out_shape) > 1 else 1
            mults = int(np.prod(out_shape)) if io_type == "parallel" else out_shape[-1]
            a = src[layer.inputs[0]].width
            per = dsp_per_multiplier(a, lp.weight.width, shape)
            interval = 1 if io_type == "parallel" else pixels
            rows.append(LayerEstimate(layer.name, layer.kind, 1, mults, mults if per else 0, 0 if per else mults,
                                      mults * per, [a, lp.weight.width], out_shape[-1] * (lp.weight.width + lp.bias.width),
                                      "registers", 0, interval + (1 if per else 0), interval))
            continue
        if layer.kind == "softmax":
            n = int(graph.type_of(layer.node.outputs[0]).shape[-1])
            latency = 3 + _tree(n, clock_period)
        elif layer.kind in (*POOLS, *GLOBAL_POOLS):
            latency = 1 + _tree(pool_cells(graph, layer), clock_period)
        else:
            latency = 1
        rows.append(LayerEstimate(layer.name, layer.kind, 1, 0, 0, 0, 0, [], 0, "none", 0, latency, 1))
    totals = {
        "multipliers": sum(r.multipliers for r in rows),
        "dsp_multipliers": sum(r.dsp_multipliers for r in rows),
        "lut_multipliers": sum(r.lut_multipliers for r in rows),
        "dsp": sum(r.dsp for r in rows),
        "weight_bits": sum(r.weight_bits for r in rows),
        "bram18": sum(r.bram18 for r in rows),
        "latency_cycles": sum(r.latency_cycles for r in rows),
        "interval_cycles": max((r.interval_cycles for r in rows), default=1),
        "latency_ns": round(sum(r.latency_cycles for r in rows) * clock_period, 3),
        "rule": f"DSP when both operands >= {LUT_BELOW} bits, {shape[0]}x{shape[1]} per DSP; else LUTs",
    }
    if da_costs is not None:
        totals["da_luts"] = sum(r.da_luts or 0 for r in rows)
        totals["rule"] = ("distributed arithmetic: dense/conv without multipliers, LUTs = da4ml's adder-graph cost; "
                          + totals["rule"] + " (other layers)")
    return rows, totals
