"""ONNX front-end conformance against the backend tests that ship with the `onnx` package.

    python scripts/onnx_conformance.py [--json] [--suite node] [-k conv] [--verbose]

Prints, per ONNX op, the cases in scope / passed / failed, the totals, and how many cases
are out of scope for each reason. This module is also the library that
tests/compiler/frontends/test_onnx_conformance.py imports (by path), so the scope rule and
the checks are written once. See docs/onnx-conformance.md.

Suites
------
- ``node``: ``onnx.backend.test.case.node`` (one single-node model plus input and expected
  output arrays per case). The installed wheel ships these case definitions but not the
  ``data/node/*`` files generated from them (``onnx.backend.test.cmd_tools generate-data``
  writes those from the same definitions), so the cases are collected in memory, with
  NumPy's global seed set first so the random inputs are the same every run.
- ``pytorch-converted``, ``pytorch-operator``: ``onnx/backend/test/data/<suite>/*``
  (``model.onnx`` plus ``test_data_set_*/input_*.pb``, ``output_*.pb``).

Tolerances are the suite's own: ``TestCase.rtol``/``atol`` (1e-3 / 1e-7 for every case
here; ``data.json`` may override them for the file suites) judged like onnx's backend
runner, ``np.testing.assert_allclose``: ``|got - expected| <= atol + rtol * |expected|``,
NaN matching NaN, same shape and dtype.

The scope rule (``scope_of``)
-----------------------------
A case is in scope when all of these hold; each follows from docs/ir.md, not from what
the importer happens to do. Checked in this order; the first that fails is the reason.

1. ``ops``: every node (subgraphs included) is a standard-domain op in the importer's
   table (``tapeout.compiler.frontends.onnx.supported_ops()``). Shape computations
   the importer folds to constants before converting (Shape, Gather, Range, ...) are not
   in that table: in a backend case they act on runtime data, for which the IR has no op.
2. ``data``: every input and expected output is a tensor (no sequences, maps, optionals).
3. Runtime inputs. A node test feeds weights, shapes and axes as graph inputs because a
   one-node graph has no other way; in the IR weights and shape operands are constants
   ("Weights are constants ... fed to nodes as ordinary inputs"). So the first graph input
   (not an initializer) stays a runtime input, and so does any other graph input with
   exactly its shape and dtype (a second activation, as in ``Add(x, y)``); every other
   input is bound to its test value as an initializer. ``float32``: every runtime input
   and every output is float32 (the IR's activations and the ONNX target are fp32).
4. ``batch axis``: every runtime input and output has rank >= 1 and all share one axis-0
   size B >= 1 (IR: "dimension 0 is the batch").
5. ``IR op variant``: the model uses no variant the IR's op table cannot hold:
   pooling with dilations (``max_pool``/``avg_pool`` have kernel, strides and pads only);
   ``Pad`` in a mode other than ``constant`` or with negative pads (``pad`` is constant
   padding); ``Resize``/``Upsample`` other than nearest upsampling by integer factors on
   the spatial axes (``resize``; checked on the case's own values: the output must equal
   the input repeated); training-mode ``BatchNormalization``/``Dropout`` (``batch_norm``
   is inference batch norm, ``dropout`` is "identity at inference").
6. ``sample-wise``: the model maps the samples along axis 0 independently and all by the
   same function (IR: axis 0 is the batch). Checked on the source model with
   ``onnx.reference``: reversing the samples of every runtime input reverses every output,
   and overwriting sample 0 with sample 1 leaves outputs 1.. unchanged. Trivially true at
   B = 1: a batch-1 model keeps its semantics (e.g. Flatten with axis 0).

Each in-scope case is written to a file, imported with ``load_onnx``, run in the reference
interpreter with tensors in the source layout (``ReferenceRunner(source_layout=True)``),
then compiled like ``tapeout compile -t onnx`` does (default pass pipeline, ONNX target)
and run in onnxruntime; both are compared with the expected outputs.
"""

from __future__ import annotations

from tapeout.targets.base import EmitContext

import argparse
import contextlib
import glob
import json
import os
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

SUITES = ("node", "pytorch-converted", "pytorch-operator")
DATA_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data"
STANDARD_DOMAINS = ("", "ai.onnx")
# Reason keys for out-of-scope cases, in the order the rule checks them.
REASONS = ("ops", "data", "float32", "batch axis", "IR op variant", "sample-wise")
# Same-function / independence checks compare two runs of the same source model.
_SAMPLEWISE_RTOL, _SAMPLEWISE_ATOL = 1e-5, 1e-6


# ------------------------------------------------------------------- cases
@dataclass
class Case:
    suite: str
    name: str
    model: onnx.ModelProto
    # One (inputs, outputs) pair per data set; items are arrays, or anything else for
    # non-tensor data (sequences, optionals), which the rule puts out of scope.
    datasets: list[tuple[list[Any], list[Any]]]
    rtol: float
    atol: float

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"


def _as_array(v: Any) -> Any:
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, np.generic):  # some cases give a 0-d input as a NumPy scalar
        return np.asarray(v)
    return v


def _node_cases() -> list[Case]:
    from onnx.backend.test.case.node import collect_testcases

    # The case scripts draw their inputs from NumPy's global generator at import time.
    np.random.seed(0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        found = collect_testcases()
    cases = []
    for tc in found:
        sets = [([_as_array(i) for i in ins], [_as_array(o) for o in outs]) for ins, outs in tc.data_sets]
        cases.append(Case("node", tc.name, tc.model, sets, tc.rtol, tc.atol))
    return cases


def _read_pb(path: str) -> Any:
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    # Sequence/optional data is stored in other protos; a tensor with no type is not one.
    return numpy_helper.to_array(t) if t.data_type else f"non-tensor data in {os.path.basename(path)}"


def _file_cases(suite: str) -> list[Case]:
    cases = []
    for case_dir in sorted(glob.glob(str(DATA_DIR / suite / "*"))):
        if not os.path.isfile(os.path.join(case_dir, "model.onnx")):
            continue
        rtol, atol = 1e-3, 1e-7  # onnx.backend.test.loader's defaults
        meta = os.path.join(case_dir, "data.json")
        if os.path.exists(meta):
            with open(meta) as f:
                d = json.load(f)
            rtol, atol = d.get("rtol", rtol), d.get("atol", atol)
        sets = []
        for ds in sorted(glob.glob(os.path.join(case_dir, "test_data_set_*"))):
            n_in = len(glob.glob(os.path.join(ds, "input_*.pb")))
            n_out = len(glob.glob(os.path.join(ds, "output_*.pb")))
            sets.append(([_read_pb(os.path.join(ds, f"input_{i}.pb")) for i in range(n_in)],
                         [_read_pb(os.path.join(ds, f"output_{i}.pb")) for i in range(n_out)]))
        cases.append(Case(suite, os.path.basename(case_dir), onnx.load(os.path.join(case_dir, "model.onnx")),
                          sets, rtol, atol))
    return cases


def load_cases(suites: Iterable[str] = SUITES) -> list[Case]:
    out: list[Case] = []
    for s in suites:
        if s not in SUITES:
            raise ValueError(f"unknown suite {s!r}; one of {', '.join(SUITES)}")
        out.extend(_node_cases() if s == "node" else _file_cases(s))
    return out


# ------------------------------------------------------------------- scope
def importer_ops() -> frozenset[str]:
    """The importer's op table: the ONNX op types it has a converter for."""
    from tapeout.compiler.frontends.onnx import supported_ops

    return frozenset(supported_ops())


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from all_nodes(g)


def _attrs(n: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


@dataclass
class Scope:
    case: Case
    reason: str | None = None  # one of REASONS when out of scope
    detail: str = ""
    model: onnx.ModelProto | None = None  # the case's model with non-runtime inputs bound
    runtime: list[str] = field(default_factory=list)
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)  # per data set
    expected: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def in_scope(self) -> bool:
        return self.reason is None


def _bind(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with the graph inputs in ``values`` turned into initializers."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    # IR version < 4 requires every initializer to be listed as a graph input too.
    keep_listed = m.ir_version < 4
    kept = [i for i in m.graph.input if keep_listed or i.name not in values]
    del m.graph.input[:]
    m.graph.input.extend(kept)
    m.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in values.items())
    return m


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=_SAMPLEWISE_RTOL, atol=_SAMPLEWISE_ATOL,
                                                   equal_nan=True))


def _evaluate(model: onnx.ModelProto, feeds: dict[str, np.ndarray], intermediate: bool = False) -> Any:
    from onnx.reference import ReferenceEvaluator

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return ReferenceEvaluator(model).run(None, feeds, intermediate=intermediate)


def _is_nearest_upsampling(x: np.ndarray, y: np.ndarray) -> bool:
    if x.ndim != y.ndim or x.ndim < 1 or y.shape[:2] != x.shape[:2]:
        return False
    want = x
    for ax in range(2, x.ndim):
        if x.shape[ax] == 0 or y.shape[ax] % x.shape[ax]:
            return False
        want = np.repeat(want, y.shape[ax] // x.shape[ax], axis=ax)
    return want.shape == y.shape and bool(np.array_equal(want, y, equal_nan=True))


def _truthy_constant(model: onnx.ModelProto, name: str) -> bool:
    for t in model.graph.initializer:
        if t.name == name:
            return bool(np.asarray(numpy_helper.to_array(t)).any())
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return bool(np.asarray(numpy_helper.to_array(_attrs(n)["value"])).any())
    return False


def ir_variant_problem(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> str | None:
    """Why ``model`` uses an op variant the IR's op table cannot hold, or None (rule 5)."""
    values: dict[str, Any] | None = None
    for n in all_nodes(model.graph):
        a = _attrs(n)
        label = f"{n.op_type} {n.name or n.output[0]!r}"
        if n.op_type in ("MaxPool", "AveragePool") and any(d != 1 for d in a.get("dilations", [])):
            return f"{label}: dilations {list(a['dilations'])} (IR pools have none)"
        if n.op_type == "Pad" and a.get("mode", b"constant") not in (b"constant", "constant"):
            mode = a["mode"].decode() if isinstance(a["mode"], bytes) else a["mode"]
            return f"{label}: mode {mode} (IR pad is constant padding)"
        if n.op_type == "BatchNormalization" and (a.get("training_mode", 0) or a.get("is_test", 1) == 0):
            return f"{label}: training mode (IR batch_norm is inference batch norm)"
        if n.op_type == "Dropout" and (a.get("is_test", 1) == 0
                                       or (len(n.input) > 2 and n.input[2] and _truthy_constant(model, n.input[2]))):
            return f"{label}: training mode (IR dropout is identity at inference)"
        if n.op_type in ("Pad", "Resize", "Upsample"):
            if n.op_type != "Pad" and a.get("mode", b"nearest") not in (b"nearest", "nearest"):
                return f"{label}: mode {a['mode'].decode()} (IR resize is nearest upsampling)"
            if values is None:
                values = {**feeds, **_evaluate(model, feeds, intermediate=True)}
            x, y = values.get(n.input[0]), values.get(n.output[0])
            if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
                continue
            if n.op_type == "Pad" and any(o < i for i, o in zip(x.shape, y.shape)):
                return f"{label}: negative pads, {list(x.shape)} -> {list(y.shape)} (IR pad only adds)"
            if n.op_type != "Pad" and not _is_nearest_upsampling(x, y):
                return (f"{label}: {list(x.shape)} -> {list(y.shape)} is not nearest upsampling by integer "
                        f"factors on the spatial axes (IR resize)")
    return None


def samplewise_problem(model: onnx.ModelProto, feeds: dict[str, np.ndarray], runtime: Sequence[str]) -> str | None:
    """Why ``model`` does not map samples along axis 0 independently by one function, or None (rule 6)."""
    batch = feeds[runtime[0]].shape[0]
    if batch == 1:
        return None
    # The model as given must run: a reference failure here is a harness problem, not a reason.
    base = _evaluate(model, feeds)
    try:
        flipped = _evaluate(model, {k: (v[::-1] if k in runtime else v) for k, v in feeds.items()})
        if not all(_close(np.asarray(o)[::-1], np.asarray(f)) for o, f in zip(base, flipped)):
            return f"reversing the {batch} samples does not reverse the outputs"
        edited = {k: v.copy() for k, v in feeds.items()}
        for k in runtime:
            edited[k][0] = edited[k][1]
        if not all(_close(np.asarray(o)[1:], np.asarray(e)[1:]) for o, e in zip(base, _evaluate(model, edited))):
            return "changing sample 0 changes the outputs of other samples"
    except Exception as e:  # a model that only runs at its exported batch ties the batch too
        return f"onnx.reference cannot run it on rearranged samples ({type(e).__name__})"
    return None


def scope_of(case: Case, ops: frozenset[str]) -> Scope:
    """Apply the scope rule (module docstring) to ``case``."""
    s = Scope(case)

    def out(reason: str, detail: str) -> Scope:
        s.reason, s.detail = reason, detail
        return s

    g = case.model.graph
    bad = sorted({f"{n.domain}::{n.op_type}" if n.domain not in STANDARD_DOMAINS else n.op_type
                  for n in all_nodes(g) if n.domain not in STANDARD_DOMAINS or n.op_type not in ops})
    if bad:
        return out("ops", ", ".join(bad))
    if not case.datasets:
        return out("data", "no data set")
    datasets = [([_as_array(v) for v in ins], [_as_array(v) for v in outs]) for ins, outs in case.datasets]
    for ins, outs in datasets:
        odd = [v for v in [*ins, *outs] if not isinstance(v, np.ndarray)]
        if odd:
            return out("data", f"non-tensor value of type {type(odd[0]).__name__}")
    inits = {t.name for t in g.initializer}
    data_inputs = [i.name for i in g.input if i.name not in inits]
    out_names = [o.name for o in g.output]
    if len(datasets[0][0]) != len(data_inputs) or len(datasets[0][1]) != len(out_names):
        return out("data", "data sets do not match the graph's inputs/outputs")
    if not data_inputs:
        return out("batch axis", "no runtime input")
    first = datasets[0][0][0]
    runtime = [data_inputs[0]] + [n for n, v in zip(data_inputs[1:], datasets[0][0][1:])
                                  if v.shape == first.shape and v.dtype == first.dtype]
    bound: dict[str, np.ndarray] = {}
    for ins, outs in datasets:
        named = dict(zip(data_inputs, ins))
        for k in data_inputs:
            if k in runtime:
                continue
            if k in bound and not np.array_equal(bound[k], named[k]):
                return out("data", f"input {k!r} is not runtime data but differs between data sets")
            bound[k] = named[k]
        s.feeds.append({k: named[k] for k in runtime})
        s.expected.append(dict(zip(out_names, outs)))
    s.runtime = runtime
    for feeds, expected in zip(s.feeds, s.expected):
        for k, v in [*feeds.items(), *expected.items()]:
            if v.dtype != np.float32:
                return out("float32", f"{k!r} is {v.dtype}")
        sizes = {k: v.shape[0] if v.ndim else None for k, v in [*feeds.items(), *expected.items()]}
        if None in sizes.values():
            return out("batch axis", f"{[k for k, v in sizes.items() if v is None][0]!r} is a scalar")
        if len(set(sizes.values())) != 1 or 0 in sizes.values():
            return out("batch axis", "axis-0 sizes " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    s.model = _bind(case.model, bound) if bound else case.model
    problem = ir_variant_problem(s.model, s.feeds[0])
    if problem:
        return out("IR op variant", problem)
    for feeds in s.feeds:
        problem = samplewise_problem(s.model, feeds, runtime)
        if problem:
            return out("sample-wise", problem)
    return s


# ------------------------------------------------------------------ checks
@dataclass
class Outcome:
    case: str
    passed: bool
    stage: str  # "passed", or where it failed: import, interpreter, compile, onnxruntime
    message: str = ""


class _Failed(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def mismatch(name: str, got: Any, want: np.ndarray, rtol: float, atol: float) -> str | None:
    """What differs between ``got`` and ``want`` under np.testing.assert_allclose's rule, or None."""
    got = np.asarray(got)
    if got.shape != want.shape:
        return f"{name}: shape {list(got.shape)}, expected {list(want.shape)}"
    if got.dtype != want.dtype:
        return f"{name}: dtype {got.dtype}, expected {want.dtype}"
    ok = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    if ok.all():
        return None
    bad = np.argwhere(~ok)
    at = tuple(int(i) for i in bad[0])
    with np.errstate(all="ignore"):
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    return (f"{name}: {len(bad)}/{want.size} elements off (rtol {rtol:g}, atol {atol:g}), max abs err "
            f"{np.nanmax(np.where(ok, 0, err)):.3e}; at {list(at)} got {got[at]!r}, expected {want[at]!r}")


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _compare_all(where: str, got: dict[str, Any], expected: dict[str, np.ndarray], rtol: float, atol: float) -> None:
    if set(got) != set(expected):
        raise _Failed(where, f"outputs {sorted(got)}, expected {sorted(expected)}")
    problems = [p for k, v in expected.items() if (p := mismatch(k, got[k], v, rtol, atol))]
    if problems:
        raise _Failed(where, "; ".join(problems))


def run_reference(graph: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``graph`` in the reference interpreter with tensors in the source model's layout."""
    from tapeout.compiler.reference_runner import ReferenceRunner

    with ReferenceRunner(graph, source_layout=True) as r:
        return r.infer(feeds)


def check_case(scope: Scope, workdir: Path) -> Outcome:
    """Import an in-scope case, run it in the interpreter and through the ONNX target + onnxruntime."""
    from tapeout.compiler.errors import TapeoutError
    from tapeout.compiler.frontends.onnx import load_onnx
    from tapeout.compiler.passes.registry import default_pipeline
    from tapeout.targets.onnx.target import OnnxTarget

    case = scope.case
    assert scope.model is not None
    folder = workdir / case.suite / case.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(scope.model.SerializeToString())
    stage = "import"
    try:
        try:
            graph = load_onnx(path)
        except TapeoutError as e:
            raise _Failed(stage, f"refused: {_one_line(e)}") from None
        stage = "interpreter"
        for feeds, expected in zip(scope.feeds, scope.expected):
            _compare_all(stage, run_reference(graph, feeds), expected, case.rtol, case.atol)
        stage = "compile"
        optimized = default_pipeline().run(graph).graph
        target = OnnxTarget()
        artifact = folder / "onnx-fp32"
        artifact.mkdir(exist_ok=True)
        target.emit(optimized, EmitContext(artifact))
        stage = "onnxruntime"
        with target.runner(artifact) as runner:
            for feeds, expected in zip(scope.feeds, scope.expected):
                _compare_all(stage, runner.infer(feeds), expected, case.rtol, case.atol)
    except _Failed as f:
        return Outcome(case.id, False, f.stage, str(f))
    except Exception as e:  # any crash is a failure of this case, reported with where it happened
        return Outcome(case.id, False, stage, _one_line(e))
    return Outcome(case.id, True, "passed")


# ------------------------------------------------------------------- table
def case_ops(case: Case) -> list[str]:
    return sorted({n.op_type if n.domain in STANDARD_DOMAINS else f"{n.domain}::{n.op_type}"
                   for n in all_nodes(case.model.graph)})


def summarize(scopes: Sequence[Scope], outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """Per op (a case counts for each op type in its model) and overall counts."""
    per_op: dict[str, Counter] = {}
    for s in scopes:
        if not s.in_scope:
            continue
        o = outcomes[s.case.id]
        for op in case_ops(s.case):
            c = per_op.setdefault(op, Counter())
            c["in_scope"] += 1
            c["passed" if o.passed else "failed"] += 1
    reasons = Counter(s.reason for s in scopes if not s.in_scope)
    passed = sum(o.passed for o in outcomes.values())
    suites: dict[str, Counter] = {}
    for s in scopes:
        c = suites.setdefault(s.case.suite, Counter())
        c["cases"] += 1
        if s.in_scope:
            c["in_scope"] += 1
            c["passed" if outcomes[s.case.id].passed else "failed"] += 1
    return {
        "suites": {k: {f: c[f] for f in ("cases", "in_scope", "passed", "failed")} for k, c in suites.items()},
        "ops": {op: {k: c[k] for k in ("in_scope", "passed", "failed")} for op, c in sorted(per_op.items())},
        "totals": {"cases": len(scopes), "in_scope": len(outcomes), "passed": passed,
                   "failed": len(outcomes) - passed},
        "out_of_scope": {r: reasons[r] for r in REASONS if reasons[r]},
        "failures": [o.__dict__ for o in outcomes.values() if not o.passed],
    }


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'op':<24} {'in scope':>9} {'passed':>7} {'failed':>7}"]
    for op, c in summary["ops"].items():
        lines.append(f"{op:<24} {c['in_scope']:>9} {c['passed']:>7} {c['failed']:>7}")
    t = summary["totals"]
    lines.append(f"{'TOTAL (cases)':<24} {t['in_scope']:>9} {t['passed']:>7} {t['failed']:>7}")
    lines.append("")
    lines.append(f"{'suite':<24} {'cases':>9} {'in scope':>9} {'passed':>7} {'failed':>7}")
    for suite, c in summary["suites"].items():
        lines.append(f"{suite:<24} {c['cases']:>9} {c['in_scope']:>9} {c['passed']:>7} {c['failed']:>7}")
    lines.append("")
    lines.append(f"{t['cases']} cases; out of scope by reason:")
    for r, n in summary["out_of_scope"].items():
        lines.append(f"  {r:<16} {n:>5}")
    return "\n".join(lines)


def run_all(suites: Iterable[str], pattern: str | None = None) -> tuple[list[Scope], dict[str, Outcome]]:
    ops = importer_ops()
    cases = [c for c in load_cases(suites) if not pattern or pattern in c.id]
    scopes = [scope_of(c, ops) for c in cases]
    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="tapeout-conformance-") as tmp:
        for s in scopes:
            if s.in_scope:
                outcomes[s.case.id] = check_case(s, Path(tmp))
    return scopes, outcomes


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--suite", action="append", choices=SUITES, help="limit to a suite (repeatable)")
    ap.add_argument("-k", dest="pattern", help="only cases whose SUITE/NAME contains this")
    ap.add_argument("--verbose", action="store_true", help="also list failures and out-of-scope cases")
    args = ap.parse_args(argv)
    from tapeout.compiler.quiet import quiet_environment

    quiet_environment()
    scopes, outcomes = run_all(args.suite or SUITES, args.pattern)
    summary = summarize(scopes, outcomes)
    if args.json:
        if args.verbose:
            summary["out_of_scope_cases"] = [{"case": s.case.id, "reason": s.reason, "detail": s.detail}
                                             for s in scopes if not s.in_scope]
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
        if args.verbose:
            for f in summary["failures"]:
                print(f"FAILED {f['case']} [{f['stage']}] {f['message']}")
            for s in scopes:
                if not s.in_scope:
                    print(f"out of scope {s.case.id} [{s.reason}] {s.detail}")
    return 0 if summary["totals"]["failed"] == 0 else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
