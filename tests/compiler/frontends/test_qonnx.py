"""The QONNX front end (compiler.frontends.qonnx): Brevitas-style QONNX models read into the IR
with fixed_quant quantizers, checked bit for bit against QONNX's reference execution
(qonnx.core.onnx_exec.execute_onnx), and its refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qonnx")

sys.path.insert(0, str(Path(__file__).parent))
import qonnx_models as qm  # noqa: E402

from tapeout.compiler.errors import FrontendError  # noqa: E402
from tapeout.compiler.frontends.loader import load_model  # noqa: E402
from tapeout.compiler.frontends.qonnx_ops import AP_ROUNDING  # noqa: E402
from tapeout.compiler.reference_runner import ReferenceRunner  # noqa: E402

SAMPLES = 2400


def inputs(shape: tuple[int, ...], n: int = SAMPLES, seed: int = 0, grid: float = 2.0**-5) -> np.ndarray:
    """Normal values, exact ties of a ``grid`` (half steps), and large values that saturate."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 2, (n // 2, *shape))
    ties = (rng.integers(-300, 300, (n // 4, *shape)) + 0.5) * grid
    big = rng.uniform(-40, 40, (n - n // 2 - n // 4, *shape))
    return np.concatenate([a, ties, big]).astype(np.float32)


def ir_run(path: Path, x: np.ndarray):
    graph, _ = load_model(path)
    with ReferenceRunner(graph, source_layout=True) as r:
        return graph, r.infer({graph.inputs[0]: x})[graph.outputs[0]]


def assert_exact(path: Path, x: np.ndarray):
    graph, got = ir_run(path, x)
    want = qm.qonnx_execute(path, x)
    assert got.shape == want.shape
    bad = int(np.sum(got != want))
    assert bad == 0, f"{bad} of {want.size} values differ from qonnx, e.g. {got[got != want][:4]} vs " \
                     f"{want[got != want][:4]}"
    return graph


# ------------------------------------------------------------- acceptance models
@pytest.mark.parametrize("bits", [8, 4])
def test_mlp_matches_qonnx_exactly(tmp_path: Path, bits: int) -> None:
    path = qm.save(qm.mlp(bits), tmp_path)
    graph = assert_exact(path, inputs((16,)))
    assert [n.op for n in graph.nodes].count("fixed_quant") == 3  # input and two hidden activations
    assert graph.metadata["source_format"] == "qonnx"
    q = next(n for n in graph.nodes if n.op == "fixed_quant")
    k, i, f = (graph.constants[name].reshape(-1) for name in q.inputs[1:])
    assert (k.tolist(), i.tolist(), f.tolist()) == ([1], [3], [4])
    assert q.attrs == {"rounding": "AP_RND_CONV", "overflow": "AP_SAT"}
    # Weights are folded onto their grid: 2**(bits-2) steps, narrow range.
    w = graph.constants[next(n for n in graph.nodes if n.op == "dense").inputs[1]] * 2.0 ** (bits - 2)
    assert np.array_equal(w, np.round(w)) and np.abs(w).max() <= 2 ** (bits - 1) - 1


def test_binary_mlp_matches_qonnx_exactly(tmp_path: Path) -> None:
    graph = assert_exact(qm.save(qm.binary_mlp(), tmp_path), inputs((16,)))
    assert [n.op for n in graph.nodes].count("fixed_quant") == 2


@pytest.mark.parametrize("bits,view", [(4, True), (8, False)])
def test_cnn_matches_qonnx_exactly(tmp_path: Path, bits: int, view: bool) -> None:
    path = qm.save(qm.cnn(bits, view_reshape=view), tmp_path)
    graph = assert_exact(path, inputs((1, 8, 8)))
    assert graph.io_layouts[graph.inputs[0]] == "NCHW"
    assert graph.nodes[0].op == "fixed_quant"  # the input is stored NHWC before its quantizer
    assert "transpose" not in [n.op for n in graph.nodes]
    w1 = graph.constants[next(n for n in graph.nodes if n.op == "conv").inputs[1]]
    steps = w1 * 2.0 ** np.array([bits - 2 + (c % 2) for c in range(w1.shape[-1])])  # per-channel grids
    assert np.array_equal(steps, np.round(steps))


# ------------------------------------------------------------- quantizer semantics
@pytest.mark.parametrize("mode", sorted(AP_ROUNDING))
@pytest.mark.parametrize("signed,narrow", [(1, 0), (1, 1), (0, 0), (0, 1)])
@pytest.mark.parametrize("bits", [2, 5, 8])
def test_quant_modes_match_qonnx(tmp_path: Path, mode: str, signed: int, narrow: int, bits: int) -> None:
    model = qm.single("Quant", [1, 6], {"s": 2.0**-2, "z": 0.0, "b": bits},
                      {"signed": signed, "narrow": narrow, "rounding_mode": mode})
    assert_exact(qm.save(model, tmp_path, "q"), inputs((6,), 1200, grid=2.0**-2) / 4)


def test_half_up_differs_from_qonnx_only_where_its_float32_addition_rounds(tmp_path: Path) -> None:
    """qonnx's HALF_UP is sign(y) * floor(|y| + 0.5) in float32: at |y| = 0.5 - 2**-25 the sum
    rounds to 1.0, where ap_fixed's AP_RND_INF (and exact arithmetic) give 0."""
    model = qm.single("Quant", [1, 4], {"s": 1.0, "z": 0.0, "b": 8}, {"signed": 1, "narrow": 0,
                                                                              "rounding_mode": "HALF_UP"})
    path = qm.save(model, tmp_path, "q")
    x = np.array([[0.5 - 2**-25, -(0.5 - 2**-25), 0.5, -2.5]], np.float32)
    _, got = ir_run(path, x)
    assert got.tolist() == [[0.0, 0.0, 1.0, -3.0]]
    assert qm.qonnx_execute(path, x).tolist() == [[1.0, -1.0, 1.0, -3.0]]


@pytest.mark.parametrize("scale", [
    np.array([[2.0**-3], [2.0**-1], [2.0**2]], np.float32).reshape(1, 3, 1, 1),  # per channel, NCHW
    np.float32(0.3),  # not a power of two: divide, fixed_quant, multiply
    np.array([0.75, 2.0**-4, 1.1], np.float32).reshape(3, 1, 1),
])
def test_per_channel_and_non_power_of_two_scales(tmp_path: Path, scale: np.ndarray) -> None:
    model = qm.single("Quant", [1, 3, 4, 4], {"s": scale, "z": 0.0, "b": 6}, {"signed": 1, "narrow": 0})
    x = np.concatenate([inputs((3, 4, 4), 600), inputs((3, 4, 4), 600, seed=1) * scale])
    graph = assert_exact(qm.save(model, tmp_path, "q"), x.astype(np.float32))
    q = next(n for n in graph.nodes if n.op == "fixed_quant")
    f = graph.constants[q.inputs[3]]
    assert f.shape == ((1,) if scale.size == 1 else (3, 1, 1))  # no conv: the input stays NCHW
    c, e = np.frexp(scale.astype(np.float64))
    assert np.array_equal(f.reshape(-1), (1 - e).reshape(-1)[:f.size])


@pytest.mark.parametrize("scale", [np.float32(1.0), np.float32(0.25), np.array([0.5, 3.0, 1.0], np.float32)])
def test_bipolar_and_one_bit_signed_quant(tmp_path: Path, scale: np.ndarray) -> None:
    x = np.concatenate([inputs((3,), 800), np.array([[0.0, -0.0, 1e-30], [-1e-30, 0.0, -2.0]])]).astype(np.float32)
    assert_exact(qm.save(qm.single("BipolarQuant", [1, 3], {"s": scale}), tmp_path, "bq"), x)
    quant1 = qm.single("Quant", [1, 3], {"s": scale, "z": 0.0, "b": 1}, {"signed": 1, "narrow": 0})
    assert_exact(qm.save(quant1, tmp_path, "q1"), x)


@pytest.mark.parametrize("mode", ["FLOOR", "ROUND"])
def test_trunc_v1_and_v2(tmp_path: Path, mode: str) -> None:
    x = (np.random.default_rng(2).integers(-128, 128, (1500, 5)) * 2.0**-4).astype(np.float32)  # 8-bit values
    v1 = qm.single("Trunc", [1, 5], {"s": 2.0**-4, "z": 0.0, "ib": 8, "ob": 4}, {"rounding_mode": mode})
    assert_exact(qm.save(v1, tmp_path, "t1"), x)
    v2 = qm.single("Trunc", [1, 5], {"s": 2.0**-4, "z": 0.0, "ib": 8, "os": 2.0**-1, "ob": 4},
                   {"rounding_mode": mode, "signed": 1, "narrow": 0}, domain_version=2)
    assert_exact(qm.save(v2, tmp_path, "t2"), x)


@pytest.mark.parametrize("mode", ["CEIL", "UP", "HALF_UP", "DOWN"])
def test_weight_quantizers_fold_in_any_mode(tmp_path: Path, mode: str) -> None:
    """Constants are quantized with QONNX's own arithmetic: every rounding mode, any scale."""
    b = qm.Builder(5)
    w = b.quant(b.init("w", b.rng.normal(0, 1, (4, 6))), np.float32(0.37), 4, rounding=mode)
    y = b.op("Gemm", ["x", w], transB=1)
    path = qm.save(b.model("x", [None, 6], y, [None, 4], "wq"), tmp_path)
    assert_exact(path, (np.random.default_rng(0).integers(-8, 8, (500, 6)) / 4).astype(np.float32))


def test_intquant_is_quant(tmp_path: Path) -> None:
    model = qm.single("IntQuant", [1, 4], {"s": 2.0**-3, "z": 0.0, "b": 6}, {"signed": 0, "narrow": 0,
                                                                           "rounding_mode": "FLOOR"})
    graph = assert_exact(qm.save(model, tmp_path, "iq"), inputs((4,), 600, grid=2.0**-3))
    assert graph.nodes[0].op == "fixed_quant" and graph.nodes[0].attrs["rounding"] == "AP_TRN"


def test_older_brevitas_domain_is_read(tmp_path: Path) -> None:
    model = qm.single("Quant", [1, 4], {"s": 0.125, "z": 0.0, "b": 4}, {"signed": 1, "narrow": 0},
                      domain="onnx.brevitas")
    assert_exact(qm.save(model, tmp_path, "old"), inputs((4,), 400))


def test_source_runner_is_qonnx_execution(tmp_path: Path) -> None:
    from tapeout.runtime.runners.qonnx_exec import QonnxRunner
    from tapeout.runtime.runners.select import runner_for

    path = qm.save(qm.mlp(8), tmp_path)
    with runner_for(path) as r:
        assert isinstance(getattr(r, "inner", r), QonnxRunner) or "qonnx" in r.name
    plain = qm.save(qm.single("Quant", [1, 4], {"s": 1.0, "z": 0.0, "b": 4}), tmp_path, "plain")
    assert QonnxRunner(plain).open().input_specs()[0].name == "x"


# ------------------------------------------------------------------ refusals
BAD = {
    "runtime scale": (qm.single, ("Quant", [1, 4], {"s": None, "z": 0.0, "b": 8}),
                      r"node 'Quant_0' \(Quant\): scale \(input 1, 's'\) is computed at run time"),
    "fractional bit width": (qm.single, ("Quant", [1, 4], {"s": 0.5, "z": 0.0, "b": 2.5}),
                             r"node 'Quant_0' \(Quant\): bit width must be one integer, not \[2.5\]"),
    "per-channel bit width": (qm.single, ("Quant", [1, 2], {"s": 0.5, "z": 0.0, "b": [4, 8]}),
                              r"bit width must be one integer, not \[4.0, 8.0\]"),
    "runtime bit width": (qm.single, ("Quant", [1, 4], {"s": 0.5, "z": 0.0, "b": None}),
                          r"bit width \(input 3, 'b'\) is computed at run time"),
    "zero point": (qm.single, ("Quant", [1, 4], {"s": 0.5, "z": 3.0, "b": 8}, {"signed": 1, "narrow": 0}),
                   r"zero point other than 0"),
    "no narrow": (qm.single, ("Quant", [1, 4], {"s": 0.5, "z": 0.0, "b": 8}, {"signed": 1}),
                  r"attribute 'narrow' is missing"),
    "negative scale": (qm.single, ("Quant", [1, 4], {"s": -0.5, "z": 0.0, "b": 8}), r"scale must be positive"),
    "ceil": (qm.single, ("Quant", [1, 4], {"s": 0.5, "z": 0.0, "b": 8},
                                       {"signed": 1, "narrow": 0, "rounding_mode": "CEIL"}),
             r"rounding_mode CEIL has no ap_fixed equivalent"),
    "unknown op": (qm.single, ("MultiThreshold", [1, 4], {"t": [[0.0]]}),
                   r"node 'MultiThreshold_0' \(qonnx.custom_op.general::MultiThreshold\) is not supported"),
    "trunc inputs": (qm.single, ("Trunc", [1, 4], {"s": 0.5, "z": 0.0, "ib": 8, "os": 1.0, "ob": 4}),
                     r"has 6 inputs; its version in domain 'qonnx.custom_op.general' takes 5"),
    "trunc scale": (qm.single, ("Trunc", [1, 4], {"s": 0.3, "z": 0.0, "ib": 8, "ob": 4}),
                    r"scale is not a power of two"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_quantizers_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    from tests.cli_run import run_cli

    build, args, pattern = BAD[case]
    path = qm.save(build(*args), tmp_path, "bad")
    with pytest.raises(FrontendError, match=pattern):
        load_model(path)
    code, out, err = run_cli("compile", path, "-t", "onnx", "-o", tmp_path / "out")
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "bad.onnx" in err


def test_other_custom_domains_are_still_refused(tmp_path: Path) -> None:
    model = qm.single("Quant", [1, 4], {"s": 0.5, "z": 0.0, "b": 8}, domain="com.example")
    with pytest.raises(FrontendError, match="custom domain 'com.example'"):
        load_model(qm.save(model, tmp_path, "custom"))


# ------------------------------------------------------------------ export forms
def test_batch_one_export_and_weights_quantized_before_a_transpose(tmp_path: Path) -> None:
    """Brevitas exports with the example's batch (1), and a weight may reach MatMul through a
    Transpose after its Quant: the folded weight folds on, the runner runs batched."""
    b = qm.Builder(6)
    h = b.quant("global_in", 2.0**-4, 8)
    w = b.op("Transpose", [b.weight((5, 12), 6, 4)], perm=[1, 0])
    y = b.op("MatMul", [b.quant(b.op("Relu", [h]), 2.0**-4, 8, signed=False), w])
    path = qm.save(b.model("global_in", [1, 12], y, [1, 5], "batch1"), tmp_path)
    graph = assert_exact(path, inputs((12,), 700))
    assert [n.op for n in graph.nodes] == ["fixed_quant", "relu", "fixed_quant", "dense"]
    assert any("fixed batch of 1" in n for n in graph.metadata["notes"])


def test_finn_domain_runs_and_the_runner_refuses_other_domains(tmp_path: Path) -> None:
    from tapeout.runtime.errors import RuntimeInputError
    from tapeout.runtime.runners.qonnx_exec import QonnxRunner

    model = qm.single("Quant", [1, 4], {"s": 0.25, "z": 0.0, "b": 5}, domain="finn.custom_op.general")
    assert_exact(qm.save(model, tmp_path, "finn"), inputs((4,), 300))
    other = qm.single("Quant", [1, 4], {"s": 0.25, "z": 0.0, "b": 5})
    other.graph.node.append(qm.helper.make_node("Im2Col", ["y"], ["z"], domain="qonnx.custom_op.general"))
    with pytest.raises(RuntimeInputError, match=r"\(qonnx.custom_op.general::Im2Col\) is not run"):
        QonnxRunner(qm.save(other, tmp_path, "other")).open()


def test_the_runner_module_imports_numpy_only() -> None:
    import subprocess

    code = ("import tapeout.runtime.runners.qonnx_exec, tapeout.runtime.runners.select, sys; "
            "bad = [m for m in sys.modules if m.startswith(('tapeout.compiler', 'tapeout.targets', 'qonnx', "
            "'onnx', 'onnxruntime'))]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_weight_quantizer_whose_scale_does_not_broadcast_is_one_line(tmp_path: Path) -> None:
    b = qm.Builder(9)
    w = b.quant(b.init("w", b.rng.normal(0, 1, (4, 6))), np.full(3, 0.25, np.float32), 4)
    path = qm.save(b.model("x", [None, 6], b.op("Gemm", ["x", w], transB=1), [None, 4], "wb"), tmp_path)
    with pytest.raises(FrontendError, match=r"node 'Quant_0' \(Quant\): operands could not be broadcast"):
        load_model(path)


def test_compile_parses_the_source_once_in_the_compiler_and_once_in_its_runner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiling and verifying a QONNX model parses its file twice: the compiler's parse serves the
    QONNX test and the front end, the source runner's serves runner selection and the run (it loads
    the external data). It was four: detection, prepare, runner selection, runner."""
    import json

    import onnx

    from tests.cli_run import run_cli

    path = qm.save(qm.mlp(8), tmp_path)
    data = tmp_path / "data.npz"
    np.savez(data, global_in=inputs((16,), 64))
    parses: list[bool] = []  # whether each parse of the source loaded its external data
    original = onnx.load_model

    def counting(f, *args, **kwargs):
        if isinstance(f, (str, Path)) and Path(f).resolve() == path.resolve():
            parses.append(kwargs.get("load_external_data", True))
        return original(f, *args, **kwargs)

    monkeypatch.setattr(onnx, "load_model", counting)
    monkeypatch.setattr(onnx, "load", counting)
    code, out, err = run_cli("compile", path, "-t", "onnx", "-o", tmp_path / "out", "--eval", data)
    assert code == 0, out + err
    v = json.loads((tmp_path / "out" / "report.json").read_text())["targets"][0]["verification"]
    assert v["passed"] and "qonnx.core.onnx_exec.execute_onnx" in v["runner"]
    assert parses == [False, False]  # the compiler's, then runner_for's (taken by the runner's open)


def test_runner_reopened_reads_the_file_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner uses the selection's parse on its first open only; a reopen reads the file."""
    import onnx

    from tapeout.runtime.runners.qonnx_exec import QonnxRunner, qonnx_model

    path = qm.save(qm.single("Quant", [1, 4], {"s": 0.25, "z": 0.0, "b": 5}), tmp_path)
    runner = QonnxRunner(path, qonnx_model(path))
    calls: list[object] = []
    original = onnx.load_model
    monkeypatch.setattr(onnx, "load_model", lambda f, *a, **k: calls.append(f) or original(f, *a, **k))
    x = {"x": np.array([[0.3, -1.0, 2.0, 9.0]], np.float32)}
    with runner:
        first = runner.infer(x)
    assert calls == []
    with runner:
        again = runner.infer(x)
    assert calls == [str(path)]
    np.testing.assert_array_equal(first["y"], again["y"])
