"""Matrix × vector for K-quant rows (Q2_K … Q6_K) with integer dot products (x86 with AVX2).

Called by matvec_kquant.py on hosts where matvec_int16.host_variant() is not None. As there, x is
quantized once per call to int16 per block of 32 (X = round(x / sx_k), sx_k = max|x_k| / XMAX) and kept
as its two signed bytes (X = 256·Xh + Xl); Σx per sub-block stays float for the biases. Per
super-block and row:

* the sub-block scales and biases are decoded at once (dequant_k.sub_scales: 8 or 16 lanes), the
  biases dotted with Σx (per sub-block; for Q3_K/Q6_K, whose bias is scale·(−offset), Σx·(−offset) is
  stored once per call and meets the scales) into a float accumulator;
* the codes are built as unsigned bytes, a chunk of `width` values at a time (64 in a 512-bit register
  on hosts with AVX-512 VNNI and BW, two 32-value groups; else 32): each field of dequant_k.code_fields
  is one 32- or 64-byte load (two groups reading the same bytes share one broadcast load), one shift of
  words by the per-group amount (vpsrlvw where the two groups differ) and one mask (with GFNI both in
  one vgf2p8affineqb), OR-ed together;
* Σ q·X = 256·Σ q·Xh + Σ q·Xl by two vpdpbusd (AVX2 without VNNI: vpmaddubsw then vpmaddwd, which
  cannot saturate: q ≤ 63, |Xh|, |Xl| ≤ 128), each dword lane holding 4 values of one sub-block;
  (with VNNI the ·256 is a byte shuffle, vpshufb, off the port the other three use);
* the chunks' dword lanes are summed per sub-block of 16 in integers (SUM_SUBS: two levels of
  pairwise sums of adjacent lanes, even and odd lanes of two vectors side by side), then one
  conversion to float and one FMA by d·scale·sx per sub-block (sx per 16 values, stored once per call).

L2 GB/s per thread (bench/kernel_ab.py, 2048 columns, one thread's CPU time, Sapphire Rapids at load 9;
before → after SUM_SUBS, dequant_k.SCALES_IN_QWORDS and BIAS_IN_XSUM, interleaved): Q2_K 13.6 → 13.6,
Q3_K 13.4 → 14.4, Q4_K 20.0 → 20.9, Q5_K 20.9 → 21.4, Q6_K 27.5 → 28.5. Per value the five types cost
about the same (Q2_K/Q3_K have fewer bytes): what bounds them here is the µops on the two 512-bit ports
(0 and 5) together, of which the two vpdpbusd and the vpshufb per chunk are the largest share (one
vpdpbusd fewer, results wrong, measured +17-20 %); llvm-mca's Sapphire Rapids model counts port 0 alone
and so overstates SUM_SUBS (bench/kernel_costs.py --types q2_k,q3_k,q4_k,q5_k,q6_k).

On 512-bit VNNI hosts Q2_K, Q3_K, Q4_K and Q5_K (LANE_MAJOR_TYPES; Q3_K and Q5_K only with GFNI)
read their codes lane-major instead (LaneCodes): chunk c, dword lane L holds four values of one
sub-block (16L + 4c … in the 16-value ones; 8c … of sub-block L//2 in Q4_K/Q5_K's, so that Q5_K's qh,
shared by all groups, is one broadcast qword per chunk), picked from the super-block's bytes by one
permute per field and chunk (port 5) with Xh and Xl transposed to match once per call, so that the four
chunks' vpdpbusd accumulate per lane in place: no SUM_SUBS shuffles and one ·256 per super-block instead
of one per chunk. Q2_K and Q4_K leave their single field's bits in place (one mask on either port
instead of vgf2p8affineqb on port 0; the 2^shift is divided out of sx per 16 once per call). L2 GB/s
per thread, interleaved, Sapphire Rapids (bench/kernel_ab.py; a helper's load on the other vCPU),
chunked → lane-major: Q2_K 13.4 → 15.1, Q3_K 14.1 → 14.9, Q4_K 20.4 → 22.2, Q5_K 20.8 → 23.4; Q6_K
27.8 → 26.9 (its qh needs a second permute per chunk), so Q6_K keeps the chunked path. vpmultishiftqb
(port 5) for Q3_K/Q5_K's second field instead of vgf2p8affineqb: 3-5 % slower.

The error is that of matvec_int16.py: at most 0.5·sx_k·Σ_j |scale·q_j| per block of 32 and row (every
path sums the same integer products exactly). The lane-major types listed in BYTE_X_TYPES (none by
default) take x as one signed byte per value instead, scaled per sub-block: at most 0.5·s·Σ_j |scale·q_j|
per sub-block and row, s = max|x| / BYTE_XMAX over the sub-block.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from runtime.jit.irkit import F32, I8, I16, I32, counted_loop, intrinsic
from runtime.jit.kernels.dequant_k import (
    GROUP,
    GROUPS,
    SUB,
    SUPER,
    SubScales,
    code_bias,
    code_fields,
    sub_scales,
    sub_size,
    superblock_at,
)
from runtime.jit.kernels.irhelpers import (
    PIECES,
    V8F,
    V8I32,
    VL,
    Var,
    byte_ptr,
    const_vec,
    fma,
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
    tree_reduce,
    tree_sum,
)
from runtime.jit.kernels.matvec_int16 import TINY, XMAX, Variant, row_index, rows_ahead
from runtime.quant.types import DType

# Each row prefetches about PREFETCH_TARGET bytes (below) ahead in whole rows of its stream (matvec.ROW_STREAMS),
# or, with streams off, the same place in a later row group, at least PREFETCH_GROUPS groups (0: none).
PREFETCH_GROUPS = 1
# The K kernels' own rows-and-distance target (matvec_int16's PREFETCH_TARGET is 4608): their rows take
# longer to compute, and fewer rows nearer ahead read faster from memory. One thread, rows from memory,
# 2048 columns, quiet SPR, 4608 → 2304: Q2_K 12.2 → 12.7 GB/s, Q4_K 13.1 → 14.3, Q5_K 12.1 → 12.9, Q6_K 13.2
# → 13.8 (in L2 unchanged); 1152-3456 all within a few % of 2304. Decoding 1.5B RWKV-7, 2 threads, quiet,
# interleaved: Q4_K_M 35.2 → 33.3 ms/token, Q5_K_M 43.2 → 40.3, Q6_K 47.6 → 44.5, Q2_K/Q3_K within noise;
# 0.4B RWKV-6 (rows of 1024 values: the same 4 rows) unchanged.
PREFETCH_TARGET = 2304
# The row prefetches' llvm.prefetch locality: 3 (prefetcht0, into L1). History, SPR, interleaved
# (bench/decode_ab.py, ms/token): before rows were walked as streams, prefetcht1 (2) was better for Q5_K/Q6_K
# (1.5B Q5_K_M, 1 thread, CPU time, RWKV-7 89.7 → 84.5 from t0 to t1; 2 threads Q5_K_M 44.41 → 45.02 and Q6_K
# 50.92 → 51.87 from t1 to t0) and prefetcht0 for Q2_K/Q3_K/Q4_K (1.5B Q3_K 32.18 → 31.76, Q4_K_M 34.32 → 33.79,
# 0.4B Q4_K 12.05 → 11.60). With row streams prefetcht0 is as good or better for all five: t1 → t0, 2 threads,
# two runs: 1.5B RWKV-7 Q5_K_M 43.14 → 43.09 and 38.24 → 37.36, Q6_K 41.38 → 40.43; 0.4B RWKV-6 Q5_K 11.75 →
# 11.25 and 11.65 → 11.49, Q6_K 13.08 → 12.78 and 13.20 → 13.07; 1 thread 0.4B Q5_K 21.34 → 20.64, 1.5B Q6_K
# 78.88 → 78.43 (Q2_K-Q4_K were measured with groups only). prefetcht2 was the same as prefetcht1,
# prefetchnta twice as slow. (To time the grouped walk as it was, ROW_STREAMS=0 with PREFETCH_LOCALITY=2 for
# Q5_K/Q6_K.)
PREFETCH_LOCALITY = 3
# Lane-major: Σ q·Xl accumulated onto 256·Σ q·Xh (one vpdpbusd chain after the other) instead of two
# chains added at the end: one integer add fewer per super-block and row. One thread, rows in L2, 2048
# columns, SPR, interleaved (bench/kernel_ab.py): Q2_K 14.2 → 15.0 GB/s, Q4_K unchanged (a switch for A/B runs).
LOW_FROM_HIGH = True
SHIFT_BY_SHUFFLE = True  # 256·Σ q·Xh by vpshufb instead of vpslld (a switch for A/B runs)
USE_GFNI = True  # fields split by vgf2p8affineqb where the host has GFNI (a switch for A/B runs)
# The chunks' integer dot products summed per sub-block of 16 by two levels of pairwise lane sums (shuffles
# and integer adds), then one conversion and one FMA per super-block and row, instead of a conversion, a
# scale permutation and an FMA per chunk (a switch for A/B runs)
SUM_SUBS = True
# Q3_K/Q6_K (value = scale·(q − offset)): Σx per sub-block stored times −offset once per call, so that the
# bias term is scale·that instead of (scale·−offset)·Σx per super-block (a switch for A/B runs)
BIAS_IN_XSUM = True
# 512-bit VNNI hosts: each chunk's codes gathered lane-major (LaneCodes below), so that the four chunks'
# vpdpbusd accumulate into one vector per byte of X with no per-sub-block sums and no per-chunk ·256 (a switch
# for A/B runs)
LANE_MAJOR = True
LANE_MAJOR_TYPES = frozenset({DType.Q2_K, DType.Q3_K, DType.Q4_K, DType.Q5_K})
# lane-major single-field types (Q2_K, Q4_K): the codes are the field's bits left where they are (one mask, on
# either 512-bit port) and the field's 2^shift is taken out of sx per 16 once per call, instead of a shift to
# bit 0 (vgf2p8affineqb, port 0 only, where the vpdpbusd run) (a switch for A/B runs)
LANE_MASKS = True
# Lane-major types whose x is quantized to one signed byte per value, scaled per sub-block (X8 = round(x / s),
# s = max|x| / 127 over the sub-block's 16 or 32 values), instead of int16 in two bytes: one vpdpbusd chain
# per super-block and row instead of two, and no ·256 (other types ignore it). A precision trade (the
# activation error bound grows up to 257 times, 32639 / 127, to llama.cpp's Q8_K order but per 16 or 32
# values instead of 256), so empty by default: an owners' call (a switch for A/B runs: bench/kernel_ab.py,
# bench/decode_ab.py `BYTE_X_TYPES=q2_k+q3_k`). Zen 4 (EPYC, family 25 model 17, 3.67 GHz), interleaved:
# one thread, rows in L2, 2048 columns, GB/s Q2_K 14.5 → 18.1, Q3_K 13.6 → 16.5, Q4_K 22.1 → 27.9, Q5_K
# 21.9 → 27.1; decoding, 2 threads, ms/token (lower quartile) 1.5B RWKV-7 Q2_K 21.55 → 18.18, Q3_K 26.40 →
# 23.20; 0.4B RWKV-6 Q2_K 7.79 → 6.98, Q3_K 9.05 → 8.28, Q4_K 9.13 → 8.67, Q5_K 10.25 → 10.16. Logits of
# random-weight models of those shapes against their F16 files (48 tokens): mean KL Q2_K 0.26842 → 0.26849
# (1.5B) and 0.26863 → 0.26948 (0.4B), Q3_K 0.09649 → 0.09677 and 0.10792 → 0.10832.
BYTE_X_TYPES: frozenset[DType] = frozenset()
BYTE_XMAX = 127.0


def chunk_width(variant: Variant) -> int:
    """Values per chunk of byte codes: 64 (512-bit registers) where the host has AVX-512 VNNI, BW and
    VBMI (matvec_int16's `wide`), else 32."""
    return 64 if variant.wide else 32


def _max_abs(b: ir.IRBuilder, parts: list[ir.Value]) -> ir.Value:
    """max |x| over the <8 x float> `parts`, as a float."""
    mod = b.module
    fabs = intrinsic(mod, "llvm.fabs.v8f32", V8F, [V8F])
    vmax = intrinsic(mod, "llvm.maxnum.v8f32", V8F, [V8F, V8F])
    rmax = intrinsic(mod, "llvm.vector.reduce.fmax.v8f32", F32, [V8F])
    return b.call(rmax, [tree_reduce([b.call(fabs, [p]) for p in parts], lambda p, q: b.call(vmax, [p, q]))])


def _inverse(b: ir.IRBuilder, big: ir.Value, xmax: float) -> ir.Value:
    """xmax / big, the factor that takes x to its integers; 0 where big (max |x|) is below TINY."""
    return b.select(b.fcmp_ordered(">=", big, ir.Constant(F32, TINY)), b.fdiv(ir.Constant(F32, xmax), big),
                    ir.Constant(F32, 0.0))


class _PreparedX:
    """Per-call stack arrays derived from x: `xh`, `xl` the two signed bytes of X; `sx` sx and `xsum` Σx
    per sub-block of `size` values (16: each block's sx twice; 32: once), Σx times `xsum_factor`; `sx16`
    sx per 16 values (`sx` itself where size is 16). With `byte_x` (lane-major only) `xl` holds X8 and
    `sx16` its scale per sub-block (_bytes), and `xh` is not written."""

    def __init__(self, b: ir.IRBuilder, x: ir.Value, n_cols: int, size: int, pattern: ir.Value | None,
                 xsum_factor: float = 1.0, lanes: LaneCodes | None = None, byte_x: bool = False) -> None:
        if byte_x and lanes is None:
            raise ValueError("x in bytes needs the lane-major kernel")
        self.pattern = pattern
        self.byte_x = byte_x
        self.xh = stack_array(b, I8, n_cols, align=64, name="xh")
        self.xl = stack_array(b, I8, n_cols, align=64, name="xl")
        self.size = size
        self.sx = stack_floats(b, n_cols // size, align=64, name="sx")
        self.sx16 = self.sx if size == SUB else stack_floats(b, n_cols // SUB, align=64, name="sx16")
        self.xsum = stack_floats(b, n_cols // size, align=64, name="xsum")
        with counted_loop(b, 0, n_cols // GROUP, name="xq") as k:
            base = b.mul(k, i64c(GROUP))
            parts = [load_vec(b, x, b.add(base, i64c(VL * j))) for j in range(PIECES)]
            big = _max_abs(b, parts)
            per = GROUP // size
            for i in range(per):
                mine = parts[i * PIECES // per:(i + 1) * PIECES // per]
                total = hsum(b, tree_sum(b, mine))
                if xsum_factor != 1.0:
                    total = b.fmul(total, ir.Constant(F32, xsum_factor))
                b.store(total, b.gep(self.xsum, [b.add(b.mul(k, i64c(per)), i64c(i))], inbounds=True))
            if byte_x:
                self._bytes(b, k, parts, big)
            else:
                self._words(b, k, parts, big)
        if lanes is not None:
            self._to_lane_major(b, n_cols, lanes)

    def _words(self, b: ir.IRBuilder, k: ir.Value, parts: list[ir.Value], big: ir.Value) -> None:
        """Block k (its four <8 x float> `parts`, max|x| `big`) as int16 X = round(x / sx), sx = big / XMAX,
        stored as its two signed bytes in `xh` and `xl`; sx per sub-block in `sx` and per 16 in `sx16`."""
        sx = b.fmul(big, ir.Constant(F32, 1.0 / XMAX))
        per = GROUP // self.size
        for i in range(per):
            b.store(sx, b.gep(self.sx, [b.add(b.mul(k, i64c(per)), i64c(i))], inbounds=True))
        if self.sx16 is not self.sx:
            for i in range(GROUP // SUB):
                b.store(sx, b.gep(self.sx16, [b.add(b.mul(k, i64c(GROUP // SUB)), i64c(i))], inbounds=True))
        cvt = intrinsic(b.module, "llvm.x86.avx.cvt.ps2dq.256", V8I32, [V8F])  # nearest (even)
        v8i8 = ir.VectorType(I8, VL)
        base = b.mul(k, i64c(GROUP))
        inv_v = splat(b, _inverse(b, big, XMAX))
        for j, p in enumerate(parts):
            q = b.trunc(b.call(cvt, [b.fmul(p, inv_v)]), ir.VectorType(I16, VL))
            lo = b.trunc(q, v8i8)  # the low byte, read as signed
            hi = b.trunc(b.ashr(b.sub(q, b.sext(lo, q.type)), splat_const(q.type, 8)), v8i8)
            at = b.add(base, i64c(VL * j))
            for arr, v in ((self.xl, lo), (self.xh, hi)):
                b.store(v, b.bitcast(b.gep(arr, [at], inbounds=True), v8i8.as_pointer()), align=8)

    def _bytes(self, b: ir.IRBuilder, k: ir.Value, parts: list[ir.Value], big: ir.Value) -> None:
        """Block k (its four <8 x float> `parts`, max|x| `big`) as one signed byte per value in `xl`, scaled
        per sub-block (`size` values: a lane of the lane-major kernel meets one sub-block): sx16 = max|x| /
        BYTE_XMAX over the sub-block, for each 16 of it (`sx` is not written: the lane-major path reads sx16)."""
        cvt = intrinsic(b.module, "llvm.x86.avx.cvt.ps2dq.256", V8I32, [V8F])  # nearest (even)
        v8i8 = ir.VectorType(I8, VL)
        per = self.size // VL
        for part in range(GROUP // self.size):
            mine = parts[part * per:(part + 1) * per]
            if len(mine) < len(parts):
                big = _max_abs(b, mine)
            inv = _inverse(b, big, BYTE_XMAX)
            sx = b.fmul(big, ir.Constant(F32, 1.0 / BYTE_XMAX))
            for i in range(self.size // SUB):
                at16 = b.add(b.mul(k, i64c(GROUP // SUB)), i64c(part * self.size // SUB + i))
                b.store(sx, b.gep(self.sx16, [at16], inbounds=True))
            inv_v = splat(b, inv)
            for j, p in enumerate(mine):
                q = b.trunc(b.call(cvt, [b.fmul(p, inv_v)]), v8i8)
                at = b.add(b.mul(k, i64c(GROUP)), i64c(self.size * part + VL * j))
                b.store(q, b.bitcast(b.gep(self.xl, [at], inbounds=True), v8i8.as_pointer()), align=8)

    def _to_lane_major(self, b: ir.IRBuilder, n_cols: int, lanes: LaneCodes) -> None:
        """Reorder each super-block's Xh and Xl (Xl alone with byte_x) as LaneCodes reads its codes (chunk
        c, lane L: values LaneCodes.value_of) and, where the codes keep a factor 2^shift, divide sx per 16
        by it (in place: the lane-major path reads sx only per 16)."""
        v64 = ir.VectorType(I32, SUPER // 4)
        order = [lanes.value_of(c, lane) // 4 for c in range(SUPER // 64) for lane in range(SUPER // SUB)]
        factors = lanes.factors()
        scaled = any(f != 1.0 for f in factors)
        with counted_loop(b, 0, n_cols // SUPER, name="xlane") as k:
            at = b.mul(k, i64c(SUPER))
            for arr in (self.xl,) if self.byte_x else (self.xh, self.xl):
                ptr = b.bitcast(b.gep(arr, [at], inbounds=True), v64.as_pointer())
                b.store(shuffle(b, b.load(ptr, align=64), ir.Constant(v64, None), order), ptr, align=64)
            if scaled:
                v16 = ir.VectorType(F32, SUPER // SUB)
                ptr = b.bitcast(b.gep(self.sx16, [b.mul(k, i64c(SUPER // SUB))], inbounds=True), v16.as_pointer())
                b.store(b.fmul(b.load(ptr, align=64), const_vec(v16, factors)), ptr, align=64)

    def bytes_at(self, b: ir.IRBuilder, arr: ir.Value, start: ir.Value, width: int) -> ir.Value:
        """`width` bytes of `arr` from value `start`, as <width/4 x i32>."""
        ty = ir.VectorType(I32, width // 4)
        return b.load(b.bitcast(b.gep(arr, [start], inbounds=True), ty.as_pointer()), align=width)


def _affine_matrix(shift: int, width: int, place: int) -> int:
    """The GF(2) matrix (a qword) for vgf2p8affineqb that moves bits shift … shift+width-1 of each byte
    to bits place … place+width-1 and clears the others (output bit i is the parity of the input and
    the matrix's byte 7 - i)."""
    return sum((1 << (shift + t)) << (8 * (7 - place - t)) for t in range(width))


def chunk_codes(b: ir.IRBuilder, dtype: DType, block: ir.Value, chunk: int, width: int,
                gfni: bool = False) -> ir.Value:
    """The codes of values width·chunk … width·chunk+width-1 of the super-block at i8* `block`, as
    <width x i8> unsigned bytes (see the module docstring). With `gfni` (64-value chunks) a field's
    shift and mask are one vgf2p8affineqb."""
    n_groups = width // GROUP
    groups = [chunk * n_groups + i for i in range(n_groups)]
    v32 = ir.VectorType(I8, 32)
    bytes_ty = ir.VectorType(I8, width)
    words_ty = ir.VectorType(I16, width // 2)
    out = None
    for fields in zip(*(code_fields(dtype, g) for g in groups), strict=True):
        offs = [f.offset for f in fields]
        if n_groups == 1:
            raw = load_as(b, block, offs[0], v32)
        elif all(o == offs[0] for o in offs):
            one = load_as(b, block, offs[0], v32)
            raw = shuffle(b, one, one, list(range(32)) * n_groups)
        elif offs == [offs[0] + 32 * i for i in range(n_groups)]:
            raw = load_as(b, block, offs[0], bytes_ty)
        else:
            parts = [load_as(b, block, o, v32) for o in offs]
            raw = shuffle(b, parts[0], parts[1], list(range(64)))
        amounts = [f.shift - f.place for f in fields]  # > 0: right, < 0: left (whole words; see below)
        if gfni and any(amounts):
            fn = intrinsic(b.module, f"llvm.x86.vgf2p8affineqb.{8 * width}", bytes_ty, [bytes_ty, bytes_ty, I8])
            mats = [_affine_matrix(f.shift, f.width, f.place) for f in fields]
            mat = [(mats[j // GROUP] >> (8 * (j % 8))) & 0xFF for j in range(width)]
            codes = b.call(fn, [raw, const_vec(bytes_ty, mat), ir.Constant(I8, 0)])
            out = codes if out is None else b.or_(out, codes)
            continue
        words = b.bitcast(raw, words_ty)
        # a shift of 16-bit words moves bits across the two bytes of a word, but only into bit
        # positions that the mask below clears (a field's bits stay within their own byte)
        if any(a > 0 for a in amounts):
            words = b.lshr(words, const_vec(words_ty, [max(a, 0) for a in amounts for _ in range(16)]))
        if any(a < 0 for a in amounts):
            words = b.shl(words, const_vec(words_ty, [max(-a, 0) for a in amounts for _ in range(16)]))
        masks = [((1 << f.width) - 1) << f.place for f in fields]
        codes = b.and_(b.bitcast(words, bytes_ty), const_vec(bytes_ty, [m for m in masks for _ in range(32)]))
        out = codes if out is None else b.or_(out, codes)
    return out


class LaneCodes:
    """A super-block's codes in lane-major chunks for 512-bit hosts: chunk c (of 4), dword lane L (of 16)
    holds the codes of four consecutive values of one sub-block, value_of(c, L) onwards (16L + 4c in the
    16-value sub-blocks; in Q4_K/Q5_K's 32-value ones lanes 2g and 2g+1 share sub-block g), so that every
    lane meets one scale and one sx in every chunk and the four chunks' vpdpbusd add up in place.
    (code_fields' byte runs hold consecutive values, so each lane's four codes are one dword of a run: a
    permute per field and chunk picks them from the super-block's bytes, loaded once per row.) Lanes 2g and
    2g+1 lie in the 32-value group g, so a qword of lanes shares one field layout (one vgf2p8affineqb
    matrix). Needs GFNI unless `masks` leaves a single field's bits in place."""

    def __init__(self, dtype: DType, gfni: bool, masks: bool) -> None:
        self.dtype = dtype
        self.fields = list(zip(*(code_fields(dtype, g) for g in range(GROUPS)), strict=True))
        # one field left in place: its code times 2^shift fits a byte (shift + width ≤ 8)
        self.masks = masks and len(self.fields) == 1
        self.sub = sub_size(dtype)
        if not (gfni or self.masks):
            raise ValueError(f"{dtype.name}: lane-major codes need GFNI or a single field left in place")

    def factors(self) -> list[float]:
        """Per lane, what the lane's codes are to be multiplied by (1/2^shift where the mask leaves the
        field's bits in place)."""
        if not self.masks:
            return [1.0] * (SUPER // SUB)
        return [2.0 ** -self.fields[0][lane // 2].shift for lane in range(SUPER // SUB)]

    def region(self, field: int) -> tuple[int, int]:
        """(first byte, dwords) of the super-block that field `field`'s runs lie in, the dwords rounded up
        to a vector length (8, 16 or 32)."""
        runs = self.fields[field]
        start = min(f.offset for f in runs)
        dwords = 1 << ((max(f.offset for f in runs) + GROUP - start) // 4 - 1).bit_length()
        # the last super-block of a matrix ends its mapping: a rounded-up load must not pass it
        if start + 4 * dwords > self.dtype.block_bytes:
            raise ValueError(f"{self.dtype.name}: field {field}'s load would pass the super-block's end")
        return start, dwords

    def value_of(self, chunk: int, lane: int) -> int:
        """The first of the four values lane `lane` of chunk `chunk` holds: 16L + 4c in the 16-value
        sub-blocks; in Q4_K/Q5_K's 32-value ones lanes 2g and 2g+1 take values 8c … 8c+7 of sub-block g,
        so that a run every group shares (Q5_K's qh) is one qword for the whole chunk (one broadcast load)."""
        if self.sub == SUB:
            return SUB * lane + 4 * chunk
        return 2 * SUB * (lane // 2) + 8 * chunk + 4 * (lane % 2)

    def dword_index(self, field: int, chunk: int) -> list[int]:
        """Per lane, the dword of region(field) that holds the field's bits for chunk `chunk` (value v of
        group g lies at byte v − 32g of g's run)."""
        runs, (start, _) = self.fields[field], self.region(field)
        out = []
        for lane in range(SUPER // SUB):
            g = lane // 2
            out.append((runs[g].offset - start + self.value_of(chunk, lane) - GROUP * g) // 4)
        return out

    def _broadcast_pair(self, field: int, chunk: int) -> int | None:
        """The first dword of the pair every qword of lanes takes, where one does (a run the groups share,
        lanes 2g and 2g+1 reading adjacent dwords of it), else None."""
        index = self.dword_index(field, chunk)
        if index[:2] * (len(index) // 2) == index and index[1] == index[0] + 1:
            return index[0]
        return None

    def sources(self, b: ir.IRBuilder, block: ir.Value) -> list[ir.Value]:
        """Each field's region of the super-block at i8* `block` as one <8, 16 or 32 x i32> load, or None
        for a field read as broadcast pairs (codes loads those per chunk)."""
        out = []
        for field in range(len(self.fields)):
            start, dwords = self.region(field)
            if all(self._broadcast_pair(field, c) is not None for c in range(SUPER // 64)):
                out.append(None)
                continue
            out.append(load_as(b, block, start, ir.VectorType(I32, dwords)))
        return out

    def codes(self, b: ir.IRBuilder, block: ir.Value, sources: list[ir.Value | None], chunk: int) -> ir.Value:
        """Chunk `chunk`'s codes of the super-block at i8* `block` as <64 x i8> (unsigned; times 1/factors()
        where the mask leaves them; else each field moved into place by vgf2p8affineqb)."""
        v64 = ir.VectorType(I8, 64)
        out = None
        for field, (runs, src) in enumerate(zip(self.fields, sources, strict=True)):
            if src is None:
                pair = load_as(b, block, self.region(field)[0] + 4 * self._broadcast_pair(field, chunk),
                               ir.VectorType(I32, 2))
                raw = shuffle(b, pair, pair, [0, 1] * (SUPER // SUB // 2))
            else:
                raw = shuffle(b, src, ir.Constant(src.type, None), self.dword_index(field, chunk))
            per_byte = [runs[j // 8] for j in range(64)]  # byte j lies in lane j // 4, group j // 8
            if self.masks:
                mask = [((1 << f.width) - 1) << f.shift for f in per_byte]
                codes = b.and_(b.bitcast(raw, v64), const_vec(v64, mask))
            else:
                fn = intrinsic(b.module, "llvm.x86.vgf2p8affineqb.512", v64, [v64, v64, I8])
                mat = [(_affine_matrix(f.shift, f.width, f.place) >> (8 * (j % 8))) & 0xFF
                       for j, f in enumerate(per_byte)]
                codes = b.call(fn, [b.bitcast(raw, v64), const_vec(v64, mat), ir.Constant(I8, 0)])
            out = codes if out is None else b.or_(out, codes)
        return out


def lane_codes(dtype: DType, variant: Variant) -> LaneCodes | None:
    """The lane-major code reader where this host's kernel uses it (LANE_MAJOR, 512-bit VNNI, the types of
    LANE_MAJOR_TYPES; with GFNI, or for single-field types by their masks), else None."""
    if not (LANE_MAJOR and dtype in LANE_MAJOR_TYPES and variant.vnni and chunk_width(variant) == 64):
        return None
    gfni = USE_GFNI and variant.gfni
    # fields moved to bit 0 by shifts and masks instead (no GFNI) cost more than the sums saved: llvm-mca,
    # cycles per 32 values and row, chunked → lane-major, Sapphire Rapids Q3_K 2.82 → 3.32, Q5_K 2.81 → 3.31
    if not (gfni or (LANE_MASKS and len(code_fields(dtype, 0)) == 1)):
        return None
    return LaneCodes(dtype, gfni, LANE_MASKS)


def shift_pattern(b: ir.IRBuilder, width: int) -> ir.Value:
    """The vpshufb indices that move each dword's bytes up by one (zero in), as <width x i8> passed
    through an empty asm statement: LLVM would otherwise turn the shuffle back into a shift."""
    bty = ir.VectorType(I8, width)
    pattern = const_vec(bty, [-128 if j % 4 == 0 else (j % 16) - 1 for j in range(width)])
    return b.asm(ir.FunctionType(bty, [bty]), "", "=v,0", [pattern], side_effect=False)


def _times256(b: ir.IRBuilder, v: ir.Value, pattern: ir.Value | None) -> ir.Value:
    """v << 8 in every dword lane as a byte shuffle by `pattern` (vpshufb, which runs on port 5 where the
    shift would compete with vpdpbusd, the conversion and the FMA for port 0; exact since |v| < 2^23),
    or as a shift where `pattern` is None."""
    if pattern is None:
        return b.shl(v, splat_const(v.type, 8))
    n = v.type.count * 4
    bty = ir.VectorType(I8, n)
    fn = intrinsic(b.module, f"llvm.x86.{'avx512.pshuf.b.512' if n == 64 else 'avx2.pshuf.b'}", bty, [bty, bty])
    return b.bitcast(b.call(fn, [b.bitcast(v, bty), pattern]), v.type)


def sub_block_sums(b: ir.IRBuilder, dots: list[ir.Value]) -> ir.Value:
    """Σ per sub-block of 16 values as <16 x i32>, from the chunks' dword lanes (4 consecutive values
    each, in value order across `dots`): twice, each pair of vectors becomes the sums of their adjacent
    lanes (even lanes + odd lanes of the two side by side), which keeps the value order."""
    for _ in range(2):
        pairs = zip(dots[::2], dots[1::2], strict=True)
        dots = [b.add(shuffle(b, lo, hi, list(range(0, 2 * lo.type.count, 2))),
                      shuffle(b, lo, hi, list(range(1, 2 * lo.type.count, 2)))) for lo, hi in pairs]
    if len(dots) == 1:
        return dots[0]
    lo, hi = dots
    return shuffle(b, lo, hi, list(range(2 * lo.type.count)))


def _dot_bytes(b: ir.IRBuilder, variant: Variant, codes: ir.Value, xh: ir.Value, xl: ir.Value,
               pattern: ir.Value | None) -> ir.Value:
    """Σ q·X per dword lane (4 values each) = 256·Σ q·Xh + Σ q·Xl, as <width/4 x i32>."""
    lanes = codes.type.count // 4
    ity = ir.VectorType(I32, lanes)
    q = b.bitcast(codes, ity)
    if variant.vnni:
        fn = intrinsic(b.module, f"llvm.x86.avx512.vpdpbusd.{32 * lanes}", ity, [ity, ity, ity])
        high = b.call(fn, [ir.Constant(ity, None), q, xh])
        return b.call(fn, [_times256(b, high, pattern), q, xl])
    v32i8, v16i16 = ir.VectorType(I8, 32), ir.VectorType(I16, 16)
    ubsw = intrinsic(b.module, "llvm.x86.avx2.pmadd.ub.sw", v16i16, [v32i8, v32i8])
    wd = intrinsic(b.module, "llvm.x86.avx2.pmadd.wd", V8I32, [v16i16, v16i16])
    u = b.bitcast(q, v32i8)
    high = b.call(wd, [b.call(ubsw, [u, b.bitcast(xh, v32i8)]), splat_const(v16i16, 256)])
    low = b.call(wd, [b.call(ubsw, [u, b.bitcast(xl, v32i8)]), splat_const(v16i16, 1)])
    return b.add(high, low)


class _RowDot:
    """One K-quant row against the prepared x."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, variant: Variant, prep: _PreparedX, row: ir.Value,
                 ahead: int, lanes: LaneCodes | None = None) -> None:
        self.b, self.dtype, self.variant, self.prep, self.row, self.ahead = b, dtype, variant, prep, row, ahead
        self.lanes = lanes
        self.width = chunk_width(variant)
        lanes = SUPER // SUB if SUM_SUBS else self.width // 4
        self.acc = Var(b, ir.Constant(ir.VectorType(F32, lanes), None), "acc")
        self.subs_ty = ir.VectorType(F32, SUPER // prep.size)
        self.bias = Var(b, ir.Constant(self.subs_ty, None), "bias")

    def add_superblock(self, k: ir.Value, xs: list[tuple[ir.Value | None, ir.Value]]) -> None:
        """Accumulate super-block k; `xs` are each chunk's (Xh, Xl) (Xh None with byte_x)."""
        b, prep, width = self.b, self.prep, self.width
        ptr = superblock_at(b, self.row, self.dtype, k)
        if self.ahead:
            for line in range(0, self.dtype.block_bytes, 64):
                prefetch(b, byte_ptr(b, ptr, self.ahead + line), PREFETCH_LOCALITY)
        sub = sub_scales(b, self.dtype, ptr)
        n_subs = SUPER // sub.size
        first = b.mul(k, i64c(n_subs))
        # types whose bias is scale·(−offset) meet Σx·(−offset) (_PreparedX's xsum_factor) with the scale
        bias = sub.scale if BIAS_IN_XSUM and code_bias(self.dtype) else sub.bias
        self.bias.set(fma(b, bias, load_vec(b, prep.xsum, first, align=4 * n_subs, ty=self.subs_ty), self.bias.get()))
        if self.lanes is not None:
            self._add_lane_major(k, ptr, sub, xs)
            return
        dots = []
        for c, (xh, xl) in enumerate(xs):
            codes = chunk_codes(b, self.dtype, ptr, c, width, USE_GFNI and self.variant.gfni and width == 64)
            dots.append(_dot_bytes(b, self.variant, codes, xh, xl, prep.pattern))
        if SUM_SUBS:
            self._add_sums(k, sub_block_sums(b, dots), sub)
            return
        ds = b.fmul(sub.scale, load_vec(b, prep.sx, first, align=4 * n_subs, ty=self.subs_ty))
        for c, dot in enumerate(dots):
            lane_scale = shuffle(b, ds, ds, [(c * width + 4 * i) // sub.size for i in range(width // 4)])
            self.acc.set(fma(b, b.sitofp(dot, lane_scale.type), lane_scale, self.acc.get()))

    def _add_lane_major(self, k: ir.Value, ptr: ir.Value, sub: SubScales,
                        xs: list[tuple[ir.Value | None, ir.Value]]) -> None:
        """The dot products through LaneCodes: Σ q·Xh and Σ q·Xl accumulated over the chunks per lane (values
        of one sub-block; one vpdpbusd chain each), then 256·high + low, one conversion and one FMA (with
        byte_x one chain, Σ q·X8)."""
        b, prep = self.b, self.prep
        ity = ir.VectorType(I32, SUPER // SUB)
        fn = intrinsic(b.module, "llvm.x86.avx512.vpdpbusd.512", ity, [ity, ity, ity])
        sources = self.lanes.sources(b, ptr)
        if prep.byte_x:
            dot = ir.Constant(ity, None)
            for c, (_, xl) in enumerate(xs):
                dot = b.call(fn, [dot, b.bitcast(self.lanes.codes(b, ptr, sources, c), ity), xl])
            self._add_sums(k, dot, sub)
            return
        high = ir.Constant(ity, None)
        codes = []
        for c, (xh, _) in enumerate(xs):
            codes.append(b.bitcast(self.lanes.codes(b, ptr, sources, c), ity))
            high = b.call(fn, [high, codes[-1], xh])
        low = _times256(b, high, prep.pattern) if LOW_FROM_HIGH else ir.Constant(ity, None)
        for q, (_, xl) in zip(codes, xs, strict=True):
            low = b.call(fn, [low, q, xl])
        self._add_sums(k, low if LOW_FROM_HIGH else b.add(_times256(b, high, prep.pattern), low), sub)

    def _add_sums(self, k: ir.Value, sums: ir.Value, sub: SubScales) -> None:
        """acc += sums·scale·sx per lane: `sums` the super-block's integer dot products as <16 x i32>, lane L
        holding values of the 16 at 16L (summed per sub-block) or those LaneCodes puts there; one
        conversion and one FMA."""
        b = self.b
        per16 = shuffle(b, sub.scale, sub.scale, [i * SUB // sub.size for i in range(SUPER // SUB)])
        sx = load_vec(b, self.prep.sx16, b.mul(k, i64c(SUPER // SUB)), align=64, ty=per16.type)
        ds16 = b.fmul(per16, sx)
        self.acc.set(fma(b, b.sitofp(sums, ds16.type), ds16, self.acc.get()))

    def result(self) -> ir.Value:
        b = self.b
        bias = self.bias.get()
        parts = [shuffle(b, bias, bias, list(range(lo, lo + VL))) for lo in range(0, bias.type.count, VL)]
        acc = self.acc.get()
        parts += [shuffle(b, acc, acc, list(range(lo, lo + VL))) for lo in range(0, acc.type.count, VL)]
        return hsum(b, tree_sum(b, parts))


def int_emitter(b: ir.IRBuilder, dtype: DType, variant: Variant, n_cols: int, accumulate: bool, w: ir.Value,
                x: ir.Value, y: ir.Value) -> Callable[..., None]:
    """Prepare x (emitted at the builder's position) and return `emit(first_row, count, stride=None)`,
    which emits y[first + i·stride] (+)= W[first + i·stride]·x for i < count (stride 1 where None)."""
    width = chunk_width(variant)
    pattern = shift_pattern(b, width) if SHIFT_BY_SHUFFLE and variant.vnni else None
    factor = -float(code_bias(dtype)) if BIAS_IN_XSUM and code_bias(dtype) else 1.0
    lanes = lane_codes(dtype, variant)
    prep = _PreparedX(b, x, n_cols, sub_size(dtype), pattern, factor, lanes,
                      byte_x=lanes is not None and dtype in BYTE_X_TYPES)
    row_bytes = dtype.row_bytes(n_cols)

    def emit(first: ir.Value, count: int, stride: ir.Value | None = None) -> None:
        ahead = rows_ahead(row_bytes, count, stride, PREFETCH_TARGET, PREFETCH_GROUPS)
        rows = [_RowDot(b, dtype, variant, prep, row_at(b, w, first, row_index(b, i, stride), row_bytes), ahead,
                        lanes) for i in range(count)]
        with counted_loop(b, 0, n_cols // SUPER, name="sblk") as k:
            base = b.mul(k, i64c(SUPER))
            xs = []
            for c in range(SUPER // width):
                at = b.add(base, i64c(width * c))
                xh = None if prep.byte_x else prep.bytes_at(b, prep.xh, at, width)
                xs.append((xh, prep.bytes_at(b, prep.xl, at, width)))
            for rd in rows:
                rd.add_superblock(k, xs)
        store_results(b, y, first, [rd.result() for rd in rows], accumulate, stride)

    return emit
