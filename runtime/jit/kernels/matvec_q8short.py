"""Matrix × vector for short Q8_0 rows (up to SHORT_COLS values: RWKV-7's LoRA second factors, rows of the
rank) on x86 hosts with AVX2.

Called by matvec.py (same signature, same row split). The general int16 kernel (matvec_int16.py) is built
for long rows: per group of rows it converts the scales of 8 blocks at a time into a stack array, walks the
blocks in a loop, and reduces each row horizontally; on rows of one to four blocks that bookkeeping is most
of the work (Sapphire Rapids, one thread, rows in L2: 1024 × 128 Q8_0 20.7 µs against 7.2 for F16 rows of
twice the bytes; from memory 24.3 against 19.8). Here x (at most 8 blocks) is quantized once per call to
int16 as matvec_int16 does (X = round(x / sx_k), sx_k = max|x_block| / XMAX) and held in registers, one <32
x i16> per block; a row is a straight run per block: its scale d as a scalar half, the 32 codes sign-
extended to words (vpmovsxbw), one vpdpwssd against X, one conversion and one FMA by d·sx_k into a <16 x
float>, then one horizontal sum per row. Hosts without AVX-512 BW and VNNI do the same in two 256-bit halves
per block (vpmaddwd, or vpmaddwd and vpdpwssd with AVX-VNNI). Rows are walked ROWS side by side, prefetching
PREFETCH_BYTES ahead of each block.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I8P, I16, I64, VOID, counted_loop, get_or_define, intrinsic
from runtime.jit.kernels.irhelpers import (
    BLOCK,
    VL,
    Var,
    byte_ptr,
    fma,
    half_to_float,
    hsum,
    i64c,
    load_as,
    prefetch,
    row_at,
    splat,
    stack_array,
    stack_floats,
    store_results,
)
from runtime.jit.kernels.matvec_int16 import V16I8, V16I16, V16I32, V32I8, host_variant, quantize_x
from runtime.jit.kernels.matvec_int16 import V32I16W as V32I16
from runtime.jit.kernels.matvec_int16 import _dpwssd as dpwssd_256
from runtime.jit.kernels.matvec_int16 import _pmaddwd as pmaddwd
from runtime.quant.types import DType

SHORT_COLS = 256  # longest rows (values) this kernel takes: X of 8 blocks in 8 registers
ROWS = 4  # rows walked side by side
PREFETCH_BYTES = 4096  # software prefetch distance ahead of each block read (0: none)
BLOCK_BYTES = DType.Q8_0.block_bytes  # f16 d, 32 int8 codes


def uses_short_q8(dtype: DType, n_cols: int) -> bool:
    """Whether rows of `n_cols` values of `dtype` go through this kernel on this host (x86 with AVX2)."""
    return dtype is DType.Q8_0 and n_cols <= SHORT_COLS and n_cols % BLOCK == 0 and host_variant() is not None


class _ShortX:
    """x quantized to int16 (emitted where built) and held in registers, and the dot of one row with it."""

    def __init__(self, b: ir.IRBuilder, x: ir.Value, n_cols: int) -> None:
        self.b, self.n_blocks = b, n_cols // BLOCK
        self.row_bytes = self.n_blocks * BLOCK_BYTES
        xq = stack_array(b, I16, n_cols, align=64, name="xq")
        sx = stack_floats(b, self.n_blocks, align=64, name="sx")

        def store(at: ir.Value, q: ir.Value) -> None:
            b.store(q, b.bitcast(b.gep(xq, [at], inbounds=True), q.type.as_pointer()), align=16)

        quantize_x(b, x, self.n_blocks, sx, None, None, store)
        self.variant = host_variant()
        self.wide = self.variant.wide  # 512-bit words (AVX-512 BW and VNNI), else two 256-bit halves per block

        def x_words(k: int, offset: int, ty: ir.VectorType) -> ir.Value:
            return b.load(b.bitcast(b.gep(xq, [i64c(BLOCK * k + offset)], inbounds=True), ty.as_pointer()),
                          align=32)

        self.xs = [[x_words(k, 0, V32I16)] if self.wide else [x_words(k, 0, V16I16), x_words(k, 16, V16I16)]
                   for k in range(self.n_blocks)]
        self.scales = [b.load(b.gep(sx, [i64c(k)], inbounds=True)) for k in range(self.n_blocks)]
        self.lanes = 16 if self.wide else VL

    def _block_dot(self, blk: ir.Value, xk: list[ir.Value]) -> ir.Value:
        """The block's 32 codes dotted with X_k, as int32 lanes."""
        b = self.b
        if self.wide:
            dpwssd = intrinsic(b.module, "llvm.x86.avx512.vpdpwssd.512", V16I32, [V16I32, V32I16, V32I16])
            return b.call(dpwssd, [ir.Constant(V16I32, None), b.sext(load_as(b, blk, 2, V32I8), V32I16), xk[0]])
        lo, hi = (b.sext(load_as(b, blk, 2 + 16 * j, V16I8), V16I16) for j in range(2))
        if self.variant.vnni:
            return dpwssd_256(b, pmaddwd(b, lo, xk[0]), hi, xk[1])
        return b.add(pmaddwd(b, lo, xk[0]), pmaddwd(b, hi, xk[1]))

    def row_dot(self, row: ir.Value) -> ir.Value:
        """The dot product of the Q8_0 row at i8* `row` with x."""
        b = self.b
        acc = Var(b, ir.Constant(ir.VectorType(F32, self.lanes), None), "acc")
        for k in range(self.n_blocks):
            blk = byte_ptr(b, row, BLOCK_BYTES * k)
            if PREFETCH_BYTES:
                prefetch(b, byte_ptr(b, blk, PREFETCH_BYTES))
            scale = b.fmul(half_to_float(b, load_as(b, blk, 0, I16)), self.scales[k])
            dot = self._block_dot(blk, self.xs[k])
            acc.set(fma(b, b.sitofp(dot, acc.get().type), splat(b, scale, self.lanes), acc.get()))
        return hsum(b, acc.get())


def short_q8_emitter(b: ir.IRBuilder, n_cols: int, accumulate: bool, w: ir.Value, x: ir.Value,
                     y: ir.Value) -> Callable[[ir.Value, int], None]:
    """Quantize x (emitted at the builder's position) and return `emit(first_row, count)`, which emits
    y[first + i] (+)= W[first + i]·x for i < count."""
    sx = _ShortX(b, x, n_cols)

    def emit(first: ir.Value, count: int) -> None:
        rows = [sx.row_dot(row_at(b, w, first, i, sx.row_bytes)) for i in range(count)]
        store_results(b, y, first, rows, accumulate)

    return emit


def emit_short_q8_group(module: ir.Module, cols: tuple[int, ...]) -> ir.Function:
    """Define (once per module) `void matvec_q8_0_group_c<a>_c<b>…(i8* w0, float* x0, float* y0, i8* w1, …,
    i64 row_begin, i64 row_end)`: y_i[r] = W_i[r]·x_i for every matrix i (rows of cols[i] values) and row r
    in the range, the matrices' rows walked side by side (one stream each at once)."""
    if not all(uses_short_q8(DType.Q8_0, c) for c in cols):
        raise ValueError(f"no short Q8_0 kernel for rows of {cols}")
    fnty = ir.FunctionType(VOID, [I8P, F32P, F32P] * len(cols) + [I64, I64])

    def build(fn: ir.Function) -> None:
        args = list(fn.args)
        r0, r1 = args[-2:]
        for arg in args[:-2]:
            arg.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        groups = [(args[3 * i], _ShortX(b, args[3 * i + 1], c), args[3 * i + 2]) for i, c in enumerate(cols)]
        with counted_loop(b, r0, r1, name="row") as r:
            for w, sx, y in groups:
                store_results(b, y, r, [sx.row_dot(row_at(b, w, r, 0, sx.row_bytes))], False)
        b.ret_void()

    return get_or_define(module, "matvec_q8_0_group_" + "_".join(f"c{c}" for c in cols), fnty, build)
