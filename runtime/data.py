"""Input data for verification: load .npz/.npy files against a model's input specs, or synthesize inputs.

Files are read with ``allow_pickle=False``: a data file must never be able to run code.
Every problem with a file is one RuntimeInputError line naming the file and what was expected.
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping, Sequence

import numpy as np

from tapeout.runtime.budgets import MAX_SYNTH_BYTES, MAX_ZIP_RATIO, RATIO_FLOOR
from tapeout.runtime.errors import RuntimeInputError, one_line
from tapeout.runtime.protocol import IOSpec

KINDS = ("eval", "calibration", "synthetic", "file")
LABEL_KEY = "y"
SINGLE_INPUT_KEY = "x"


@dataclass
class Dataset:
    feeds: dict[str, np.ndarray]  # input name -> [num_samples, ...]
    labels: np.ndarray | None  # class ids, [num_samples]
    kind: str

    @property
    def num_samples(self) -> int:
        return int(next(iter(self.feeds.values())).shape[0]) if self.feeds else 0


def _shape_str(shape: Sequence[object]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


def _read(path: Path) -> dict[str, np.ndarray]:
    """Every array in the file, keyed (an .npy becomes the single key ``x``)."""
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise RuntimeInputError(f"{path}: data must be an .npz (one array per model input) or an .npy file")
    if not path.is_file():
        raise RuntimeInputError(f"{path}: no such data file")
    with open(path, "rb") as f:
        magic = f.read(6)
    # np.load treats any other file as a pickle; say what the file really is instead.
    if magic[:2] != b"PK" and magic != b"\x93NUMPY":
        raise RuntimeInputError(f"{path}: not an .npz or .npy file")
    try:
        _check_declared(path, magic)
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {SINGLE_INPUT_KEY: loaded}
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
        for k, v in arrays.items():
            if not isinstance(v, np.ndarray):  # NpzFile hands back a non-.npy member's raw bytes
                raise RuntimeInputError(f"{path}: member '{k}' is not an array (.npy) file")
        return arrays
    except MemoryError as exc:  # a shape the header declares but no memory holds
        raise RuntimeInputError(f"{path}: declares an array too large to read ({one_line(exc)})") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise RuntimeInputError(f"{path}: holds pickled objects; only plain numeric arrays are accepted") from None
        raise RuntimeInputError(f"{path}: not a readable {suffix} file ({one_line(exc)})") from None
    # A damaged .npy header's literal fails to tokenize or parse (TokenError, SyntaxError), inside np.load
    # too; a shape holding False reaches reshape (TypeError).
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, NotImplementedError,
            tokenize.TokenError, SyntaxError, RecursionError, TypeError) as exc:
        raise RuntimeInputError(f"{path}: not a readable {suffix} file ({one_line(exc)})") from None


def _declared_bytes(f: BinaryIO) -> int | None:
    """Bytes of array data an .npy header declares (None: not an array header numpy reads)."""
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            return None
        shape, _, dtype = read[version](f)
    except (ValueError, SyntaxError, TypeError, OSError, EOFError, zipfile.BadZipFile, tokenize.TokenError):
        return None  # np.load says what is wrong with it
    return math.prod(shape) * dtype.itemsize


def _check_declared(path: Path, magic: bytes) -> None:
    """Refuse an array declaring more bytes than the file (or .npz member) stores, before allocating it."""
    if magic == b"\x93NUMPY":
        with open(path, "rb") as f:
            declared, stored = _declared_bytes(f), path.stat().st_size
        members = [(path.name, declared, stored)]
    else:
        members = []
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                # A deflated member of zeros inflates 1,000 times: refused from the headers, as in a .keras.
                ratio = MAX_ZIP_RATIO.value()
                if info.file_size > RATIO_FLOOR and info.file_size > ratio * max(info.compress_size, 1):
                    raise MAX_ZIP_RATIO.exceeded(str(path), f"member {info.filename} ({info.file_size:,} bytes from "
                                                            f"{info.compress_size:,})")
                if info.filename.endswith(".npy") and not info.is_dir():
                    with z.open(info) as f:
                        members.append((info.filename, _declared_bytes(f), info.file_size))
    for name, declared, stored in members:
        if declared is not None and declared > stored:
            raise RuntimeInputError(f"{path}: '{name}' declares {declared:,} bytes of array data but holds "
                                    f"{stored:,}")


def _fit(path: Path, spec: IOSpec, array: np.ndarray) -> np.ndarray:
    """Check rank and static dims (dim 0 is the sample axis) and cast to the spec's dtype."""
    if array.dtype.kind not in "biuf":
        raise RuntimeInputError(f"{path}: input '{spec.name}' has dtype {array.dtype}; expected numbers")
    if array.ndim != len(spec.shape) or any(
            isinstance(want, int) and got != want for got, want in zip(array.shape[1:], spec.shape[1:])):
        raise RuntimeInputError(f"{path}: input '{spec.name}' has shape {_shape_str(array.shape)} "
                                f"but the model expects {_shape_str(spec.shape)}")
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iub" and array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise RuntimeInputError(f"{path}: input '{spec.name}' holds fractions but the model expects {dtype}")
    return array.astype(dtype, copy=False)


def _labels(path: Path, y: np.ndarray, num_samples: int) -> np.ndarray:
    """Class ids from integer labels [N] or one-hot/probability rows [N, C]."""
    if y.dtype.kind not in "biuf" or y.ndim not in (1, 2):
        raise RuntimeInputError(f"{path}: labels '{LABEL_KEY}' must be class ids [N] or one-hot rows [N, C], "
                                f"got {y.dtype} {_shape_str(y.shape)}")
    if y.ndim == 2 and y.shape[1] == 0:
        raise RuntimeInputError(f"{path}: labels '{LABEL_KEY}' have shape {_shape_str(y.shape)}: no classes")
    ids = y.argmax(axis=1) if y.ndim == 2 else y
    if ids.dtype.kind == "f" and not np.array_equal(ids, np.round(ids)):
        raise RuntimeInputError(f"{path}: labels '{LABEL_KEY}' must be whole class ids")
    if len(ids) != num_samples:
        raise RuntimeInputError(f"{path}: {len(ids)} labels for {num_samples} samples")
    return ids.astype(np.int64)


def load_data(path: str | Path, specs: list[IOSpec], kind: str = "file") -> Dataset:
    """Read a data file for a model with inputs ``specs``.

    .npz: one array per input keyed by input name (or ``x`` for a single-input model), optional ``y`` labels.
    .npy: the single input of a single-input model.
    """
    path = Path(path)
    return dataset_from(path, read_arrays(path), specs, kind)


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """A data file's arrays as stored (checked for size and form, not yet for a model's inputs)."""
    return _read(Path(path))


def dataset_from(path: str | Path, arrays: Mapping[str, np.ndarray], specs: list[IOSpec],
                 kind: str = "file") -> Dataset:
    """``load_data`` on arrays already read from ``path`` (a build reads each file once)."""
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; one of {KINDS}")
    path = Path(path)
    if path.suffix.lower() == ".npy" and len(specs) != 1:
        raise RuntimeInputError(f"{path}: an .npy file feeds a single-input model; this model has "
                                f"{len(specs)} inputs ({', '.join(s.name for s in specs)}): use an .npz")
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        key = spec.name if spec.name in arrays else SINGLE_INPUT_KEY if len(specs) == 1 else None
        if key not in arrays:
            expected = [s.name for s in specs] + ([SINGLE_INPUT_KEY] if len(specs) == 1 else [])
            raise RuntimeInputError(f"{path}: no array for input '{spec.name}'; expected key(s) "
                                    f"{' or '.join(expected)} (found: {', '.join(sorted(arrays)) or 'none'})")
        feeds[spec.name] = _fit(path, spec, arrays[key])
    counts = {name: int(a.shape[0]) for name, a in feeds.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}={v}" for k, v in counts.items())
        raise RuntimeInputError(f"{path}: inputs have different sample counts ({listed})")
    num = next(iter(counts.values()), 0)
    if num == 0:
        raise RuntimeInputError(f"{path}: holds no samples")
    labels = _labels(path, arrays[LABEL_KEY], num) if LABEL_KEY in arrays and LABEL_KEY not in feeds else None
    return Dataset(feeds, labels, kind)


def synthesize(specs: list[IOSpec], num_samples: int = 8, seed: int = 0) -> Dataset:
    """Deterministic inputs: standard-normal floats, small non-negative ints, random bools."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    total, limit = 0, MAX_SYNTH_BYTES.value()
    for spec in specs:
        rest = spec.shape[1:]
        if not all(isinstance(d, int) for d in rest):
            raise RuntimeInputError(f"input '{spec.name}' has dynamic dims {_shape_str(spec.shape)}: "
                                    "cannot synthesize inputs for it; pass a data file")
        # Sized before allocating: a [N, 100000, 100000, 1] input is refused, not a MemoryError.
        total += num_samples * math.prod(rest) * max(np.dtype(spec.dtype).itemsize, 8)
        if total > limit:
            raise MAX_SYNTH_BYTES.exceeded(f"input '{spec.name}' {_shape_str(spec.shape)}",
                                           f"synthesizing {num_samples} samples ({total:,} bytes)",
                                           "pass a data file (--eval, --data) or ")
        shape = (num_samples, *rest)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, shape).astype(dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
    return Dataset(feeds, None, "synthetic")


def batches(dataset: Dataset, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts of at most ``batch_size`` samples, in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, dataset.num_samples, batch_size):
        yield {k: v[start:start + batch_size] for k, v in dataset.feeds.items()}
