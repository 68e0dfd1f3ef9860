"""Matrix × vector for decoding one token: y[r] (+)= W[r] · x for rows [row_begin, row_end).

    void matvec_<type>_c<n>[_acc](i8* noalias w, float* noalias x, float* noalias y,
                                  i64 row_begin, i64 row_end)

Row r starts at w + r·row_bytes. Activations stay float32 here. Decoding is bound by
memory reads, so the kernels walk 2-4 rows side by side (independent accumulators, shared loads of
x, which stays in L1), block by block, with a software prefetch well ahead of the reads. On x86 the
integer kernels' rows and F32/F16 rows of a kilobyte or more are streams (ROW_STREAMS, float_streams:
rows r, r + n, r + 2n …, each stream reading its own pages in order). Quantized
blocks are not scaled weight by weight: the integer codes are dotted with x and the block's sum is
scaled once (see dequant.py). Each row is reduced horizontally once.

F32 and F16 rows are walked in 512-bit vectors on AVX-512F hosts (`_WideFloatRow`: 1.5B F16 decoding,
Zen 5, 2 threads, side by side: 82.6 → 69.4 ms/token at the lower quartile of 10 rounds).

K-quant rows (Q2_K … Q6_K) go to matvec_kquant.py. On x86 hosts with AVX2, the 4-, 5- and 8-bit
types use matvec_int16.py instead (x quantized to int16 per block, integer dot products; see its
docstring for the design and figures), and on arm64 hosts with the dot-product extension matvec_dot.py
(the same int16 x, as two bytes, through sdot). The generic kernel below serves the float types
everywhere and every legacy type on other hosts.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I8P, I16, I64, VOID, counted_loop, get_or_define
from runtime.jit.kernels import matvec_dot, matvec_int16, matvec_kquant, matvec_q8short
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
    shuffle,
    splat,
    splat_const,
    stack_floats,
    store_results,
    tree_sum,
)
from runtime.jit.kernels.matvec_dot import DotVariant, dot_emitter
from runtime.jit.kernels.matvec_int16 import int16_emitter, int16_variant, row_index
from runtime.jit.kernels.matvec_kquant import kquant_emitter, kquant_rows
from runtime.jit.kernels.matvec_q8short import short_q8_emitter, uses_short_q8
from runtime.jit.target import host_target
from runtime.quant.types import DType

# The x86 kernels (Q4_0 … Q8_0, the K-quants, and F32/F16 rows of a kilobyte or more: float_streams) walk a
# call's rows as `step` streams of consecutive rows side by side (rows r, r + n, r + 2n, … for n = rows //
# step), not `step` consecutive rows at a time: each stream reads its own pages front to back, which the
# CPU's own stream prefetcher follows, where rows next to each other read side by side (several fronts a
# few hundred bytes apart in one page) were left to the software prefetch alone.
ROW_STREAMS = True
PREFETCH_BYTES = 16384  # software prefetch distance ahead of each block read (0: none); measured
WIDE_FLOAT_ROWS = True  # F32/F16 rows in 512-bit vectors on AVX-512F hosts (see _WideFloatRow)
# F32/F16 rows as streams too (float_streams; a switch for A/B runs), each block prefetching FLOAT_STREAM_AHEAD
# bytes ahead in its stream
FLOAT_STREAMS = True
FLOAT_STREAM_ROW_BYTES = 1024
FLOAT_STREAM_AHEAD = 2048
FLOAT_ROWS = 4  # F32/F16 rows walked side by side
# Wide F16 rows widened by integer shifts (_HalfPairs): 0 none, 1 all, 2 every other row (the others by
# vcvtph2ps, so both kinds of vector pipe work); None: per CPU family, SHIFTED_F16_CPUS. llvm-mca, cycles
# per block and row (bench/kernel_costs.py, 2048 columns): Zen 4 4.06 / 3.56 / 2.81, Sapphire Rapids 4.05
# / 5.05 / 4.55, where rows in L2 measured 60.6 / 51 / 55 GB/s per thread: the model's ranking holds.
F16_BY_SHIFTS: int | None = None
SHIFTED_F16_CPUS = {"znver4": 2}  # LLVM's host CPU name → mode; others 0
HALF_SCALE = 56  # x is prepared as x·2^56 for _HalfPairs (weights come as w·2^-112): sums ×2^(112-56)
I32 = ir.IntType(32)
V16I32 = ir.VectorType(I32, 16)
V16F = ir.VectorType(F32, 16)
MATVEC_TYPE = ir.FunctionType(VOID, [I8P, F32P, F32P, I64, I64])


def rows_per_step(dtype: DType, n_cols: int) -> int:
    """Rows walked side by side: 4 for float rows, matvec_int16.rows_for where that kernel is used, 2
    for the other quantized ones (their decoding needs more registers); measured. K-quants: matvec_kquant."""
    if is_k_quant(dtype):
        return kquant_rows(dtype, n_cols)
    if uses_short_q8(dtype, n_cols):
        return matvec_q8short.ROWS
    variant = int16_variant(dtype)
    if isinstance(variant, DotVariant):
        return matvec_dot.rows_for(dtype, n_cols, variant)
    if variant is not None:
        return matvec_int16.rows_for(dtype, n_cols)
    return FLOAT_ROWS if dtype in (DType.F32, DType.F16) else 2


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


def _prefetch_block(b: ir.IRBuilder, ptr: ir.Value, dtype: DType, ahead: int) -> None:
    """Prefetch the block at `ptr` + `ahead`, each of its cache lines (an F32 block is two; 0: none)."""
    if ahead:
        for line in range(0, dtype.block_bytes, 64):
            prefetch(b, byte_ptr(b, ptr, ahead + line))


class _RowDot:
    """Accumulates the dot product of one row with x, block by block."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, row: ir.Value, ahead: int) -> None:
        self.b, self.dtype, self.row, self.ahead = b, dtype, row, ahead
        zero = ir.Constant(V8F, None)
        if dtype in (DType.F32, DType.F16):
            self.accs = [Var(b, zero, "acc"), Var(b, zero, "acc")]
        else:
            self.accs = [Var(b, zero, "acc")]
        self.bias = Var(b, ir.Constant(F32, 0.0), "bacc") if has_bias(dtype) else None

    def add_block(self, k: ir.Value, xs: list[ir.Value], xsum: ir.Value | None) -> None:
        b = self.b
        ptr = block_at(b, self.row, self.dtype, k)
        _prefetch_block(b, ptr, self.dtype, self.ahead)
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
    instructions per byte shows in F16 decoding (see WIDE_FLOAT_ROWS). With `shifts`, F16 halves are
    widened by integer shifts (_HalfPairs) and meet the prepared x instead of x."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, row: ir.Value, ahead: int, n_accs: int = 2,
                 shifts: bool = False) -> None:
        self.b, self.dtype, self.row, self.shifts, self.ahead = b, dtype, row, shifts, ahead
        self.accs = [Var(b, ir.Constant(V16F, None), "acc") for _ in range(n_accs)]

    def add_block(self, k: ir.Value, xs: _WideX, slot: int = 0) -> None:
        """Accumulate block k into accumulators 2·slot and 2·slot + 1."""
        b = self.b
        ptr = block_at(b, self.row, self.dtype, k)
        _prefetch_block(b, ptr, self.dtype, self.ahead)
        accs = self.accs[2 * slot:2 * slot + 2]
        if self.shifts:
            for acc, wv, xv in zip(accs, _HalfPairs.widen(b, load_as(b, ptr, 0, V16I32)), xs.halves(), strict=True):
                acc.set(fma(b, wv, xv, acc.get()))
            return
        for j, (acc, xv) in enumerate(zip(accs, xs.plain(), strict=True)):
            if self.dtype is DType.F16:
                wv = half_to_float(b, load_as(b, ptr, 32 * j, ir.VectorType(I16, 16)))
            else:
                wv = load_as(b, ptr, 64 * j, V16F)
            acc.set(fma(b, wv, xv, acc.get()))

    def result(self) -> ir.Value:
        s = hsum(self.b, tree_sum(self.b, [a.get() for a in self.accs]))
        return self.b.fmul(s, ir.Constant(F32, 2.0 ** (112 - HALF_SCALE))) if self.shifts else s


class _WideX:
    """Block k of x as two <16 x float>, plain or (for rows widened by shifts) prepared by
    _HalfPairs.prepare, each loaded once where first asked for."""

    def __init__(self, b: ir.IRBuilder, x: ir.Value, xh: ir.Value | None, k: ir.Value) -> None:
        self.b, self.x, self.xh, self.base = b, x, xh, b.mul(k, i64c(BLOCK))
        self._plain: list[ir.Value] | None = None
        self._halves: list[ir.Value] | None = None

    def _load(self, src: ir.Value) -> list[ir.Value]:
        return [load_vec(self.b, src, self.b.add(self.base, i64c(16 * j)), ty=V16F) for j in range(2)]

    def plain(self) -> list[ir.Value]:
        if self._plain is None:
            self._plain = self._load(self.x)
        return self._plain

    def halves(self) -> list[ir.Value]:
        if self._halves is None:
            self._halves = self._load(self.xh)
        return self._halves


class _HalfPairs:
    """F16 weights widened without vcvtph2ps (Zen 4 runs a 512-bit vcvtph2ps in 2 cycles on both of
    its FP2/FP3 pipes, llvm-mca's model; the FMAs' FP0/FP1 sat half idle). A block's 32 halves are
    loaded as 16 dwords; the odd half of each is already in bits 16-31: an arithmetic shift right by 3
    puts its exponent and mantissa at bits 13-27 (a float's, 112 below in exponent) and copies of its
    sign in 28-31, and an AND with 0x8FFFE000 keeps the sign at 31. The even half is first shifted up by
    16. Each result is exactly h·2^-112 as a float, subnormal halves and zeros included (infinities
    and NaN are not kept: weights have none, `inspect --verify`). Against x·2^56, prepared once per call
    in the same even/odd order, each product is w·x·2^-56, and the row's sum is scaled by 2^56: exact
    unless |x| exceeds 4·10^21 or a product is below 10^-21 (then it is lost in the subnormal range,
    far under the float rounding of any sum it is part of)."""

    MASK = 0x8FFFE000 - (1 << 32)  # as a signed i32

    @staticmethod
    def widen(b: ir.IRBuilder, v: ir.Value) -> tuple[ir.Value, ir.Value]:
        """(even, odd) halves of the 16 dwords `v` as floats ×2^-112."""
        mask, three = splat_const(V16I32, _HalfPairs.MASK), splat_const(V16I32, 3)
        even = b.and_(b.ashr(b.shl(v, splat_const(V16I32, 16)), three), mask)
        odd = b.and_(b.ashr(v, three), mask)
        return b.bitcast(even, V16F), b.bitcast(odd, V16F)

    @staticmethod
    def prepare(b: ir.IRBuilder, x: ir.Value, n_cols: int) -> ir.Value:
        """float* to x·2^56 on the stack, each block of 32 as its 16 even values, then its 16 odd ones."""
        xp = stack_floats(b, n_cols, align=64, name="xhalf")
        scale = splat_const(V16F, 2.0**HALF_SCALE)
        with counted_loop(b, 0, n_cols // BLOCK, name="xh") as k:
            base = b.mul(k, i64c(BLOCK))
            lo, hi = (load_vec(b, x, b.add(base, i64c(16 * j)), ty=V16F) for j in range(2))
            for j in range(2):
                part = shuffle(b, lo, hi, [2 * i + j for i in range(16)])
                at = b.gep(xp, [b.add(base, i64c(16 * j))], inbounds=True)
                b.store(b.fmul(part, scale), b.bitcast(at, V16F.as_pointer()), align=64)
        return xp


def shifted_row(dtype: DType, i: int) -> bool:
    """Whether row i of a group of wide `dtype` rows widens its halves by shifts (F16_BY_SHIFTS)."""
    if dtype is not DType.F16 or not wide_float_rows(dtype):
        return False
    mode = F16_BY_SHIFTS if F16_BY_SHIFTS is not None else SHIFTED_F16_CPUS.get(host_target().cpu, 0)
    return mode == 1 or (mode == 2 and i % 2 == 1)


def float_streams(dtype: DType, n_cols: int) -> bool:
    """Whether F32/F16 rows of `n_cols` values are walked as row streams (ROW_STREAMS and FLOAT_STREAMS):
    on x86, whose stream prefetcher the streams were measured for, and for rows of at least
    FLOAT_STREAM_ROW_BYTES (the LoRA factors' second rows, 32-64 values, are 1-4 cache lines: a
    thread's share of them is a few pages)."""
    return (ROW_STREAMS and FLOAT_STREAMS and dtype in (DType.F32, DType.F16)
            and dtype.row_bytes(n_cols) >= FLOAT_STREAM_ROW_BYTES and host_target().is_x86)


def wide_float_rows(dtype: DType) -> bool:
    """Whether `dtype` rows are walked in 512-bit vectors here (F32/F16 on AVX-512F hosts)."""
    return WIDE_FLOAT_ROWS and dtype in (DType.F32, DType.F16) and "avx512f" in host_target().enabled


def _emit_rows(b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, w: ir.Value, x: ir.Value,
               xh: ir.Value | None, y: ir.Value, first: ir.Value, count: int, xsum: ir.Value | None, ahead: int,
               stride: ir.Value | None = None) -> None:
    """y[first + i] (+)= W[first + i]·x for i < count (`xh`: x prepared by _HalfPairs, where used; rows
    first + i·stride with `stride`: row streams), each block prefetching `ahead` bytes on."""
    row_bytes = dtype.row_bytes(n_cols)
    if wide_float_rows(dtype):
        _emit_wide_rows(b, dtype, n_cols, accumulate, w, x, xh, y, first, count, ahead, stride)
        return
    rows = [_RowDot(b, dtype, row_at(b, w, first, row_index(b, i, stride), row_bytes), ahead)
            for i in range(count)]
    with counted_loop(b, 0, n_cols // BLOCK, name="blk") as k:
        base = b.mul(k, i64c(BLOCK))
        xs = [load_vec(b, x, b.add(base, i64c(VL * j))) for j in range(PIECES)]
        for rd in rows:
            rd.add_block(k, xs, xsum)
    store_results(b, y, first, [rd.result() for rd in rows], accumulate, stride)


def _emit_wide_rows(b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, w: ir.Value, x: ir.Value,
                    xh: ir.Value | None, y: ir.Value, first: ir.Value, count: int, ahead: int,
                    stride: ir.Value | None = None) -> None:
    """y[first + i] (+)= W[first + i]·x for i < count F32/F16 rows in 512-bit vectors (rows first + i·stride
    with `stride`). Fewer than 4 rows go two blocks per iteration into four accumulators per row (FMA
    latency would bound fewer)."""
    row_bytes = dtype.row_bytes(n_cols)
    n_blocks = n_cols // BLOCK
    per_row = 2 if count >= 4 else 4
    rows = [_WideFloatRow(b, dtype, row_at(b, w, first, row_index(b, i, stride), row_bytes), ahead, per_row,
                          shifted_row(dtype, i))
            for i in range(count)]
    step = per_row // 2
    whole = n_blocks // step * step
    with counted_loop(b, 0, whole, step, name="blk") as k:
        ks = [b.add(k, i64c(j)) for j in range(step)]
        xss = [_WideX(b, x, xh, kj) for kj in ks]
        for rd in rows:
            for slot, (kj, xs) in enumerate(zip(ks, xss, strict=True)):
                rd.add_block(kj, xs, slot)
    if whole < n_blocks:
        xs = _WideX(b, x, xh, i64c(whole))
        for rd in rows:
            rd.add_block(i64c(whole), xs, 0)
    store_results(b, y, first, [rd.result() for rd in rows], accumulate, stride)


def walks_streams(dtype: DType, n_cols: int) -> bool:
    """Whether emit_matvec's kernel walks a call's rows [r0, r1) as rows_per_step streams (rows r0 + s·per …
    for per = (r1 − r0) // step), else in groups of neighbouring rows (ROW_STREAMS; the x86 integer
    kernels, float_streams)."""
    if not ROW_STREAMS:
        return False
    if is_k_quant(dtype):
        return matvec_kquant.int_variant(dtype) is not None
    if uses_short_q8(dtype, n_cols):
        return False
    variant = int16_variant(dtype)
    if isinstance(variant, DotVariant):
        return False
    if variant is not None:
        return True
    return float_streams(dtype, n_cols)


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
        streams = walks_streams(dtype, n_cols)  # whether rows are walked as streams (`emit` then takes a stride)
        if is_k_quant(dtype):
            emit = kquant_emitter(b, dtype, n_cols, accumulate, w, x, y)
        elif uses_short_q8(dtype, n_cols):
            emit = short_q8_emitter(b, n_cols, accumulate, w, x, y)
        elif isinstance(variant, DotVariant):
            emit = dot_emitter(b, dtype, variant, n_cols, accumulate, w, x, y)
        elif variant is not None:
            emit = int16_emitter(b, dtype, variant, n_cols, accumulate, w, x, y)
        else:
            xsum = block_sums(b, x, n_cols) if has_bias(dtype) else None
            uses_shifts = any(shifted_row(dtype, i) for i in range(step))
            xh = _HalfPairs.prepare(b, x, n_cols) if uses_shifts else None
            ahead = FLOAT_STREAM_AHEAD if streams else PREFETCH_BYTES  # in a stream, or a later group

            def emit(r: ir.Value, count: int, stride: ir.Value | None = None) -> None:
                _emit_rows(b, dtype, n_cols, accumulate, w, x, xh, y, r, count, xsum, ahead, stride)
        n = b.sub(r1, r0)
        n = b.select(b.icmp_signed("<", n, i64c(0)), i64c(0), n)
        if streams:
            # rows [r0, r0 + step·per) as `step` streams of `per` consecutive rows, walked side by side
            per = b.sdiv(n, i64c(step))
            with counted_loop(b, r0, b.add(r0, per), 1, name="row") as r:
                emit(r, step, per)
            with counted_loop(b, b.add(r0, b.mul(per, i64c(step))), r1, 1, name="rest") as r:
                emit(r, 1)
            b.ret_void()
            return
        main_end = b.sub(r1, b.srem(n, i64c(step)))
        with counted_loop(b, r0, main_end, step, name="row") as r:
            emit(r, step)
        with counted_loop(b, main_end, r1, 1, name="rest") as r:
            emit(r, 1)
        b.ret_void()

    return get_or_define(module, kernel_name("matvec", dtype, n_cols, accumulate), MATVEC_TYPE, build, linkage)
