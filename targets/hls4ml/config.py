"""tapeout's typed hls4ml settings, and the one function that turns them into hls4ml's config dict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tapeout.compiler.fixedpoint.model import HlsLayer, PrecisionPlan

# hls4ml's backend names, by tapeout variant.
BACKENDS = {"vitis": "Vitis", "vivado": "Vivado", "quartus": "Quartus", "oneapi": "oneAPI", "catapult": "Catapult"}
DEFAULT_PARTS = {"vitis": "xcvu13p-flga2577-2-e", "vivado": "xcvu13p-flga2577-2-e",
                 "quartus": "Arria10", "oneapi": "Agilex7", "catapult": "xcvu13p-flga2577-2-e"}
PROJECT = "myproject"


@dataclass(frozen=True)
class Hls4mlOptions:
    """What the user chose (flags or config file), typed; None means the variant's default."""

    part: str | None = None
    clock_period: float = 5.0
    io_type: str = "parallel"  # "parallel" | "stream"
    strategy: str = "latency"  # "latency" | "resource"
    reuse_factor: int = 1
    layer_reuse: dict[str, int] = field(default_factory=dict)  # hls layer name -> reuse factor
    trace: bool = True  # emit per-layer trace hooks (inactive unless the runner turns tracing on)

    def __post_init__(self) -> None:
        if self.io_type not in ("parallel", "stream"):
            raise ValueError(f"io type {self.io_type!r}: expected parallel or stream")
        if self.strategy not in ("latency", "resource", "distributed_arithmetic"):
            raise ValueError(f"strategy {self.strategy!r}: expected latency or resource")
        if self.reuse_factor < 1 or any(r < 1 for r in self.layer_reuse.values()):
            raise ValueError("reuse factors must be >= 1")

    def part_for(self, variant: str) -> str:
        return self.part or DEFAULT_PARTS[variant]

    def reuse_of(self, layer: str) -> int:
        return self.layer_reuse.get(layer, self.reuse_factor)


def hls_config(layers: list[HlsLayer], plan: PrecisionPlan, options: Hls4mlOptions,
               names: dict[str, str] | None = None) -> dict[str, Any]:
    """hls4ml's ``hls_config`` dict for ``plan``: every layer's types written explicitly (no "auto",
    so hls4ml's own precision inference never runs). ``names`` maps tapeout layer names to the
    names the layers have in the model handed to hls4ml (default: the same)."""
    names = names or {}
    per_layer: dict[str, Any] = {}
    for inp, t in plan.inputs.items():
        per_layer[names.get(inp, inp)] = {"Precision": {"result": str(t)}, "Trace": options.trace}
    for layer in layers:
        lp = plan.of(layer.name)
        entry: dict[str, Any] = {"Trace": options.trace}
        if layer.kind == "softmax":
            prec = {"result": str(lp.result)}
            for key, t in (("exp_table", lp.table), ("inv_table", lp.inv_table), ("accum", lp.accum),
                           ("inv_inp", lp.inv_inp or lp.table)):
                if t is not None:
                    prec[key] = str(t)
            entry.update(Implementation="stable", TableSize=lp.table_size)
        elif layer.kind == "batch_norm":  # hls4ml's BatchNormalization: scale_t and bias_t, no accumulator
            prec = {"result": str(lp.result), "scale": str(lp.weight), "bias": str(lp.bias)}
        else:
            prec = {k: str(t) for k, t in lp.types().items() if k not in ("inv_table", "inv_inp")}
            if layer.kind in ("sigmoid", "tanh"):
                entry["TableSize"] = lp.table_size
        entry["Precision"] = prec
        if layer.kind in ("dense", "conv"):
            entry["ReuseFactor"] = options.reuse_of(layer.name)
        per_layer[names.get(layer.name, layer.name)] = entry
    return {
        "Model": {
            "Precision": {"default": "ap_fixed<16,6>"},
            "ReuseFactor": options.reuse_factor,
            "Strategy": options.strategy.capitalize(),
            "BramFactor": 1_000_000_000,
        },
        "LayerName": per_layer,
    }
