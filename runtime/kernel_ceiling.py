"""How fast a model's own matrix kernels compute with their rows already in cache: the most decoding
could reach on this CPU, however fast the memory (`rwkv-tui bench` prints it beside the memory reads).

Decoding one token reads every weight once, so its rate is bounded twice: by how fast the memory
delivers the bytes (the compiled read, runtime/bench.py) and by how fast the kernels turn bytes into
products. Where the kernels for a file's types are about as fast as the read or slower, no memory
tuning brings its decoding near the read's rate; this module measures that second bound on the
machine at hand.

`matrix_shapes(model, matrices)` groups the matrices a decode step reads by weight type and row length
(rows of whole 32-value blocks: the block kernels; smallmat's odd lengths are left out), each group
with its bytes per step and its largest matrix. `cached_kernel_rates(model, shapes, threads)` copies
about `cached_bytes()` of each group's largest matrix's first rows per thread (the file's real rows,
repeated where the matrix is smaller; small enough to stay in the core's L2, or its share of one an
SMT sibling shares) and times the matrix × vector kernel the model emits for that type and row length, called again and
again by a native loop (runtime/jit/kernels/walk.py: no Python cost per pass), each thread on its
own copy at once: GB/s of weight bytes, the best of `repeats`. RWKV-7's grouped short Q8_0 second
factors are timed one factor at a time. `ceiling_gbs` combines the rates by the bytes each group holds
in a step, as a step that spent bytes/rate on each would; `rate_by_type` does the same per type.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from runtime.errors import DamagedModelError
from runtime.formats.tensors import LazyTensor
from runtime.jit.kernels.walk import build_walkers
from runtime.jit.target import l2_cache_bytes
from runtime.model.layout import aligned_copy, aligned_zeros
from runtime.model.model import Model
from runtime.quant.types import DType
from runtime.threadcount import check_threads

MAX_CACHED_BYTES = 512 << 10  # rows per thread, at most; a quarter of the L2 where that is less
BLOCK_VALUES = 32  # the block kernels take rows of whole 32-value blocks (others go to smallmat)
ROW_MULTIPLE = 16  # rows timed: a multiple of this, so every kernel walks whole groups of rows
MIN_SECONDS = 0.02  # each timed round runs at least about this long per thread


@dataclass(frozen=True)
class MatrixShape:
    """The matrices of one weight type and row length that a decode step reads: their bytes per step,
    and the largest of them (the one whose rows are timed)."""

    dtype: DType
    n_cols: int
    step_bytes: int
    name: str  # of the largest
    rows: int
    offset: int  # in the file


def cached_bytes() -> int:
    """Bytes of rows each thread times: MAX_CACHED_BYTES, or a quarter of the L2 where that is less (a
    copy, x and the prefetches past its end stay in a 1 MB L2 two SMT siblings may share)."""
    return min(MAX_CACHED_BYTES, l2_cache_bytes() // 4)


def matrix_shapes(model: Model, matrices: Collection[str]) -> list[MatrixShape]:
    """The (type, row length) groups of `matrices` (tensor names a decode step reads whole) whose rows the
    block kernels take, most bytes first."""
    groups: dict[tuple[DType, int], list[tuple[str, LazyTensor]]] = {}
    for name, t in model.tensors.items():
        if name in matrices and len(t.shape) >= 2 and t.shape[-1] % BLOCK_VALUES == 0:
            groups.setdefault((t.dtype, t.shape[-1]), []).append((name, t))
    shapes = []
    for (dtype, n_cols), members in groups.items():
        name, largest = max(members, key=lambda m: m[1].nbytes)
        shapes.append(MatrixShape(dtype, n_cols, sum(t.nbytes for _, t in members), name,
                                  math.prod(largest.shape[:-1]), largest.offset))
    return sorted(shapes, key=lambda s: (-s.step_bytes, s.dtype.name, s.n_cols))


def _rate(walk: Callable[..., None], copies: list[np.ndarray], rows: int, x: np.ndarray, repeats: int
          ) -> tuple[float, bool]:
    """(GB/s of `walk`'s kernel over `rows` rows of each copy, one thread per copy at once, the best of
    `repeats` rounds of about MIN_SECONDS; whether every product was finite)."""
    outs = [aligned_zeros(rows, np.float32) for _ in copies]
    addresses = [np.array([c.ctypes.data], dtype=np.int64) for c in copies]
    t0 = time.perf_counter()
    walk(addresses[0].ctypes.data, 1, 4, x.ctypes.data, outs[0].ctypes.data, 0, rows)
    times = max(2, int(MIN_SECONDS / max((time.perf_counter() - t0) / 4, 1e-7)))

    def run(i: int) -> None:
        walk(addresses[i].ctypes.data, 1, times, x.ctypes.data, outs[i].ctypes.data, 0, rows)

    best = math.inf
    with cf.ThreadPoolExecutor(max_workers=len(copies)) as pool:
        list(pool.map(run, range(len(copies))))  # a round untimed: the copies come into the caches
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(run, range(len(copies))))
            best = min(best, time.perf_counter() - t0)
    return copies[0].nbytes * times * len(copies) / best / 1e9, all(bool(np.isfinite(y).all()) for y in outs)


def cached_kernel_rates(model: Model, shapes: Collection[MatrixShape], threads: int, repeats: int = 5,
                        ) -> dict[tuple[DType, int], float]:
    """GB/s of the matrix × vector kernel of each (type, row length) group of `shapes` (matrix_shapes of
    `model`'s file) with its rows in cache on `threads` threads (each on its own copy of about
    cached_bytes() of the group's largest matrix's rows). A damaged matrix (products not finite) raises
    DamagedModelError naming it."""
    check_threads(threads)
    if not shapes:
        return {}
    compiled, walkers = build_walkers([(s.dtype, s.n_cols) for s in shapes])
    view = model.mapped_bytes()
    rng = np.random.default_rng(0)
    rates = {}
    for s in shapes:
        row_bytes = s.dtype.row_bytes(s.n_cols)
        rows = max(1, cached_bytes() // row_bytes)
        rows = rows // ROW_MULTIPLE * ROW_MULTIPLE or rows
        first = view[s.offset : s.offset + min(rows, s.rows) * row_bytes].reshape(-1, row_bytes)
        block = np.resize(first, (rows, row_bytes))  # the first rows, repeated where the matrix has fewer
        copies = [aligned_copy(block) for _ in range(threads)]
        x = aligned_copy(rng.standard_normal(s.n_cols).astype(np.float32))
        rate, finite = _rate(walkers[(s.dtype, s.n_cols)], copies, rows, x, repeats)
        if not finite:
            raise DamagedModelError(model.path, f"{s.dtype.name} products of {s.name}")
        rates[(s.dtype, s.n_cols)] = rate
    del compiled  # the kernels' code goes with it: no callable is used past this point
    return rates


def ceiling_gbs(shapes: Collection[MatrixShape], rates: dict[tuple[DType, int], float]) -> float | None:
    """The GB/s of a step whose bytes of each group went at that group's rate (bytes over the sum of
    bytes/rate), over the groups `rates` has; None where it has none."""
    timed = [s for s in shapes if rates.get((s.dtype, s.n_cols), 0) > 0]
    if not timed or not sum(s.step_bytes for s in timed):
        return None
    return sum(s.step_bytes for s in timed) / sum(s.step_bytes / rates[(s.dtype, s.n_cols)] for s in timed)


def bytes_by_type(shapes: Collection[MatrixShape]) -> dict[DType, int]:
    """Each type's bytes per step over all its row lengths, most first."""
    out: dict[DType, int] = {}
    for s in shapes:
        out[s.dtype] = out.get(s.dtype, 0) + s.step_bytes
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def rate_by_type(shapes: Collection[MatrixShape], rates: dict[tuple[DType, int], float]) -> dict[DType, float]:
    """Each type's rate over all its row lengths (combined by bytes as in ceiling_gbs), most bytes first."""
    out = {}
    for dtype in dict.fromkeys(s.dtype for s in shapes):
        rate = ceiling_gbs([s for s in shapes if s.dtype is dtype], rates)
        if rate is not None:
            out[dtype] = rate
    return out
