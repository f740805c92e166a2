"""ONNX import + compile time against onnxruntime's own session creation, in the same run.

    python benchmarks/onnx_import.py [--size 224] [--repeat 3] [--classes 1000]

Model: a ResNet50-shaped NCHW graph (7x7 stem, bottleneck stages [3, 4, 6, 3], global
average pool, Flatten, Gemm; Conv + BatchNormalization + Relu as PyTorch exports it, no
fusion) with random weights, built with ``onnx.helper`` and saved in a temporary folder.
Prints one table:
- tapeout import (``load_onnx``: NCHW -> channels-last IR),
- tapeout compile -t onnx (import + passes + ONNX emit, no verification),
- onnxruntime ``InferenceSession`` creation on the same file (its default graph
  optimizations: the work it must do before it can run the model),
with the ratio against onnxruntime. Times are medians of --repeat runs; quote ratios,
these machines are noisy. A last line checks the compiled artifact against the source
model on one input, so the timed compile is known to be a correct one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tapeout.compiler.quiet import quiet_environment

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, first stride)
EXPANSION = 4


class _ResNetBuilder:
    """Appends ONNX nodes and random initializers; names follow torchvision's module paths."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def _const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, name: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        # He-scaled weights and near-identity batch norm keep activations finite through 50 layers.
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        wn = self._const(f"{name}.weight", w)
        pad = k // 2
        self.nodes.append(helper.make_node("Conv", [x, wn], [f"{name}.conv_out"], name=f"{name}.conv",
                                           kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))
        bn = [self._const(f"{name}.bn.{p}", v) for p, v in (
            ("weight", self.rng.uniform(0.5, 1.0, cout)), ("bias", self.rng.normal(0, 0.1, cout)),
            ("running_mean", self.rng.normal(0, 0.1, cout)), ("running_var", self.rng.uniform(0.5, 1.5, cout)))]
        out = f"{name}.bn_out"
        self.nodes.append(helper.make_node("BatchNormalization", [f"{name}.conv_out", *bn], [out],
                                           name=f"{name}.bn", epsilon=1e-5))
        if relu:
            self.nodes.append(helper.make_node("Relu", [out], [f"{name}.relu_out"], name=f"{name}.relu"))
            out = f"{name}.relu_out"
        return out

    def bottleneck(self, x: str, name: str, cin: int, width: int, stride: int) -> str:
        cout = width * EXPANSION
        y = self.conv_bn(x, f"{name}.1", cin, width, 1, 1, True)
        y = self.conv_bn(y, f"{name}.2", width, width, 3, stride, True)
        y = self.conv_bn(y, f"{name}.3", width, cout, 1, 1, False)
        skip = x if stride == 1 and cin == cout else self.conv_bn(x, f"{name}.downsample", cin, cout, 1, stride, False)
        self.nodes.append(helper.make_node("Add", [y, skip], [f"{name}.add_out"], name=f"{name}.add"))
        self.nodes.append(helper.make_node("Relu", [f"{name}.add_out"], [f"{name}.out"], name=f"{name}.relu"))
        return f"{name}.out"


def build_resnet50(size: int, classes: int, seed: int = 0) -> onnx.ModelProto:
    """A ResNet50-shaped NCHW model (batch fixed at 1, as exporters write it) with random weights."""
    b = _ResNetBuilder(seed)
    x = b.conv_bn("input", "stem", 3, 64, 7, 2, True)
    b.nodes.append(helper.make_node("MaxPool", [x], ["stem.pool_out"], name="stem.pool",
                                    kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "stem.pool_out", 64
    for s, (width, blocks, stride) in enumerate(STAGES, start=1):
        for i in range(blocks):
            x = b.bottleneck(x, f"layer{s}.{i}", cin, width, stride if i == 0 else 1)
            cin = width * EXPANSION
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool_out"], name="avgpool"))
    b.nodes.append(helper.make_node("Flatten", ["pool_out"], ["flat"], name="flatten", axis=1))
    fc_w = b._const("fc.weight", b.rng.standard_normal((classes, cin)) / np.sqrt(cin))
    fc_b = b._const("fc.bias", np.zeros(classes))
    b.nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes, "resnet50_nchw",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tapeout-bench")
    onnx.checker.check_model(model)
    return model


def _median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    quiet_environment()

    import onnxruntime as ort

    from tapeout.compiler.api import compile_model
    from tapeout.compiler.frontends.onnx import load_onnx

    work = Path(tempfile.mkdtemp(prefix="tapeout-bench-onnx-"))
    src = work / "resnet50_nchw.onnx"
    model = build_resnet50(args.size, args.classes)
    src.write_bytes(model.SerializeToString())
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)

    def ort_session() -> ort.InferenceSession:
        return ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])

    def tapeout_compile() -> None:
        compile_model(src, ["onnx"], work / "tapeout", verify_artifacts=False)

    # Warm-up: the first call of each pays for imports and onnxruntime's one-time setup.
    load_onnx(src)
    tapeout_compile()
    ort_session()
    t_ort = _median_time(ort_session, args.repeat)
    t_import = _median_time(lambda: load_onnx(src), args.repeat)
    t_compile = _median_time(tapeout_compile, args.repeat)

    x = np.random.default_rng(1).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    want = ort_session().run(None, {"input": x})[0]
    got = ort.InferenceSession(str(work / "tapeout" / "onnx-fp32" / "model.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

    rows = [
        ("onnxruntime InferenceSession creation", t_ort),
        ("tapeout import (load_onnx)", t_import),
        ("tapeout import + compile -t onnx (no verify)", t_compile),
    ]
    print(f"ResNet50-shaped NCHW ONNX, {args.size}x{args.size}, {len(model.graph.node)} nodes, "
          f"{params / 1e6:.1f}M params ({src.stat().st_size / 2**20:.0f} MiB); median of {args.repeat} runs")
    print(f"{'step':<46} {'seconds':>9} {'x ort session':>14}")
    for name, t in rows:
        print(f"{name:<46} {t:>9.3f} {t / t_ort:>14.2f}")
    err = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    print(f"artifact vs source on one input (onnxruntime both): max abs err {err:.2e} "
          f"(outputs up to {scale:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
