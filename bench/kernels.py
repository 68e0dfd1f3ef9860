"""Benchmark the weight kernels: matvec GB/s of weights read, matmul GFLOP/s, against memory bandwidth.

    python bench/kernels.py [--quick] [--types f16,q8_0,...] [--shapes 2048x2048,8192x2048,2048x8192]

matvec: each measurement cycles through copies of the matrix filling ~1 GiB, so weights come from
memory, not cache (as in decoding, where each matrix is read once per token). "2 thr" runs two Python
threads, each calling the kernel on half the rows through ctypes (which releases the GIL); "%" is
that figure over the memory read bandwidth of the same thread count. "cached" calls the kernel on
the first 256 rows again and again (they stay in L2; 64 passes in one native call with no Python
between them, runtime/jit/kernels/walk.py, as bench/kernel_ab.py and `rwkv-tui bench` time it): the
kernel's compute ceiling, which must be well above the per-thread share of the bandwidth for decoding
to be bound by memory.
Memory read bandwidth is a numpy sum over a 1 GiB array (1 thread, and 2 threads on halves).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.jit.kernels.library import make_test_library
from runtime.jit.kernels.walk import build_walkers
from runtime.quant.codec import quantize
from runtime.quant.types import K_QUANT_TYPES, DType
from tests.support.kquant_blocks import random_k_rows

GIB = 1 << 30
ALL_TYPES = [DType.F32, DType.F16, DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0, *K_QUANT_TYPES]
MATVEC_SHAPES = [(768, 768), (3072, 768), (768, 3072), (4096, 4096)]
HEAD = (50277, 768)
MATMUL_TYPES = [DType.Q5_1, DType.Q8_0, DType.F16, *K_QUANT_TYPES]
MATMUL_SHAPES = [(768, 768), (4096, 4096)]
K_SHAPES = [(1024, 1024), (4096, 1024), (1024, 4096), (2048, 2048)]  # 430M and 1.5B shapes (rows of 256s)


def _best(fn: Callable[[], None], min_time: float) -> float:
    """Best wall time of `fn` over repeats totalling at least `min_time` seconds (at least 3 runs)."""
    best, total, runs = float("inf"), 0.0, 0
    while total < min_time or runs < 3:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, runs = min(best, dt), total + dt, runs + 1
    return best


def memory_bandwidth(min_time: float) -> tuple[float, float]:
    """GB/s of a numpy sum over 1 GiB: one thread, and two threads each summing a half."""
    a = np.ones(GIB // 4, dtype=np.float32)
    one = a.nbytes / _best(a.sum, min_time) / 1e9
    halves = [a[: a.size // 2], a[a.size // 2 :]]

    def two() -> None:
        ts = [threading.Thread(target=h.sum) for h in halves]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return one, a.nbytes / _best(two, min_time) / 1e9


def weight_bytes(dtype: DType, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, row_bytes) uint8 of valid `dtype` data (a quantized random pattern repeated)."""
    pattern_rows = min(rows, 64)
    if dtype in K_QUANT_TYPES:  # random valid super-blocks (no quantizer needed)
        raw = random_k_rows(dtype, pattern_rows, cols, rng)
        return np.ascontiguousarray(np.tile(raw, (-(-rows // pattern_rows), 1))[:rows])
    w = rng.normal(size=(pattern_rows, cols)).astype(np.float32)
    raw = quantize(w, dtype)
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(pattern_rows, -1)
    reps = -(-rows // pattern_rows)
    return np.ascontiguousarray(np.tile(raw, (reps, 1))[:rows])


def _arena(mat: np.ndarray, total: int) -> tuple[np.ndarray, list[int]]:
    """Copies of `mat` filling about `total` bytes (at least 2); returns the buffer and their addresses."""
    n = max(2, total // mat.nbytes)
    buf = np.empty((n, mat.nbytes), dtype=np.uint8)
    buf[:] = mat.reshape(1, -1)
    return buf, [buf.ctypes.data + i * mat.nbytes for i in range(n)]


def bench_matvec(types: list[DType], shapes: list[tuple[int, int]], arena_bytes: int, min_time: float,
                 bandwidth: tuple[float, float]) -> None:
    print("\nmatvec: GB/s of weight bytes read (1 thr = one call; 2 thr = two Python threads, half the rows each)")
    print(f"{'type':6} {'rows x cols':>12} {'MB':>7} {'cached':>7} {'1 thr':>7} {'%':>4} {'2 thr':>7} {'%':>4}")
    rng = np.random.default_rng(0)
    col_set = sorted({c for _, c in shapes})
    lib = make_test_library([(t, c) for t in types for c in col_set], accumulate=(False,), kinds=("matvec",))
    compiled, walkers = build_walkers([(t, c) for t in types for c in col_set])  # the walkers live while it does
    for dtype in types:
        for rows, cols in shapes:
            if (rows, cols) == HEAD and dtype not in (DType.F16, DType.Q8_0):
                continue
            mat = weight_bytes(dtype, rows, cols, rng)
            buf, addrs = _arena(mat, arena_bytes)
            fn = lib.matvec(dtype, cols)
            x = rng.normal(size=cols).astype(np.float32)
            y = np.zeros(rows, np.float32)
            xp, yp = x.ctypes.data, y.ctypes.data
            total = mat.nbytes * len(addrs)

            def one(fn=fn, addrs=addrs, xp=xp, yp=yp, rows=rows) -> None:
                for a in addrs:
                    fn(a, xp, yp, 0, rows)

            def two(fn=fn, addrs=addrs, xp=xp, yp=yp, rows=rows) -> None:
                half = rows // 2
                ts = [threading.Thread(target=lambda lo, hi: [fn(a, xp, yp, lo, hi) for a in addrs], args=rng_)
                      for rng_ in ((0, half), (half, rows))]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()

            hot_rows = min(rows, 256)
            hot_bytes = mat.nbytes * hot_rows // rows

            first = np.array(addrs[:1], dtype=np.int64)

            def hot(walk=walkers[(dtype, cols)], first=first, xp=xp, yp=yp, n=hot_rows) -> None:
                walk(first.ctypes.data, 1, 64, xp, yp, 0, n)

            gc = 64 * hot_bytes / _best(hot, min_time / 2) / 1e9
            g1 = total / _best(one, min_time) / 1e9
            g2 = total / _best(two, min_time) / 1e9
            p1, p2 = 100 * g1 / bandwidth[0], 100 * g2 / bandwidth[1]
            print(f"{dtype.name:6} {rows:>5}x{cols:<6} {mat.nbytes / 1e6:7.2f} {gc:7.2f} {g1:7.2f} {p1:4.0f} {g2:7.2f} "
                  f"{p2:4.0f}", flush=True)
            del buf
    del compiled


def bench_matmul(types: list[DType], shapes: list[tuple[int, int]], tokens: list[int], min_time: float) -> None:
    print("\nmatmul: GFLOP/s (2·rows·cols·n_tok / time; 2 thr = two Python threads, half the rows each)")
    print(f"{'type':6} {'rows x cols':>12} {'n_tok':>5} {'1 thr':>8} {'2 thr':>8}")
    rng = np.random.default_rng(1)
    col_set = sorted({c for _, c in shapes})
    lib = make_test_library([(t, c) for t in types for c in col_set], accumulate=(False,), kinds=("matmul",))
    for dtype in types:
        for rows, cols in shapes:
            mat = weight_bytes(dtype, rows, cols, rng)
            fn = lib.matmul(dtype, cols)
            for n_tok in tokens:
                x = rng.normal(size=(n_tok, cols)).astype(np.float32)
                y = np.zeros((n_tok, rows), np.float32)
                args = (mat.ctypes.data, x.ctypes.data, cols, y.ctypes.data, rows, n_tok)

                def one(fn=fn, args=args, rows=rows) -> None:
                    fn(*args, 0, rows)

                def two(fn=fn, args=args, rows=rows) -> None:
                    ts = [threading.Thread(target=fn, args=(*args, lo, hi))
                          for lo, hi in ((0, rows // 2), (rows // 2, rows))]
                    for t in ts:
                        t.start()
                    for t in ts:
                        t.join()

                flop = 2.0 * rows * cols * n_tok
                f1 = flop / _best(one, min_time) / 1e9
                f2 = flop / _best(two, min_time) / 1e9
                print(f"{dtype.name:6} {rows:>5}x{cols:<6} {n_tok:5} {f1:8.1f} {f2:8.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter timings, 256 MiB arena")
    ap.add_argument("--types", help="comma-separated types for matvec (default: all)")
    ap.add_argument("--shapes", help="comma-separated ROWSxCOLS matvec shapes (default: 169M shapes and its head)")
    ap.add_argument("--no-matmul", action="store_true")
    ap.add_argument("--no-matvec", action="store_true")
    args = ap.parse_args()
    min_time = 0.3 if args.quick else 1.0
    arena = GIB // 4 if args.quick else GIB
    types = [DType.parse(t) for t in args.types.split(",")] if args.types else ALL_TYPES
    one, two = memory_bandwidth(min_time)
    print(f"memory read bandwidth (numpy sum over 1 GiB): {one:.2f} GB/s 1 thread, {two:.2f} GB/s 2 threads")
    if not args.no_matvec:
        shapes = ([tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes
                  else [*MATVEC_SHAPES, HEAD] if not set(types) & set(K_QUANT_TYPES) else K_SHAPES)
        bench_matvec(types, shapes, arena, min_time, (one, two))
    if not args.no_matmul:
        bench_matmul([t for t in MATMUL_TYPES if t in types] or MATMUL_TYPES, MATMUL_SHAPES, [16, 64, 256],
                     min_time)


if __name__ == "__main__":
    main()
