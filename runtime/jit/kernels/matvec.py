"""Matrix × vector for decoding one token: y[r] (+)= W[r] · x for rows [row_begin, row_end).

    void matvec_<type>_c<n>[_acc](i8* noalias w, float* noalias x, float* noalias y,
                                  i64 row_begin, i64 row_end)

Row r starts at w + r·row_bytes. Activations stay float32 (never quantized). Decoding is bound by
memory reads, so the kernels walk 2-4 rows side by side (independent accumulators, shared loads of
x, which stays in L1), block by block, with a software prefetch well ahead of the reads. Quantized
blocks are not scaled weight by weight: the integer codes are dotted with x and the block's sum is
scaled once (see dequant.py). Each row is reduced horizontally once.

The 4- and 5-bit types (Q4_0, Q4_1, Q5_0, Q5_1) have a kernel of their own on AVX-512 hosts, where
the generic one is bound by instruction throughput, not memory (measured with bench/kernels.py).
It does per block and row: one zero-extending load of the 16 nibble bytes as 16 lanes, one 16-entry
table lookup (vpermps) for the low nibbles, one conversion of the whole bytes, two FMAs against x
tables prepared once per call (see _Prepared), for Q5 two adds under masks loaded straight from the
block's fifth bits, and one FMA by d broadcast from memory. The scales are converted beforehand, 16
blocks per gather; the bias terms (m or the code offset times Σx of the block) are summed once per
row in a vectorisable pass. While a group of rows is computed, each row prefetches its counterpart in
the next group (exactly one group ahead measured best). Other hosts use the generic kernel.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I1, I8, I8P, I16, I32, I64, VOID, counted_loop, get_or_define, intrinsic
from runtime.jit.kernels.dequant import NIBBLE_LAYOUTS, block_at, block_stride, check_supported, decode_block
from runtime.jit.kernels.irhelpers import (
    BLOCK,
    PIECES,
    V8F,
    V16F,
    V16I32,
    VL,
    WIDE,
    Var,
    byte_ptr,
    const_vec,
    dot_pieces,
    fadd,
    fma,
    fmul,
    half_to_float,
    hsum,
    i64c,
    load_as,
    load_vec,
    load_wide,
    prefetch,
    splat,
    splat_const,
    stack_floats,
    store_wide,
    tree_sum,
)
from runtime.jit.target import host_target
from runtime.quant.types import DType

PREFETCH_BYTES = 8192  # software prefetch distance ahead of each block read (0: none); measured
PREFETCH_GROUPS = 1  # nibble kernel: prefetch the same place this many row groups ahead (0: none); measured
MATVEC_TYPE = ir.FunctionType(VOID, [I8P, F32P, F32P, I64, I64])
V16I8 = ir.VectorType(I8, WIDE)
V16I1 = ir.VectorType(I1, WIDE)


def rows_per_step(dtype: DType) -> int:
    """Rows walked side by side: 4 for float rows and the AVX-512 nibble kernel, 2 for the other
    quantized ones (their decoding needs more registers); measured."""
    return 4 if dtype in (DType.F32, DType.F16) or wide_nibbles(dtype) else 2


def kernel_name(kind: str, dtype: DType, n_cols: int, accumulate: bool) -> str:
    """`matvec_q8_0_c768`, `matmul_f16_c3072_acc`, …"""
    return f"{kind}_{dtype.name.lower()}_c{n_cols}{'_acc' if accumulate else ''}"


def has_bias(dtype: DType) -> bool:
    return dtype in NIBBLE_LAYOUTS


def wide_nibbles(dtype: DType) -> bool:
    """Whether `dtype` rows use the AVX-512 nibble kernel on this host (see the module docstring)."""
    return dtype in NIBBLE_LAYOUTS and "+avx512f" in host_target().features.split(",")


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


def _emit_rows(b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, w: ir.Value, x: ir.Value,
               y: ir.Value, first: ir.Value, count: int, xsum: ir.Value | None) -> None:
    """y[first + i] (+)= W[first + i]·x for i < count."""
    row_bytes = dtype.row_bytes(n_cols)
    rows = [_RowDot(b, dtype, b.gep(w, [b.mul(b.add(first, i64c(i)), i64c(row_bytes))], inbounds=True))
            for i in range(count)]
    with counted_loop(b, 0, n_cols // BLOCK, name="blk") as k:
        base = b.mul(k, i64c(BLOCK))
        xs = [load_vec(b, x, b.add(base, i64c(VL * j))) for j in range(PIECES)]
        for rd in rows:
            rd.add_block(k, xs, xsum)
    for i, rd in enumerate(rows):
        out = b.gep(y, [b.add(first, i64c(i))], inbounds=True)
        s = rd.result()
        b.store(fadd(b, b.load(out), s) if accumulate else s, out)


# -- the AVX-512 nibble kernel -----------------------------------------------------------------------


def _permvar(module: ir.Module) -> ir.Function:
    """vpermps on 16 floats: out[i] = table[idx[i] & 15] (the index's other bits are ignored)."""
    return intrinsic(module, "llvm.x86.avx512.permvar.sf.512", V16F, [V16F, V16I32])


def _gather(module: ir.Module) -> ir.Function:
    """vpgatherdd: 16 dwords at base + idx[i] bytes, where the mask is set."""
    return intrinsic(module, "llvm.x86.avx512.mask.gather.dpi.512", V16I32, [V16I32, I8P, V16I32, V16I1, I32])


def padded_blocks(n_blocks: int) -> int:
    """Blocks rounded up to whole gathers of 16 (the scale and coefficient arrays are that long)."""
    return -(-n_blocks // WIDE) * WIDE


class _Prepared:
    """Per-call tables derived from x, shared by every row (stack arrays, in L1/L2 during the call).

    Nibble byte j of a block holds lo (value j) and hi (value j+16); as an integer it is
    w = 16·hi + lo. With xa = x[j] - x[j+16]/16 and xb = x[j+16]/16 (the division is exact),
    lo·x[j] + hi·x[j+16] = lo·xa + w·xb: the codes need no shift. `xt` holds xa, xb for each block;
    `x16` holds 16·x (exact), added where a fifth bit is set; `coef` holds, for each block, the
    factors of its scales in the bias term: Σx times the code offset (Q4_0: -8, Q5_0: -16, facing d),
    or 0 facing d and Σx facing m (Q4_1, Q5_1); zeros face the padding of the scale array.
    """

    def __init__(self, b: ir.IRBuilder, dtype: DType, x: ir.Value, n_cols: int) -> None:
        lay = NIBBLE_LAYOUTS[dtype]
        self.xt = stack_floats(b, n_cols, align=64, name="xt")
        self.x16 = stack_floats(b, n_cols, align=64, name="x16") if lay.qh is not None else None
        per_block = 2 if lay.has_min else 1
        n_blocks = n_cols // BLOCK
        self.coef = stack_floats(b, padded_blocks(n_blocks) * per_block, align=64, name="coef")
        for i in range(n_blocks * per_block, padded_blocks(n_blocks) * per_block):  # zeros facing the padding
            b.store(ir.Constant(F32, 0.0), b.gep(self.coef, [i64c(i)], inbounds=True))
        sixteenth, sixteen = splat_const(V16F, 1.0 / 16), splat_const(V16F, 16.0)
        with counted_loop(b, 0, n_cols // BLOCK, name="prep") as k:
            base = b.mul(k, i64c(BLOCK))
            top = b.add(base, i64c(WIDE))
            lo, hi = load_wide(b, x, base), load_wide(b, x, top)
            xb = b.fmul(hi, sixteenth)
            store_wide(b, b.fsub(lo, xb), self.xt, base)
            store_wide(b, xb, self.xt, top)
            if self.x16 is not None:
                store_wide(b, b.fmul(lo, sixteen), self.x16, base)
                store_wide(b, b.fmul(hi, sixteen), self.x16, top)
            s = hsum(b, fadd(b, lo, hi))
            at = b.mul(k, i64c(per_block))
            if lay.has_min:
                b.store(ir.Constant(F32, 0.0), b.gep(self.coef, [at], inbounds=True))
                b.store(s, b.gep(self.coef, [b.add(at, i64c(1))], inbounds=True))
            else:
                b.store(b.fmul(s, ir.Constant(F32, lay.offset)), b.gep(self.coef, [at], inbounds=True))

    def block_inputs(self, b: ir.IRBuilder, k: ir.Value) -> dict[str, list[ir.Value]]:
        """Block k's x-side vectors: "a" (xa), "b" (xb), and "m" (16·x, values 0-15 and 16-31) for Q5."""
        base = b.mul(k, i64c(BLOCK))
        top = b.add(base, i64c(WIDE))
        out = {"a": [load_wide(b, self.xt, base)], "b": [load_wide(b, self.xt, top)]}
        if self.x16 is not None:
            out["m"] = [load_wide(b, self.x16, base), load_wide(b, self.x16, top)]
        return out


class _NibbleRowDot:
    """One row of a 4- or 5-bit type against x.

    `convert_scales` converts the blocks' d (and m) into a stack array, 16 blocks per gather (that
    walk also brings the row into L1); `add_block` accumulates d·(Σ codes·x) with d broadcast from
    the array; `result` adds the bias terms Σ scales·coef in one vectorisable pass.
    """

    def __init__(self, b: ir.IRBuilder, dtype: DType, row: ir.Value, n_blocks: int, ahead: int) -> None:
        self.b, self.dtype, self.row, self.n_blocks, self.ahead = b, dtype, row, n_blocks, ahead
        self.lay = NIBBLE_LAYOUTS[dtype]
        self.per_block = 2 if self.lay.has_min else 1  # floats per block in `scales`: d (, m)
        self.padded = padded_blocks(n_blocks)
        self.scales = stack_floats(b, self.padded * self.per_block, align=64, name="dm")
        self.acc = Var(b, ir.Constant(V16F, None), "acc")

    def _scales_at(self, k: ir.Value) -> ir.Value:
        return self.b.gep(self.scales, [self.b.mul(k, i64c(self.per_block))], inbounds=True)

    def convert_scales(self, k0: ir.Value, count: int = WIDE) -> None:
        """d (and m) of blocks k0 … k0+count-1 (count ≤ 16) into `scales`, with one gather (the loop
        vectoriser would otherwise assemble the strided halves lane by lane)."""
        b = self.b
        stride = block_stride(self.dtype)
        words = b.call(_gather(b.module), [
            ir.Constant(V16I32, None), block_at(b, self.row, self.dtype, k0),
            const_vec(V16I32, [i * stride for i in range(WIDE)]), ir.Constant(V16I1, [i < count for i in range(WIDE)]),
            ir.Constant(I32, 1)])
        if self.lay.has_min:  # (d, m) pairs, already in the order of `scales`
            vals = half_to_float(b, b.bitcast(words, ir.VectorType(I16, 2 * WIDE)))
        else:
            vals = half_to_float(b, b.trunc(words, ir.VectorType(I16, WIDE)))
        b.store(vals, b.bitcast(self._scales_at(k0), vals.type.as_pointer()), align=4)

    def add_block(self, k: ir.Value, xs: dict[str, list[ir.Value]]) -> None:
        b, lay = self.b, self.lay
        ptr = block_at(b, self.row, self.dtype, k)
        if self.ahead:
            prefetch(b, byte_ptr(b, ptr, self.ahead))
        w = b.zext(load_as(b, ptr, lay.qs, V16I8), V16I32)
        lo = b.call(_permvar(b.module), [const_vec(V16F, list(range(16))), w])  # the low nibble, as a float
        dot = fma(b, b.sitofp(w, V16F), xs["b"][0], fmul(b, lo, xs["a"][0]))
        if lay.qh is not None:  # + 16·x where the fifth bit is set
            for half in range(2):
                mask = b.bitcast(load_as(b, ptr, lay.qh + 2 * half, I16), V16I1)
                dot = b.select(mask, fadd(b, dot, xs["m"][half]), dot)
        d = b.load(self._scales_at(k))
        self.acc.set(fma(b, dot, splat(b, d, WIDE), self.acc.get()))

    def result(self, coef: ir.Value) -> ir.Value:
        """Σ acc + Σ scales·coef (both arrays padded to whole vectors with zeros)."""
        b = self.b
        acc = Var(b, self.acc.get(), "total")
        with counted_loop(b, 0, self.padded * self.per_block, WIDE, name="bias") as i:
            acc.set(fma(b, load_wide(b, self.scales, i), load_wide(b, coef, i), acc.get()))
        return hsum(b, acc.get())


def _emit_nibble_rows(b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, w: ir.Value,
                      prep: _Prepared, y: ir.Value, first: ir.Value, count: int) -> None:
    """y[first + i] (+)= W[first + i]·x for i < count, with the AVX-512 nibble kernel."""
    row_bytes = dtype.row_bytes(n_cols)
    n_blocks = n_cols // BLOCK
    ahead = int(PREFETCH_GROUPS * count * row_bytes)  # the next group's rows are read while this one computes
    rows = [_NibbleRowDot(b, dtype, b.gep(w, [b.mul(b.add(first, i64c(i)), i64c(row_bytes))], inbounds=True),
                          n_blocks, ahead) for i in range(count)]
    whole = n_blocks // WIDE * WIDE
    if whole:
        with counted_loop(b, 0, whole, WIDE, name="scales") as k:
            for rd in rows:
                rd.convert_scales(k)
    if whole < n_blocks:
        for rd in rows:
            rd.convert_scales(i64c(whole), n_blocks - whole)
    with counted_loop(b, 0, n_blocks, name="blk") as k:
        xs = prep.block_inputs(b, k)
        for rd in rows:
            rd.add_block(k, xs)
    for i, rd in enumerate(rows):
        out = b.gep(y, [b.add(first, i64c(i))], inbounds=True)
        s = rd.result(prep.coef)
        b.store(fadd(b, b.load(out), s) if accumulate else s, out)


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
        if wide_nibbles(dtype):
            prep = _Prepared(b, dtype, x, n_cols)

            def emit(r: ir.Value, count: int) -> None:
                _emit_nibble_rows(b, dtype, n_cols, accumulate, w, prep, y, r, count)
        else:
            xsum = block_sums(b, x, n_cols) if has_bias(dtype) else None

            def emit(r: ir.Value, count: int) -> None:
                _emit_rows(b, dtype, n_cols, accumulate, w, x, y, r, count, xsum)
        n = b.sub(r1, r0)
        n = b.select(b.icmp_signed("<", n, i64c(0)), i64c(0), n)
        step = rows_per_step(dtype)
        main_end = b.sub(r1, b.srem(n, i64c(step)))
        with counted_loop(b, r0, main_end, step, name="row") as r:
            emit(r, step)
        with counted_loop(b, main_end, r1, 1, name="rest") as r:
            emit(r, 1)
        b.ret_void()

    return get_or_define(module, kernel_name("matvec", dtype, n_cols, accumulate), MATVEC_TYPE, build, linkage)
