"""The `make test` share of the fuzzing harness: a short, derandomized hypothesis run per parser.

Each example mutates a seed (tests/fuzz/seeds.py) and runs it through the real CLI in-process;
every property of tests/fuzz/harness.py must hold. `make fuzz` (scripts/fuzz.py) runs the long,
coverage-guided budget.
"""

from __future__ import annotations

import os
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import MEMORY_BUDGET_MB, Sandbox, peak_rss_mb
from tests.fuzz.mutators import mutate_case
from tests.fuzz.seeds import PARSERS, seeds

settings.register_profile("fuzz-ci", derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=list(HealthCheck))
# About a minute together on this machine (per execution: onnx 10 ms, data 25 ms, the Keras forms
# 60-180 ms with the forked HDF5 read; a damaged .h5 may take its full 10 s there).
EXAMPLES = {"onnx": 400, "keras3": 150, "legacy-h5": 100, "json": 200, "data": 200}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    cwd, tmpdir, env = os.getcwd(), tempfile.tempdir, os.environ.get("TMPDIR")
    sb = Sandbox(tmp_path_factory.mktemp("fuzz"))
    # This process may already be big from other tests: the budget bounds what a fuzz input adds.
    sb.memory_budget_mb = max(MEMORY_BUDGET_MB, peak_rss_mb() + MEMORY_BUDGET_MB / 2)
    for parser in PARSERS:  # imports, and once-per-process files (onnxruntime's TMPDIR/.ses)
        for case in seeds(parser):
            assert sb.run(parser, case).code == 0, parser  # every seed is a valid input
    yield sb
    os.chdir(cwd)
    tempfile.tempdir = tmpdir
    if env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = env


@pytest.mark.parametrize("parser", PARSERS)
def test_mutated_inputs_keep_every_property(parser, sandbox):
    codes: list[int | None] = []

    @settings(settings.get_profile("fuzz-ci"), max_examples=EXAMPLES[parser])
    @given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, len(seeds(parser)) - 1),
           rounds=st.integers(1, 3))
    def check(seed: int, which: int, rounds: int) -> None:
        rng, case = random.Random(seed), seeds(parser)[which]
        for _ in range(rounds):
            case = mutate_case(parser, rng, case)
        outcome = sandbox.run(parser, case)
        codes.append(outcome.code)
        assert not outcome.problems, outcome.problems

    check()
    assert len(codes) >= EXAMPLES[parser] // 2
    assert 2 in codes  # the mutations reach the refusals, not only harmless corners
