"""Decode K-quant super-blocks (Q2_K … Q6_K: 256 values each, ggml's layouts) in IR.

Every K type is read the same way, factored per sub-block of 16 values (Q4_K/Q5_K's sub-blocks of 32
are two equal halves):

    value[i] = scale[i // 16] · q[i] + bias[i // 16]      q an unsigned integer code (exact in float32)

`sub_scales` gives `scale` and `bias` as two <16 x float> for the whole super-block, and `code_fields`
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
    V8F,
    V8I32,
    VL,
    byte_ptr,
    const_vec,
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
PIECES_PER_SUPER = SUPER // VL
V16F = ir.VectorType(F32, 16)
V16I32 = ir.VectorType(I32, 16)


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


def _lanes(b: ir.IRBuilder, raw: ir.Value, index: list[int], shifts: list[int], masks: list[int]) -> ir.Value:
    """<16 x i32>: lane i = raw[index[i]] >> shifts[i] & masks[i] (raw: bytes zero-extended to i32)."""
    picked = shuffle(b, raw, raw, index)
    return b.and_(b.lshr(picked, const_vec(V16I32, shifts)), const_vec(V16I32, masks))


def _bytes_as_i32(b: ir.IRBuilder, block: ir.Value, offset: int, count: int) -> ir.Value:
    return b.zext(load_as(b, block, offset, ir.VectorType(I8, count)), ir.VectorType(I32, count))


def _k4_scales(b: ir.IRBuilder, block: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Q4_K/Q5_K: the 6-bit scale and min of each 32-value sub-block j, in lanes 2j and 2j+1, from the
    12 bytes q at 4: j < 4: q[j] & 63, q[j+4] & 63; j ≥ 4: q[j+4] & 15 | (q[j-4] >> 6) << 4,
    q[j+4] >> 4 | (q[j] >> 6) << 4."""
    q = _bytes_as_i32(b, block, 4, 12)
    js = [i // 2 for i in range(16)]

    def six_bits(low_idx: list[int], low_shift: list[int], high_idx: list[int]) -> ir.Value:
        low = _lanes(b, q, low_idx, low_shift, [63 if j < 4 else 15 for j in js])
        high = _lanes(b, q, high_idx, [6] * 16, [0 if j < 4 else 3 for j in js])
        return b.or_(low, b.shl(high, splat_const(V16I32, 4)))

    sc = six_bits([j if j < 4 else j + 4 for j in js], [0] * 16, [0 if j < 4 else j - 4 for j in js])
    m = six_bits([j + 4 for j in js], [0 if j < 4 else 4 for j in js], [0 if j < 4 else j for j in js])
    return sc, m


def _q3_scales(b: ir.IRBuilder, block: ir.Value) -> ir.Value:
    """Q3_K: the 16 6-bit scales s (before − 32) from the 12 bytes q at 96: the low 4 bits are
    q[s] & 15 (s < 8) or q[s-8] >> 4, the high 2 bits q[8 + s % 4] >> 2(s // 4) & 3."""
    q = _bytes_as_i32(b, block, 96, 12)
    low = _lanes(b, q, [s % 8 for s in range(16)], [0 if s < 8 else 4 for s in range(16)], [15] * 16)
    high = _lanes(b, q, [8 + s % 4 for s in range(16)], [2 * (s // 4) for s in range(16)], [3] * 16)
    return b.or_(low, b.shl(high, splat_const(V16I32, 4)))


def sub_scales(b: ir.IRBuilder, dtype: DType, block: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(scale, bias) of the 16 sub-blocks of 16 values of the super-block at i8* `block`, as
    <16 x float> (value = scale·q + bias)."""

    def times(v: ir.Value, s: ir.Value) -> ir.Value:
        return b.fmul(b.sitofp(v, V16F), splat(b, s, 16))

    if dtype is DType.Q2_K:
        raw = _bytes_as_i32(b, block, 0, 16)
        sc = b.and_(raw, splat_const(V16I32, 15))
        m = b.lshr(raw, splat_const(V16I32, 4))
        return times(sc, _half_at(b, block, 80)), times(m, b.fneg(_half_at(b, block, 82)))
    if dtype in (DType.Q4_K, DType.Q5_K):
        sc, m = _k4_scales(b, block)
        return times(sc, _half_at(b, block, 0)), times(m, b.fneg(_half_at(b, block, 2)))
    if dtype is DType.Q3_K:
        s = b.sub(_q3_scales(b, block), splat_const(V16I32, 32))
        scale = times(s, _half_at(b, block, 108))
    elif dtype is DType.Q6_K:
        s = b.sext(load_as(b, block, 192, ir.VectorType(I8, 16)), V16I32)
        scale = times(s, _half_at(b, block, 208))
    else:
        raise ValueError(f"{dtype.name} is not a K-quant type")
    return scale, b.fmul(scale, splat_const(V16F, -float(code_bias(dtype))))


def code_piece(b: ir.IRBuilder, dtype: DType, block: ir.Value, piece: int) -> ir.Value:
    """The codes of values 8·piece … 8·piece+7 as <8 x i32>."""
    group, part = divmod(piece, GROUP // VL)
    codes = None
    for f in code_fields(dtype, group):
        raw = b.zext(load_as(b, block, f.offset + VL * part, ir.VectorType(I8, VL)), V8I32)
        bits = b.and_(b.lshr(raw, splat_const(V8I32, f.shift)), splat_const(V8I32, (1 << f.width) - 1))
        if f.place:
            bits = b.shl(bits, splat_const(V8I32, f.place))
        codes = bits if codes is None else b.or_(codes, bits)
    return codes


def dequantize_superblock(b: ir.IRBuilder, dtype: DType, block: ir.Value) -> list[ir.Value]:
    """The 256 weights of the super-block at i8* `block` as 32 <8 x float> pieces."""
    scale, bias = sub_scales(b, dtype, block)
    out = []
    for p in range(PIECES_PER_SUPER):
        sub = ir.Constant(I32, p * VL // SUB)
        s, m = splat(b, b.extract_element(scale, sub)), splat(b, b.extract_element(bias, sub))
        out.append(fma(b, b.sitofp(code_piece(b, dtype, block, p), V8F), s, m))
    return out


def is_k_quant(dtype: DType) -> bool:
    return dtype in K_QUANT_TYPES


def superblock_at(b: ir.IRBuilder, row: ir.Value, dtype: DType, index: ir.Value) -> ir.Value:
    """i8* to super-block `index` of the row starting at i8* `row`."""
    return byte_ptr(b, row, b.mul(index, ir.Constant(index.type, dtype.block_bytes)))

