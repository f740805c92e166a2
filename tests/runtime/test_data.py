"""Loading .npz/.npy data against input specs, synthesis and batching."""

from pathlib import Path

import numpy as np
import pytest

from tapeout.runtime.data import Dataset, batches, load_data, synthesize
from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.protocol import IOSpec

IMAGE = IOSpec("image", ("N", 4, 4, 1))
TWO = [IOSpec("a", ("N", 3)), IOSpec("b", (None, 2), "int64")]


def test_npz_keyed_by_input_name_with_labels(tmp_path: Path) -> None:
    a = np.arange(15, dtype=np.float64).reshape(5, 3)
    b = np.arange(10).reshape(5, 2)
    np.savez(tmp_path / "d.npz", a=a, b=b, y=np.array([0, 1, 1, 0, 2]))
    ds = load_data(tmp_path / "d.npz", TWO, kind="eval")
    assert ds.kind == "eval" and ds.num_samples == 5
    assert ds.feeds["a"].dtype == np.float32 and ds.feeds["b"].dtype == np.int64
    np.testing.assert_array_equal(ds.feeds["a"], a.astype(np.float32))
    np.testing.assert_array_equal(ds.labels, [0, 1, 1, 0, 2])


def test_x_key_for_a_single_input_and_one_hot_labels(tmp_path: Path) -> None:
    x = np.ones((3, 4, 4, 1), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.eye(4)[[3, 0, 2]])
    ds = load_data(tmp_path / "d.npz", [IMAGE])
    assert list(ds.feeds) == ["image"] and ds.kind == "file"
    np.testing.assert_array_equal(ds.labels, [3, 0, 2])


def test_npy_for_a_single_input(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((2, 4, 4, 1)))
    ds = load_data(tmp_path / "d.npy", [IMAGE], kind="calibration")
    assert ds.num_samples == 2 and ds.labels is None and ds.feeds["image"].dtype == np.float32


@pytest.mark.parametrize(("arrays", "specs", "message"), [
    ({"z": np.zeros((2, 4, 4, 1))}, [IMAGE], "expected key\\(s\\) image or x"),
    ({"a": np.zeros((2, 3))}, TWO, "no array for input 'b'"),
    ({"x": np.zeros((2, 4, 4))}, [IMAGE], r"shape \(2, 4, 4\) but the model expects \(N, 4, 4, 1\)"),
    ({"x": np.zeros((2, 4, 5, 1))}, [IMAGE], "shape"),
    ({"a": np.zeros((2, 3)), "b": np.zeros((3, 2))}, TWO, "different sample counts"),
    ({"a": np.zeros((2, 3)), "b": np.full((2, 2), 0.5)}, TWO, "fractions"),
    ({"x": np.array(["s"] * 32).reshape(2, 4, 4, 1)}, [IMAGE], "expected numbers"),
    ({"x": np.zeros((2, 4, 4, 1)), "y": np.zeros(3, int)}, [IMAGE], "3 labels for 2 samples"),
    ({"x": np.zeros((0, 4, 4, 1))}, [IMAGE], "no samples"),
])
def test_bad_npz_is_one_line_input_error(tmp_path: Path, arrays: dict, specs: list, message: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(RuntimeInputError, match=message) as info:
        load_data(tmp_path / "d.npz", specs)
    assert "\n" not in str(info.value) and "d.npz" in str(info.value)


def test_npy_for_a_two_input_model_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((2, 3)))
    with pytest.raises(RuntimeInputError, match="2 inputs"):
        load_data(tmp_path / "d.npy", TWO)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("d.npz", b"not a zip at all", "not an .npz or .npy"),
    ("d.npz", b"PK\x03\x04truncated", "not a readable .npz"),
    ("d.npy", b"\x93NUMPYgarbage", "not a readable .npy"),
    ("d.csv", b"1,2,3", "must be an .npz"),
])
def test_corrupt_or_foreign_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RuntimeInputError, match=message):
        load_data(tmp_path / name, [IMAGE])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeInputError, match="no such data file"):
        load_data(tmp_path / "absent.npz", [IMAGE])


def test_pickled_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.array([{"evil": 1}, None], dtype=object))
    with pytest.raises(RuntimeInputError, match="pickled"):
        load_data(tmp_path / "d.npz", [IOSpec("x", ("N",))])
    np.save(tmp_path / "d.npy", np.array([1, "a", None], dtype=object), allow_pickle=True)
    with pytest.raises(RuntimeInputError, match="pickled"):
        load_data(tmp_path / "d.npy", [IOSpec("x", ("N",))])


def test_synthesize_is_deterministic_and_typed() -> None:
    specs = [IOSpec("a", ("N", 3, 2)), IOSpec("ids", ("N", 5), "int32"), IOSpec("m", ("N", 2), "bool")]
    one, two = synthesize(specs, num_samples=6, seed=7), synthesize(specs, num_samples=6, seed=7)
    assert one.kind == "synthetic" and one.num_samples == 6 and one.labels is None
    for k in one.feeds:
        np.testing.assert_array_equal(one.feeds[k], two.feeds[k])
    assert one.feeds["a"].shape == (6, 3, 2) and one.feeds["a"].dtype == np.float32
    assert one.feeds["ids"].dtype == np.int32 and one.feeds["m"].dtype == np.bool_
    assert 0.5 < one.feeds["a"].std() < 1.5  # standard normal, not uniform [0, 1)
    assert not np.array_equal(synthesize(specs, 6, seed=8).feeds["a"], one.feeds["a"])


def test_synthesize_refuses_dynamic_inner_dims() -> None:
    with pytest.raises(RuntimeInputError, match="dynamic"):
        synthesize([IOSpec("seq", ("N", None, 3))])


def test_batches_cover_every_sample_in_order() -> None:
    ds = Dataset({"a": np.arange(7)[:, None], "b": np.arange(7)[:, None] * 10}, None, "file")
    got = list(batches(ds, 3))
    assert [len(f["a"]) for f in got] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([f["b"] for f in got]), ds.feeds["b"])
    with pytest.raises(ValueError):
        list(batches(ds, 0))
