"""The ethos-u target: the digits CNN through Vela (issue 17, acceptance 3 and 5).

One compile of the digits CNN for ethos-u:u55-128 is shared by the module; a second run (no
verification: the artifacts are the same) checks byte-identity.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.cli_run import run_cli

pytest.importorskip("ethosu.vela")
pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "samples" / "digits_cnn"
MODEL, CAL, EVAL = SAMPLE / "model.keras", SAMPLE / "calibration.npz", SAMPLE / "eval.npz"
FOLDER = "ethos-u-u55-128"


def _compile(out: Path, *extra: object) -> tuple[int, str, str]:
    return run_cli("compile", MODEL, "-t", "ethos-u:u55-128", "--calibration", CAL, "-o", out, *extra)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ethos_u") / "out"
    code, _, err = _compile(out, "--eval", EVAL)
    assert code == 0, err
    (entry,) = json.loads((out / "report.json").read_text())["targets"]
    return out / FOLDER, entry


def test_digits_int8_io_every_op_on_the_npu(digits):
    from tapeout.targets.tflite.flatbuffer import read_model

    folder, entry = digits
    assert entry["io"] == "int8"
    info = read_model((folder / "model.tflite").read_bytes())  # what Vela consumed
    io = [info.tensors[i].dtype for kind in ("inputs", "outputs") for i in info.signature[kind].values()]
    assert io == ["INT8", "INT8"]
    assert "QUANTIZE" not in info.op_counts() and "DEQUANTIZE" not in info.op_counts()
    # Vela's own per-layer placement: every operator on the NPU.
    with open(folder / "model_per-layer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["Target"] for r in rows} == {"NPU"}
    assert entry["npu_ops"] == len(rows) and entry["cpu_ops"] == 0 and entry["cpu_placement"] == []
    assert {"Conv2D", "FullyConnected", "Softmax"} <= set(entry["npu_op_types"])
    # The optimized model is one NPU custom op and nothing for the CPU.
    optimized = read_model((folder / "model_vela.tflite").read_bytes())
    assert optimized.op_counts() == {"CUSTOM:ethos-u": 1}
    assert entry["optimized_model_ops"] == {"CUSTOM:ethos-u": 1}


def test_digits_report_carries_velas_figures(digits):
    folder, entry = digits
    with open(folder / "model_summary_Ethos_U55_High_End_Embedded.csv", newline="") as f:
        (summary,) = list(csv.DictReader(f))
    assert entry["inferences_per_second"] == pytest.approx(float(summary["inferences_per_second"]))
    assert entry["cycles_total"] == int(summary["cycles_total"]) > entry["cycles_npu"] == int(summary["cycles_npu"]) > 0
    assert entry["inferences_per_second"] == pytest.approx(entry["vela"]["core_clock_hz"] / entry["cycles_total"])
    mem = entry["memory_bytes"]
    assert mem["sram"] == round(float(summary["sram_memory_used"]) * 1024) > 0
    # Shared_Sram on the U55 high-end system: the weights stay in off-chip flash.
    assert mem["off_chip_flash"] >= entry["int8_model"]["quantized_tensors"]["constants"] > 0
    assert entry["vela"]["accelerator"] == "ethos-u55-128"
    assert (entry["vela"]["system_config"], entry["vela"]["memory_mode"]) == ("Ethos_U55_High_End_Embedded",
                                                                              "Shared_Sram")
    assert entry["npu_executed"] is False and entry["verified_model"] == "model.tflite"
    assert any("not executed" in n and "stub" in n for n in entry["notes"])
    assert any(n.startswith("Vela ") and "inferences/s" in n for n in entry["notes"])


def test_digits_verified_on_the_int8_model(digits):
    folder, entry = digits
    v = entry["verification"]
    assert v["passed"] and v["accuracy"]["artifact"] >= v["accuracy"]["source"] - 0.01
    assert "litert" in v["runner"].lower()
    checks = entry.get("cross_checks") or []
    assert [c["runner"].split(" vs ")[0] for c in checks] == ["tflite-micro"]
    assert all(c["passed"] for c in checks)


def test_digits_c_array_of_the_optimized_model(digits):
    folder, entry = digits
    data = (folder / "model_vela.tflite").read_bytes()
    source, header = (folder / "model_vela.cc").read_text(), (folder / "model_vela.h").read_text()
    array = entry["c_array"]
    assert array == "g_digits_cnn_vela_model"
    assert f"const unsigned int {array}_len = {len(data)};" in source
    assert f"extern const unsigned char {array}[];" in header
    first = ", ".join(f"0x{b:02x}" for b in data[:8])
    assert first in source
    assert entry["size_bytes"] == len(data)


def test_digits_artifacts_byte_identical_across_runs(digits, tmp_path):
    folder, entry = digits
    code, _, err = _compile(tmp_path / "again", "--no-verify")
    assert code == 0, err
    again = tmp_path / "again" / FOLDER
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert {Path(a).name for a in entry["artifacts"]} <= set(names)
    for name in names:
        assert (folder / name).read_bytes() == (again / name).read_bytes(), name


def test_float_io_leaves_quantize_on_the_cpu_with_velas_reason(tmp_path):
    # Another accelerator and its Vela defaults, float I/O: QUANTIZE/DEQUANTIZE stay on the CPU.
    code, _, err = run_cli("compile", MODEL, "-t", "ethos-u:u65-256", "--calibration", "synthetic", "-o", tmp_path,
                           "--target-option", "ethos-u.io=float", "--no-verify")
    assert code == 0, err
    (entry,) = json.loads((tmp_path / "report.json").read_text())["targets"]
    assert (entry["vela"]["system_config"], entry["vela"]["memory_mode"]) == ("Ethos_U65_Client_Server",
                                                                              "Dedicated_Sram_384KB")
    cpu = {c["op"]: c["reason"] for c in entry["cpu_placement"]}
    assert set(cpu) == {"Quantize", "Dequantize"}
    assert "Float32" in cpu["Quantize"] and cpu["Dequantize"] == "Unsupported opType"
    assert entry["cpu_ops"] == 2 and entry["optimized_model_ops"]["CUSTOM:ethos-u"] == 1
    assert any("on the CPU: " in n and "Unsupported opType" in n for n in entry["notes"])


# --------------------------------------------------------------------- bad input
def _refused(tmp_path: Path, *argv: object) -> str:
    out = tmp_path / "out"
    code, _, err = run_cli("compile", MODEL, "-o", out, *argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()  # refused before any work
    return err


def test_unknown_accelerator_config(tmp_path):
    err = _refused(tmp_path, "-t", "ethos-u:u55-96", "--calibration", CAL)
    assert "u55-96" in err and "u55-128" in err and "u85-2048" in err


def test_float_only_request_is_refused(tmp_path):
    err = _refused(tmp_path, "-t", "ethos-u")
    assert "Vela needs a fully quantized (int8) model" in err and "--calibration" in err and "synthetic" in err


def test_corrupt_vela_ini(tmp_path):
    ini = tmp_path / "board.ini"
    ini.write_text("core_clock=500e6\n[System_Config.Board\n")
    err = _refused(tmp_path, "-t", "ethos-u", "--calibration", CAL, "--target-option", f"ethos-u.config={ini}",
                   "--target-option", "ethos-u.system_config=Board", "--target-option", "ethos-u.memory_mode=Sram_Only")
    assert "board.ini is not a valid Vela .ini" in err


def test_unknown_system_config_lists_velas(tmp_path):
    err = _refused(tmp_path, "-t", "ethos-u", "--calibration", CAL, "--target-option", "ethos-u.system_config=Fast")
    assert "'Fast'" in err and "Ethos_U55_High_End_Embedded" in err and "Ethos_U85_SYS_DRAM_Mid" in err


@pytest.mark.parametrize("option, words", [
    ("memory_mode=Huge", ["'Huge'", "Shared_Sram", "Dedicated_Sram_512KB"]),
    # Vela's own check of the combination: the U55 high-end system's second port is flash.
    ("memory_mode=Dedicated_Sram", ["Vela refuses", "arena_mem_area=OffChipFlash"]),
    ("arena_cache_size=-1", ["arena_cache_size", ">= 0"]),
    ("optimise=Fast", ["Performance", "Size"]),
])
def test_bad_vela_options(tmp_path, option, words):
    err = _refused(tmp_path, "-t", "ethos-u", "--calibration", CAL, "--target-option", f"ethos-u.{option}")
    assert all(w in err for w in words), err


def test_config_file_replaces_armsini(tmp_path):
    ini = tmp_path / "board.ini"
    ini.write_text("[System_Config.Board]\ncore_clock=400e6\naxi0_port=Sram\naxi1_port=OffChipFlash\n")
    err = _refused(tmp_path, "-t", "ethos-u", "--calibration", CAL, "--target-option", f"ethos-u.config={ini}")
    assert "needs system_config and memory_mode" in err and "Board" in err
    err = _refused(tmp_path, "-t", "ethos-u", "--calibration", CAL, "--target-option", f"ethos-u.config={ini}",
                   "--target-option", "ethos-u.system_config=Board", "--target-option", "ethos-u.memory_mode=Shared_Sram")
    assert "'Shared_Sram' is not in" in err and "instead of Arm's vela.ini" in err


def test_missing_vela_is_exit_3(tmp_path, monkeypatch):
    from tapeout.targets.ethos_u import vela
    from tapeout.targets.ethos_u.target import EthosUTarget

    monkeypatch.setattr(vela, "package_dir", lambda: None)
    monkeypatch.setattr(EthosUTarget, "requires", ("tapeout_no_such_module",))
    code, _, err = run_cli("compile", MODEL, "-t", "ethos-u:u65-512", "--calibration", CAL, "-o", tmp_path / "o",
                           "--target-option", "ethos-u.system_config=Anything")
    assert code == 3 and "pip install 'tapeout[ethos-u]'" in err, err


# -------------------------------------------------------------------- pieces
def test_variants_are_velas_accelerators():
    from ethosu.vela.architecture_features import Accelerator

    from tapeout.targets.ethos_u import vela
    from tapeout.targets.ethos_u.target import EthosUTarget

    velas = tuple(a.removeprefix("ethos-") for a in Accelerator.member_list())
    assert EthosUTarget.variants == velas == vela._WITHOUT_VELA
    assert EthosUTarget.default_variant in velas


def test_cpu_reasons_parsed_per_block():
    from tapeout.targets.ethos_u.vela import cpu_reasons

    out = ("Tensor 'x' has a dynamic signature in axis 0.\n\n"
           "Warning (supported operators) operator: DEQUANTIZE, ofm: 'out:0'\nReason: Unsupported opType\n\n"
           "Warning (supported operators) operator: QUANTIZE, ofm: 'a;b'\n"
           "Reason: Operation has tensor with unsupported DataType Float32 (in)\n"
           "Feature-map dataTypes must be one of {\"INT8\"}\n\n####\n")
    assert cpu_reasons(out) == {"out:0": "Unsupported opType",
                                "a;b": "Operation has tensor with unsupported DataType Float32 (in); "
                                       "Feature-map dataTypes must be one of {\"INT8\"}"}


def test_cache_key_follows_the_ini_bytes(tmp_path):
    from tapeout.compiler.stages.cached import option_files
    from tapeout.targets.ethos_u.target import EthosUTarget

    arm = Path(__import__("tapeout.targets.ethos_u.vela", fromlist=["arm_ini"]).arm_ini())
    ini = tmp_path / "board.ini"
    ini.write_text(arm.read_text())
    opts = {"config": str(ini), "system_config": "Ethos_U55_Deep_Embedded", "memory_mode": "Shared_Sram"}
    first = option_files(EthosUTarget("u55-128", **opts))
    ini.write_text(arm.read_text().replace("core_clock=200e6", "core_clock=100e6"))
    assert first and option_files(EthosUTarget("u55-128", **opts)) != first


def test_options_take_velas_hyphens_and_fill_its_defaults():
    from tapeout.targets.ethos_u.target import EthosUTarget

    t = EthosUTarget("u85-256", **{"system-config": "Ethos_U85_SYS_DRAM_High", "arena-cache-size": "65536"})
    assert (t.opts.system_config, t.opts.memory_mode, t.opts.arena_cache_size) == (
        "Ethos_U85_SYS_DRAM_High", "Dedicated_Sram_384KB", 65536)
    assert EthosUTarget("u65-512").options["system_config"] == "Ethos_U65_Client_Server"
