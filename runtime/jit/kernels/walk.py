"""A native loop that runs a matrix × vector kernel over a list of matrices, again and again, so that
benchmarks time the kernels with no Python between calls (runtime/kernel_ceiling.py, bench/kernel_stream.py).

    compiled, walkers = build_walkers([(DType.Q4_K, 2048)])
    walkers[(DType.Q4_K, 2048)](addresses, n_matrices, times, x, y, row_begin, row_end)

runs `matvec(addresses[i], x, y, row_begin, row_end)` for every i < n_matrices, `times` times over. The
kernel is the one the model emits (matvec.emit_matvec), kept out of line so that each call does what a
decoding call does, nothing hoisted from one pass to the next. The callables are valid while `compiled`
is alive; ctypes releases the GIL during a call, so several threads can walk at once.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Collection

from llvmlite import ir

from runtime.jit.engine import CompiledModule, compile_module
from runtime.jit.irkit import F32P, I8P, I64, VOID, counted_loop
from runtime.jit.kernels.matvec import emit_matvec
from runtime.quant.types import DType

WALK_TYPE = ir.FunctionType(VOID, [I64.as_pointer(), I64, I64, F32P, F32P, I64, I64])
WALK_CTYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


def walk_name(dtype: DType, n_cols: int, accumulate: bool) -> str:
    return f"walk_matvec_{dtype.name.lower()}_c{n_cols}{'_acc' if accumulate else ''}"


def emit_walk(module: ir.Module, dtype: DType, n_cols: int, accumulate: bool = False) -> ir.Function:
    """`walk(addresses, n_matrices, times, x, y, row_begin, row_end)` for rows of `n_cols` values of `dtype`
    (external linkage), with its matrix × vector kernel (`accumulate`: y += W·x) out of line."""
    kernel = emit_matvec(module, dtype, n_cols, accumulate=accumulate)
    kernel.attributes.add("noinline")
    fn = ir.Function(module, WALK_TYPE, walk_name(dtype, n_cols, accumulate))
    addresses, n_matrices, times, x, y, r0, r1 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    with counted_loop(b, 0, times, name="pass"), counted_loop(b, 0, n_matrices, name="m") as i:
        w = b.inttoptr(b.load(b.gep(addresses, [i])), I8P)
        b.call(kernel, [w, x, y, r0, r1])
    b.ret_void()
    return fn


def build_walkers(shapes: Collection[tuple[DType, int]], accumulate: bool = False,
                  ) -> tuple[CompiledModule, dict[tuple[DType, int], Callable[..., None]]]:
    """Compiled walkers for each (type, row length) of `shapes` (from the kernel cache where built before)."""
    module = ir.Module(name="walkers")
    for dtype, n_cols in dict.fromkeys(shapes):
        emit_walk(module, dtype, n_cols, accumulate)
    compiled = compile_module(module)
    return compiled, {(d, c): WALK_CTYPE(compiled.address(walk_name(d, c, accumulate))) for d, c in shapes}
