"""A compiled streaming read, for `rwkv-tui bench` (runtime/bench.py times it): how fast this machine's
memory can be read when the reader prefetches ahead, as the decode kernels do.

    float stream_read(float* p, i64 n_floats)     # the sum of p[0 .. n_floats), n_floats % 64 == 0
    stream_sum(array)                              # the same from Python
    i32 stream_read_words(i32* p, i64 n_words)     # the same read as 32-bit integers (wrapping sum)
    stream_words_sum(array)                        # from Python, over a uint32 array

The integer read is for memory holding anything, such as a model's quantized weights (bench reads
the very pages decoding reads with it): floating-point adds of arbitrary bits would meet denormals,
which cost microcode assists on x86 and would make the read look slower than the memory.

The array is read as STREAMS parts side by side, each front to back, 64 bytes of each per step into
eight independent accumulators, every line prefetched PREFETCH_BYTES ahead in its part, compiled for the
host like every kernel. Several streams, as the decode kernels walk their rows (runtime/jit/kernels/
matvec.py ROW_STREAMS): the CPU's stream prefetcher follows each, and on the 2-vCPU Sapphire Rapids VM
four read 36 GB/s on 2 threads (18.8 on one) where one stream, prefetched 16 KB ahead once per
256 bytes (this read before), read 29.6 (15.2); 2 streams 33.9, 8 with one prefetch each 32.0. So the
decode figures of earlier stops, as a share of that read, are not comparable with later ones. A numpy
sum (the plain read the issue's figures were measured with) reads markedly less on some machines
(Zen 5: 15-20 GB/s on 2 threads while the Q8_0 decode kernel read 28), so `bench` prints both.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I32, I32P, I64, counted_loop
from runtime.jit.kernels.irhelpers import V8F, Var, byte_ptr, fadd, hsum, prefetch, tree_sum
from runtime.jit.shared import shared_function

STEP = 64  # floats per loop step (256 bytes: 64 of each stream); arrays are whole steps
STREAMS = 4
PREFETCH_BYTES = 2048  # ahead of each stream (1536-3072 within 4 %; 1024: 33.8 GB/s, 4096: 33.7)
NAME = "stream_read"
WORDS_NAME = "stream_read_words"
V8I = ir.VectorType(I32, 8)


def _read_loop(b: ir.IRBuilder, p: ir.Value, n: ir.Value, vty: ir.VectorType,
               add: Callable[[ir.Value, ir.Value], ir.Value]) -> list[Var]:
    """The read: the n elements as STREAMS parts side by side, STEP / STREAMS of each per iteration
    (one cache line) into eight accumulators, each line prefetched PREFETCH_BYTES ahead in its part."""
    accs = [Var(b, ir.Constant(vty, None), f"acc{i}") for i in range(STEP // 8)]
    part = b.sdiv(n, ir.Constant(I64, STREAMS))
    per = STEP // STREAMS
    with counted_loop(b, 0, part, per, name="i") as i:
        for s in range(STREAMS):
            at = b.add(b.mul(part, ir.Constant(I64, s)), i)
            prefetch(b, byte_ptr(b, b.bitcast(b.gep(p, [at], inbounds=True), ir.IntType(8).as_pointer()),
                                 PREFETCH_BYTES))
            for j in range(per // 8):
                acc = accs[(s * per // 8 + j) % len(accs)]
                ptr = b.gep(p, [b.add(at, ir.Constant(I64, 8 * j))], inbounds=True)
                acc.set(add(acc.get(), b.load(b.bitcast(ptr, vty.as_pointer()), align=4)))
    return accs


def build_module() -> ir.Module:
    module = ir.Module(name="stream_read")
    fn = ir.Function(module, ir.FunctionType(F32, [F32P, I64]), NAME)
    p, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    accs = _read_loop(b, p, n, V8F, lambda acc, v: fadd(b, acc, v))
    b.ret(hsum(b, tree_sum(b, [a.get() for a in accs])))

    fn = ir.Function(module, ir.FunctionType(I32, [I32P, I64]), WORDS_NAME)
    p, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    accs = _read_loop(b, p, n, V8I, b.add)
    total = accs[0].get()
    for acc in accs[1:]:
        total = b.add(total, acc.get())
    word = b.extract_element(total, ir.Constant(I32, 0))
    for lane in range(1, 8):
        word = b.add(word, b.extract_element(total, ir.Constant(I32, lane)))
    b.ret(word)
    return module


CTYPE = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_void_p, ctypes.c_int64)
WORDS_CTYPE = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int64)


def stream_sum(part: np.ndarray) -> float:
    """The compiled read over a float32 array of whole STEPs (releases the GIL: ctypes)."""
    if part.dtype != np.float32 or len(part) % STEP or not part.flags.c_contiguous:
        raise ValueError(f"the stream read takes contiguous float32 arrays of a multiple of {STEP} values")
    return shared_function(NAME, build_module, NAME, CTYPE)(part.ctypes.data, len(part))


def stream_words_sum(part: np.ndarray) -> int:
    """The integer read over a uint32 array of whole STEPs: the sum of its words mod 2³² (releases the GIL)."""
    if part.dtype != np.uint32 or len(part) % STEP or not part.flags.c_contiguous:
        raise ValueError(f"the word read takes contiguous uint32 arrays of a multiple of {STEP} values")
    return int(shared_function(NAME, build_module, WORDS_NAME, WORDS_CTYPE)(part.ctypes.data, len(part)))
