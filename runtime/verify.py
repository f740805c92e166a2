"""Run a reference and a candidate runner on the same data and compare their outputs."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from tapeout.runtime.compare import ComparisonResult, Tolerance, compare
from tapeout.runtime.data import Dataset, batches
from tapeout.runtime.errors import RuntimeInputError
from tapeout.runtime.io_map import FILE as IO_MAP
from tapeout.runtime.protocol import Runner


def run_batches(runner: Runner, dataset: Dataset, batch_size: int = 32,
                rename: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """All of ``dataset`` through ``runner`` in batches; outputs concatenated along the sample axis.

    ``rename`` maps dataset input names to the runner's, where they differ.
    """
    rename = rename or {}
    parts: dict[str, list[np.ndarray]] = {}
    for feeds in batches(dataset, batch_size):
        out = runner.infer({rename.get(k, k): v for k, v in feeds.items()})
        for name, value in out.items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {k: np.concatenate(v, axis=0) if v[0].ndim else v[0] for k, v in parts.items()}


def _positional(kind: str, ref: list[str], cand: list[str], notes: list[str]) -> dict[str, str]:
    """Reference name -> candidate name: by name, or by position for a lone differently named tensor."""
    if len(ref) == 1 and len(cand) == 1 and ref != cand:
        notes.append(f"{kind}s matched by position: '{ref[0]}' (reference) with '{cand[0]}' (candidate)")
        return {ref[0]: cand[0]}
    return {}


def _check_names(candidate: Runner, dataset: Dataset, rename: Mapping[str, str]) -> None:
    """A candidate input the data cannot feed: say where names are mapped instead of a bare 'no data'."""
    fed = {rename.get(k, k) for k in dataset.feeds}
    missing = [s.name for s in candidate.input_specs() if s.name not in fed]
    if missing:
        raise RuntimeInputError(
            f"{getattr(candidate, 'path', candidate.name)}: no data for input(s) {', '.join(missing)} (the data has "
            f"{', '.join(dataset.feeds)}); an artifact that renames or re-lays out the source's inputs is run "
            f"through the {IO_MAP} written beside it: keep that file next to the artifact")


def verify(reference: Runner, candidate: Runner, dataset: Dataset,
           tolerances: Tolerance | Mapping[str, Tolerance] = Tolerance(), batch_size: int = 32,
           exact: Mapping[str, np.ndarray] | None = None,
           ir_float32: Mapping[str, np.ndarray] | None = None) -> ComparisonResult:
    """Both runners on every sample of ``dataset``; outputs matched by name and compared.

    Runners the caller has not opened are opened here and closed afterwards. ``exact`` and
    ``ir_float32`` (by reference output name, on ``dataset``) feed the error model (``compare``).
    """
    # Only what we open here is ours to close.
    opened_here = [r for r in (reference, candidate) if not r.opened]
    try:
        for r in opened_here:
            r.open()
        notes: list[str] = []
        inputs = _positional("input", [s.name for s in reference.input_specs()],
                             [s.name for s in candidate.input_specs()], notes)
        outputs = _positional("output", reference.output_names(), candidate.output_names(), notes)
        _check_names(candidate, dataset, inputs)
        ref_out = run_batches(reference, dataset, batch_size)
        cand_out = run_batches(candidate, dataset, batch_size, rename=inputs)
        back = {c: r for r, c in outputs.items()}
        cand_out = {back.get(k, k): v for k, v in cand_out.items()}
    finally:
        for r in opened_here:
            r.close()
    result = compare(ref_out, cand_out, tolerances, labels=dataset.labels, data_kind=dataset.kind,
                     samples=dataset.num_samples, exact=exact, ir_float32=ir_float32)
    result.notes[:0] = notes
    return result
