"""Ethos-U: Vela's estimates per accelerator config next to the host LiteRT latency of the same int8 model.

    python benchmarks/ethos_u.py [--configs u55-128 u65-256] [--latency-runs 50]

Model: keras.applications.MobileNetV2 (weights=None, 160x160, seed 0), compiled by one tapeout
command with `-t ethos-u:CONFIG` for each config and `--calibration synthetic` (no verification:
random weights say nothing about accuracy). Per config, one table row of Vela's figures from the
report (Vela's system config and memory mode are its defaults for the accelerator):

- inferences/s and total cycles (Vela's estimate; NPU cycles in brackets),
- SRAM and off-chip flash / DRAM used,
- operators Vela placed on the NPU and on the CPU,
- the host's batch-1 latency of the int8 model Vela consumed (model.tflite), LiteRT with one
  thread, median of --latency-runs invocations after a warm-up. Every config compiles the same
  int8 model (same bytes), so this column repeats: it is the x86 CPU baseline, not the NPU.

The NPU figures are Vela's static estimates; nothing here executes the NPU command stream.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


from litert_timing import latency_ms  # benchmarks/ (the script's folder is on sys.path)
from tapeout.compiler.quiet import quiet_environment


def kib(n: int) -> str:
    return f"{n / 1024:,.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["u55-128", "u65-256"])
    ap.add_argument("--latency-runs", type=int, default=50)
    args = ap.parse_args()
    quiet_environment()
    import keras

    from tapeout.compiler.api import compile_model

    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mobilenet_v2_160.keras"
        keras.applications.MobileNetV2(input_shape=(160, 160, 3), weights=None).save(path)
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        report = compile_model(path, [f"ethos-u:{c}" for c in args.configs], out, calibration="synthetic",
                               verify_artifacts=False)
        command_s = time.perf_counter() - t0
        rows = []
        for t in report.targets:
            e = t.extra
            mem = e["memory_bytes"]
            rows.append({
                "config": t.variant, "system": f"{e['vela']['system_config']} / {e['vela']['memory_mode']}",
                "clock": e["vela"]["core_clock_hz"] / 1e6, "ips": e["inferences_per_second"],
                "cycles": e["cycles_total"], "npu_cycles": e["cycles_npu"], "sram": mem["sram"],
                "flash": mem["off_chip_flash"] + mem["on_chip_flash"], "dram": mem["dram"],
                "npu_ops": e["npu_ops"], "cpu_ops": e["cpu_ops"],
                "cpu": sorted({c["op"] for c in e["cpu_placement"]}),
                "host_ms": latency_ms(out / t.folder / "model.tflite", args.latency_runs),
                "emit_s": t.seconds, "vela_size": (out / t.folder / "model_vela.tflite").stat().st_size,
                "int8_size": (out / t.folder / "model.tflite").stat().st_size,
            })
    print(f"MobileNetV2 160 (weights=None, seed 0), int8 with int8 I/O, --calibration synthetic; "
          f"one command {command_s:.1f} s")
    print()
    head = ("| config | Vela system / memory mode | clock MHz | inferences/s (Vela) | cycles (NPU) | SRAM KiB "
            "| flash KiB | DRAM KiB | ops NPU / CPU | model_vela.tflite B | host LiteRT int8 batch-1 ms (1 thread) "
            "| emit s |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        cpu = f" ({', '.join(r['cpu'])})" if r["cpu"] else ""
        print(f"| ethos-{r['config']} | {r['system']} | {r['clock']:g} | {r['ips']:,.1f} | {r['cycles']:,} "
              f"({r['npu_cycles']:,}) | {kib(r['sram'])} | {kib(r['flash'])} | {kib(r['dram'])} | "
              f"{r['npu_ops']} / {r['cpu_ops']}{cpu} | {r['vela_size']:,} | {r['host_ms']:.2f} | {r['emit_s']:.1f} |")
    print()
    print(f"- int8 model Vela consumed: {rows[0]['int8_size']:,} B; host figures are x86 LiteRT (XNNPACK, "
          "one thread), Vela's are its static estimates for the NPU, not measurements")
    for r in rows:
        print(f"- ethos-{r['config']}: Vela estimates {1000 / r['ips']:.2f} ms per inference at {r['clock']:g} MHz; "
              f"the host runs the int8 model in {r['host_ms']:.2f} ms (NPU estimate / host = "
              f"{1000 / r['ips'] / r['host_ms']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
