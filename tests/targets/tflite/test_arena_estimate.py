"""The analytic TFLite Micro arena (targets/tflite/arena.py) against TFLite Micro itself: the four
samples' fp32, int8 and int16x8 models, each measured once (issue 17, acceptance 2)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tapeout.targets.tflite import arena
from tapeout.targets.tflite.flatbuffer import ModelInfo, OpInfo, TensorInfo, read_model

SAMPLES = Path(__file__).resolve().parents[3] / "samples"
NAMES = ("digits_cnn", "jet_mlp", "conv1d_signals", "conv2d_shapes")
VARIANTS = ("fp32", "int8", "int16x8")
CASES = [(s, v) for s in NAMES for v in VARIANTS]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, str], bytes]:
    """The twelve .tflite files, compiled once (no verification, no C array: just the bytes)."""
    from tapeout.compiler.cli import main

    out_root = tmp_path_factory.mktemp("arena")
    found = {}
    for name in NAMES:
        s = SAMPLES / name
        args = ["compile", str(s / "model.keras"), *(a for v in VARIANTS for a in ("-t", f"tflite:{v}")),
                "--calibration", str(s / "calibration.npz"), "-o", str(out_root / name), "--quiet",
                "--no-timings", "--no-verify", "--no-cache", "--target-option", "tflite.c_array=false"]
        err = io.StringIO()
        assert main(args, out=io.StringIO(), err=err) == 0, err.getvalue()
        for v in VARIANTS:
            found[name, v] = (out_root / name / f"tflite-{v}" / "model.tflite").read_bytes()
    return found


@pytest.fixture(scope="module")
def measured(models):
    pytest.importorskip("tflite_micro")
    from tapeout.runtime import tflm

    return {case: tflm.measure_arena(data) for case, data in models.items()}


@pytest.mark.parametrize("case", CASES, ids=[f"{s}-{v}" for s, v in CASES])
def test_estimate_within_5_percent_of_tflite_micro(case, models, measured):
    e = arena.estimate_arena(models[case])
    m = measured[case]
    assert m.pointer_bytes == e.pointer_bytes == 8
    assert abs(e.total - m.minimum) <= 0.05 * m.minimum, (e.to_json(), m.minimum)
    # Never short: a device given the estimate boots (a multiple of 16, so at most 15 bytes over).
    assert m.minimum <= e.total < m.minimum + 16
    assert sum(e.parts().values()) == e.total


@pytest.mark.parametrize("case", CASES, ids=[f"{s}-{v}" for s, v in CASES])
def test_each_itemized_part_matches_the_recorder(case, models, measured):
    """In an arena of the estimate's size, TFLite Micro's RecordingMicroAllocator reports the
    same structs, counts and bytes as the estimate's parts."""
    from tapeout.runtime import tflm

    data = models[case]
    e = arena.estimate_arena(data)
    assert e.total >= measured[case].minimum  # allocating below the minimum can crash TFLite Micro
    rec = tflm.record(data, e.total)
    assert {k: a.count for k, a in rec.kinds.items()} == e.counts
    info = read_model(data)
    assert e.counts[arena.EVAL_TENSORS] == len(info.tensors)
    assert e.counts[arena.NODES] == len(info.ops)
    assert e.counts[arena.PERSISTENT_TENSORS] == len(info.inputs) + len(info.outputs)
    assert rec.kinds[arena.EVAL_TENSORS].used == e.eval_tensors
    assert rec.kinds[arena.NODES].used == e.node_registrations
    assert rec.kinds[arena.PERSISTENT_TENSORS].used == e.persistent_tensors
    assert rec.kinds[arena.PERSISTENT_BUFFERS].used == e.persistent_buffers
    assert rec.head == e.activations  # the planner, kernels' scratch buffers included
    assert rec.tail == e.tail
    assert rec.unitemized == e.op_params + e.fixed + e.persistent_quantization + e.variables


@pytest.mark.parametrize("case", CASES, ids=[f"{s}-{v}" for s, v in CASES])
def test_cortex_m_figure(case, models, measured):
    data = models[case]
    e64, e32 = arena.estimate_arena(data), arena.estimate_arena(data, pointer_bytes=4)
    corr = arena.cortex_m_correction(data)
    assert corr.total == e64.total - e32.total > 0
    # The recorder's counts alone give the eval tensors', nodes' and I/O tensors' share of it.
    counts = {k: a.count for k, a in measured[case].record.kinds.items()}
    by_counts = arena.record_correction(counts)
    assert by_counts == (corr.parts["eval_tensors"] + corr.parts["node_registrations"]
                         + corr.parts["persistent_tensors"])
    assert 0 < by_counts < corr.total
    # From the measured minimum: the estimate is exact to the arena's 16-byte rounding here.
    assert arena.cortex_m_arena(measured[case].minimum, data) == e32.total
    # A plain MicroInterpreter (a device's) lacks the recording allocator's objects: less by
    # their size, give or take the 16-byte alignment of what follows them.
    plain = arena.estimate_arena(data, pointer_bytes=4, recording=False)
    assert abs(e32.total - plain.total - arena.recording_overhead(4)) < 16


def test_model_info_alone_assumes_the_samples_quantization(models):
    for data in models.values():
        assert arena.estimate_arena(read_model(data)).to_json() == arena.estimate_arena(data).to_json()


def test_struct_sizes_for_both_pointer_widths():
    sizes = {r["struct"]: (r["bytes_64"], r["bytes_32"]) for r in arena.struct_table()}
    assert sizes["TfLiteEvalTensor"] == (24, 12)  # the recorder's 480 bytes for 20 on the host
    assert sizes["NodeAndRegistration"] == (64, 32)
    assert sizes["TfLiteTensor"] == (64, 40)  # TF_LITE_STATIC_MEMORY's reordered struct
    assert sizes["OpDataConv"] == (80, 64)
    assert sizes["DequantizeOpData"] == (32, 32)  # the embedded params struct's padding kept
    assert arena.struct_size("AllocationInfo", 4) == (24, 4)


def test_planner_reuses_gaps_and_keeps_scratch_at_its_node():
    t = [TensorInfo("in", (1, 64), "FLOAT32", False), TensorInfo("w", (64, 64), "FLOAT32", True),
         TensorInfo("a", (1, 64), "FLOAT32", False), TensorInfo("b", (1, 8), "FLOAT32", False),
         TensorInfo("out", (1, 64), "FLOAT32", False)]
    ops = [OpInfo("FULLY_CONNECTED", (0, 1, -1), (2,), "NONE"), OpInfo("FULLY_CONNECTED", (2, 1, -1), (3,), "NONE"),
           OpInfo("FULLY_CONNECTED", (3, 1, -1), (4,), "NONE")]
    info = ModelInfo(ops, t, (0,), (4,))
    buffers = arena.planned_buffers(info)
    assert buffers == [(256, 0, 1), (256, 1, 2), (32, 2, 3), (256, 3, 3)]
    assert arena.plan(buffers) == 512 + 32  # "out" takes "in"'s place; "b" sits beside "a"
    with_scratch = arena.planned_buffers(info, scratch=[(0, 100)])
    assert with_scratch[-1] == (100, 1, 1)
    assert arena.plan(with_scratch) == 512 + 112  # op 0's scratch, rounded to 112, beside in and a
