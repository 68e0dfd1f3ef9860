"""Matrix × vector for 4-, 5- and 8-bit rows with 16-bit integer dot products (x86 with AVX2).

Called by matvec.py (same signature, same row split). Once per call, x is quantized per block of 32
values to int16: X = round(x / sx_k) with sx_k = max|x_block| / 32639 (blocks below 2^-100 and all-zero
blocks get X = 0, sx = 0). Only the Σ q·x part of a block uses X; the bias terms of Q4_1/Q5_1 (m·Σx)
and Q4_0/Q5_0 (code offset · d · Σx) use Σx summed from float x, as in the float kernels. The error
per block and row is at most 0.5·sx_k·Σ|d_k·q_j| (q the unsigned codes), far below the quantization of
the weights (8-bit activations, as in ggml, cost measurable quality; 15-bit ones do not).

Per block and row, 256-bit integer instructions only (a 512-bit one shuts port 1's vector ALU on
Intel): one zero-extending load of the 16 nibble bytes into 16 words, lo = w & 15 and hi = w >> 4
(Q8_0: two sign-extending loads of 16 codes), for Q5 + 16 where the fifth bits are set (AVX-512BW/VL:
adds under masks loaded straight from the block; AVX2: broadcast, test, add), two vpmaddwd against
the block's two halves of X (VNNI: vpmaddwd then vpdpwssd, which fuses the add), one conversion of
the 8 int32 lanes to float and one FMA by d_k·sx_k broadcast from a stack array. |q| ≤ 31 (Q8_0:
128) and |X| ≤ 32639 over 32 products stay below 2^31.

Q5_0/Q5_1 on hosts with AVX-512BW/VL and VNNI build the codes as bytes instead: the 16 code bytes
broadcast to both halves of a register, the upper half shifted right by 4 (vpsrlvw), masked to
nibbles, one vpaddb of 16 under the block's 32 fifth bits, then vpdpbusd against Xh, a shift by 8 and
vpdpbusd against Xl, where X = 256·Xh + Xl splits into two signed bytes (hence 32639 = 127·257): the
same integer sums in 8 vector instructions instead of 9 (Q5_1 in L2: 17.8 → 19.8 GB/s per thread;
1.5B Q5_1 decoding 45.4 → 43.2 ms/token, side by side). Before a group of rows is walked, its scales
are converted 8 blocks per gather (d_k·sx_k into the array; the bias terms summed on the way), which
also brings the rows into cache. The rows walked side by side are streams (matvec.ROW_STREAMS: rows r,
r + n, …), each prefetching whole rows about STREAM_TARGET bytes ahead in its own stream; with the switch
off, neighbouring rows, each prefetching its counterpart in the next group.

Where AVX-512 VNNI and VBMI exist (Variant.wide: Ice Lake and later, Zen 4 and later), the 4- and 5-bit
types walk two blocks per 512-bit register: both blocks in one load masked to their bytes (nothing past
a row's end is touched), one permutation placing the nibble bytes, one vgf2p8affineqb (GFNI) or a shift
and a mask splitting the nibbles, one masked add for the 64 fifth bits of both, two vpdpbusd, and one
conversion and FMA by the two blocks' scales: about 10 vector instructions per two blocks and row
instead of 9 per block. There the scales are not gathered (vpgatherdd cost more than the block loop on
Zen 5) but picked from the rows loaded whole by two word permutations per 8 blocks; Q8_0 blocks go two
per 512-bit register there as unsigned bytes q + 128 against Xh and Xl (see Q8_BYTES; before, one per
register by vpmovsxbw and vpdpwssd, WIDE_Q8). Zen 5, Q5_1 rows
of 2048 in L2, GB/s per thread side by side: 18.1 before, 26.4 with both, 27.3 with GFNI too; whole
models in the ARCHITECTURE notes.

Measured with bench/kernels.py (2048×2048, 8192×2048, 2048×8192; Sapphire Rapids, GB/s per thread
with the rows in L2; the float kernels before in brackets): Q4_0 ≈ 21 (15), Q5_1 ≈ 20 (13.6),
Q8_0 ≈ 30 (20); see docs/ARCHITECTURE.md for the decoding figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llvmlite import ir

from runtime.jit.irkit import F32, I1, I8, I8P, I16, I32, I64, counted_loop, intrinsic
from runtime.jit.kernels.dequant import NIBBLE_LAYOUTS, block_at, block_stride
from runtime.jit.kernels.irhelpers import (
    BLOCK,
    PIECES,
    V8F,
    V8I32,
    VL,
    Var,
    byte_ptr,
    const_vec,
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
    stack_array,
    stack_floats,
    store_results,
    store_vec,
    tree_reduce,
    tree_sum,
)
from runtime.jit.target import host_target
from runtime.quant.types import DType

if TYPE_CHECKING:
    from runtime.jit.kernels.matvec_dot import DotVariant

# Rows walked side by side (as streams: matvec.ROW_STREAMS; the count is then the streams, the distance
# STREAM_TARGET's). With streams off each row prefetches its counterpart in the next group of rows, so the
# count also sets the prefetch distance, and what was measured (bench/kernels.py and whole models,
# side by side) follows the distance: about 4.5 KB ahead is best for rows up to 4 KB (1.5B Q5_1,
# 2048 columns: 3 rows 45.3 ms/token, 2 rows 45.8, 4 rows 47.9; 1.5B Q8_0: 2 rows 55.4, 3 rows 58.5;
# 3B Q5_1: 2 rows 88.0, 3 rows 90.0; 430M Q5_1: 4 rows 14.4, 2 rows 14.8), and 4 rows for longer ones
# (Q5_1 and Q5_0 on 10240 columns: 79-80 % of the bandwidth, against 72-75 % with 2 rows).
PREFETCH_TARGET = 4608  # bytes ahead
LONG_ROW = 4096  # bytes
# Bytes ahead in each stream of rows (matvec.ROW_STREAMS), whole rows. 1.5B RWKV-7 Q5_1, 2 threads, quiet
# SPR, interleaved: 4608 51.1 ms/token, 2304 50.2, 1536 52.9 (0.4B RWKV-6 Q5_1: 12.6, 12.6, 12.8).
STREAM_TARGET = 2304
MIN_ROWS, MAX_ROWS = 2, 4
PREFETCH_GROUPS = 1  # prefetch the same place at least this many row groups ahead (0: none); measured
# Where MAX_ROWS caps the group short of PREFETCH_TARGET (rows of 1024 values in 4-bit types: 4 rows of
# 576 B), the prefetch goes as many groups ahead as make about PREFETCH_TARGET bytes (`prefetch_ahead`),
# as the K-quant kernels do: 430M RWKV-4, 2 threads, quiet, interleaved, one group → two: Q4_0 79 → 84 %
# of the compiled read, Q4_1 82 → 85 %, Q5_0 81 → 82 %, Q5_1 84 → 84 %; Q8_0 (4352 B groups) stays at one
# (two: 82 → 80 %); 1.5B rows (2048 values) already make a whole group of about 4.6 KB.
GATHER = VL  # blocks whose scales are converted per gather
XMAX = 32639.0  # largest |X|: 127·256 + 127, so X splits into two signed bytes (see BYTE_TYPES)
TINY = 2.0**-100  # blocks whose max|x| is below this are treated as zero (keeps XMAX/max finite)
INT16_TYPES = (DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.Q8_0)
V16I16 = ir.VectorType(I16, 16)
V16I8 = ir.VectorType(I8, 16)
V16I1 = ir.VectorType(I1, 16)
V32I8 = ir.VectorType(I8, 32)
V32I1 = ir.VectorType(I1, 32)
V64I8 = ir.VectorType(I8, 64)
V64I1 = ir.VectorType(I1, 64)
V16I32 = ir.VectorType(I32, 16)
V16F = ir.VectorType(F32, 16)
V32I16W = ir.VectorType(I16, 32)
# 5-bit types whose codes are built as bytes and dotted with vpdpbusd where the host has AVX-512BW/VL
# and VNNI: X = 256·Xh + Xl with both halves signed bytes, Σ q·X = 256·Σ q·Xh + Σ q·Xl exactly, and one
# masked byte add sets all 32 fifth bits (8 vector instructions a block and row instead of 9).
BYTE_TYPES = (DType.Q5_0, DType.Q5_1)
# Types walked two blocks per 512-bit register where the host allows it (Variant.wide): the 4-bit
# types too, as bytes without fifth bits (Zen 5, 1.5B Q4_0 decoding 31.9 → 28.3 ms/token against their
# 256-bit word path, side by side).
WIDE_TYPES = (DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1)
# Q8_0 blocks one per 512-bit register where Variant.wide (vpmovsxbw + vpdpwssd: 4 vector instructions a
# block instead of 6-7); 1.5B Q8_0 decoding 50.6 → 41.6 ms/token, Zen 5, side by side. A switch for A/B runs.
WIDE_Q8 = True
# Q8_0 where Variant.wide, as bytes instead (Q8_BYTES, over WIDE_Q8): the codes made unsigned (u = q + 128,
# one vpxord), two blocks per 512-bit register (two 256-bit loads), vpdpbusd against Xh and Xl as on the
# 5-bit byte path, the -128·d·Σx in the bias sum (the int16 bound then counts |q + 128|). llvm-mca, cycles per
# block and row (bench/kernel_costs.py, 2048 columns): Zen 4 3.32 → 3.12, Sapphire Rapids 3.66 → 3.16, Ice
# Lake 2.41 → 2.11; measured here (Sapphire Rapids, rows in L2, one thread) 30.9 → 31.9 GB/s; KL of 430M
# decoding against the F16 file unchanged (8.14e-5 both).
Q8_BYTES = True
Q8_OFFSET = -128.0  # w = d·q = d·(u - 128)
# GF(2) affine matrices (one per 64-bit lane) for vgf2p8affineqb: keep a byte's low nibble, or move its
# high nibble down; one instruction instead of a shift and a mask.
LOW_NIBBLE = 0x0102040800000000
HIGH_NIBBLE = 0x1020408000000000


@dataclass(frozen=True)
class Variant:
    """Which instructions the kernel may use: `vnni` vpdpwssd (AVX-VNNI or AVX512-VNNI+VL), `masks`
    AVX-512BW+VL (masked adds for the fifth bits, word permutes for the scales), `wide` 512-bit
    registers holding two blocks of byte codes (AVX-512 VNNI and VBMI; WIDE_TYPES), `gfni` nibbles
    split by vgf2p8affineqb there."""

    vnni: bool
    masks: bool
    wide: bool = False
    gfni: bool = False


def host_variant() -> Variant | None:
    """The variant for this host, or None where the float kernels are used (no AVX2, not x86)."""
    host = host_target()
    if not host.is_x86:
        return None
    feats = host.enabled
    if not {"avx2", "fma", "f16c"} <= feats:
        return None
    vnni = "avxvnni" in feats or {"avx512vnni", "avx512vl"} <= feats
    masks = {"avx512bw", "avx512vl"} <= feats
    wide = masks and {"avx512vnni", "avx512vbmi"} <= feats
    return Variant(vnni=vnni, masks=masks, wide=wide, gfni=wide and "gfni" in feats)


def int16_variant(dtype: DType) -> Variant | DotVariant | None:
    """The kernel `dtype` rows use on this host where x is quantized to int16: a Variant of this one (x86),
    matvec_dot's DotVariant (arm64 with the dot-product extension), or None (float kernels)."""
    if dtype not in INT16_TYPES:
        return None
    if not host_target().is_x86:
        from runtime.jit.kernels.matvec_dot import host_dot_variant  # it builds on this module

        return host_dot_variant()
    return host_variant()


def unsigned_q8() -> bool:
    """Whether Q8_0 rows meet X as unsigned codes q + 128 here (Q8_BYTES), the -128·d·Σx in the bias sum."""
    v = host_variant()
    return v is not None and v.wide and Q8_BYTES


def rows_for(dtype: DType, n_cols: int, target: int | None = None) -> int:
    """Rows walked side by side for rows of `n_cols` values of `dtype` (see PREFETCH_TARGET; `target`
    instead where given)."""
    row = dtype.row_bytes(n_cols)
    if row >= LONG_ROW:
        return MAX_ROWS
    return max(MIN_ROWS, min(MAX_ROWS, round((target or PREFETCH_TARGET) / row)))


def _padded(n_blocks: int) -> int:
    return -(-n_blocks // GATHER) * GATHER


def _pmaddwd(b: ir.IRBuilder, a: ir.Value, c: ir.Value) -> ir.Value:
    fn = intrinsic(b.module, "llvm.x86.avx2.pmadd.wd", V8I32, [V16I16, V16I16])
    return b.call(fn, [a, c])


def _dpwssd(b: ir.IRBuilder, acc: ir.Value, a: ir.Value, c: ir.Value) -> ir.Value:
    fn = intrinsic(b.module, "llvm.x86.avx512.vpdpwssd.256", V8I32, [V8I32, V16I16, V16I16])
    return b.call(fn, [acc, a, c])


def _dpbusd(b: ir.IRBuilder, acc: ir.Value, unsigned: ir.Value, signed: ir.Value) -> ir.Value:
    """acc + Σ of 4 products u8·s8 per dword lane (vpdpbusd; 8 or 16 lanes, as `acc`)."""
    ty = acc.type
    fn = intrinsic(b.module, f"llvm.x86.avx512.vpdpbusd.{32 * ty.count}", ty, [ty, ty, ty])
    return b.call(fn, [acc, unsigned, signed])


def _masked_load64(b: ir.IRBuilder, ptr: ir.Value, count: int) -> ir.Value:
    """The `count` bytes at i8* `ptr` in the low lanes of a <64 x i8> (zeros above); the bytes past
    them are not read, so a pair of blocks at the end of the mapping is safe."""
    fn = intrinsic(b.module, "llvm.masked.load.v64i8.p0", V64I8, [I8P, I32, V64I1, V64I8])
    mask = ir.Constant(V64I1, [ir.Constant(I1, i < count) for i in range(64)])
    return b.call(fn, [ptr, ir.Constant(I32, 1), mask, ir.Constant(V64I8, None)])


def _scale_words_permuted(b: ir.IRBuilder, base: ir.Value, dtype: DType, count: int,
                          has_min: bool) -> ir.Value:
    """The f16 words of the `count` (≤ 8) blocks at i8* `base` as <16 x i16>: d of each block in lanes
    0-7, and with `has_min` m in lanes 8-15 (zeros in the other lanes), picked by
    word permutations (vpermt2w, AVX-512BW) from the blocks loaded whole in 64-byte registers (the last
    one masked to the bytes needed). Gathers cost more than the block loop itself on some CPUs (Zen 5,
    Q5_1 rows in L2: 26 GB/s with a gather per 8 blocks, 39 with no scale conversion at all)."""
    stride = block_stride(dtype)
    size = (count - 1) * stride + (4 if has_min else 2)  # through the last block's scale words
    if size > 256:
        raise ValueError(f"the scales of {count} {dtype.name} blocks do not fit in four registers")
    v32i16 = ir.VectorType(I16, 32)
    regs = []
    for r in range(-(-size // 64)):
        part = min(64, size - 64 * r)
        ptr = byte_ptr(b, base, 64 * r)
        raw = load_as(b, ptr, 0, V64I8) if part == 64 else _masked_load64(b, ptr, part)
        regs.append(b.bitcast(raw, v32i16))
    zero = ir.Constant(v32i16, None)
    picks: list[int | None] = [j * stride // 2 for j in range(count)]
    picks = picks + [None] * (VL - count) + ([p + 1 for p in picks] if has_min else [])
    picks += [None] * (2 * VL - len(picks))  # 16 lanes even without m: LLVM permutes <8 x i16> badly
    # lanes from registers 0-1 and from 2-3, each pair permuted as 64 words, then merged by lane; the
    # lanes of blocks beyond `count` are zeroed (the word they read may be any byte of the rows)
    while len(regs) < 4:
        regs.append(zero)
    first = shuffle(b, regs[0], regs[1], [p if p is not None and p < 64 else 0 for p in picks])
    words = first
    if size > 128:
        second = shuffle(b, regs[2], regs[3], [p - 64 if p is not None and p >= 64 else 0 for p in picks])
        words = b.select(_lane_mask([p is not None and p >= 64 for p in picks]), second, first)
    if None in picks:
        words = b.select(_lane_mask([p is not None for p in picks]), words, ir.Constant(words.type, None))
    return words


def _lane_mask(flags: list[bool]) -> ir.Constant:
    return ir.Constant(ir.VectorType(I1, len(flags)), [ir.Constant(I1, f) for f in flags])


def _gather8(b: ir.IRBuilder, base: ir.Value, stride: int, count: int) -> ir.Value:
    """8 dwords at base + i·stride bytes for i < count (zeros beyond), one vpgatherdd."""
    fn = intrinsic(b.module, "llvm.x86.avx2.gather.d.d.256", V8I32, [V8I32, I8P, V8I32, V8I32, I8])
    mask = const_vec(V8I32, [-1 if i < count else 0 for i in range(VL)])
    return b.call(fn, [ir.Constant(V8I32, None), base, const_vec(V8I32, [i * stride for i in range(VL)]), mask,
                       ir.Constant(I8, 1)])



def nearest_i32(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """<8 x float> → <8 x i32> rounded to nearest (even): vcvtps2dq on x86 (NaN → 0x80000000), frintn and
    fcvtzs (or fcvtns) elsewhere."""
    if host_target().is_x86:
        cvt = intrinsic(b.module, "llvm.x86.avx.cvt.ps2dq.256", V8I32, [V8F])
        return b.call(cvt, [v])
    return b.fptosi(b.call(intrinsic(b.module, "llvm.roundeven.v8f32", V8F, [V8F]), [v]), V8I32)


def split_bytes(b: ir.IRBuilder, q: ir.Value) -> tuple[ir.Value, ir.Value]:
    """<8 x i16> X (|X| ≤ XMAX) as two <8 x i8> (Xh, Xl), both signed, with X = 256·Xh + Xl exactly."""
    v8i8 = ir.VectorType(I8, VL)
    lo = b.trunc(q, v8i8)  # the low byte, read as signed
    hi = b.trunc(b.ashr(b.sub(q, b.sext(lo, q.type)), splat_const(q.type, 8)), v8i8)
    return hi, lo


def quantize_x(b: ir.IRBuilder, x: ir.Value, n_blocks: int, sx: ir.Value, coef: ir.Value | None,
               offset: float | None, store: Callable[[ir.Value, ir.Value], None]) -> None:
    """Emit the per-call quantization of x (see the module docstring): sx[k] = max|x_k| / XMAX, each 8
    values' X handed to `store(index of the first, <8 x i16>)`, and with `coef` the block's bias factor
    (Σx, times `offset` — the code offset — for types without a min)."""
    mod = b.module
    fabs = intrinsic(mod, "llvm.fabs.v8f32", V8F, [V8F])
    vmax = intrinsic(mod, "llvm.maxnum.v8f32", V8F, [V8F, V8F])
    rmax = intrinsic(mod, "llvm.vector.reduce.fmax.v8f32", F32, [V8F])
    with counted_loop(b, 0, n_blocks, name="xq") as k:
        base = b.mul(k, i64c(BLOCK))
        parts = [load_vec(b, x, b.add(base, i64c(VL * j))) for j in range(PIECES)]
        big = b.call(rmax, [tree_reduce([b.call(fabs, [p]) for p in parts], lambda p, q: b.call(vmax, [p, q]))])
        b.store(b.fmul(big, ir.Constant(F32, 1.0 / XMAX)), b.gep(sx, [k], inbounds=True))
        inv = b.select(b.fcmp_ordered(">=", big, ir.Constant(F32, TINY)),
                       b.fdiv(ir.Constant(F32, XMAX), big), ir.Constant(F32, 0.0))
        inv_v = splat(b, inv)
        for j, p in enumerate(parts):
            store(b.add(base, i64c(VL * j)), b.trunc(nearest_i32(b, b.fmul(p, inv_v)), ir.VectorType(I16, VL)))
        if coef is not None:
            s = hsum(b, tree_sum(b, parts))
            if offset is not None:
                s = b.fmul(s, ir.Constant(F32, offset))
            b.store(s, b.gep(coef, [k], inbounds=True))


class _Prepared:
    """Per-call arrays derived from x (stack, shared by every row): `xq` the int16 codes of x (on the
    byte path `xh`, `xl`, its two signed bytes, instead), `sx` the per-block scales, `coef` the
    per-block factor of the bias term (offset·Σx facing d, or Σx facing m; absent for Q8_0). `sx` and
    `coef` are padded with zeros to whole gathers. `sixteen` is 16 in every word (byte path: byte),
    passed through an empty asm statement: LLVM then cannot see that adding it to a nibble only sets a
    free bit, so it keeps one masked add instead of an or and a blend (no word-masked or)."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, variant: Variant, x: ir.Value, n_cols: int) -> None:
        n_blocks = n_cols // BLOCK
        padded = _padded(n_blocks)
        lay = NIBBLE_LAYOUTS.get(dtype)
        self.wide = variant.wide and dtype in WIDE_TYPES and n_blocks >= 2
        self.q8_bytes = variant.wide and dtype is DType.Q8_0 and Q8_BYTES
        self.wide_words = variant.wide and dtype is DType.Q8_0 and WIDE_Q8 and not self.q8_bytes
        self.split = self.wide or self.q8_bytes or (variant.vnni and variant.masks and dtype in BYTE_TYPES)
        elem = I8 if self.split else I16  # the sixteen added under the fifth bits: bytes or words
        opaque = b.asm(ir.FunctionType(elem, [elem]), "", "=r,0", [ir.Constant(elem, 16)], side_effect=False)
        self.sixteen = splat(b, opaque, 32 if self.split else 16)
        self.sixteen64 = splat(b, opaque, 64) if self.wide else None
        if self.split:  # X only as its two bytes
            self.xh = stack_array(b, I8, n_cols, align=64, name="xh")
            self.xl = stack_array(b, I8, n_cols, align=64, name="xl")
        else:
            self.xq = stack_array(b, I16, n_cols, align=64, name="xq")
        self.sx = stack_floats(b, padded, align=64, name="sx")
        self.offset = Q8_OFFSET if self.q8_bytes else (lay.offset if lay is not None and not lay.has_min else None)
        self.coef = stack_floats(b, padded, align=64, name="coef") if lay is not None or self.q8_bytes else None
        for i in range(n_blocks, padded):
            for arr in (self.sx, self.coef):
                if arr is not None:
                    b.store(ir.Constant(F32, 0.0), b.gep(arr, [i64c(i)], inbounds=True))
        if self.split:
            def store(at: ir.Value, q: ir.Value) -> None:
                hi, lo = split_bytes(b, q)
                for arr, v in ((self.xl, lo), (self.xh, hi)):
                    b.store(v, b.bitcast(b.gep(arr, [at], inbounds=True), v.type.as_pointer()), align=8)
        else:
            def store(at: ir.Value, q: ir.Value) -> None:
                b.store(q, b.bitcast(b.gep(self.xq, [at], inbounds=True), q.type.as_pointer()), align=16)
        quantize_x(b, x, n_blocks, self.sx, self.coef, self.offset, store)

    @staticmethod
    def _at(b: ir.IRBuilder, arr: ir.Value, k: ir.Value, ty: ir.VectorType, align: int) -> ir.Value:
        """The `ty` stored in `arr` from block k's start."""
        return b.load(b.bitcast(b.gep(arr, [b.mul(k, i64c(BLOCK))], inbounds=True), ty.as_pointer()), align=align)

    def byte_halves(self, b: ir.IRBuilder, k: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Block k's Xh and Xl as <8 x i32> holding 32 signed bytes each."""
        return self._at(b, self.xh, k, V8I32, 32), self._at(b, self.xl, k, V8I32, 32)

    def pair_halves(self, b: ir.IRBuilder, k: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Blocks k and k+1 (k even) as Xh and Xl, <16 x i32> holding 64 signed bytes each."""
        return self._at(b, self.xh, k, V16I32, 64), self._at(b, self.xl, k, V16I32, 64)

    def whole(self, b: ir.IRBuilder, k: ir.Value) -> ir.Value:
        """Block k's X as one <32 x i16>."""
        return self._at(b, self.xq, k, V32I16W, 64)

    def halves(self, b: ir.IRBuilder, k: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Block k's X as two <16 x i16> (values 0-15, 16-31)."""
        base = b.gep(self.xq, [b.mul(k, i64c(BLOCK))], inbounds=True)
        p = b.bitcast(base, V16I16.as_pointer())
        return b.load(p, align=32), b.load(b.gep(p, [i64c(1)], inbounds=True), align=32)


class _RowDot:
    """One row against the prepared x: `convert_scales` fills `ds` (d_k·sx_k) and sums the bias terms,
    `add_block` accumulates one block, `result` reduces."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, variant: Variant, prep: _Prepared, row: ir.Value,
                 n_blocks: int, ahead: int) -> None:
        self.b, self.dtype, self.variant, self.prep, self.row, self.ahead = b, dtype, variant, prep, row, ahead
        self.lay = NIBBLE_LAYOUTS.get(dtype)
        self.ds = stack_floats(b, _padded(n_blocks), align=64, name="ds")
        self.acc = Var(b, ir.Constant(V8F, None), "acc")
        wide = prep.wide or prep.wide_words or prep.q8_bytes
        self.acc16 = Var(b, ir.Constant(V16F, None), "acc16") if wide else None
        self.bias = Var(b, ir.Constant(V8F, None), "bias") if prep.coef is not None else None

    def convert_scales(self, k0: ir.Value, count: int = GATHER) -> None:
        b, prep = self.b, self.prep
        has_min = self.lay is not None and self.lay.has_min
        if self.variant.masks:
            words = half_to_float(b, _scale_words_permuted(b, block_at(b, self.row, self.dtype, k0), self.dtype,
                                                           count, has_min))
            d = shuffle(b, words, words, list(range(VL)))
            m = shuffle(b, words, words, list(range(VL, 2 * VL))) if has_min else None
        else:
            words = _gather8(b, block_at(b, self.row, self.dtype, k0), block_stride(self.dtype), count)
            v8i16 = ir.VectorType(I16, VL)
            d = half_to_float(b, b.trunc(words, v8i16))
            m = half_to_float(b, b.trunc(b.lshr(words, splat_const(V8I32, 16)), v8i16)) if has_min else None
        sx = load_vec(b, prep.sx, k0)
        store_vec(b, b.fmul(d, sx), self.ds, k0)
        if self.bias is not None:
            factor = m if has_min else d
            self.bias.set(fma(b, factor, load_vec(b, prep.coef, k0), self.bias.get()))

    def _codes(self, ptr: ir.Value) -> tuple[ir.Value, ir.Value]:
        """The block's codes as two <16 x i16> (values 0-15, 16-31)."""
        b, lay = self.b, self.lay
        if lay is None:  # Q8_0: d, then 32 int8 codes
            return (b.sext(load_as(b, ptr, 2, V16I8), V16I16), b.sext(load_as(b, ptr, 18, V16I8), V16I16))
        w = b.zext(load_as(b, ptr, lay.qs, V16I8), V16I16)
        halves = [b.and_(w, splat_const(V16I16, 15)), b.lshr(w, splat_const(V16I16, 4))]
        if lay.qh is None:
            return halves[0], halves[1]
        sixteen = splat_const(V16I16, 16)
        out = []
        for i, h in enumerate(halves):
            if self.variant.masks:  # AVX-512BW/VL: vpaddw under a mask loaded from the block
                mask = b.bitcast(load_as(b, ptr, lay.qh + 2 * i, I16), V16I1)
                out.append(b.select(mask, b.add(h, self.prep.sixteen), h))
            else:  # AVX2: lane j tests bit j of the broadcast half of qh
                bits = splat(b, load_as(b, ptr, lay.qh + 2 * i, I16), 16)
                lane_bit = const_vec(V16I16, [1 << j if j < 15 else -(1 << 15) for j in range(16)])
                hit = b.icmp_unsigned("==", b.and_(bits, lane_bit), lane_bit)
                out.append(b.add(h, b.and_(b.sext(hit, V16I16), sixteen)))
        return out[0], out[1]

    def _byte_codes(self, ptr: ir.Value) -> ir.Value:
        """The block's 32 codes as bytes in code order (<8 x i32>): the 16 code bytes in both halves
        of a register, the upper half shifted right by 4, masked to nibbles, then 16 added under the
        block's 32 fifth bits."""
        b, lay = self.b, self.lay
        q = load_as(b, ptr, lay.qs, V16I8)
        both = b.bitcast(b.shuffle_vector(q, q, const_vec(ir.VectorType(I32, 32), list(range(16)) * 2)), V16I16)
        shifted = b.lshr(both, const_vec(V16I16, [0] * 8 + [4] * 8))
        codes = b.and_(b.bitcast(shifted, V32I8), splat_const(V32I8, 15))
        if lay.qh is None:
            return b.bitcast(codes, V8I32)
        mask = b.bitcast(load_as(b, ptr, lay.qh, I32), V32I1)
        return b.bitcast(b.select(mask, b.add(codes, self.prep.sixteen), codes), V8I32)

    def _block(self, k: ir.Value) -> ir.Value:
        """i8* to block k of the row, prefetching `ahead` bytes on (the next rows of its stream, or its
        counterpart in a later group)."""
        ptr = block_at(self.b, self.row, self.dtype, k)
        if self.ahead:
            prefetch(self.b, byte_ptr(self.b, ptr, self.ahead))
        return ptr

    def add_block(self, k: ir.Value, xlo: ir.Value, xhi: ir.Value) -> None:
        """Accumulate block k; (xlo, xhi) are the block's X halves, or (Xh, Xl) on the byte path."""
        b = self.b
        ptr = self._block(k)
        if self.prep.split:
            codes = self._byte_codes(ptr)
            high = _dpbusd(b, ir.Constant(V8I32, None), codes, xlo)
            dot = _dpbusd(b, b.shl(high, splat_const(V8I32, 8)), codes, xhi)
        else:
            lo, hi = self._codes(ptr)
            if self.variant.vnni:
                dot = _dpwssd(b, _pmaddwd(b, lo, xlo), hi, xhi)
            else:
                dot = b.add(_pmaddwd(b, lo, xlo), _pmaddwd(b, hi, xhi))
        scale = splat(b, b.load(b.gep(self.ds, [k], inbounds=True)))
        self.acc.set(fma(b, b.sitofp(dot, V8F), scale, self.acc.get()))

    def add_pair(self, k: ir.Value, xh: ir.Value, xl: ir.Value) -> None:
        """Accumulate blocks k and k+1 in 512-bit registers (byte path; `xh`, `xl` from pair_halves):
        both blocks loaded at once (masked to their bytes, so nothing past them is touched), the two
        nibble halves of each placed by one byte permutation, split (GFNI, or a shift and a mask), 16
        added under the 64 fifth bits of both, two vpdpbusd, one conversion and FMA for both scales."""
        b, lay, stride = self.b, self.lay, block_stride(self.dtype)
        ptr = self._block(k)
        raw = _masked_load64(b, ptr, 2 * stride)
        order = [lay.qs + j for j in range(16)] * 2 + [stride + lay.qs + j for j in range(16)] * 2
        both = b.bitcast(shuffle(b, raw, raw, order), V32I16W)
        if self.variant.gfni:
            fn = intrinsic(b.module, "llvm.x86.vgf2p8affineqb.512", V64I8, [V64I8, V64I8, I8])
            mat = [((LOW_NIBBLE if j % 32 < 16 else HIGH_NIBBLE) >> (8 * (j % 8))) & 0xFF for j in range(64)]
            codes = b.call(fn, [b.bitcast(both, V64I8), const_vec(V64I8, mat), ir.Constant(I8, 0)])
        else:
            shifted = b.lshr(both, const_vec(V32I16W, ([0] * 8 + [4] * 8) * 2))
            codes = b.and_(b.bitcast(shifted, V64I8), splat_const(V64I8, 15))
        if lay.qh is not None:
            lo = b.zext(load_as(b, ptr, lay.qh, I32), I64)
            hi = b.zext(load_as(b, ptr, stride + lay.qh, I32), I64)
            mask = b.bitcast(b.or_(lo, b.shl(hi, ir.Constant(I64, 32))), V64I1)
            codes = b.select(mask, b.add(codes, self.prep.sixteen64), codes)
        codes = b.bitcast(codes, V16I32)
        high = _dpbusd(b, ir.Constant(V16I32, None), codes, xh)
        dot = _dpbusd(b, b.shl(high, splat_const(V16I32, 8)), codes, xl)
        ds2 = b.load(b.bitcast(b.gep(self.ds, [k], inbounds=True), ir.VectorType(F32, 2).as_pointer()), align=8)
        scale = shuffle(b, ds2, ds2, [0] * 8 + [1] * 8)
        self.acc16.set(fma(b, b.sitofp(dot, V16F), scale, self.acc16.get()))

    def add_block_words(self, k: ir.Value, xw: ir.Value) -> None:
        """Accumulate Q8_0 block k in one 512-bit register (Variant.wide): its 32 codes sign-extended to
        words by one vpmovsxbw, one vpdpwssd against X, one conversion and FMA by the block's scale."""
        b = self.b
        ptr = self._block(k)
        codes = b.sext(load_as(b, ptr, 2, V32I8), V32I16W)
        fn = intrinsic(b.module, "llvm.x86.avx512.vpdpwssd.512", V16I32, [V16I32, V32I16W, V32I16W])
        dot = b.call(fn, [ir.Constant(V16I32, None), codes, xw])
        scale = splat(b, b.load(b.gep(self.ds, [k], inbounds=True)), 16)
        self.acc16.set(fma(b, b.sitofp(dot, V16F), scale, self.acc16.get()))

    def _unsigned_q8(self, ptr: ir.Value, offset: int) -> ir.Value:
        """The 32 codes of the Q8_0 block `offset` bytes after `ptr` made unsigned (q + 128), as bytes."""
        b = self.b
        return b.xor(load_as(b, ptr, offset + 2, V32I8), splat_const(V32I8, -128))

    def add_pair_q8(self, k: ir.Value, xh: ir.Value, xl: ir.Value) -> None:
        """Accumulate Q8_0 blocks k and k+1 (Q8_BYTES): their unsigned codes in one 512-bit register, two
        vpdpbusd against Xh and Xl, one conversion and FMA by both scales."""
        b, stride = self.b, block_stride(self.dtype)
        ptr = self._block(k)
        both = shuffle(b, self._unsigned_q8(ptr, 0), self._unsigned_q8(ptr, stride), list(range(64)))
        codes = b.bitcast(both, V16I32)
        high = _dpbusd(b, ir.Constant(V16I32, None), codes, xh)
        dot = _dpbusd(b, b.shl(high, splat_const(V16I32, 8)), codes, xl)
        ds2 = b.load(b.bitcast(b.gep(self.ds, [k], inbounds=True), ir.VectorType(F32, 2).as_pointer()), align=8)
        scale = shuffle(b, ds2, ds2, [0] * 8 + [1] * 8)
        self.acc16.set(fma(b, b.sitofp(dot, V16F), scale, self.acc16.get()))

    def add_block_q8(self, k: ir.Value, xh: ir.Value, xl: ir.Value) -> None:
        """Accumulate one Q8_0 block as add_pair_q8 does two, in 256-bit registers (a row's odd last block)."""
        b = self.b
        codes = b.bitcast(self._unsigned_q8(self._block(k), 0), V8I32)
        high = _dpbusd(b, ir.Constant(V8I32, None), codes, xh)
        dot = _dpbusd(b, b.shl(high, splat_const(V8I32, 8)), codes, xl)
        scale = splat(b, b.load(b.gep(self.ds, [k], inbounds=True)))
        self.acc.set(fma(b, b.sitofp(dot, V8F), scale, self.acc.get()))

    def result(self) -> ir.Value:
        b = self.b
        v = self.acc.get() if self.bias is None else fadd(b, self.acc.get(), self.bias.get())
        if self.acc16 is not None:
            w = self.acc16.get()
            v = fadd(b, v, fadd(b, shuffle(b, w, w, list(range(VL))), shuffle(b, w, w, list(range(VL, 2 * VL)))))
        return hsum(b, v)


def row_index(b: ir.IRBuilder, i: int, stride: ir.Value | None) -> ir.Value | int:
    """The offset of a group's row i from its first row: i, or i·stride for row streams."""
    return i if stride is None else b.mul(i64c(i), stride)


def stream_ahead(row_bytes: int, target: int | None = None, groups: int | None = None) -> int:
    """Bytes ahead a row's prefetch reaches in a stream of consecutive rows: whole rows, as many as make
    about STREAM_TARGET (or `target`) bytes, at least one (none where `groups`, by default
    PREFETCH_GROUPS, is 0)."""
    if not (PREFETCH_GROUPS if groups is None else groups):
        return 0
    return max(1, round((target or STREAM_TARGET) / row_bytes)) * row_bytes


def prefetch_ahead(group_bytes: int, groups: int | None = None, target: int | None = None) -> int:
    """Bytes ahead a row's prefetch reaches when its group of rows spans `group_bytes`: whole groups, at
    least `groups` (default PREFETCH_GROUPS) of them and as many as make about PREFETCH_TARGET (or
    `target`) bytes (0 groups: no prefetch)."""
    least = PREFETCH_GROUPS if groups is None else groups
    if not least:
        return 0
    return max(least, round((target or PREFETCH_TARGET) / group_bytes)) * group_bytes


def rows_ahead(row_bytes: int, count: int, stride: ir.Value | None, target: int | None = None,
               groups: int | None = None) -> int:
    """Bytes ahead each of `count` rows walked side by side prefetches: in its own stream where rows are
    streams (`stride` given: stream_ahead), else in a later group of rows (prefetch_ahead)."""
    if stride is None:
        return prefetch_ahead(count * row_bytes, groups, target)
    return stream_ahead(row_bytes, target, groups)


def _emit_rows(b: ir.IRBuilder, dtype: DType, variant: Variant, n_cols: int, accumulate: bool, w: ir.Value,
               prep: _Prepared, y: ir.Value, first: ir.Value, count: int, stride: ir.Value | None = None) -> None:
    """y[first + i] (+)= W[first + i]·x for i < count (rows first + i·stride with `stride`: row streams)."""
    row_bytes = dtype.row_bytes(n_cols)
    n_blocks = n_cols // BLOCK
    ahead = rows_ahead(row_bytes, count, stride)
    rows = [_RowDot(b, dtype, variant, prep, row_at(b, w, first, row_index(b, i, stride), row_bytes), n_blocks,
                    ahead) for i in range(count)]
    whole = n_blocks // GATHER * GATHER
    if whole:
        with counted_loop(b, 0, whole, GATHER, name="scales") as k:
            for rd in rows:
                rd.convert_scales(k)
    if whole < n_blocks:
        for rd in rows:
            rd.convert_scales(i64c(whole), n_blocks - whole)
    first_single = 0
    if prep.q8_bytes:
        pairs = n_blocks // 2 * 2
        with counted_loop(b, 0, pairs, 2, name="pair") as k:
            xh, xl = prep.pair_halves(b, k)
            for rd in rows:
                rd.add_pair_q8(k, xh, xl)
        if pairs < n_blocks:
            xh, xl = prep.byte_halves(b, i64c(pairs))
            for rd in rows:
                rd.add_block_q8(i64c(pairs), xh, xl)
        first_single = n_blocks
    if prep.wide_words:
        first_single = n_blocks
        with counted_loop(b, 0, n_blocks, name="blk") as k:
            xw = prep.whole(b, k)
            for rd in rows:
                rd.add_block_words(k, xw)
    if prep.wide:
        first_single = n_blocks // 2 * 2
        with counted_loop(b, 0, first_single, 2, name="pair") as k:
            xh, xl = prep.pair_halves(b, k)
            for rd in rows:
                rd.add_pair(k, xh, xl)
    if first_single < n_blocks:
        with counted_loop(b, first_single, n_blocks, name="blk") as k:
            xlo, xhi = prep.byte_halves(b, k) if prep.split else prep.halves(b, k)
            for rd in rows:
                rd.add_block(k, xlo, xhi)
    store_results(b, y, first, [rd.result() for rd in rows], accumulate, stride)


def int16_emitter(b: ir.IRBuilder, dtype: DType, variant: Variant, n_cols: int, accumulate: bool, w: ir.Value,
                  x: ir.Value, y: ir.Value) -> Callable[..., None]:
    """Prepare x (emitted at the builder's position) and return `emit(first_row, count, stride=None)`,
    which emits y[first + i·stride] (+)= W[first + i·stride]·x for i < count (stride 1 where None)."""
    prep = _Prepared(b, dtype, variant, x, n_cols)

    def emit(first: ir.Value, count: int, stride: ir.Value | None = None) -> None:
        _emit_rows(b, dtype, variant, n_cols, accumulate, w, prep, y, first, count, stride)

    return emit
