"""The reference interpreter: runs an IR graph with the NumPy kernels in ``kernels``."""

from __future__ import annotations

from typing import Callable

import numpy as np

from tapeout.compiler.errors import DataError
from tapeout.compiler.ir import Graph, IRError, Node, TensorType
from tapeout.compiler.kernels import KERNELS, compute_dtype
from tapeout.compiler.kernels import precision as kernel_precision


def eval_node(node: Node, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    """Evaluate one node on concrete input arrays."""
    try:
        kernel = KERNELS[node.op]
    except KeyError:
        raise IRError(f"node {node.name!r}: no kernel for op {node.op!r}") from None
    return kernel(node, inputs)


def _check_feed(name: str, array: np.ndarray, t: TensorType) -> np.ndarray:
    if array.ndim != t.rank:
        raise DataError(f"input {name!r} has rank {array.ndim} (shape {array.shape}), the model expects {t}")
    for i, (have, want) in enumerate(zip(array.shape, t.shape)):
        if isinstance(want, int) and have != want:
            raise DataError(f"input {name!r} has shape {array.shape}, the model expects {t} (axis {i} differs)")
    want = np.dtype(t.dtype)
    if np.issubdtype(want, np.floating) and compute_dtype() != np.float32:
        want = compute_dtype()  # float64 mode: float inputs upcast with the weights
    if np.issubdtype(array.dtype, np.floating) and array.dtype != want:
        array = array.astype(want)
    return array


def _validated_feeds(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [i for i in graph.inputs if i not in feeds]
    if missing:
        raise DataError(f"missing input(s) {', '.join(map(repr, missing))}; the model's inputs are "
                        f"{', '.join(graph.inputs)}")
    extra = [k for k in feeds if k not in graph.inputs]
    if extra:
        raise DataError(f"unknown input(s) {', '.join(map(repr, extra))}; the model's inputs are "
                        f"{', '.join(graph.inputs)}")
    return {i: _check_feed(i, np.asarray(feeds[i]), graph.types[i]) for i in graph.inputs}


def _last_uses(graph: Graph) -> dict[int, list[str]]:
    """For each node index, the non-output values that are read for the last time there."""
    last: dict[str, int] = {}
    for idx, n in enumerate(graph.nodes):
        for i in n.inputs:
            if i and i not in graph.constants:
                last[i] = idx
    keep = set(graph.outputs)
    out: dict[int, list[str]] = {}
    for value, idx in last.items():
        if value not in keep:
            out.setdefault(idx, []).append(value)
    return out


ValueHook = Callable[[str, np.ndarray], np.ndarray]


def run(graph: Graph, feeds: dict[str, np.ndarray], *, keep_intermediates: bool = False,
        value_hook: ValueHook | None = None, precision: str = "float32") -> dict[str, np.ndarray]:
    """Run ``graph`` on ``feeds``; return its outputs by name.

    With ``keep_intermediates`` every computed value (graph inputs and node outputs,
    not constants) is returned by name in execution order; otherwise values are
    dropped as soon as their last consumer has run, to bound memory.

    ``value_hook(name, array)`` is called on every graph input and node output as soon
    as it exists; what it returns replaces the value. Calibration uses it to observe
    ranges without keeping every tensor; quantization simulation to round values.

    ``precision="float64"`` computes every float kernel in float64 on the same (float32)
    weights and inputs, upcast exactly; outputs are then float64. Verification judges float32
    artifacts against it (``runtime.compare``'s error model). Another name is a ValueError.
    """
    with kernel_precision(precision):
        return _run(graph, feeds, keep_intermediates, value_hook)


def _run(graph: Graph, feeds: dict[str, np.ndarray], keep_intermediates: bool,
         value_hook: ValueHook | None) -> dict[str, np.ndarray]:
    env: dict[str, np.ndarray] = dict(_validated_feeds(graph, feeds))
    if value_hook is not None:
        env = {k: value_hook(k, v) for k, v in env.items()}
    frees = {} if keep_intermediates else _last_uses(graph)
    for idx, node in enumerate(graph.nodes):
        args = [(graph.constants[i] if i in graph.constants else env[i]) if i else None for i in node.inputs]
        for o, v in zip(node.outputs, eval_node(node, args)):
            env[o] = v if value_hook is None else value_hook(o, v)
        for value in frees.get(idx, ()):
            env.pop(value, None)
    if keep_intermediates:
        return env
    return {o: graph.constants[o] if o in graph.constants else env[o] for o in graph.outputs}
