"""Each decode kernel alone, reading from memory: how close a kernel streaming through many matrices comes to
the compiled read, with nothing of a decode step around it (no barriers, no other work, no Python per call).

    python bench/kernel_stream.py --types q2_k,q4_k,q6_k,q5_1 --shape 2048x2048 --threads 2

For each type, copies of one random matrix of --shape fill a buffer of about --mb MB; every thread walks
all the copies once in one native call (runtime/jit/kernels/walk.py), each its share of every matrix's
rows, as decoding splits rows. The compiled read (as integers) runs over the same buffer on as many
threads, so all figures read the same memory. Interleaved over --rounds; the best of each is printed,
as GB/s and as a share of the read.

Set beside `rwkv-tui bench`'s figures this separates the kernels from the step around them. On the SPR
VM (2026-12-06, 2 threads, read 32-34 GB/s, best of 5, two runs) 2048×2048 streams reached Q2_K 70-83 %
of the read, Q3_K 80-81 %, Q4_K 93-94 %, Q5_K 83-88 %, Q6_K 88-96 %, Q5_1 91-96 %, Q8_0 85-88 %; at
1024×1024 (0.4B's shape) Q2_K 65 %, Q3_K 76 %, Q4_K 92 %, Q5_K 81 %, Q6_K 85 %, Q5_1 86 %. Whole decode
steps of files of these types reached 60-80 % of the read.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kernels import weight_bytes
from runtime.jit.kernels.stream_read import STEP, stream_words_sum
from runtime.jit.kernels.walk import build_walkers
from runtime.model.layout import aligned_copy, aligned_zeros
from runtime.quant.types import DType
from runtime.threadcount import check_threads


def _timed(pool: cf.ThreadPoolExecutor, targets: list[tuple[Callable[..., object], tuple]]) -> float:
    """Seconds for `pool`'s threads to run every (function, args) at once (ctypes calls release the GIL);
    an exception in any of them is raised here."""
    t0 = time.perf_counter()
    futures = [pool.submit(fn, *args) for fn, args in targets]
    for f in futures:
        f.result()
    return time.perf_counter() - t0


def stream_rates(types: list[DType], rows: int, cols: int, threads: int, megabytes: int, rounds: int,
                 ) -> tuple[float, dict[DType, float]]:
    """(GB/s of the compiled read, GB/s of each type's kernel walking copies of its matrix), the best of
    `rounds`. Everything reads the same buffer of about `megabytes` MiB, refilled with each type's copies
    in turn: on a VM fresh buffers can sit on memory of different speed, and this keeps that out of the
    comparison."""
    check_threads(threads)
    if megabytes < 1:
        raise ValueError(f"the buffer must be at least 1 MiB, got {megabytes}")
    rng = np.random.default_rng(0)
    compiled, walkers = build_walkers([(t, cols) for t in types])
    mats = {t: weight_bytes(t, rows, cols, rng).reshape(-1) for t in types}
    unit = 4 * STEP * threads  # bytes: every thread's share of the read a whole number of STEPs
    size = max(megabytes << 20, 2 * max(m.nbytes for m in mats.values()))
    words = np.ones(-(-size // unit) * unit // 4, dtype=np.uint32)  # ones, not zeros: pages really mapped
    buf = words.view(np.uint8)
    x = aligned_copy(rng.standard_normal(cols).astype(np.float32))
    ys = [aligned_zeros(rows, np.float32) for _ in range(threads)]
    bounds = [(rows * i // threads, rows * (i + 1) // threads) for i in range(threads)]
    shares = np.split(words, threads)
    read, best = 0.0, dict.fromkeys(types, 0.0)
    with cf.ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(rounds):
            read = max(read, words.nbytes / _timed(pool, [(stream_words_sum, (part,)) for part in shares]) / 1e9)
            for t in types:
                m = mats[t]
                n = buf.nbytes // m.nbytes
                buf[: n * m.nbytes].reshape(n, -1)[:] = m
                addrs = np.array([buf.ctypes.data + i * m.nbytes for i in range(n)], dtype=np.int64)
                walk = walkers[(t, cols)]
                seconds = _timed(pool, [(walk, (addrs.ctypes.data, n, 1, x.ctypes.data, ys[i].ctypes.data,
                                                *bounds[i])) for i in range(threads)])
                best[t] = max(best[t], n * m.nbytes / seconds / 1e9)
    del compiled
    return read, best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="q2_k,q3_k,q4_k,q5_k,q6_k,q5_1,q8_0")
    ap.add_argument("--shape", default="2048x2048", help="ROWSxCOLS of each matrix (default 2048x2048)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mb", type=int, default=1024, help="MiB of the buffer (default 1024)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rows, cols = map(int, args.shape.lower().split("x"))
    types = [DType.parse(t) for t in args.types.split(",")]
    read, rates = stream_rates(types, rows, cols, args.threads, args.mb, args.rounds)
    print(f"{rows}x{cols}, {args.threads} thread(s), from memory, no barriers: compiled read {read:.1f} GB/s")
    for t, gbs in rates.items():
        print(f"  {t.name:5} {gbs:5.1f} GB/s  {100 * gbs / read:3.0f} % of the read")
    return 0


if __name__ == "__main__":
    sys.exit(main())
