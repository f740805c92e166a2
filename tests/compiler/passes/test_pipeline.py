"""Pipeline records, failure reporting, per-pass checks, fixed points, registry and default pipeline."""

import json

import numpy as np
import pytest

from tapeout.compiler.errors import PassFailed
from tapeout.compiler.ir import Activation, Graph, TensorType
from tapeout.compiler.passes.base import Pass, PassResult
from tapeout.compiler.passes.canonicalize import RemoveDead, RemoveIdentity
from tapeout.compiler.passes.fuse import FuseActivation
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.registry import PASSES, default_pipeline


class Explodes(Pass):
    name = "explodes"

    def run(self, graph: Graph) -> PassResult:
        raise RuntimeError("boom")


class BreaksShapes(Pass):
    """Swaps the dense weights for ones of the wrong shape."""

    name = "breaks-shapes"

    def run(self, graph: Graph) -> PassResult:
        g = graph.copy()
        n = next(n for n in g.nodes if n.op == "dense")
        n.inputs[1] = g.add_constant("bad_w", np.zeros((7, 3), np.float32))
        return PassResult(g, True, ["broke it"])


class AlwaysChanges(Pass):
    name = "always-changes"

    def run(self, graph: Graph) -> PassResult:
        return PassResult(graph.copy(), True, ["changed"])


class Refuses(Pass):
    name = "refuses"

    def requires(self, graph: Graph) -> str | None:
        return "needs something this graph lacks"

    def run(self, graph: Graph) -> PassResult:
        raise AssertionError("must not run")


@pytest.fixture
def dense_graph(builder):
    b = builder()
    h = b.node("dropout", [b.input("x", 4)], "drop")
    d = b.node("dense", [h, b.rand("w", 4, 3), b.rand("b", 3)], "d")
    return b.build(b.node("relu", [d], "act"))


def test_records_one_entry_per_pass_with_node_counts(dense_graph):
    res = Pipeline([RemoveIdentity(), RemoveDead(), FuseActivation()]).run(dense_graph)
    assert [r.name for r in res.records] == ["remove-identity", "remove-dead", "fuse-activation"]
    assert [(r.changed, r.nodes_before, r.nodes_after) for r in res.records] == [
        (True, 3, 2), (False, 2, 2), (True, 2, 1)]
    assert all(r.seconds >= 0 for r in res.records)
    js = res.to_json()
    assert all(set(e) == {"name", "changed", "details", "nodes_before", "nodes_after"} for e in js)
    assert json.loads(json.dumps(js)) == js
    assert len(dense_graph.nodes) == 3  # input graph untouched


def test_exception_in_a_pass_names_it_and_those_before(dense_graph):
    with pytest.raises(PassFailed) as e:
        Pipeline([RemoveIdentity(), RemoveDead(), Explodes()]).run(dense_graph)
    msg = str(e.value)
    assert "'explodes'" in msg and "boom" in msg and "remove-identity, remove-dead" in msg
    assert "\n" not in msg


def test_check_after_each_pass_catches_broken_shapes(dense_graph):
    with pytest.raises(PassFailed, match="'breaks-shapes'.*does not match.*after passes: remove-identity"):
        Pipeline([RemoveIdentity(), BreaksShapes(), RemoveDead()]).run(dense_graph)
    # Without checking, the broken graph goes through unnoticed.
    res = Pipeline([BreaksShapes()], check=False).run(dense_graph)
    assert "bad_w" in res.graph.constants


def test_first_pass_failure_says_nothing_ran_before(dense_graph):
    with pytest.raises(PassFailed, match="'explodes'.*no pass ran before"):
        Pipeline([Explodes()]).run(dense_graph)


def test_precondition_refusal_is_reported(dense_graph):
    with pytest.raises(PassFailed, match="'refuses' cannot run: needs something"):
        Pipeline([Refuses()]).run(dense_graph)


def test_fixed_point_repeats_until_unchanged_and_is_bounded(dense_graph):
    res = Pipeline.fixed_point([RemoveIdentity(), FuseActivation()]).run(dense_graph)
    # One record per pass, its rounds merged: the second round changed nothing.
    assert res.rounds == 2 and [r.changed for r in res.records] == [True, True]
    assert [(r.nodes_before, r.nodes_after) for r in res.records] == [(3, 2), (2, 1)]  # counts its own changes only
    res = Pipeline([AlwaysChanges()], max_iterations=3).run(dense_graph)
    assert res.rounds == 3 and res.records[0].details == ["changed"] * 3
    assert Pipeline([AlwaysChanges()]).run(dense_graph).rounds == 1


def test_registry_names_match_pass_names():
    assert {"canonicalize", "remove-identity", "fold-constants", "remove-dead", "merge-pad", "fuse",
            "fuse-batch-norm", "fuse-activation", "fuse-reshape-transpose"} <= set(PASSES)
    for name, cls in PASSES.items():
        assert cls.name == name and issubclass(cls, Pass)


def test_default_pipeline_on_a_small_cnn(builder, apply, equivalent, op_list):
    b = builder()
    x = b.input("image", 8, 8, 1)
    p = b.node("pad", [x], "zero_pad", pads=((0, 0), (1, 1), (1, 1), (0, 0)))
    c = b.node("conv", [p, b.rand("conv1_w", 3, 3, 1, 4), b.rand("conv1_b", 4)], "conv1")
    h = b.node("batch_norm", [c, *b.bn_params("bn1", 4)], "bn1")
    h = b.node("relu", [h], "relu1")
    h = b.node("max_pool", [h], "pool1", kernel=(2, 2), strides=(2, 2))
    h = b.node("flatten", [h], "flatten")
    h = b.node("dropout", [h], "dropout", rate=0.1)
    h = b.node("dense", [h, b.rand("dense_w", 64, 5), b.rand("dense_b", 5)], "probabilities")
    g = b.build(b.node("softmax", [h], "softmax"))
    res = default_pipeline().run(g)
    assert op_list(res.graph) == ["conv", "max_pool", "flatten", "dense"]
    assert res.graph.outputs == ["softmax_out"]
    assert res.graph.node("conv1").attrs["activation"] == Activation.of("relu")
    assert res.graph.node("probabilities").attrs["activation"] == Activation.of("softmax", axis=-1)
    assert [r.name for r in res.records] == ["canonicalize", "fuse"] and all(r.changed for r in res.records)
    canon, fuse = res.records
    assert [p.name for p in canon.passes] == ["remove-identity", "fold-constants", "merge-pad", "fuse-hard-swish",
                                              "remove-dead"]
    assert [p.name for p in fuse.passes if p.changed] == ["fuse-batch-norm", "fuse-activation"]
    # The nested record sums up its passes: their details in order, their node counts end to end.
    assert canon.details == [d for p in canon.passes for d in p.details]
    assert "merged pad 'zero_pad' into conv 'conv1'" in canon.passes[2].details
    assert canon.nodes_before == canon.passes[0].nodes_before == 9
    assert canon.nodes_after == fuse.nodes_before == 7
    assert [(p.nodes_before, p.nodes_after) for p in canon.passes] == [(9, 8), (8, 8), (8, 7), (7, 7), (7, 7)]
    assert canon.rounds == 2 and fuse.rounds == 2
    js = res.to_json()
    assert [p["name"] for p in js[1]["passes"]] == [p.name for p in fuse.passes]
    assert "passes" not in js[1]["passes"][0]  # plain passes have no nested list
    equivalent(g, res.graph, rtol=1e-4, atol=1e-5)
    assert default_pipeline().run(g).to_json() == res.to_json()  # deterministic report
    assert not default_pipeline().run(res.graph).to_json()[0]["changed"]


class MistypesAValue(Pass):
    """Stores a wrong type on the dense output, leaving the wiring alone."""

    name = "mistypes"

    def run(self, graph: Graph) -> PassResult:
        g = graph.copy()
        n = next(n for n in g.nodes if n.op == "dense")
        g.types[n.outputs[0]] = TensorType(("N", 5), "float32")
        return PassResult(g, True, ["retyped the dense output"])


def test_check_catches_a_wrongly_typed_value_before_inference_overwrites_it(dense_graph):
    with pytest.raises(PassFailed, match=r"pass 'mistypes' left an invalid graph: .*'d_out' is typed "
                                         r"float32\[N, 5\] but infers to float32\[N, 3\].*after passes: remove-identity"):
        Pipeline([RemoveIdentity(), MistypesAValue()]).run(dense_graph)
    # Unchecked, the wrong type stays (nothing retypes it).
    res = Pipeline([MistypesAValue()], check=False).run(dense_graph)
    assert res.graph.types["d_out"].shape == ("N", 5)


def test_a_wrong_type_inside_a_nested_pipeline_names_its_path(dense_graph):
    inner = Pipeline([RemoveIdentity(), MistypesAValue()], name="inner")
    with pytest.raises(PassFailed, match="pass 'outer/inner/mistypes' left an invalid graph.*"
                                         "after passes: outer/always-changes, outer/inner/remove-identity\\)"):
        Pipeline([Pipeline([AlwaysChanges(), inner], name="outer")]).run(dense_graph)


def test_a_failure_after_a_nested_pipeline_names_it_whole(dense_graph):
    nested = Pipeline.fixed_point([RemoveIdentity(), RemoveDead()], name="clean")
    with pytest.raises(PassFailed, match="'explodes' failed.*\\(after passes: clean\\)"):
        Pipeline([nested, Explodes()]).run(dense_graph)


def test_nested_pipelines_follow_the_outer_check_flag(dense_graph):
    inner = Pipeline([MistypesAValue()], name="inner")  # checks by default
    res = Pipeline([inner], check=False).run(dense_graph)
    assert res.graph.types["d_out"].shape == ("N", 5)


class Warns(Pass):
    name = "warns"

    def run(self, graph: Graph) -> PassResult:
        return PassResult(graph.copy(), False, ["looked"], ["careful"])


def test_warnings_are_kept_apart_from_details_at_every_level(dense_graph):
    res = Pipeline([Pipeline([Warns()], name="inner"), Warns()]).run(dense_graph)
    assert res.warnings == ["careful", "careful"] and res.details == ["looked", "looked"]
    js = res.to_json()
    assert js[0]["warnings"] == ["careful"] and js[0]["details"] == ["looked"]
    assert js[0]["passes"] == [{"name": "warns", "changed": False, "details": ["looked"], "warnings": ["careful"],
                                "nodes_before": 3, "nodes_after": 3}]
    assert "warnings" not in Pipeline([RemoveIdentity()]).run(dense_graph).to_json()[0]  # none: no key
    assert js[1]["warnings"] == ["careful"] and "passes" not in js[1]


def test_a_pipeline_is_a_pass():
    assert issubclass(Pipeline, Pass)
    assert isinstance(default_pipeline().passes[0], Pipeline)
    assert PASSES["canonicalize"]().name == "canonicalize" and PASSES["fuse"]().max_iterations == 10
