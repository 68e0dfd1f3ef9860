"""A compiled streaming read, for `rwkv-tui bench`: how fast this machine's memory can be read when the
reader prefetches ahead, as the decode kernels do.

    float stream_read(float* p, i64 n_floats)     # the sum of p[0 .. n_floats), n_floats % 64 == 0

Eight independent accumulators over 256-byte steps, a software prefetch PREFETCH_BYTES ahead (the
decode kernels' distance), compiled for the host like every kernel. A numpy sum (the plain read the
issue's figures were measured with) reads markedly less on some machines (Zen 5: 15-20 GB/s on
2 threads while the Q8_0 decode kernel read 28), so `bench` prints both.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import functools
import time

import numpy as np
from llvmlite import ir

from runtime.jit.engine import CompiledModule, compile_module
from runtime.jit.irkit import F32, F32P, I64, counted_loop
from runtime.jit.kernels.irhelpers import V8F, Var, byte_ptr, fadd, hsum, load_vec, prefetch, tree_sum

STEP = 64  # floats per loop step (256 bytes)
PREFETCH_BYTES = 16384  # as runtime/jit/kernels/matvec.py
NAME = "stream_read"


def build_module() -> ir.Module:
    module = ir.Module(name="stream_read")
    fn = ir.Function(module, ir.FunctionType(F32, [F32P, I64]), NAME)
    p, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    accs = [Var(b, ir.Constant(V8F, None), f"acc{i}") for i in range(STEP // 8)]
    with counted_loop(b, 0, n, STEP, name="i") as i:
        prefetch(b, byte_ptr(b, b.bitcast(b.gep(p, [i], inbounds=True), ir.IntType(8).as_pointer()),
                             PREFETCH_BYTES))
        for j, acc in enumerate(accs):
            acc.set(fadd(b, acc.get(), load_vec(b, p, b.add(i, ir.Constant(I64, 8 * j)))))
    b.ret(hsum(b, tree_sum(b, [a.get() for a in accs])))
    return module


@functools.cache
def _compiled() -> tuple[CompiledModule, ctypes._CFuncPtr]:
    lib = compile_module(build_module())
    return lib, ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_void_p, ctypes.c_int64)(lib.address(NAME))


def stream_read_gbs(megabytes: int = 1024, repeats: int = 3, threads: int = 1) -> float:
    """GB/s of the compiled read over `megabytes` split across `threads` (ctypes releases the GIL);
    the best of `repeats`."""
    _, fn = _compiled()
    a = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    share = a.size // threads // STEP * STEP  # whole steps per thread; any remainder is not read
    if share == 0:
        raise ValueError(f"{megabytes} MB is too little to split across {threads} threads")
    parts = [a[i * share : (i + 1) * share] for i in range(threads)]
    best = float("inf")
    with cf.ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            sums = list(pool.map(lambda part: fn(part.ctypes.data, len(part)), parts))
            best = min(best, time.perf_counter() - t0)
    read = share * threads
    if abs(sum(sums) - read) > 1e-3 * read:
        raise RuntimeError(f"stream read summed {sum(sums)}, expected {read}")
    return read * a.itemsize / best / 1e9
