"""Acceptance 2: the NumPy fixed-point model equals hls4ml's C simulation, layer by layer."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compiler.fixedpoint import hls_layers, run_fixed
from tapeout.compiler.fixedpoint.layers import sigmoid_table, softmax_tables, tanh_table
from tapeout.compiler.fixedpoint.model import DEFAULT_TABLE, softmax_types
from tapeout.compiler.fixedpoint.arith import to_float
from tapeout.runtime.runners.hls4ml_csim import Hls4mlCsimRunner

EXACT = ("dense", "conv", "relu", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool", "add", "identity")


def _traces(b):
    with Hls4mlCsimRunner(b.project) as r:
        outs, traces = r.run({b.graph.inputs[0]: b.data}, trace=True)
    model = run_fixed(b.graph, b.plan, {b.graph.inputs[0]: b.data}, keep_intermediates=True)
    return outs, traces, model


def _table_step(layer, b, model) -> float:
    """The largest difference between neighbouring table entries, in output units."""
    lp = b.plan.of(layer.name)
    if layer.kind == "softmax":
        st = softmax_types(lp, model[b.graph.node(layer.node.name).name].type)
        exp_t, _ = softmax_tables(st)
        return float(np.max(np.abs(np.diff(to_float(exp_t, st.exp_table))))) + lp.result.lsb
    t = lp.table or DEFAULT_TABLE
    table = (sigmoid_table if layer.kind == "sigmoid" else tanh_table)(lp.table_size, t)
    return float(np.max(np.abs(np.diff(to_float(table, t))))) + lp.result.lsb


@pytest.mark.parametrize("name", ["mlp", "conv1d", "conv2d", "global_pool"])
def test_numpy_model_matches_csim(built, name):
    b = built[name]
    outs, traces, model = _traces(b)
    layers = hls_layers(b.graph)
    checked = []
    for layer in layers:
        assert layer.name in traces, f"layer {layer.name} not traced by the C simulation"
        got = traces[layer.name]
        want = model[layer.name].to_float().reshape(len(b.data), -1)
        if layer.kind in EXACT:
            np.testing.assert_array_equal(got, want, err_msg=f"{name}: layer {layer.name} ({layer.kind})")
        else:
            step = _table_step(layer, b, model)
            assert np.max(np.abs(got - want)) <= step, f"{name}: {layer.name} off by more than one table step"
        checked.append(layer.kind)
    assert {"dense", "relu"} <= set(checked) or name == "global_pool"
    if name == "global_pool":
        assert {"global_avg_pool", "global_max_pool", "add"} <= set(checked)
    # The runner's outputs are the last layer's, by graph output name.
    last = model[layers[-1].name].to_float().reshape(outs[b.graph.outputs[0]].shape)
    assert np.max(np.abs(outs[b.graph.outputs[0]] - last)) <= _table_step(layers[-1], b, model)


def test_a_different_precision_changes_the_result(built):
    """The comparison has teeth: one weight type narrower and the model no longer matches the C++."""
    from dataclasses import replace

    from tapeout.compiler.fixedpoint import fixed

    b = built["mlp"]
    _, traces, _ = _traces(b)
    plan = replace(b.plan, layers=dict(b.plan.layers))
    plan.layers["fc1"] = replace(plan.layers["fc1"], weight=fixed(6, 1, "AP_RND"))
    other = run_fixed(b.graph, plan, {b.graph.inputs[0]: b.data}, keep_intermediates=True)
    assert not np.array_equal(traces["fc1"], other["fc1"].to_float())
