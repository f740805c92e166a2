"""Every op case of the Keras emitter tests, converted to TFLite fp32 and run in LiteRT,
matches the reference interpreter. Each group is merged into one graph: one conversion."""

from __future__ import annotations

import numpy as np
import pytest

GROUP_NAMES = ("conv", "pool", "elementwise", "shaping", "activation", "layout", "quant")


@pytest.mark.parametrize("group", GROUP_NAMES)
def test_group_matches_reference(group: str, cases, keras_checks, convert_fn, run_fn, tmp_path) -> None:
    from tapeout.compiler.interpreter import run
    from tapeout.targets.tflite.flatbuffer import read_model
    from tapeout.targets.tflite.target import unsupported_nodes

    graphs = {k: g for k, g in cases.GROUPS[group]().items() if not unsupported_nodes(g, "fp32")}
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
            if group == "quant":  # fixed_quant lowers to exact float ops: the grid values themselves
                np.testing.assert_array_equal(keras_checks.from_source_layout(graph, name, got[name]), want[name])


def test_only_3d_pooling_is_refused(cases) -> None:
    from tapeout.targets.tflite.target import unsupported_nodes

    refused = {k for k, g in cases.all_graphs().items() if unsupported_nodes(g, "fp32")}
    assert refused == {"avg_pool3d"}


def test_int16x8_refuses_concat_in_one_line_exit_2(tmp_path) -> None:
    """TensorFlow's converter has no int16 CONCATENATION from quantization annotations: it failed
    with a 300-character MLIR location chain and exit 4; now the node is named, exit 2."""
    import keras

    from tests.cli_run import run_cli

    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(i)
    b = keras.layers.Conv2D(4, 3, padding="same")(i)
    y = keras.layers.GlobalAveragePooling2D()(keras.layers.Concatenate(name="joined")([a, b]))
    keras.Model(i, keras.layers.Dense(3)(y)).save(tmp_path / "m.keras")
    code, _, err = run_cli("compile", tmp_path / "m.keras", "-t", "tflite:int16x8", "--calibration", "synthetic",
                           "-o", tmp_path / "o", "--no-cache")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "tflite:int16x8 cannot express node(s) 'joined' (concat)" in err
    code, _, err = run_cli("compile", tmp_path / "m.keras", "-t", "tflite:int8", "--calibration", "synthetic",
                           "-o", tmp_path / "o8", "--no-cache", "--no-verify")
    assert code == 0, err


def test_converter_errors_lose_their_mlir_location_chains() -> None:
    from tapeout.targets.tflite.convert import without_locations

    text = ("<unknown>:0: error: loc(callsite(fused[\"ConcatV2:\", \"f/concat@x\"] at callsite(fused[\"P:\", "
            "\"P@y\"]))): 'tfl.concatenation' op operand #0 must be variadic of tensor")
    assert without_locations(text) == "<unknown>:0: error: 'tfl.concatenation' op operand #0 must be variadic of tensor"
