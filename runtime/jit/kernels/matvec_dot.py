"""Matrix × vector for 4-, 5- and 8-bit rows with byte dot products on arm64 (NEON + the dot-product
extension: sdot; Armv8.2+ cores such as Neoverse N1/V1/V2, Cortex-A76 and later, every Apple M chip).

Called by matvec.py (same signature, same row split) where the host has the dot-product extension; plain
NEON hosts (Cortex-A53/A57/A72) keep the float kernels. x is quantized once per call exactly as on x86
(matvec_int16.quantize_x: X = round(x / sx_k) per block of 32, sx_k = max|x_k| / 32639, the bias terms
from float Σx), so the error bound is the x86 one (tests/jit/test_kernels.int16_bound) and quality stays
at float level. X is stored as its two signed bytes, X = 256·Xh + Xl (|Xh|, |Xl| ≤ 127, as in the
x86 byte path), and every code of a block — Q8_0's signed bytes, or Q4/Q5's unsigned 0-31, which are
also valid signed bytes — meets both halves through sdot:

    h = sdot(sdot(0, q[0:16], Xh[0:16]), q[16:32], Xh[16:32])
    Σ q·X = sdot(sdot(h << 8, q[0:16], Xl[0:16]), q[16:32], Xl[16:32])

(4 lanes of int32; |Σ| ≤ 32 · 31 · 32639 (Q8_0: 128 · 32639) < 2^31), converted to float once and
multiplied by d_k·sx_k. Per block and row: one 16-byte load of the nibbles (Q8_0: two of codes), an and
and a shift (Q5: per 16 codes the fifth bits spread by a tbl, moved onto bit 4 by one ushl, an and and
an or), 4 sdot, a shift, scvtf, the scale (one f16 load and conversion, a multiply) and one fmla; the
bias terms add one scalar fma. Modelled, cycles per block and row, float kernel → this (Neoverse N1,
rows of 2048): Q8_0 14.6 → 4.0, Q5_1 22.3 → 7.1, Q4_0 17.1 → 5.1.

With i8mm (DotVariant.i8mm: Neoverse N2/V1/V2, Apple M2 and later) rows go in pairs through smmla, which
multiplies a 2×8 byte matrix by the transpose of another and adds the 2×2 int32 result: A holds 8 codes
of each row (the two rows' codes interleaved by 8 bytes, one zip each), B 8 values' Xh and Xl (x is
stored in that order for it), so 4 smmla per block give [r0·Xh, r0·Xl, r1·Xh, r1·Xl] for both rows,
converted once and scaled by [256·s0, s0, 256·s1, s1]. The cost models (bench/kernel_costs.py; the
table and the choice in docs/ARCHITECTURE.md) put it 4-20 % below sdot on Apple M2 and, simulated, on
Neoverse N2/V1/V2, where the ports bound is level; so it is used wherever the host has i8mm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llvmlite import ir

from runtime.jit.irkit import F32, I8, I32, counted_loop, intrinsic
from runtime.jit.kernels.dequant import NIBBLE_LAYOUTS, block_at, block_stride
from runtime.jit.kernels.irhelpers import (
    BLOCK,
    Var,
    byte_ptr,
    const_vec,
    fadd,
    fma,
    half_to_float,
    hsum,
    i64c,
    load_as,
    prefetch,
    row_at,
    shuffle,
    splat,
    splat_const,
    stack_array,
    stack_floats,
    store_results,
)
from runtime.jit.kernels.matvec_int16 import prefetch_ahead, quantize_x, split_bytes
from runtime.jit.kernels.matvec_int16 import rows_for as x86_rows_for
from runtime.jit.target import host_target
from runtime.quant.types import DType

V16I8 = ir.VectorType(I8, 16)
V4I32 = ir.VectorType(I32, 4)
V4F = ir.VectorType(F32, 4)
# arm64 CPUs LLVM names whose extensions the runtime may assume even where the host's feature list lacks
# them (macOS, where LLVM may not read the features): every Apple M chip has the dot product, M2 and
# later (A15 and later) i8mm too.
DOTPROD_BY_NAME = ("apple-m", "apple-a14", "apple-a15", "apple-a16", "apple-a17")
I8MM_BY_NAME = ("apple-m2", "apple-m3", "apple-m4", "apple-a15", "apple-a16", "apple-a17")


# Whether hosts with i8mm walk rows in pairs with smmla (see the module docstring); a switch for A/B runs.
USE_I8MM = True


@dataclass(frozen=True)
class DotVariant:
    """The arm64 kernel: sdot per row, or with `i8mm` two rows at a time through smmla."""

    i8mm: bool = False

    def __str__(self) -> str:
        return "DotVariant(sdot+i8mm)" if self.i8mm else "DotVariant(sdot)"


def host_dot_variant() -> DotVariant | None:
    """DotVariant on arm64 hosts with the dot-product extension (by feature, or by CPU name), with i8mm
    where the host has that too; None elsewhere."""
    host = host_target()
    if not host.is_arm64:
        return None
    listed = set(host.features.split(","))

    def has(feature: str, by_name: tuple[str, ...]) -> bool:
        return f"+{feature}" in listed or (f"-{feature}" not in listed and host.cpu.startswith(by_name))

    if not has("dotprod", DOTPROD_BY_NAME):
        return None
    return DotVariant(i8mm=USE_I8MM and has("i8mm", I8MM_BY_NAME))


def rows_for(dtype: DType, n_cols: int, variant: DotVariant) -> int:
    """Rows walked side by side: as on x86 (matvec_int16.rows_for, which sets the prefetch distance),
    an even number with i8mm."""
    rows = x86_rows_for(dtype, n_cols)
    return rows + rows % 2 if variant.i8mm else rows


def _sdot(b: ir.IRBuilder, acc: ir.Value, a: ir.Value, c: ir.Value) -> ir.Value:
    fn = intrinsic(b.module, "llvm.aarch64.neon.sdot.v4i32.v16i8", V4I32, [V4I32, V16I8, V16I8])
    return b.call(fn, [acc, a, c])


def _smmla(b: ir.IRBuilder, acc: ir.Value, a: ir.Value, c: ir.Value) -> ir.Value:
    """acc + A·Bᵀ for A, B 2×8 signed byte matrices (rows: bytes 0-7, 8-15), as [c00, c01, c10, c11]."""
    fn = intrinsic(b.module, "llvm.aarch64.neon.smmla.v4i32.v16i8", V4I32, [V4I32, V16I8, V16I8])
    return b.call(fn, [acc, a, c])


def _codes(b: ir.IRBuilder, dtype: DType, ptr: ir.Value) -> tuple[ir.Value, ir.Value]:
    """The codes of the block at i8* `ptr` as two <16 x i8> (values 0-15, 16-31)."""
    lay = NIBBLE_LAYOUTS.get(dtype)
    if lay is None:  # Q8_0: d, then 32 int8 codes
        return load_as(b, ptr, 2, V16I8), load_as(b, ptr, 18, V16I8)
    q = load_as(b, ptr, lay.qs, V16I8)
    halves = [b.and_(q, splat_const(V16I8, 15)), b.lshr(q, splat_const(V16I8, 4))]
    if lay.qh is None:
        return halves[0], halves[1]
    # bit j of qh is the fifth bit of value j: byte j//8 of qh in lane j (one tbl), shifted so that bit
    # j%8 lands on bit 4 (ushl: a negative count shifts right), masked to 16 (4 instructions per 16
    # codes; a compare for the bit costs one more)
    qh = b.bitcast(load_as(b, ptr, lay.qh, I32), ir.VectorType(I8, 4))
    ushl = intrinsic(b.module, "llvm.aarch64.neon.ushl.v16i8", V16I8, [V16I8, V16I8])
    counts = const_vec(V16I8, [4 - j % 8 for j in range(16)])
    out = []
    for i, h in enumerate(halves):
        spread = shuffle(b, qh, qh, [2 * i] * 8 + [2 * i + 1] * 8)
        out.append(b.or_(h, b.and_(b.call(ushl, [spread, counts]), splat_const(V16I8, 16))))
    return out[0], out[1]


def _scales(b: ir.IRBuilder, dtype: DType, ptr: ir.Value) -> tuple[ir.Value, ir.Value | None]:
    """The block's d and m (or None) as floats."""
    lay = NIBBLE_LAYOUTS.get(dtype)
    if lay is not None and lay.has_min:
        dm = half_to_float(b, load_as(b, ptr, 0, ir.VectorType(ir.IntType(16), 2), align=2))
        return b.extract_element(dm, ir.Constant(I32, 0)), b.extract_element(dm, ir.Constant(I32, 1))
    return half_to_float(b, load_as(b, ptr, 0, ir.IntType(16), align=2)), None


class _Prepared:
    """Per-call arrays derived from x (stack, shared by every row): the two signed bytes of X — for sdot
    `xh` and `xl`, for smmla `xb`, each 8 values' Xh then Xl (the 2×8 matrix B of smmla) — `sx` the
    per-block scales, `coef` the per-block bias factor (absent for Q8_0)."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, variant: DotVariant, x: ir.Value, n_cols: int) -> None:
        n_blocks = n_cols // BLOCK
        lay = NIBBLE_LAYOUTS.get(dtype)
        if variant.i8mm:
            self.xb = stack_array(b, I8, 2 * n_cols, align=64, name="xb")
        else:
            self.xh = stack_array(b, I8, n_cols, align=64, name="xh")
            self.xl = stack_array(b, I8, n_cols, align=64, name="xl")
        self.sx = stack_floats(b, n_blocks, align=64, name="sx")
        self.coef = stack_floats(b, n_blocks, align=64, name="coef") if lay is not None else None

        def store(at: ir.Value, q: ir.Value) -> None:
            hi, lo = split_bytes(b, q)
            if variant.i8mm:
                base = b.add(at, at)
                places = ((self.xb, hi, base), (self.xb, lo, b.add(base, i64c(8))))
            else:
                places = ((self.xh, hi, at), (self.xl, lo, at))
            for arr, v, i in places:
                b.store(v, b.bitcast(b.gep(arr, [i], inbounds=True), v.type.as_pointer()), align=8)

        quantize_x(b, x, n_blocks, self.sx, self.coef, lay.offset if lay is not None and not lay.has_min else None,
                   store)

    def halves(self, b: ir.IRBuilder, k: ir.Value) -> tuple[list[ir.Value], list[ir.Value]]:
        """Block k's Xh and Xl, each as two <16 x i8> (values 0-15, 16-31)."""
        out = []
        for arr in (self.xh, self.xl):
            p = b.bitcast(b.gep(arr, [b.mul(k, i64c(BLOCK))], inbounds=True), V16I8.as_pointer())
            out.append([b.load(p, align=16), b.load(b.gep(p, [i64c(1)], inbounds=True), align=16)])
        return out[0], out[1]

    def matrices(self, b: ir.IRBuilder, k: ir.Value) -> list[ir.Value]:
        """Block k's four B matrices for smmla (<16 x i8>: Xh then Xl of values 8c..8c+7, c = 0-3)."""
        p = b.bitcast(b.gep(self.xb, [b.mul(k, i64c(2 * BLOCK))], inbounds=True), V16I8.as_pointer())
        return [b.load(b.gep(p, [i64c(c)], inbounds=True), align=16) for c in range(4)]

    def scale(self, b: ir.IRBuilder, k: ir.Value) -> ir.Value:
        return b.load(b.gep(self.sx, [k], inbounds=True))

    def bias_factor(self, b: ir.IRBuilder, k: ir.Value) -> ir.Value:
        return b.load(b.gep(self.coef, [k], inbounds=True))


class _RowDot:
    """One row against the prepared x, block by block."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, prep: _Prepared, row: ir.Value, ahead: int) -> None:
        self.b, self.dtype, self.prep, self.row, self.ahead = b, dtype, prep, row, ahead
        self.lay = NIBBLE_LAYOUTS.get(dtype)
        self.acc = Var(b, ir.Constant(V4F, None), "acc")
        self.bias = Var(b, ir.Constant(F32, 0.0), "bias") if self.lay is not None else None

    def add_block(self, k: ir.Value, xh: list[ir.Value], xl: list[ir.Value]) -> None:
        b = self.b
        ptr = block_at(b, self.row, self.dtype, k)
        if self.ahead:
            prefetch(b, byte_ptr(b, ptr, self.ahead))
        lo, hi = _codes(b, self.dtype, ptr)
        # one chain: Xh's sums shifted into the accumulator of Xl's (two independent chains joined by an
        # add cost a vector instruction more: modelled 4-25 % slower, Neoverse N1 / V1 / V2, Apple M)
        high = _sdot(b, _sdot(b, ir.Constant(V4I32, None), lo, xh[0]), hi, xh[1])
        dot = _sdot(b, _sdot(b, b.shl(high, splat_const(V4I32, 8)), lo, xl[0]), hi, xl[1])
        d, m = _scales(b, self.dtype, ptr)
        scale = b.fmul(d, self.prep.scale(b, k))
        self.acc.set(fma(b, b.sitofp(dot, V4F), splat(b, scale, 4), self.acc.get()))
        if self.bias is not None:
            self.bias.set(fma(b, m if m is not None else d, self.prep.bias_factor(b, k), self.bias.get()))

    def result(self) -> ir.Value:
        s = hsum(self.b, self.acc.get())
        return fadd(self.b, s, self.bias.get()) if self.bias is not None else s


class _PairDot:
    """Two rows against the prepared x through smmla (i8mm): per block, the rows' codes interleaved by 8
    bytes into four 2×8 matrices A (one zip each), four smmla against the block's B matrices giving
    [r0·Xh, r0·Xl, r1·Xh, r1·Xl], converted once and scaled by [256·s0, s0, 256·s1, s1] (s = d·sx).
    A single row is paired with itself (the rows after the last whole group)."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, prep: _Prepared, rows: list[ir.Value], ahead: int) -> None:
        self.b, self.dtype, self.prep, self.rows, self.ahead = b, dtype, prep, rows, ahead
        self.lay = NIBBLE_LAYOUTS.get(dtype)
        self.acc = Var(b, ir.Constant(V4F, None), "acc")
        self.bias = [Var(b, ir.Constant(F32, 0.0), "bias") for _ in rows] if self.lay is not None else None

    def add_block(self, k: ir.Value, bs: list[ir.Value]) -> None:
        b = self.b
        ptrs = [block_at(b, row, self.dtype, k) for row in self.rows]
        if self.ahead:
            for ptr in ptrs:
                prefetch(b, byte_ptr(b, ptr, self.ahead))
        codes = [_codes(b, self.dtype, ptr) for ptr in ptrs]
        (lo0, hi0), (lo1, hi1) = codes if len(codes) == 2 else codes * 2
        first, second = list(range(8)) + list(range(16, 24)), list(range(8, 16)) + list(range(24, 32))
        mats = [shuffle(b, lo0, lo1, first), shuffle(b, lo0, lo1, second),
                shuffle(b, hi0, hi1, first), shuffle(b, hi0, hi1, second)]
        dot = ir.Constant(V4I32, None)
        for a, m in zip(mats, bs, strict=True):
            dot = _smmla(b, dot, a, m)
        scales = [_scales(b, self.dtype, ptr) for ptr in ptrs]
        sx = self.prep.scale(b, k)
        pair = ir.Constant(ir.VectorType(F32, 2), None)
        for i, (d, _) in enumerate(scales * (2 // len(scales))):
            pair = b.insert_element(pair, b.fmul(d, sx), ir.Constant(I32, i))
        weights = b.fmul(shuffle(b, pair, pair, [0, 0, 1, 1]), const_vec(V4F, [256.0, 1.0, 256.0, 1.0]))
        self.acc.set(fma(b, b.sitofp(dot, V4F), weights, self.acc.get()))
        if self.bias is not None:
            coef = self.prep.bias_factor(b, k)
            for acc, (d, m) in zip(self.bias, scales, strict=True):
                acc.set(fma(b, m if m is not None else d, coef, acc.get()))

    def results(self) -> list[ir.Value]:
        b, v = self.b, self.acc.get()
        out = []
        for i in range(len(self.rows)):
            high, low = (b.extract_element(v, ir.Constant(I32, 2 * i + j)) for j in range(2))
            s = fadd(b, high, low)
            out.append(fadd(b, s, self.bias[i].get()) if self.bias is not None else s)
        return out


def _emit_pairs(b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, w: ir.Value, prep: _Prepared,
                y: ir.Value, first: ir.Value, count: int) -> None:
    """y[first + i] (+)= W[first + i]·x for i < count, two rows per smmla (i8mm)."""
    row_bytes = dtype.row_bytes(n_cols)
    ahead = prefetch_ahead(count * row_bytes)
    rows = [row_at(b, w, first, i, row_bytes) for i in range(count)]
    pairs = [_PairDot(b, dtype, prep, rows[i:i + 2], ahead) for i in range(0, count, 2)]
    with counted_loop(b, 0, n_cols // BLOCK, name="blk") as k:
        bs = prep.matrices(b, k)
        for pd in pairs:
            pd.add_block(k, bs)
    store_results(b, y, first, [r for pd in pairs for r in pd.results()], accumulate)


def _emit_rows(b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, w: ir.Value, prep: _Prepared,
               y: ir.Value, first: ir.Value, count: int) -> None:
    """y[first + i] (+)= W[first + i]·x for i < count."""
    row_bytes = dtype.row_bytes(n_cols)
    ahead = prefetch_ahead(count * row_bytes)
    rows = [_RowDot(b, dtype, prep, row_at(b, w, first, i, row_bytes), ahead) for i in range(count)]
    with counted_loop(b, 0, n_cols // BLOCK, name="blk") as k:
        xh, xl = prep.halves(b, k)
        for rd in rows:
            rd.add_block(k, xh, xl)
    store_results(b, y, first, [rd.result() for rd in rows], accumulate)


def dot_emitter(b: ir.IRBuilder, dtype: DType, variant: DotVariant, n_cols: int, accumulate: bool, w: ir.Value,
                x: ir.Value, y: ir.Value) -> Callable[[ir.Value, int], None]:
    """Prepare x (emitted at the builder's position) and return `emit(first_row, count)`, which emits
    y[first + i] (+)= W[first + i]·x for i < count."""
    assert block_stride(dtype) == dtype.block_bytes  # 32-value blocks only (the INT16_TYPES)
    prep = _Prepared(b, dtype, variant, x, n_cols)
    emit_rows = _emit_pairs if variant.i8mm else _emit_rows

    def emit(first: ir.Value, count: int) -> None:
        emit_rows(b, dtype, n_cols, accumulate, w, prep, y, first, count)

    return emit
