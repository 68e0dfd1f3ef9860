"""A compiled streaming read, for `rwkv-tui bench` (runtime/bench.py times it): how fast this machine's
memory can be read when the reader prefetches ahead, as the decode kernels do.

    float stream_read(float* p, i64 n_floats)     # the sum of p[0 .. n_floats), n_floats % 64 == 0
    stream_sum(array)                              # the same from Python

Eight independent accumulators over 256-byte steps, a software prefetch PREFETCH_BYTES ahead (the
decode kernels' distance), compiled for the host like every kernel. A numpy sum (the plain read the
issue's figures were measured with) reads markedly less on some machines (Zen 5: 15-20 GB/s on
2 threads while the Q8_0 decode kernel read 28), so `bench` prints both.
"""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I64, counted_loop
from runtime.jit.kernels.irhelpers import V8F, Var, byte_ptr, fadd, hsum, load_vec, prefetch, tree_sum
from runtime.jit.shared import shared_function

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


CTYPE = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_void_p, ctypes.c_int64)


def stream_sum(part: np.ndarray) -> float:
    """The compiled read over a float32 array of whole STEPs (releases the GIL: ctypes)."""
    if part.dtype != np.float32 or len(part) % STEP or not part.flags.c_contiguous:
        raise ValueError(f"the stream read takes contiguous float32 arrays of a multiple of {STEP} values")
    return shared_function(NAME, build_module, NAME, CTYPE)(part.ctypes.data, len(part))
