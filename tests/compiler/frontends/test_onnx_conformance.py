"""ONNX front end against the backend test suite shipped in the `onnx` package.

The scope rule, the case loading and the checks live in scripts/onnx_conformance.py (its
docstring states the rule); the script prints the same results as a table. Here:
- every in-scope case must pass in the reference interpreter and through the ONNX target
  and onnxruntime, at the suite's tolerances (one test per case, named by it);
- the importer, run over every case in or out of scope, may only refuse with a one-line
  FrontendError, never crash with another exception;
- the rule itself is checked on small models whose answer is known.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[3]


def _load_conformance() -> ModuleType:
    name = "tapeout_onnx_conformance"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "onnx_conformance.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


conf = _load_conformance()


@functools.cache
def _scopes() -> dict[str, Any]:
    ops = conf.importer_ops()
    return {c.id: conf.scope_of(c, ops) for c in conf.load_cases()}


IN_SCOPE = [cid for cid, s in _scopes().items() if s.in_scope]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance")


# ------------------------------------------------------------ conformance
@pytest.mark.parametrize("case_id", IN_SCOPE)
def test_in_scope_case_passes(case_id: str, workdir: Path) -> None:
    outcome = conf.check_case(_scopes()[case_id], workdir)
    assert outcome.passed, f"{case_id} failed in {outcome.stage}: {outcome.message}"


def test_every_suite_has_cases_in_scope() -> None:
    # Guards the rule against going vacuous (a moved data folder, a table that lost ops).
    suites = {cid.split("/")[0] for cid in IN_SCOPE}
    assert suites == set(conf.SUITES)


# ------------------------------------------------ every case imports cleanly
def _refusal_problem(path: Path, model: onnx.ModelProto, unsupported: set[str]) -> str | None:
    """What is wrong with how load_onnx treats ``path``, or None (imported, or refused cleanly)."""
    from tapeout.compiler.errors import FrontendError
    from tapeout.compiler.frontends.onnx import load_onnx

    try:
        load_onnx(path)
    except FrontendError as e:
        text = str(e)
        if not text.strip() or "\n" in text:
            return f"FrontendError message is not one line: {text!r}"
        # A refusal of an op must name a node the user can find: by its name, or its output if unnamed.
        named = [n for n in conf.all_nodes(model.graph)
                 if n.op_type in unsupported and re.search(rf"\b{re.escape(n.op_type)}\b", text)]
        if named and not any(n.name and f"'{n.name}'" in text or n.output and f"'{n.output[0]}'" in text
                             for n in named):
            return f"refuses {named[0].op_type} without naming a node of the model: {text}"
        return None
    except Exception as e:  # the point of the test: anything but FrontendError escaping
        return f"{type(e).__name__} escaped: {' '.join(str(e).split())[:300]}"
    return None


@pytest.mark.parametrize("suite", conf.SUITES)
def test_importer_refuses_only_with_frontend_error(suite: str, tmp_path: Path) -> None:
    ops = conf.importer_ops()
    problems = []
    for cid, scope in _scopes().items():
        if not cid.startswith(suite + "/"):
            continue
        case = scope.case
        unsupported = {n.op_type for n in conf.all_nodes(case.model.graph)
                       if n.domain in conf.STANDARD_DOMAINS and n.op_type not in ops}
        # The case as shipped, and as bound for the conformance run where the rule got that far.
        variants = [("shipped", case.model)]
        if scope.model is not None and scope.model is not case.model:
            variants.append(("bound", scope.model))
        for label, model in variants:
            path = tmp_path / f"{case.name}.{label}.onnx"
            path.write_bytes(model.SerializeToString())
            problem = _refusal_problem(path, model, unsupported)
            if problem:
                problems.append(f"{cid} ({label}): {problem}")
            path.unlink()
    assert not problems, f"{len(problems)} case(s):\n" + "\n".join(problems)


# ------------------------------------------------------------------ the rule
def _case(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
          opset: int = 17) -> Any:
    def vi(name: str, a: np.ndarray) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))

    graph = helper.make_graph(nodes, "rule", [vi(k, v) for k, v in inputs.items()],
                              [vi(k, v) for k, v in outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return conf.Case("unit", "rule", model, [(list(inputs.values()), list(outputs.values()))], 1e-3, 1e-7)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


RULE_OPS = frozenset({"Softmax", "Conv", "MaxPool", "Pad", "Add", "Relu"})


def test_rule_softmax_over_the_batch_axis_is_not_samplewise() -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    over_batch = conf.scope_of(_case([helper.make_node("Softmax", ["x"], ["y"], axis=0)],
                                     {"x": x}, {"y": _softmax(x, 0)}), RULE_OPS)
    per_sample = conf.scope_of(_case([helper.make_node("Softmax", ["x"], ["y"], axis=1)],
                                     {"x": x}, {"y": _softmax(x, 1)}), RULE_OPS)
    assert (over_batch.reason, per_sample.reason) == ("sample-wise", None)


def test_rule_binds_weights_and_keeps_second_activations() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = np.zeros((2, 4, 3, 3), np.float32)  # the rule never reads expected values of a conv
    conv = conf.scope_of(_case([helper.make_node("Conv", ["x", "w"], ["y"])], {"x": x, "w": w}, {"y": y}),
                         RULE_OPS)
    assert conv.in_scope and conv.runtime == ["x"]
    assert [t.name for t in conv.model.graph.initializer] == ["w"]
    assert [i.name for i in conv.model.graph.input] == ["x"]
    add = conf.scope_of(_case([helper.make_node("Add", ["a", "b"], ["c"])], {"a": x, "b": x}, {"c": x + x}),
                        RULE_OPS)
    assert add.in_scope and add.runtime == ["a", "b"]


def test_rule_reasons() -> None:
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    relu = helper.make_node("Relu", ["x"], ["y"])
    lrn = helper.make_node("LRN", ["x"], ["y"], size=3)
    assert conf.scope_of(_case([lrn], {"x": x}, {"y": x}), RULE_OPS).reason == "ops"
    assert conf.scope_of(_case([relu], {"x": x.astype(np.float64)}, {"y": x.astype(np.float64)}),
                         RULE_OPS).reason == "float32"
    scalar = np.array(1.0, np.float32)
    assert conf.scope_of(_case([relu], {"x": scalar}, {"y": scalar}), RULE_OPS).reason == "batch axis"
    dilated = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])
    assert conf.scope_of(_case([dilated], {"x": x}, {"y": x[:, :, :2, :2]}), RULE_OPS).reason == "IR op variant"
    reflect = helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect")
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    padded = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)], mode="reflect")
    scope = conf.scope_of(_case([reflect], {"x": x, "p": pads}, {"y": padded}), RULE_OPS)
    assert (scope.reason, "mode reflect" in scope.detail) == ("IR op variant", True)
    assert conf.scope_of(_case([relu], {"x": x}, {"y": np.maximum(x, 0)}), RULE_OPS).in_scope


def test_mismatch_follows_assert_allclose() -> None:
    want = np.array([1.0, -2.0, 0.0], np.float32)
    edge = want + np.float32(0.9e-3) * np.abs(want)  # inside atol + rtol * |want|
    assert conf.mismatch("y", edge, want, 1e-3, 1e-7) is None
    off = want.copy()
    off[1] = -2.0 * (1 + 2e-3)
    assert "1/3 elements off" in conf.mismatch("y", off, want, 1e-3, 1e-7)
    assert "shape" in conf.mismatch("y", want[:2], want, 1e-3, 1e-7)
    nan = np.array([np.nan], np.float32)
    assert conf.mismatch("y", nan, nan, 1e-3, 1e-7) is None


def test_script_prints_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = conf.main(["--json", "--suite", "node", "-k", "node/test_relu"])
    summary = json.loads(capsys.readouterr().out)
    picked = [s for cid, s in _scopes().items() if "node/test_relu" in cid]
    n_in = sum(s.in_scope for s in picked)
    assert code == 0 and n_in >= 1
    assert summary["totals"] == {"cases": len(picked), "in_scope": n_in, "passed": n_in, "failed": 0}
    assert summary["ops"]["Relu"] == {"in_scope": n_in, "passed": n_in, "failed": 0}
    assert summary["suites"] == {"node": summary["totals"]}
    conf.main(["--suite", "node", "-k", "node/test_softmax_axis_0"])
    text = capsys.readouterr().out
    assert "TOTAL (cases)" in text and "sample-wise" in text
