"""Matrix × vector for decoding one token: y[r] (+)= W[r] · x for rows [row_begin, row_end).

`void matvec_<type>_c<n>[_acc](i8* w, float* x, float* y, i64 row_begin, i64 row_end)`

Each row is walked once, block by block: a block of 32 weights is decoded to floats (dequant.py)
and multiplied into a 32-lane accumulator by the float32 activations — the activations are never
quantized. The accumulator is reduced once per row. Decoding is bound by memory reads, so the
kernel's job is to keep the loads streaming.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I8P, I64, VOID, counted_loop, f32, get_or_define, i64, intrinsic
from runtime.jit.kernels.dequant import LANES, V32F, block_stride, decode_block, row_pointer
from runtime.quant.types import DType


def kernel_name(kind: str, dtype: DType, n_cols: int, accumulate: bool) -> str:
    return f"{kind}_{dtype.name.lower()}_c{n_cols}{'_acc' if accumulate else ''}"


def check_cols(dtype: DType, n_cols: int) -> None:
    if n_cols % LANES:
        raise ValueError(f"rows of {n_cols} values are not supported: need a multiple of {LANES}")


def dot_row(
    b: ir.IRBuilder, module: ir.Module, dtype: DType, n_cols: int, row: ir.Value, x: ir.Value
) -> ir.Value:
    """Σ row·x over n_cols values, as a float (row: i8* to the row's first block).

    Blocks alternate between two accumulators, so consecutive FMAs do not wait on each other.
    """
    fma = intrinsic(module, "llvm.fmuladd.v32f32", V32F, [V32F, V32F, V32F])
    reduce = intrinsic(module, "llvm.vector.reduce.fadd.v32f32", F32, [F32, V32F])
    stride = block_stride(dtype)
    n_blocks = n_cols // LANES
    accs = [b.alloca(V32F), b.alloca(V32F)]
    for acc in accs:
        b.store(ir.Constant(V32F, None), acc)

    def step(k: ir.Value, acc: ir.Value) -> None:
        w = decode_block(b, module, dtype, b.gep(row, [b.mul(k, i64(stride))], inbounds=True))
        xv = b.load(b.bitcast(b.gep(x, [b.mul(k, i64(LANES))], inbounds=True), V32F.as_pointer()), align=4)
        b.store(b.call(fma, [w, xv, b.load(acc)]), acc)

    with counted_loop(b, i64(0), i64(n_blocks - 1), i64(2), name="blk") as k:
        step(k, accs[0])
        step(b.add(k, i64(1)), accs[1])
    if n_blocks % 2:
        step(i64(n_blocks - 1), accs[0])
    total = b.fadd(b.load(accs[0]), b.load(accs[1]))
    return b.call(reduce, [f32(0.0), total], fastmath=("reassoc",))


def emit_matvec(
    module: ir.Module, dtype: DType, n_cols: int, *, accumulate: bool = False, linkage: str = "internal"
) -> ir.Function:
    check_cols(dtype, n_cols)
    row_bytes = dtype.row_bytes(n_cols)

    def build(fn: ir.Function) -> None:
        w, x, y, r0, r1 = fn.args
        for p in (w, x, y):
            p.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with counted_loop(b, r0, r1, name="row") as r:
            s = dot_row(b, module, dtype, n_cols, row_pointer(b, w, r, row_bytes), x)
            out = b.gep(y, [r], inbounds=True)
            b.store(b.fadd(b.load(out), s) if accumulate else s, out)
        b.ret_void()

    fnty = ir.FunctionType(VOID, [I8P, F32P, F32P, I64, I64])
    return get_or_define(module, kernel_name("matvec", dtype, n_cols, accumulate), fnty, build, linkage)
