"""Decode one block of 32 weights, of any stored type, into four <8 x float> pieces (IR).

This is the one place that knows each ggml block layout (runtime/quant/codec.py has the same layouts
in numpy). F32 and F16 rows are read as "blocks" of 32 plain values, so every kernel is written once
over blocks.

Quantized blocks are returned factored, so that a dot product needs no per-weight scaling:

    value[j] = scale · q[j] + bias      →   Σ value[j]·x[j] = scale · Σ q[j]·x[j] + bias · Σ x[j]

`q` are the integer codes (exact in float32), `scale` is d and `bias` is m (Q4_1, Q5_1), -8·d (Q4_0),
-16·d (Q5_0) or absent (Q8_0). Layouts (little-endian, f16 scales):

    Q8_0  d, 32 × int8              Q4_0  d, 16 nibble bytes          Q4_1  d, m, 16 nibble bytes
    Q5_0  d, u32 qh, 16 nibble B    Q5_1  d, m, u32 qh, 16 nibble B
    nibble byte j: value j in its low nibble, value j+16 in its high nibble; bit j of qh: 5th bit of value j.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from runtime.jit.irkit import F32, I8, I16, I32
from runtime.jit.kernels.irhelpers import (
    BLOCK,
    PIECES,
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

SUPPORTED: tuple[DType, ...] = (DType.F32, DType.F16, DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0)
V16I8 = ir.VectorType(I8, 16)
V8I8 = ir.VectorType(I8, 8)


@dataclass
class Block:
    """32 decoded weights: `pieces` are the values (floats) or integer codes (quantized, see module doc)."""

    pieces: list[ir.Value]
    scale: ir.Value | None = None
    bias: ir.Value | None = None


def check_supported(dtype: DType, n_cols: int) -> None:
    """ValueError unless the kernels handle rows of `n_cols` values of `dtype` (K-quants: dequant_k.py)."""
    if dtype not in SUPPORTED and dtype not in K_QUANT_TYPES:
        raise ValueError(f"no weight kernel for type {dtype.name}")
    unit = max(BLOCK, dtype.block_size)
    if n_cols <= 0 or n_cols % unit:
        raise ValueError(f"rows of {n_cols} values are not supported: need a positive multiple of {unit}")


def block_stride(dtype: DType) -> int:
    """Bytes between consecutive groups of 32 values in a row."""
    return dtype.block_bytes * (BLOCK // dtype.block_size)


def _half(b: ir.IRBuilder, block: ir.Value, offset: int) -> ir.Value:
    return half_to_float(b, load_as(b, block, offset, I16, align=2))


def _scales(b: ir.IRBuilder, block: ir.Value, with_min: bool) -> tuple[ir.Value, ir.Value | None]:
    """d (and m) at the start of the block; both halves converted in one instruction."""
    if not with_min:
        return _half(b, block, 0), None
    dm = half_to_float(b, load_as(b, block, 0, ir.VectorType(I16, 2), align=2))
    return b.extract_element(dm, ir.Constant(I32, 0)), b.extract_element(dm, ir.Constant(I32, 1))


def _nibble_codes(b: ir.IRBuilder, block: ir.Value, offset: int) -> list[ir.Value]:
    """The 32 nibbles at `offset` as four <8 x i32> pieces (values 0-7, 8-15, 16-23, 24-31).

    Each byte is moved to the low byte of its own i32 lane by one byte shuffle (x86: a zero-extending
    load, vpmovzxbd), then its low nibble is masked and its high nibble shifted out.
    """
    qs = load_as(b, block, offset, V16I8)
    zero = ir.Constant(V16I8, None)
    out_lo, out_hi = [], []
    for half in range(2):
        lanes: list[int] = []
        for i in range(VL):
            lanes += [half * VL + i, 16, 16, 16]
        words = b.bitcast(shuffle(b, qs, zero, lanes), V8I32)
        out_lo.append(b.and_(words, splat_const(V8I32, 0x0F)))
        out_hi.append(b.lshr(words, splat_const(V8I32, 4)))
    return out_lo + out_hi


def _fifth_bits(b: ir.IRBuilder, block: ir.Value, offset: int) -> list[ir.Value]:
    """16 where bit j of the u32 at `offset` is set, else 0, as four <8 x i32> pieces.

    Each piece shifts a broadcast copy of the word right by a per-lane amount that moves bit j to
    bit 4 (x86: vpsrlvd), then masks. Values 0-3 would need a left shift, so piece 0 reads the word
    one byte earlier (still inside the block: qh follows the scales), where bit j sits at j + 8.
    (Measured faster than testing one bit per lane with compares.)
    """
    early = splat(b, load_as(b, block, offset - 1, I32))
    word = splat(b, load_as(b, block, offset, I32))
    sixteen = splat_const(V8I32, 16)
    pieces = []
    for k in range(PIECES):
        src, amounts = (early, [i + 4 for i in range(VL)]) if k == 0 else (word, [VL * k + i - 4 for i in range(VL)])
        pieces.append(b.and_(b.lshr(src, const_vec(V8I32, amounts)), sixteen))
    return pieces


def _to_float(b: ir.IRBuilder, codes: list[ir.Value]) -> list[ir.Value]:
    return [b.sitofp(c, V8F) for c in codes]  # codes are non-negative: the signed conversion is exact


def decode_block(b: ir.IRBuilder, dtype: DType, block: ir.Value) -> Block:
    """The 32 weights starting at i8* `block`, factored as in the module docstring."""
    if dtype is DType.F32:
        return Block([load_as(b, block, 4 * VL * k, V8F) for k in range(PIECES)])
    if dtype is DType.F16:
        return Block([half_to_float(b, load_as(b, block, 2 * VL * k, ir.VectorType(I16, VL))) for k in range(PIECES)])
    if dtype is DType.Q8_0:
        d, _ = _scales(b, block, False)
        q = [b.sitofp(b.sext(load_as(b, block, 2 + VL * k, V8I8), V8I32), V8F) for k in range(PIECES)]
        return Block(q, d)
    if dtype is DType.Q4_0:
        d, _ = _scales(b, block, False)
        return Block(_to_float(b, _nibble_codes(b, block, 2)), d, b.fmul(d, ir.Constant(F32, -8.0)))
    if dtype is DType.Q4_1:
        d, m = _scales(b, block, True)
        return Block(_to_float(b, _nibble_codes(b, block, 4)), d, m)
    if dtype is DType.Q5_0:
        d, _ = _scales(b, block, False)
        codes = [b.or_(n, h) for n, h in zip(_nibble_codes(b, block, 6), _fifth_bits(b, block, 2), strict=True)]
        return Block(_to_float(b, codes), d, b.fmul(d, ir.Constant(F32, -16.0)))
    if dtype is DType.Q5_1:
        d, m = _scales(b, block, True)
        codes = [b.or_(n, h) for n, h in zip(_nibble_codes(b, block, 8), _fifth_bits(b, block, 4), strict=True)]
        return Block(_to_float(b, codes), d, m)
    raise ValueError(f"no weight kernel for type {dtype.name}")


def dequantize_block(b: ir.IRBuilder, dtype: DType, block: ir.Value) -> list[ir.Value]:
    """The 32 weights starting at `block` as four <8 x float> values (scale and bias applied)."""
    blk = decode_block(b, dtype, block)
    if blk.scale is None:
        return blk.pieces
    d = splat(b, blk.scale)
    if blk.bias is None:
        return [b.fmul(q, d) for q in blk.pieces]
    m = splat(b, blk.bias)
    return [fma(b, q, d, m) for q in blk.pieces]


@dataclass(frozen=True)
class NibbleLayout:
    """Where the parts of a 4- or 5-bit block lie (byte offsets) and how its bias is formed."""

    has_min: bool  # f16 m follows the f16 d at offset 0 (else the bias is `offset`·d)
    qh: int | None  # u32 of fifth bits (Q5_*)
    qs: int  # 16 nibble bytes
    offset: float  # code offset when there is no m: value = d·(q + offset)


NIBBLE_LAYOUTS: dict[DType, NibbleLayout] = {
    DType.Q4_0: NibbleLayout(False, None, 2, -8.0),
    DType.Q4_1: NibbleLayout(True, None, 4, 0.0),
    DType.Q5_0: NibbleLayout(False, 2, 6, -16.0),
    DType.Q5_1: NibbleLayout(True, 4, 8, 0.0),
}


def block_at(b: ir.IRBuilder, row: ir.Value, dtype: DType, index: ir.Value | int) -> ir.Value:
    """i8* to group `index` (of 32 values) of the row starting at i8* `row`."""
    stride = block_stride(dtype)
    if isinstance(index, int):
        return byte_ptr(b, row, index * stride)
    return byte_ptr(b, row, b.mul(index, ir.Constant(index.type, stride)))
