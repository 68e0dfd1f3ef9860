"""bench/kernel_stream.py: every type walks its whole arena on every thread and gets a rate (not its speed)."""

from __future__ import annotations

import math

import pytest

from bench import kernel_stream
from runtime.quant.types import DType


def test_every_type_streams_its_arena(monkeypatch):
    calls = []
    real = kernel_stream.build_walkers

    def spy(shapes, accumulate=False):
        compiled, walkers = real(shapes, accumulate)
        counted = {}
        for key, walk in walkers.items():
            def counting(*args, _walk=walk, _key=key):
                calls.append((_key, args[1], args[5], args[6]))  # matrices, rows from, rows to
                return _walk(*args)
            counted[key] = counting
        return compiled, counted

    monkeypatch.setattr(kernel_stream, "build_walkers", spy)
    read, rates = kernel_stream.stream_rates([DType.Q8_0, DType.Q4_K], 64, 512, threads=2, megabytes=2, rounds=2)
    assert read > 0 and set(rates) == {DType.Q8_0, DType.Q4_K}
    assert all(math.isfinite(v) and v > 0 for v in rates.values())
    for dtype in (DType.Q8_0, DType.Q4_K):
        mine = [c for c in calls if c[0] == (dtype, 512)]
        assert len(mine) == 2 * 2  # two threads a round, two rounds
        assert {(c[2], c[3]) for c in mine} == {(0, 32), (32, 64)}  # each thread its half of the rows
        assert all(c[1] == (2 << 20) // dtype.nbytes((64, 512)) for c in mine)  # every copy in the buffer


def test_thread_counts_are_checked():
    with pytest.raises(ValueError):
        kernel_stream.stream_rates([DType.Q8_0], 64, 512, threads=0, megabytes=2, rounds=1)
