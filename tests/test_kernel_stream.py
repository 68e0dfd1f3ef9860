"""bench/kernel_stream.py: every type walks its whole arena on every thread and gets a rate (not its speed)."""

from __future__ import annotations

import ctypes
import math

import numpy as np
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
                addresses = np.ctypeslib.as_array(ctypes.cast(args[0], ctypes.POINTER(ctypes.c_int64)), (args[1],))
                calls.append((_key, args[1], args[5], args[6], addresses.copy()))  # matrices, rows from, to
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
        for c in mine:  # one after the other, none twice
            assert (np.diff(c[4]) == dtype.nbytes((64, 512))).all()


def test_thread_counts_and_buffer_sizes_are_checked():
    with pytest.raises(ValueError):
        kernel_stream.stream_rates([DType.Q8_0], 64, 512, threads=0, megabytes=2, rounds=1)
    with pytest.raises(ValueError, match="at least 1 MiB"):
        kernel_stream.stream_rates([DType.Q8_0], 64, 512, threads=2, megabytes=0, rounds=1)


def test_a_failing_walk_is_not_a_figure(monkeypatch):
    """An exception in a timed thread reaches the caller instead of a rate."""
    real = kernel_stream.build_walkers

    def broken(shapes, accumulate=False):
        compiled, walkers = real(shapes, accumulate)
        return compiled, {key: (lambda *args: 1 / 0) for key in walkers}

    monkeypatch.setattr(kernel_stream, "build_walkers", broken)
    with pytest.raises(ZeroDivisionError):
        kernel_stream.stream_rates([DType.Q8_0], 64, 512, threads=2, megabytes=1, rounds=1)
