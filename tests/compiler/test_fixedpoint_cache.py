"""The precision search's layer cache (compiler.fixedpoint.model.LayerCache): an evaluation
recomputes only the layers whose types, or whose inputs' types, changed, and the search finds the
same plan in the same number of evaluations as without it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tapeout.compiler.fixedpoint import fixed, hls_layers, run_fixed
from tapeout.compiler.fixedpoint.model import LayerCache
from tapeout.compiler.fixedpoint.search import CACHE_ENV, Budget, search, uniform_plan
from tapeout.compiler.ir import Activation, Graph, Node, TensorType


def _residual(seed: int = 0) -> tuple[Graph, np.ndarray]:
    """dense-relu, dense, add(skip), dense-softmax: a branch joins, so keys must follow both inputs."""
    rng = np.random.default_rng(seed)
    c = {f"w{i}": (rng.normal(0, 1, s) / np.sqrt(s[0])).astype(np.float32)
         for i, s in enumerate([(12, 16), (16, 16), (16, 4)])}
    c.update({f"b{i}": rng.normal(0, 0.1, s[1]).astype(np.float32)
              for i, s in enumerate([(12, 16), (16, 16), (16, 4)])})
    nodes = [Node("dense", "fc0", ["x", "w0", "b0"], ["h0"], {"activation": Activation("relu")}),
             Node("dense", "fc1", ["h0", "w1", "b1"], ["h1"], {"activation": Activation()}),
             Node("add", "skip", ["h0", "h1"], ["h2"], {}),
             Node("dense", "fc2", ["h2", "w2", "b2"], ["y"], {"activation": Activation.of("softmax", axis=-1)})]
    g = Graph("res", ["x"], ["y"], nodes, c, types={"x": TensorType(("N", 12))})
    g.infer_shapes()
    return g, rng.normal(0, 1.0, (800, 12)).astype(np.float32)


def test_only_changed_layers_and_their_consumers_recompute() -> None:
    g, x = _residual()
    plan = uniform_plan(g, fixed(16, 6))
    cache = LayerCache()
    first = run_fixed(g, plan, {"x": x}, cache=cache)
    n = len(hls_layers(g)) + 1  # + the input conversion
    assert (cache.hits, cache.misses) == (0, n)
    again = run_fixed(g, plan, {"x": x}, cache=cache)
    assert (cache.hits, cache.misses) == (n, n)
    np.testing.assert_array_equal(first["y"].raw, again["y"].raw)
    # fc1 narrower: fc1 and everything after it recompute; the input, fc0 and fc0's relu do not.
    names = [layer.name for layer in hls_layers(g)]
    narrow = uniform_plan(g, fixed(16, 6))
    narrow.layers["fc1"] = replace(narrow.layers["fc1"], result=fixed(8, 4))
    before = cache.hits
    got = run_fixed(g, narrow, {"x": x}, cache=cache)
    assert cache.hits - before == 1 + names.index("fc1")
    np.testing.assert_array_equal(got["y"].raw, run_fixed(g, narrow, {"x": x})["y"].raw)


def test_no_room_means_no_caching() -> None:
    g, x = _residual()
    plan = uniform_plan(g, fixed(16, 6))
    cache = LayerCache(max_bytes=0)
    run_fixed(g, plan, {"x": x}, cache=cache)
    run_fixed(g, plan, {"x": x}, cache=cache)
    assert cache.hits == 0 and cache.bytes == 0


@pytest.mark.parametrize("make", [_residual])
def test_search_finds_the_same_plan_with_and_without_the_cache(make, monkeypatch) -> None:
    g, x = make()
    cached = search(g, {"x": x}, Budget(min_agreement=0.99))
    monkeypatch.setenv(CACHE_ENV, "off")
    plain = search(g, {"x": x}, Budget(min_agreement=0.99))
    assert cached.plan == plain.plan
    assert cached.evaluations == plain.evaluations
    assert (cached.agreement, cached.cosine) == (plain.agreement, plain.cosine)
