"""Decode K-quant super-blocks (Q2_K … Q6_K: 256 values each, ggml's layouts) in IR.

Every K type is read the same way, factored per sub-block of 16 values (Q4_K/Q5_K's sub-blocks of 32
are two equal halves):

    value[i] = scale[i // 16] · q[i] + bias[i // 16]      q an unsigned integer code (exact in float32)

`sub_scales` gives `scale` and `bias` for the whole super-block (per 16 values, or per 32 for
Q4_K/Q5_K; `per_sixteen` widens those), and `code_fields`
says where the bits of q lie: each group of 32 consecutive values takes its codes from one or two runs
of 32 bytes (byte j of a run holds value j's bits `shift … shift+width-1`, placed at bit `place` of the
code). Codes are at most 6 bits, so they fit the unsigned bytes of vpdpbusd (matvec_kquant.py).

Layouts (byte offsets in the super-block; f16 d, dmin; value order as in ggml's dequantizers):

    Q2_K (84)   0 scales[16] (low nibble scale, high nibble min)  16 qs[64]  80 d  82 dmin
                value = d·sc·q − dmin·m;  q = qs[32h + l] >> 2j & 3 for value 128h + 32j + l
    Q3_K (110)  0 hmask[32]  32 qs[64]  96 scales[12] (16 × 6 bits)  108 d
                value = d·(s − 32)·(q − 4);  q = 2 bits as Q2_K | (hmask[l] >> (4h + j) & 1) << 2
    Q4_K (144)  0 d  2 dmin  4 scales[12] (8 × 6-bit scale and min)  16 qs[128]
                value = d·sc·q − dmin·m;  q = qs[32c + l] >> 4t & 15 for value 64c + 32t + l
    Q5_K (176)  as Q4_K with 16 qh[32] and qs at 48;  q |= (qh[l] >> (2c + t) & 1) << 4
    Q6_K (210)  0 ql[128]  128 qh[64]  192 scales[16] (int8)  208 d
                value = d·sc·(q − 32);  value 128n + 32r + l: ql[64n + 32(r & 1) + l] >> 4(r >> 1) & 15
                                         | (qh[32n + l] >> 2r & 3) << 4
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from runtime.jit.irkit import F32, I8, I16, I32
from runtime.jit.kernels.irhelpers import (
    VL,
    byte_ptr,
    fma,
    half_to_float,
    load_as,
    shuffle,
    splat,
    splat_const,
)
from runtime.quant.types import K_QUANT_TYPES, DType

SUPER = 256  # values per super-block
SUB = 16  # values per scale (Q4_K/Q5_K: two equal halves of a 32-value sub-block)
GROUP = 32  # values whose codes come from one run of 32 bytes per field
GROUPS = SUPER // GROUP
V16F = ir.VectorType(F32, 16)
V16I32 = ir.VectorType(I32, 16)
V16I8 = ir.VectorType(I8, 16)
# Q3_K/Q4_K/Q5_K's 6-bit scales unpacked in two 64-bit scalar words instead of four 32-bit ones, so that two
# vector inserts (vmovq, vpinsrq) instead of four carry them into a vector (a switch for A/B runs)
SCALES_IN_QWORDS = True
# where _k4_scales_wide puts Q4_K/Q5_K's scales sc0-7 then mins m0-7: lanes sc0-3, m0-3, sc4-7, m4-7
K4_QWORD_ORDER = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]


@dataclass(frozen=True)
class Field:
    """Bits `shift … shift+width-1` of the 32 bytes from `offset`, placed at bit `place` of the codes."""

    offset: int
    shift: int
    width: int
    place: int = 0


def code_fields(dtype: DType, group: int) -> tuple[Field, ...]:
    """Where the codes of values 32·group … 32·group+31 lie (see the module docstring)."""
    if dtype is DType.Q2_K:
        return (Field(16 + 32 * (group // 4), 2 * (group % 4), 2),)
    if dtype is DType.Q3_K:
        return (Field(32 + 32 * (group // 4), 2 * (group % 4), 2), Field(0, group, 1, 2))
    if dtype is DType.Q4_K:
        return (Field(16 + 32 * (group // 2), 4 * (group % 2), 4),)
    if dtype is DType.Q5_K:
        return (Field(48 + 32 * (group // 2), 4 * (group % 2), 4), Field(16, group, 1, 4))
    if dtype is DType.Q6_K:
        n, r = divmod(group, 4)
        return (Field(64 * n + 32 * (r % 2), 4 * (r // 2), 4), Field(128 + 32 * n, 2 * r, 2, 4))
    raise ValueError(f"{dtype.name} is not a K-quant type")


def code_bias(dtype: DType) -> int:
    """The code offset folded into `bias` for the types without mins: value = scale·(q − offset)."""
    return {DType.Q3_K: 4, DType.Q6_K: 32}.get(dtype, 0)


def _half_at(b: ir.IRBuilder, block: ir.Value, offset: int) -> ir.Value:
    return half_to_float(b, load_as(b, block, offset, I16))


def _bytes_as_i32(b: ir.IRBuilder, block: ir.Value, offset: int, count: int) -> ir.Value:
    return b.zext(load_as(b, block, offset, ir.VectorType(I8, count)), ir.VectorType(I32, count))


def _words(b: ir.IRBuilder, block: ir.Value, offset: int) -> list[ir.Value]:
    """The three little-endian u32 words of a 12-byte scale field."""
    return [load_as(b, block, offset + 4 * i, I32) for i in range(3)]


def _bytes_of_words(b: ir.IRBuilder, words: list[ir.Value]) -> ir.Value:
    """Four u32 words as 16 bytes, zero-extended to <16 x i32> (byte 4i + j of the words in lane 4i + j)."""
    vec = ir.Constant(ir.VectorType(I32, 4), None)
    for i, w in enumerate(words):
        vec = b.insert_element(vec, w, ir.Constant(I32, i))
    return b.zext(b.bitcast(vec, ir.VectorType(I8, 16)), V16I32)


def _c(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


I64 = ir.IntType(64)


def _c64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _qwords_as_bytes(b: ir.IRBuilder, lo: ir.Value, hi: ir.Value) -> ir.Value:
    """Two u64 as 16 bytes, zero-extended to <16 x i32> (byte j of `lo` in lane j, of `hi` in lane 8 + j)."""
    vec = ir.Constant(ir.VectorType(I64, 2), None)
    vec = b.insert_element(b.insert_element(vec, lo, ir.Constant(I32, 0)), hi, ir.Constant(I32, 1))
    return b.zext(b.bitcast(vec, ir.VectorType(I8, 16)), V16I32)


def _k4_scales_wide(b: ir.IRBuilder, block: ir.Value) -> ir.Value:
    """_k4_scales' bytes in 64-bit scalar words, in the order sc0-3, m0-3, sc4-7, m4-7 (K4_QWORD_ORDER): two
    vector inserts instead of four (each a shuffle-port µop on x86)."""
    a = load_as(b, block, 4, I64)  # q[0..7]: u0 | u1 << 32
    u2 = b.zext(load_as(b, block, 12, I32), I64)  # q[8..11]
    low = b.and_(a, _c64(0x3F3F3F3F3F3F3F3F))  # sc0-3 | m0-3 << 32
    # u2 & 15 in the low half, u2 >> 4 & 15 in the high half (the bits u2 << 28 puts into the low half's top
    # nibble are masked off)
    nib = b.and_(b.or_(u2, b.shl(u2, _c64(28))), _c64(0x0F0F0F0F0F0F0F0F))
    tops = b.shl(b.and_(b.lshr(a, _c64(6)), _c64(0x0303030303030303)), _c64(4))  # q[j] >> 6 << 4, j < 8
    return _qwords_as_bytes(b, low, b.or_(nib, tops))


def _q3_scales_wide(b: ir.IRBuilder, block: ir.Value) -> ir.Value:
    """_q3_scales in 64-bit scalar words (two vector inserts instead of four)."""
    a = load_as(b, block, 96, I64)  # q[0..7]
    t = b.zext(load_as(b, block, 104, I32), I64)  # q[8..11]
    four, two = _c64(0x0F0F0F0F0F0F0F0F), _c64(0x0303030303030303)
    t2 = b.or_(t, b.shl(t, _c64(30)))  # t in the low half, t >> 2 in the high half (bits 30-31 of the low half masked)
    s01 = b.or_(b.and_(a, four), b.shl(b.and_(t2, two), _c64(4)))
    s23 = b.or_(b.and_(b.lshr(a, _c64(4)), four), b.shl(b.and_(b.lshr(t2, _c64(4)), two), _c64(4)))
    return _qwords_as_bytes(b, s01, s23)


def _k4_scales(b: ir.IRBuilder, block: ir.Value) -> tuple[ir.Value, list[int]]:
    """Q4_K/Q5_K: the 8 six-bit scales then the 8 mins of the 32-value sub-blocks, in 16 lanes (and the lane
    of each: K4_QWORD_ORDER or in order), from the
    12 bytes q at 4 (j < 4: q[j] & 63, q[j+4] & 63; j ≥ 4: q[j+4] & 15 | (q[j-4] >> 6) << 4,
    q[j+4] >> 4 | (q[j] >> 6) << 4), unpacked four at a time in 32-bit words (scalar registers)."""
    if SCALES_IN_QWORDS:
        return _k4_scales_wide(b, block), K4_QWORD_ORDER
    u0, u1, u2 = _words(b, block, 4)
    six, four, two = _c(0x3F3F3F3F), _c(0x0F0F0F0F), _c(0x03030303)

    def high(u: ir.Value) -> ir.Value:  # each byte's top two bits, moved to bits 4-5
        return b.shl(b.and_(b.lshr(u, _c(6)), two), _c(4))

    sc_hi = b.or_(b.and_(u2, four), high(u0))
    m_hi = b.or_(b.and_(b.lshr(u2, _c(4)), four), high(u1))
    return _bytes_of_words(b, [b.and_(u0, six), sc_hi, b.and_(u1, six), m_hi]), list(range(16))


def _q3_scales(b: ir.IRBuilder, block: ir.Value) -> ir.Value:
    """Q3_K: the 16 six-bit scales s (before − 32) from the 12 bytes q at 96: the low 4 bits are
    q[s] & 15 (s < 8) or q[s-8] >> 4, the high 2 bits q[8 + s % 4] >> 2(s // 4) & 3; four at a time
    in 32-bit words."""
    if SCALES_IN_QWORDS:
        return _q3_scales_wide(b, block)
    a0, a1, t = _words(b, block, 96)
    four, two = _c(0x0F0F0F0F), _c(0x03030303)

    def word(low: ir.Value, low_shift: int, high_shift: int) -> ir.Value:
        lo = b.and_(b.lshr(low, _c(low_shift)) if low_shift else low, four)
        hi = b.and_(b.lshr(t, _c(high_shift)) if high_shift else t, two)
        return b.or_(lo, b.shl(hi, _c(4)))

    return _bytes_of_words(b, [word(a0, 0, 0), word(a1, 0, 2), word(a0, 4, 4), word(a1, 4, 6)])


def sub_size(dtype: DType) -> int:
    """Values per scale: 32 for Q4_K/Q5_K, 16 for the others."""
    return 2 * SUB if dtype in (DType.Q4_K, DType.Q5_K) else SUB


@dataclass
class SubScales:
    """A super-block's factors: value = scale[i // size] · q[i] + bias[i // size], as <256/size x float>."""

    scale: ir.Value
    bias: ir.Value
    size: int


def sub_scales(b: ir.IRBuilder, dtype: DType, block: ir.Value) -> SubScales:
    """The scales and biases of the super-block at i8* `block`: per 32 values for Q4_K/Q5_K, per 16
    for the others."""

    def times(v: ir.Value, s: ir.Value) -> ir.Value:
        return b.fmul(b.sitofp(v, V16F), splat(b, s, 16))

    if dtype is DType.Q2_K:
        raw = _bytes_as_i32(b, block, 0, 16)
        sc = b.and_(raw, splat_const(V16I32, 15))
        m = b.lshr(raw, splat_const(V16I32, 4))
        dm = half_to_float(b, load_as(b, block, 80, ir.VectorType(I16, 2)))  # d and dmin in one conversion
        d, dmin = (b.extract_element(dm, ir.Constant(I32, i)) for i in range(2))
        return SubScales(times(sc, d), times(m, b.fneg(dmin)), SUB)
    if dtype in (DType.Q4_K, DType.Q5_K):
        dm = half_to_float(b, load_as(b, block, 0, ir.VectorType(I16, 2)))
        raw, lane = _k4_scales(b, block)
        is_min = [0] * 16
        for k in range(8, 16):
            is_min[lane[k]] = 1
        both = b.fmul(b.sitofp(raw, V16F), shuffle(b, dm, dm, is_min))
        return SubScales(shuffle(b, both, both, lane[:8]), b.fneg(shuffle(b, both, both, lane[8:])), sub_size(dtype))
    if dtype is DType.Q3_K:
        s = b.sub(_q3_scales(b, block), splat_const(V16I32, 32))
        scale = times(s, _half_at(b, block, 108))
    elif dtype is DType.Q6_K:
        s = b.sext(load_as(b, block, 192, ir.VectorType(I8, 16)), V16I32)
        scale = times(s, _half_at(b, block, 208))
    else:
        raise ValueError(f"{dtype.name} is not a K-quant type")
    return SubScales(scale, b.fmul(scale, splat_const(V16F, -float(code_bias(dtype)))), SUB)


def per_sixteen(b: ir.IRBuilder, sub: SubScales) -> tuple[ir.Value, ir.Value]:
    """(scale, bias) per 16 values, <16 x float> (sub-blocks of 32 repeated)."""
    if sub.size == SUB:
        return sub.scale, sub.bias
    lanes = [i * SUB // sub.size for i in range(SUPER // SUB)]
    return shuffle(b, sub.scale, sub.scale, lanes), shuffle(b, sub.bias, sub.bias, lanes)


def code_piece(b: ir.IRBuilder, dtype: DType, block: ir.Value, piece: int, lanes: int = VL) -> ir.Value:
    """The codes of values lanes·piece … lanes·piece + lanes − 1 as <lanes x i32> (lanes 8 or 16)."""
    group, part = divmod(piece, GROUP // lanes)
    ty = ir.VectorType(I32, lanes)
    codes = None
    for f in code_fields(dtype, group):
        raw = b.zext(load_as(b, block, f.offset + lanes * part, ir.VectorType(I8, lanes)), ty)
        bits = b.and_(b.lshr(raw, splat_const(ty, f.shift)), splat_const(ty, (1 << f.width) - 1))
        if f.place:
            bits = b.shl(bits, splat_const(ty, f.place))
        codes = bits if codes is None else b.or_(codes, bits)
    return codes


def dequantize_superblock(b: ir.IRBuilder, dtype: DType, block: ir.Value, lanes: int = VL) -> list[ir.Value]:
    """The 256 weights of the super-block at i8* `block` as 256/lanes <lanes x float> pieces (lanes 8, or
    16 where 512-bit vectors pay: half the instructions per value)."""
    if SUB % lanes:
        raise ValueError(f"super-blocks are decoded 8 or 16 values at a time (one scale each), not {lanes}")
    scale, bias = per_sixteen(b, sub_scales(b, dtype, block))
    ty = ir.VectorType(F32, lanes)
    out = []
    for p in range(SUPER // lanes):
        sub = ir.Constant(I32, p * lanes // SUB)
        s, m = splat(b, b.extract_element(scale, sub), lanes), splat(b, b.extract_element(bias, sub), lanes)
        out.append(fma(b, b.sitofp(code_piece(b, dtype, block, p, lanes), ty), s, m))
    return out


def is_k_quant(dtype: DType) -> bool:
    return dtype in K_QUANT_TYPES


def superblock_at(b: ir.IRBuilder, row: ir.Value, dtype: DType, index: ir.Value) -> ir.Value:
    """i8* to super-block `index` of the row starting at i8* `row`."""
    return byte_ptr(b, row, b.mul(index, ir.Constant(index.type, dtype.block_bytes)))

