"""How fast this machine reads memory: a buffer of ones summed by several threads, either by numpy (how
an ordinary program reads) or by the compiled prefetching read (runtime/jit/kernels/stream_read.py, which
reads as the decode kernels do). `rwkv-tui bench` (runtime/bench.py) prints both; the registry's model
suggestion (runtime/registry/machine_speed.py) keeps the compiled one.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable

import numpy as np

from runtime.jit.kernels.stream_read import STEP, stream_sum


def _read_gbs(read: Callable[[np.ndarray], float], megabytes: int, repeats: int, threads: int,
              buffer: np.ndarray | None) -> tuple[float, float]:
    """(GB/s, values summed) of `read` over `buffer` (or `megabytes` of ones) split across `threads`
    in shares of whole STEPs (the remainder is not read); the best of `repeats`."""
    a = buffer if buffer is not None else np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    share = a.size // threads // STEP * STEP
    if share == 0:
        raise ValueError(f"{a.nbytes} bytes are too few to split across {threads} threads")
    parts = [a[i * share : (i + 1) * share] for i in range(threads)]
    best, total = float("inf"), 0.0
    with cf.ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            total = float(sum(pool.map(read, parts)))
            best = min(best, time.perf_counter() - t0)
    return share * threads * a.itemsize / best / 1e9, total


def memory_read_bandwidth(megabytes: int = 1024, repeats: int = 3, threads: int = 1,
                          buffer: np.ndarray | None = None) -> float:
    """GB/s of a numpy sum over `megabytes` (or `buffer`) split across `threads` (numpy sums release the GIL)."""
    return _read_gbs(np.sum, megabytes, repeats, threads, buffer)[0]


def stream_read_gbs(megabytes: int = 1024, repeats: int = 3, threads: int = 1,
                    buffer: np.ndarray | None = None) -> float:
    """GB/s of the compiled prefetching read (runtime/jit/kernels/stream_read.py), split as above; a
    `buffer` must hold ones, as the check of what was summed assumes."""
    a = buffer if buffer is not None else np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    rate, total = _read_gbs(stream_sum, megabytes, repeats, threads, a)
    expected = float(a.size // threads // STEP * STEP * threads * a.flat[0])
    if abs(total - expected) > 1e-3 * expected:
        raise RuntimeError(f"stream read summed {total}, expected {expected}")
    return rate
