"""prune:channels:0.3 on keras.applications ResNet50 (random weights): a valid, smaller graph that runs
in the interpreter, equals its zero-masked original, and runs as ONNX in onnxruntime (issue 7)."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.interpreter import run
from tapeout.compiler.ir import Graph
from tapeout.compiler.ops import graph_macs, graph_params
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.prune import ChannelPlan, PruneChannels, plan_channels, weighted_nodes
from tapeout.compiler.passes.registry import default_pipeline

pytestmark = pytest.mark.slow


def masked_original(graph: Graph, plan: ChannelPlan) -> Graph:
    """The original with every weight that produces or reads a removed channel set to zero."""
    g = graph.copy()
    for n in weighted_nodes(g):
        w = g.constants[n.inputs[1]].copy()
        k_out = plan.keep_of(n.outputs[0])
        k_in = plan.keep_of(n.inputs[0])
        depthwise = n.op == "conv" and int(n.attr("groups")) > 1
        if k_out is not None:
            drop = np.setdiff1d(np.arange(w.shape[-1]), k_out)
            w[..., drop] = 0
            if len(n.inputs) > 2:
                b = g.constants[n.inputs[2]].copy()
                b[drop] = 0
                n.inputs[2] = g.add_constant(f"{n.name}_masked_b", b)
        if k_in is not None and not depthwise:
            axis = 0 if n.op == "dense" else w.ndim - 2
            drop = np.setdiff1d(np.arange(w.shape[axis]), k_in)
            w[(slice(None),) * axis + (drop,)] = 0
        n.inputs[1] = g.add_constant(f"{n.name}_masked_w", w)
    return g


@pytest.fixture(scope="module")
def resnet_graph(tmp_path_factory) -> Graph:
    import keras

    from tapeout.compiler.frontends.keras import load_keras

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(input_shape=(64, 64, 3), weights=None, classes=10)
    path = tmp_path_factory.mktemp("resnet") / "resnet50.keras"
    model.save(path)
    return default_pipeline().run(load_keras(path)).graph


def test_resnet50_channels_0_3(resnet_graph):
    import onnxruntime as ort

    from tapeout.targets.onnx.emit import graph_to_onnx

    g = resnet_graph
    res = Pipeline([PruneChannels(0.3)]).run(g)  # the pipeline checks the graph after the pass
    pruned = res.graph
    assert res.changed
    plan = plan_channels(g, 0.3)
    # Every residual stream is one group: the stem, 4 stages and the 2 inner convs of 16 blocks;
    # only the classifier (a graph output) keeps its channels.
    assert len(plan.groups) == 1 + 4 + 2 * 16 and plan.left_alone == [("predictions",)]
    stage2 = next(names for names, _, _ in plan.groups if "conv2_block1_0_conv" in names)
    assert set(stage2) == {"conv2_block1_0_conv", "conv2_block1_3_conv", "conv2_block2_3_conv", "conv2_block3_3_conv"}
    assert graph_params(pruned) < 0.6 * graph_params(g) and graph_macs(pruned) < 0.6 * graph_macs(g)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    name = g.inputs[0]
    out = run(pruned, {name: x})[pruned.outputs[0]]
    assert out.shape == (2, 10) and np.all(np.isfinite(out))
    want = run(masked_original(g, plan), {name: x})[g.outputs[0]]
    assert np.ptp(want) > 1e-3  # the outputs vary: the comparison means something
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    model = graph_to_onnx(pruned)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed_name = sess.get_inputs()[0].name
    got = sess.run(None, {feed_name: x})[0]
    np.testing.assert_allclose(got, out, rtol=1e-4, atol=1e-4)


def test_efficientnet_b0_channels_0_3(tmp_path):
    """Depthwise convs, squeeze-excitation gates (reshape to [1, 1, C]) and residual adds."""
    import keras

    from tapeout.compiler.frontends.keras import load_keras

    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(input_shape=(64, 64, 3), weights=None, classes=10)
    model.save(tmp_path / "effb0.keras")
    g = default_pipeline().run(load_keras(tmp_path / "effb0.keras")).graph
    pruned = Pipeline([PruneChannels(0.3)]).run(g).graph
    plan = plan_channels(g, 0.3)
    assert plan.left_alone == [("predictions",)] and graph_macs(pruned) < 0.6 * graph_macs(g)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    # Random weights shrink EfficientNet's activations to ~1e-6 logits: compare the pooled features
    # the classifier reads, on the channels the pruned graph keeps, relative to their scale.
    feature = g.node("predictions").inputs[0]
    want = run(masked_original(g, plan), {g.inputs[0]: x}, keep_intermediates=True)[feature]
    have = run(pruned, {g.inputs[0]: x}, keep_intermediates=True)[feature]
    keep = plan.keep_of(feature)
    assert keep is not None and have.shape == (2, len(keep))
    scale = float(np.abs(want).max())
    assert scale > 0 and np.ptp(want) > 0.1 * scale
    np.testing.assert_allclose(have, want[:, keep], rtol=1e-4, atol=1e-5 * scale)
