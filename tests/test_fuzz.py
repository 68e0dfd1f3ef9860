"""Seeded fuzzing of every reader: mutated GGUF, `.pth` (zip + pickle), safetensors, rwkv.cpp `.bin`
files and saved-state blobs, each taken through inspect, verify, convert, load and a step
(tests/support/fuzz.py). Every outcome must be a success with finite output or one of the project's
own errors; anything else (a traceback, NaN handed to the caller) fails with the case to replay.

tools/fuzz_campaign.py runs the same cases at length, one process per case, with time and memory.
"""

from __future__ import annotations

import collections

import pytest

from runtime.model.model import load_model
from tests.support.fuzz import FORMATS, make_seeds, mutate, run_case

CASES = {"gguf": 200, "pth": 150, "safetensors": 200, "rwkvcpp": 200, "state": 400}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    return folder, make_seeds(folder)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_mutation_is_read_or_refused_by_the_projects_own_errors(seeds, tmp_path, fmt):
    folder, by_format = seeds
    seed_model = folder / "seed.gguf"
    outcomes: collections.Counter[str] = collections.Counter()
    with load_model(seed_model, threads=1) as model:
        for case in range(CASES[fmt]):
            what, data = mutate(by_format[fmt], case)
            try:
                outcomes[run_case(fmt, data, tmp_path, seed_model, model)] += 1  # each case overwrites the last
            except Exception as e:
                raise AssertionError(f"{fmt} case {case} ({what}): {type(e).__name__}: {e}") from e
    # the mutations reach past the first check: some files are read, some refused
    assert outcomes["ok"] > 0 or fmt == "state"
    assert sum(n for o, n in outcomes.items() if o != "ok") > CASES[fmt] // 2, outcomes


def test_an_unmutated_seed_passes_every_step(seeds, tmp_path):
    folder, by_format = seeds
    for fmt in FORMATS:
        work = tmp_path / fmt
        work.mkdir()
        assert run_case(fmt, by_format[fmt].data, work, folder / "seed.gguf") == "ok", fmt
