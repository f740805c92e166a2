"""Bias correction for integer weights (Nagel et al., "Data-Free Quantization through Weight
Equalization and Bias Correction", 2019, in its empirical form, as NNCF's post-training
quantization applies it by default).

Rounding a conv's or dense layer's weights to int8 moves its output by ``x * (Wq - W)``. Its
mean over the data is not zero: the inputs after a ReLU are positive on average, so each output
channel gets a steady offset, which spatial pooling keeps while it averages the rounding noise
away. zoo SqueezeNet's classifier conv (512 -> 1000, then a global pool and a softmax) read cosine
0.937 in the int8 simulation for this reason; with the offset subtracted from the bias, 0.99999.

The pass runs on the calibrated float graph before ``Quantize``: for every conv/dense with a
constant float weight that is not kept float, it rounds the weight as ``Quantize`` will
(``per_channel_weights``), evaluates the layer with ``Wq - W`` and no bias on the calibration
data's mean input (the float model's, per position and channel: the layer is linear, so that is
the mean of the offset, padding borders included), averages it over positions, and subtracts
it from the bias (adding a bias where the layer has none). ``Quantize`` then annotates the new
bias as any other, so every artifact of the scheme carries it.

Each layer is corrected on the float model's inputs, as NNCF's FastBiasCorrection does, not on
the quantized model's own (its BiasCorrection): a layer-by-layer version that ran the float model
and the simulation side by side and took every layer's whole mean drift out was tried and read
lower cosine on the two corpus models where either version moved it down (zoo DenseNet121 int8
0.9709 against 0.9786, keras MobileNetV3-small 0.99453 against 0.99628; the artifacts depart
from the simulation those means were fitted to, and 8 calibration samples make them noisy).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tapeout.compiler.interpreter import eval_node
from tapeout.compiler.ir import Graph, Node
from tapeout.compiler.passes.base import Editor, Pass, PassResult
from tapeout.compiler.passes.quantize import LINEAR_OPS, fake_quantize, is_excluded, per_channel_weights


class CorrectBias(Pass):
    name = "correct-bias"

    def __init__(self, feeds: Mapping[str, np.ndarray] | None = None, exclude: Sequence[str] = (),
                 means: Mapping[str, np.ndarray] | None = None):
        """``feeds``: the calibration inputs in the IR's layout, or ``means``: ``layer_input_means``
        of the graph, measured once for several runs (--fallback annotates again per step);
        ``exclude``: the nodes kept float."""
        if (feeds is None) == (means is None):
            raise ValueError("CorrectBias takes calibration feeds or precomputed means, one of them")
        self.feeds = None if feeds is None else dict(feeds)
        self.exclude = tuple(exclude)
        self.means = None if means is None else dict(means)

    def run(self, graph: Graph) -> PassResult:
        if not any(correctable(graph, n) and not is_excluded(n.name, self.exclude) for n in graph.nodes):
            return PassResult(graph, False)
        g = graph.copy()
        layers = [n for n in g.nodes if correctable(g, n) and not is_excluded(n.name, self.exclude)]
        means = self.means if self.means is not None else layer_input_means(graph, self.feeds or {})
        ed = Editor(g)
        shifts = []
        for n in layers:
            w = np.asarray(g.constants[n.inputs[1]], np.float32)
            delta = fake_quantize(w, per_channel_weights(w, w.ndim - 1)).astype(np.float32) - w
            probe = Node(n.op, n.name, [n.inputs[0], n.inputs[1]], list(n.outputs),
                         {k: v for k, v in n.attrs.items() if k != "activation"})
            offset = eval_node(probe, [means[n.inputs[0]], delta])[0].astype(np.float64)
            offset = offset.reshape(-1, offset.shape[-1]).mean(axis=0)
            old = np.asarray(g.constants[n.inputs[2]], np.float64) if _has_bias(n) else np.zeros(offset.shape)
            bias = ed.add_constant(f"{n.name}_b", (old - offset).astype(w.dtype))
            ed.set_inputs(n, [n.inputs[0], n.inputs[1], bias])
            scale = float(np.max(np.abs(old))) if old.size and np.any(old) else 1.0
            shifts.append((float(np.max(np.abs(offset))) / scale, n.name))
        g.remove_unused_constants()
        worst, where = max(shifts)
        return PassResult(g, True, [f"{len(layers)} conv/dense bias(es) corrected for weight rounding (calibration "
                                    f"data's mean inputs); largest shift {worst:.3g} of the bias's range ({where})"])


def correctable(g: Graph, n: Node) -> bool:
    """A conv/dense whose weight is a float constant (what Quantize rounds per channel) and whose
    bias, if any, is a constant."""
    if n.op not in LINEAR_OPS or len(n.inputs) < 2 or n.inputs[1] not in g.constants:
        return False
    if np.asarray(g.constants[n.inputs[1]]).dtype.kind != "f":
        return False
    return not _has_bias(n) or n.inputs[2] in g.constants


def _has_bias(n: Node) -> bool:
    return len(n.inputs) > 2 and bool(n.inputs[2])


def correctable_inputs(graph: Graph) -> set[str]:
    """The values the correctable layers of ``graph`` read: the means bias correction needs."""
    return {n.inputs[0] for n in graph.nodes if correctable(graph, n)}


def layer_input_means(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mean over the samples of every value a correctable layer of ``graph`` reads, in one float
    pass (``feeds`` in the IR's layout); the build takes them from its calibration sweep instead
    (calibration.calibrate_with_means)."""
    from tapeout.compiler.calibration import BATCH_SIZE, Means, sweep

    means = Means(correctable_inputs(graph))
    sweep(graph, feeds, BATCH_SIZE, raw=means.observe)
    return means.means(int(next(iter(feeds.values())).shape[0]))
