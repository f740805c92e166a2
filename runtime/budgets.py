"""Resource budgets for reading untrusted files: each a named constant, raisable by an environment variable.

A file that would need more than a budget is refused with exit 2 *before* anything is allocated.
docs/security.md lists them; set ``TAPEOUT_MAX_...=N`` (a whole number) to raise one for a
model you trust to be that large.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tapeout.runtime.errors import RuntimeInputError


@dataclass(frozen=True)
class Budget:
    env: str  # the environment variable that overrides the default
    default: int
    what: str

    def value(self) -> int:
        raw = os.environ.get(self.env)
        if raw is None or raw.strip() == "":
            return self.default
        try:
            value = int(raw.strip())
        except ValueError:
            value = 0
        if value < 1:
            raise RuntimeInputError(f"{self.env}={raw!r}: a budget must be a whole number >= 1")
        return value

    def exceeded(self, label: str, amount: str, advice: str = "") -> RuntimeInputError:
        """The one-line refusal: what went over, the limit, and how to raise it."""
        return RuntimeInputError(f"{label}: {amount} exceeds the budget for {self.what} ({self.value():,}); "
                                 f"{advice}set {self.env} to raise it for a file you trust")


MiB = 1 << 20
# The architecture JSON: config.json in a .keras, model_config in an .h5, or the .json file.
MAX_CONFIG_BYTES = Budget("TAPEOUT_MAX_CONFIG_BYTES", 64 * MiB, "an architecture config, in bytes")
# Nesting of that JSON (a real model nests about 10 deep, a model inside a model about 20).
MAX_CONFIG_DEPTH = Budget("TAPEOUT_MAX_CONFIG_DEPTH", 100, "nesting depth of an architecture config")
# Weights tapeout lets a framework read: the .keras members together, or an HDF5 file's datasets.
MAX_MODEL_BYTES = Budget("TAPEOUT_MAX_MODEL_BYTES", 4 << 30, "weights read from one model file, in bytes")
# A .keras member over RATIO_FLOOR may expand at most this many times (deflate tops out near 1,000).
MAX_ZIP_RATIO = Budget("TAPEOUT_MAX_ZIP_RATIO", 100, "a .keras or .npz member's uncompressed / compressed size")
# An HDF5 dataset over RATIO_FLOOR may declare at most this many times the bytes it stores
# (unwritten chunks and compression let 20 KB declare gigabytes).
MAX_TENSOR_RATIO = Budget("TAPEOUT_MAX_TENSOR_RATIO", 100, "an HDF5 dataset's declared / stored size")
# Random inputs synthesized for verification, all inputs together.
MAX_SYNTH_BYTES = Budget("TAPEOUT_MAX_SYNTH_BYTES", 1 << 30, "synthesized verification inputs, in bytes")
# Below this size the two ratios are not checked (small files compress well and are harmless).
RATIO_FLOOR = 1 * MiB

BUDGETS = (MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_MODEL_BYTES, MAX_ZIP_RATIO, MAX_TENSOR_RATIO, MAX_SYNTH_BYTES)
