"""How fast a model's own matrix kernels compute with their rows already in cache: the most decoding
could reach on this CPU, however fast the memory (`rwkv-tui bench` prints it beside the memory reads).

Decoding one token reads every weight once, so its rate is bounded twice: by how fast the memory
delivers the bytes (the compiled read, runtime/bench.py) and by how fast the kernels turn bytes into
products. Where the kernel for a type is slower than the read, no memory tuning brings that type to the
read's rate; this module measures that second bound on the machine at hand.

`cached_kernel_rates(model, matrices, threads)` takes, for each weight type of the matrices a decode
step reads (their stored rows a whole number of 32-value blocks: the block kernels), that type's
matrix with the most bytes, copies about CACHED_BYTES of its first rows per thread (the file's real
rows, repeated where the matrix is smaller; a small copy, in cache after the first pass) and times the
matrix × vector kernel the model emits for that type and row length (matvec.emit_matvec), run over
the copy again and again by a native loop, each thread on its own copy at once: GB/s of weight bytes,
the best of `repeats`. Kernels the model uses only for some shapes (RWKV-7's grouped short Q8_0
second factors, smallmat's odd row lengths) are not what is timed. `ceiling_gbs` combines the rates
by the bytes each type holds in a decode step, as a step that spent bytes/rate on each type would.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from runtime.jit.engine import CompiledModule, compile_module
from runtime.jit.irkit import F32P, I8P, I64, VOID, counted_loop, i64
from runtime.jit.kernels.matvec import emit_matvec
from runtime.model.model import Model
from runtime.quant.types import DType

CACHED_BYTES = 512 << 10  # rows per thread: inside a core's L2 on current x86 and Apple cores
BLOCK_VALUES = 32  # the block kernels take rows of whole 32-value blocks (others go to smallmat)
MIN_SECONDS = 0.02  # each timed round runs at least about this long per thread


@dataclass(frozen=True)
class TypeShare:
    """One weight type of the matrices a decode step reads: its bytes per step, and the shape timed."""

    dtype: DType
    step_bytes: int
    rows: int  # of the type's largest matrix (the one timed)
    n_cols: int
    offset: int  # of that matrix in the file


def type_shares(model: Model, matrices: set[str]) -> list[TypeShare]:
    """The weight types among `matrices` (tensor names a decode step reads whole) whose rows the block
    kernels take, each with its bytes per step and its largest matrix; most bytes first."""
    by_type: dict[DType, list] = {}
    for name, t in model.tensors.items():
        if name in matrices and len(t.shape) >= 2 and t.shape[-1] % BLOCK_VALUES == 0:
            by_type.setdefault(t.dtype, []).append(t)
    shares = []
    for dtype, tensors in by_type.items():
        largest = max(tensors, key=lambda t: t.nbytes)
        shares.append(TypeShare(dtype, sum(t.nbytes for t in tensors), math.prod(largest.shape[:-1]),
                                largest.shape[-1], largest.offset))
    return sorted(shares, key=lambda s: -s.step_bytes)


def _aligned_copy(data: np.ndarray) -> np.ndarray:
    """`data` (uint8) copied to a 64-byte aligned buffer."""
    raw = np.empty(data.nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + data.nbytes]
    out[:] = data
    return out


_REPEAT_CTYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                 ctypes.c_int64)


def _repeat_name(dtype: DType, n_cols: int) -> str:
    return f"repeat_matvec_{dtype.name.lower()}_c{n_cols}"


def _repeating_kernels(shapes: list[tuple[DType, int]]) -> tuple[CompiledModule, dict[tuple[DType, int], Callable]]:
    """Per (type, row length): `repeat(w, x, y, rows, times)`, native code that runs the model's matrix
    × vector kernel over rows [0, rows) `times` times (one call per timing, so Python's per-call cost
    and lock do not show in the figure); the callables are valid while the returned module is alive."""
    module = ir.Module(name="kernel_ceiling")
    for dtype, n_cols in shapes:
        kernel = emit_matvec(module, dtype, n_cols, accumulate=False)
        fn = ir.Function(module, ir.FunctionType(VOID, [I8P, F32P, F32P, I64, I64]), _repeat_name(dtype, n_cols))
        w, x, y, rows, times = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with counted_loop(b, 0, times):
            b.call(kernel, [w, x, y, i64(0), rows])
        b.ret_void()
    compiled = compile_module(module)
    return compiled, {shape: _REPEAT_CTYPE(compiled.address(_repeat_name(*shape))) for shape in shapes}


def _rate(repeat: Callable, copies: list[np.ndarray], rows: int, x: np.ndarray, repeats: int) -> float:
    """GB/s of `repeat`'s kernel over `rows` rows of each copy, one thread per copy at once; the best of
    `repeats` rounds of about MIN_SECONDS."""
    outs = [np.zeros(rows, dtype=np.float32) for _ in copies]
    t0 = time.perf_counter()
    repeat(copies[0].ctypes.data, x.ctypes.data, outs[0].ctypes.data, rows, 4)  # also brings it in cache
    times = max(2, int(MIN_SECONDS / max((time.perf_counter() - t0) / 4, 1e-7)))

    def run(i: int) -> None:
        repeat(copies[i].ctypes.data, x.ctypes.data, outs[i].ctypes.data, rows, times)

    best = math.inf
    with cf.ThreadPoolExecutor(max_workers=len(copies)) as pool:
        list(pool.map(run, range(len(copies))))  # every copy in its thread's cache
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(run, range(len(copies))))
            best = min(best, time.perf_counter() - t0)
    if not all(np.isfinite(y).all() for y in outs):
        raise RuntimeError(f"the {len(copies)}-thread kernel timing gave non-finite products")
    return copies[0].nbytes * times * len(copies) / best / 1e9


def cached_kernel_rates(model: Model, matrices: set[str], threads: int, repeats: int = 5) -> dict[DType, float]:
    """GB/s of each weight type's matrix × vector kernel with its rows in cache on `threads` threads
    (each on its own copy of about CACHED_BYTES of the type's largest matrix's rows), by type."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    shares = type_shares(model, matrices)
    if not shares:
        return {}
    compiled, kernels = _repeating_kernels([(s.dtype, s.n_cols) for s in shares])
    view = model.mapped_bytes()
    rng = np.random.default_rng(0)
    rates = {}
    for s in shares:
        row_bytes = s.dtype.row_bytes(s.n_cols)
        rows = max(1, CACHED_BYTES // row_bytes)  # the matrix's first rows, repeated where it has fewer
        first = view[s.offset : s.offset + min(rows, s.rows) * row_bytes].reshape(-1, row_bytes)
        block = np.resize(first, (rows, row_bytes))
        copies = [_aligned_copy(block.reshape(-1)) for _ in range(threads)]
        x = rng.standard_normal(s.n_cols).astype(np.float32)
        rates[s.dtype] = _rate(kernels[(s.dtype, s.n_cols)], copies, rows, x, repeats)
    del compiled  # the kernels' code is unmapped with it: no callable is used past this point
    return rates


def ceiling_gbs(shares: list[TypeShare], rates: dict[DType, float]) -> float | None:
    """The GB/s of a step whose bytes of each type went at that type's rate (bytes over the sum of
    bytes/rate), over the types `rates` has; None where it has none."""
    timed = [s for s in shares if rates.get(s.dtype, 0) > 0]
    if not timed:
        return None
    return sum(s.step_bytes for s in timed) / sum(s.step_bytes / rates[s.dtype] for s in timed)
