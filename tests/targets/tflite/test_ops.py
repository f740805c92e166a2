"""Every op case of the Keras emitter tests, converted to TFLite fp32 and run in LiteRT,
matches the reference interpreter. Each group is merged into one graph: one conversion."""

from __future__ import annotations

import numpy as np
import pytest

GROUP_NAMES = ("conv", "pool", "elementwise", "shaping", "activation", "layout")


@pytest.mark.parametrize("group", GROUP_NAMES)
def test_group_matches_reference(group: str, cases, keras_checks, convert_fn, run_fn, tmp_path) -> None:
    from tapeout.compiler.interpreter import run
    from tapeout.targets.tflite.flatbuffer import read_model
    from tapeout.targets.tflite.target import unsupported_nodes

    graphs = {k: g for k, g in cases.GROUPS[group]().items() if not unsupported_nodes(g)}
    graph = cases.merge(graphs)
    data = convert_fn(graph)
    ops = read_model(data).op_names()
    assert not [o for o in ops if o.startswith("CUSTOM") or o.startswith("FLEX")], ops
    for batch in (1, 3):  # the batch dimension is dynamic: LiteRT resizes the input
        feeds = cases.feeds_for(graph, batch)
        want = run(graph, feeds)
        source = {i: keras_checks.to_source_layout(graph, i, a) for i, a in feeds.items()}
        got = run_fn(data, source, tmp_path)
        assert set(got) == set(graph.outputs)
        for name in graph.outputs:
            np.testing.assert_allclose(keras_checks.from_source_layout(graph, name, got[name]), want[name],
                                       rtol=1e-4, atol=1e-4, err_msg=f"output {name!r}, batch {batch}")


def test_only_3d_pooling_is_refused(cases) -> None:
    from tapeout.targets.tflite.target import unsupported_nodes

    refused = {k for k, g in cases.all_graphs().items() if unsupported_nodes(g)}
    assert refused == {"avg_pool3d"}
