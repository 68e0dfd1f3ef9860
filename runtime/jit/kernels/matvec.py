"""Matrix × vector for decoding one token: y[r] (+)= W[r] · x for rows [row_begin, row_end).

    void matvec_<type>_c<n>[_acc](i8* noalias w, float* noalias x, float* noalias y,
                                  i64 row_begin, i64 row_end)

Row r starts at w + r·row_bytes. Activations stay float32 here. Decoding is bound by
memory reads, so the kernels walk 2-4 rows side by side (independent accumulators, shared loads of
x, which stays in L1), block by block, with a software prefetch well ahead of the reads. Quantized
blocks are not scaled weight by weight: the integer codes are dotted with x and the block's sum is
scaled once (see dequant.py). Each row is reduced horizontally once.

F32 and F16 rows are walked in 512-bit vectors on AVX-512F hosts (`_WideFloatRow`: 1.5B F16 decoding,
Zen 5, 2 threads, side by side: 82.6 → 69.4 ms/token at the lower quartile of 10 rounds).

K-quant rows (Q2_K … Q6_K) go to matvec_kquant.py. On x86 hosts with AVX2, the 4-, 5- and 8-bit
types use matvec_int16.py instead (x quantized to int16 per block, integer dot products; see its
docstring for the design and figures). The generic kernel below serves the float types everywhere and
every legacy type on other hosts.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I8P, I16, I64, VOID, counted_loop, get_or_define
from runtime.jit.kernels import matvec_int16
from runtime.jit.kernels.dequant import NIBBLE_LAYOUTS, block_at, check_supported, decode_block
from runtime.jit.kernels.dequant_k import is_k_quant
from runtime.jit.kernels.irhelpers import (
    BLOCK,
    PIECES,
    V8F,
    VL,
    Var,
    byte_ptr,
    dot_pieces,
    fadd,
    fma,
    half_to_float,
    hsum,
    i64c,
    load_as,
    load_vec,
    prefetch,
    row_at,
    splat,
    stack_floats,
    store_results,
    tree_sum,
)
from runtime.jit.kernels.matvec_int16 import int16_emitter, int16_variant
from runtime.jit.kernels.matvec_kquant import kquant_emitter, kquant_rows
from runtime.jit.target import host_target
from runtime.quant.types import DType

PREFETCH_BYTES = 16384  # software prefetch distance ahead of each block read (0: none); measured
WIDE_FLOAT_ROWS = True  # F32/F16 rows in 512-bit vectors on AVX-512F hosts (see _WideFloatRow)
V16F = ir.VectorType(F32, 16)
MATVEC_TYPE = ir.FunctionType(VOID, [I8P, F32P, F32P, I64, I64])


def rows_per_step(dtype: DType, n_cols: int) -> int:
    """Rows walked side by side: 4 for float rows, matvec_int16.rows_for where that kernel is used, 2
    for the other quantized ones (their decoding needs more registers); measured. K-quants: matvec_kquant."""
    if is_k_quant(dtype):
        return kquant_rows(dtype, n_cols)
    if int16_variant(dtype) is not None:
        return matvec_int16.rows_for(dtype, n_cols)
    return 4 if dtype in (DType.F32, DType.F16) else 2


def kernel_name(kind: str, dtype: DType, n_cols: int, accumulate: bool) -> str:
    """`matvec_q8_0_c768`, `matmul_f16_c3072_acc`, …"""
    return f"{kind}_{dtype.name.lower()}_c{n_cols}{'_acc' if accumulate else ''}"


def has_bias(dtype: DType) -> bool:
    return dtype in NIBBLE_LAYOUTS


# -- the generic kernel ------------------------------------------------------------------------------


def block_sums(b: ir.IRBuilder, x: ir.Value, n_cols: int) -> ir.Value:
    """float* to n_cols/32 stack floats: the sum of x over each block."""
    n_blocks = n_cols // BLOCK
    sums = stack_floats(b, n_blocks, name="xsum")
    with counted_loop(b, 0, n_blocks, name="xs") as k:
        base = b.mul(k, i64c(BLOCK))
        parts = [load_vec(b, x, b.add(base, i64c(VL * j))) for j in range(PIECES)]
        b.store(hsum(b, tree_sum(b, parts)), b.gep(sums, [k], inbounds=True))
    return sums


class _RowDot:
    """Accumulates the dot product of one row with x, block by block."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, row: ir.Value) -> None:
        self.b, self.dtype, self.row = b, dtype, row
        zero = ir.Constant(V8F, None)
        if dtype in (DType.F32, DType.F16):
            self.accs = [Var(b, zero, "acc"), Var(b, zero, "acc")]
        else:
            self.accs = [Var(b, zero, "acc")]
        self.bias = Var(b, ir.Constant(F32, 0.0), "bacc") if has_bias(dtype) else None

    def add_block(self, k: ir.Value, xs: list[ir.Value], xsum: ir.Value | None) -> None:
        b = self.b
        ptr = block_at(b, self.row, self.dtype, k)
        if PREFETCH_BYTES:
            prefetch(b, byte_ptr(b, ptr, PREFETCH_BYTES))
        blk = decode_block(b, self.dtype, ptr)
        if blk.scale is None:  # plain floats: one FMA per piece, two accumulators
            for j, (w, xv) in enumerate(zip(blk.pieces, xs, strict=True)):
                acc = self.accs[j % 2]
                acc.set(fma(b, w, xv, acc.get()))
            return
        acc = self.accs[0]
        acc.set(fma(b, dot_pieces(b, blk.pieces, xs), splat(b, blk.scale), acc.get()))
        if self.bias is not None:
            self.bias.set(fma(b, blk.bias, b.load(b.gep(xsum, [k], inbounds=True)), self.bias.get()))

    def result(self) -> ir.Value:
        b = self.b
        s = hsum(b, tree_sum(b, [a.get() for a in self.accs]))
        return fadd(b, s, self.bias.get()) if self.bias is not None else s


class _WideFloatRow:
    """A float row in 512-bit vectors (AVX-512F hosts): 16 weights per conversion and FMA instead of 8.
    On the 2-vCPU Zen 5 machine here the two threads share one core's execution units, so halving the
    instructions per byte shows in F16 decoding (see WIDE_FLOAT_ROWS)."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, row: ir.Value) -> None:
        self.b, self.dtype, self.row = b, dtype, row
        self.accs = [Var(b, ir.Constant(V16F, None), "acc") for _ in range(2)]

    def add_block(self, k: ir.Value, xs: list[ir.Value]) -> None:
        b = self.b
        ptr = block_at(b, self.row, self.dtype, k)
        if PREFETCH_BYTES:
            prefetch(b, byte_ptr(b, ptr, PREFETCH_BYTES))
        for j, (acc, xv) in enumerate(zip(self.accs, xs, strict=True)):
            if self.dtype is DType.F16:
                wv = half_to_float(b, load_as(b, ptr, 32 * j, ir.VectorType(I16, 16)))
            else:
                wv = load_as(b, ptr, 64 * j, V16F)
            acc.set(fma(b, wv, xv, acc.get()))

    def result(self) -> ir.Value:
        return hsum(self.b, fadd(self.b, self.accs[0].get(), self.accs[1].get()))


def wide_float_rows(dtype: DType) -> bool:
    """Whether `dtype` rows are walked in 512-bit vectors here (F32/F16 on AVX-512F hosts)."""
    return WIDE_FLOAT_ROWS and dtype in (DType.F32, DType.F16) and "avx512f" in host_target().enabled


def _emit_rows(b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, w: ir.Value, x: ir.Value,
               y: ir.Value, first: ir.Value, count: int, xsum: ir.Value | None) -> None:
    """y[first + i] (+)= W[first + i]·x for i < count."""
    row_bytes = dtype.row_bytes(n_cols)
    wide = wide_float_rows(dtype)
    rows = [(_WideFloatRow if wide else _RowDot)(b, dtype, row_at(b, w, first, i, row_bytes)) for i in range(count)]
    with counted_loop(b, 0, n_cols // BLOCK, name="blk") as k:
        base = b.mul(k, i64c(BLOCK))
        if wide:
            xs = [load_vec(b, x, b.add(base, i64c(16 * j)), ty=V16F) for j in range(2)]
            for rd in rows:
                rd.add_block(k, xs)
        else:
            xs = [load_vec(b, x, b.add(base, i64c(VL * j))) for j in range(PIECES)]
            for rd in rows:
                rd.add_block(k, xs, xsum)
    store_results(b, y, first, [rd.result() for rd in rows], accumulate)


def emit_matvec(
    module: ir.Module, dtype: DType, n_cols: int, *, accumulate: bool = False, linkage: str = "internal"
) -> ir.Function:
    """Define (once per module) the matrix × vector kernel for rows of `n_cols` values of `dtype`."""
    check_supported(dtype, n_cols)

    def build(fn: ir.Function) -> None:
        w, x, y, r0, r1 = fn.args
        for arg, name in zip(fn.args, ("w", "x", "y", "row_begin", "row_end"), strict=True):
            arg.name = name
        for p in (w, x, y):
            p.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        variant = int16_variant(dtype)
        step = rows_per_step(dtype, n_cols)
        if is_k_quant(dtype):
            emit = kquant_emitter(b, dtype, n_cols, accumulate, w, x, y)
        elif variant is not None:
            emit = int16_emitter(b, dtype, variant, n_cols, accumulate, w, x, y)
        else:
            xsum = block_sums(b, x, n_cols) if has_bias(dtype) else None

            def emit(r: ir.Value, count: int) -> None:
                _emit_rows(b, dtype, n_cols, accumulate, w, x, y, r, count, xsum)
        n = b.sub(r1, r0)
        n = b.select(b.icmp_signed("<", n, i64c(0)), i64c(0), n)
        main_end = b.sub(r1, b.srem(n, i64c(step)))
        with counted_loop(b, r0, main_end, step, name="row") as r:
            emit(r, step)
        with counted_loop(b, main_end, r1, 1, name="rest") as r:
            emit(r, 1)
        b.ret_void()

    return get_or_define(module, kernel_name("matvec", dtype, n_cols, accumulate), MATVEC_TYPE, build, linkage)
