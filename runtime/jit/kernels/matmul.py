"""Matrix × matrix for a chunk of prompt tokens: Y[t, r] (+)= W[r] · X[t].

`void matmul_<type>_c<n>[_acc](i8* w, float* X, i64 ldx, float* Y, i64 ldy, i64 n_tok,
                                i64 row_begin, i64 row_end)`

Each weight block is read from memory once per call: a tile of 4 rows is decoded to float32 into a
stack buffer, then every token's activations are multiplied against the 4 decoded rows at once
(4 accumulators sharing each activation load). With the tile in L1/L2 the loop is bound by FMA
throughput rather than memory.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I8P, I64, VOID, counted_loop, f32, get_or_define, i64, intrinsic
from runtime.jit.kernels.dequant import LANES, V32F, block_stride, decode_block, row_pointer
from runtime.jit.kernels.matvec import check_cols, dot_row, kernel_name
from runtime.quant.types import DType

ROW_TILE = 4
STEP = 16
V16F = ir.VectorType(F32, STEP)


def _vload(b: ir.IRBuilder, base: ir.Value, index: ir.Value, ty: ir.VectorType) -> ir.Value:
    return b.load(b.bitcast(b.gep(base, [index], inbounds=True), ty.as_pointer()), align=4)


def emit_matmul(
    module: ir.Module, dtype: DType, n_cols: int, *, accumulate: bool = False, linkage: str = "internal"
) -> ir.Function:
    check_cols(dtype, n_cols)
    row_bytes = dtype.row_bytes(n_cols)
    stride = block_stride(dtype)
    fma = intrinsic(module, "llvm.fmuladd.v16f32", V16F, [V16F, V16F, V16F])
    reduce = intrinsic(module, "llvm.vector.reduce.fadd.v16f32", F32, [F32, V16F])

    def store_result(b: ir.IRBuilder, y: ir.Value, s: ir.Value) -> None:
        b.store(b.fadd(b.load(y), s) if accumulate else s, y)

    def build(fn: ir.Function) -> None:
        w, x, ldx, y, ldy, n_tok, r0, r1 = fn.args
        for p in (w, x, y):
            p.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        tile = b.alloca(F32, size=i64(ROW_TILE * n_cols))
        tile.align = 64
        accs = [b.alloca(V16F) for _ in range(ROW_TILE)]
        n_full = b.sub(r1, b.urem(b.sub(r1, r0), i64(ROW_TILE)))
        with counted_loop(b, r0, n_full, i64(ROW_TILE), name="tile") as r:
            for k in range(ROW_TILE):  # decode 4 rows once
                row = row_pointer(b, w, b.add(r, i64(k)), row_bytes)
                dst = b.gep(tile, [i64(k * n_cols)], inbounds=True)
                with counted_loop(b, i64(0), i64(n_cols // LANES), name="dq") as j:
                    v = decode_block(b, module, dtype, b.gep(row, [b.mul(j, i64(stride))], inbounds=True))
                    b.store(v, b.bitcast(b.gep(dst, [b.mul(j, i64(LANES))], inbounds=True), V32F.as_pointer()),
                            align=4)
            with counted_loop(b, i64(0), n_tok, name="t") as t:
                xt = b.gep(x, [b.mul(t, ldx)], inbounds=True)
                for acc in accs:
                    b.store(ir.Constant(V16F, None), acc)
                with counted_loop(b, i64(0), i64(n_cols), i64(STEP), name="c") as c:
                    xv = _vload(b, xt, c, V16F)
                    for k, acc in enumerate(accs):
                        wv = _vload(b, tile, b.add(c, i64(k * n_cols)), V16F)
                        b.store(b.call(fma, [wv, xv, b.load(acc)]), acc)
                yt = b.gep(y, [b.mul(t, ldy)], inbounds=True)
                for k, acc in enumerate(accs):
                    s = b.call(reduce, [f32(0.0), b.load(acc)], fastmath=("reassoc",))
                    store_result(b, b.gep(yt, [b.add(r, i64(k))], inbounds=True), s)
        with counted_loop(b, n_full, r1, name="rest") as r:  # leftover rows, one at a time
            row = row_pointer(b, w, r, row_bytes)
            with counted_loop(b, i64(0), n_tok, name="t") as t:
                s = dot_row(b, module, dtype, n_cols, row, b.gep(x, [b.mul(t, ldx)], inbounds=True))
                store_result(b, b.gep(y, [b.add(b.mul(t, ldy), r)], inbounds=True), s)
        b.ret_void()

    fnty = ir.FunctionType(VOID, [I8P, F32P, I64, F32P, I64, I64, I64, I64])
    return get_or_define(module, kernel_name("matmul", dtype, n_cols, accumulate), fnty, build, linkage)
