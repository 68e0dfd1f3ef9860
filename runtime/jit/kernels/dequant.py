"""Decode one block of 32 weights, of any stored type, into a <32 x float> vector in IR.

This is the one place that knows each ggml block layout (see runtime/quant/codec.py for the same
layouts in numpy). F32 and F16 rows are treated as "blocks" of 32 plain values, so every kernel is
written once over blocks. LLVM splits the 32-lane vectors into the host's registers (4 × AVX2).
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F16, F32, I8, I32, intrinsic
from runtime.quant.types import DType

LANES = 32
V32F = ir.VectorType(F32, LANES)
V32I8 = ir.VectorType(I8, LANES)
V32I32 = ir.VectorType(I32, LANES)
V16I8 = ir.VectorType(I8, 16)


def block_stride(dtype: DType) -> int:
    """Bytes between consecutive groups of 32 values in a row."""
    return dtype.block_bytes * (LANES // dtype.block_size)


def _splat(b: ir.IRBuilder, value: ir.Value, ty: ir.VectorType) -> ir.Value:
    vec = b.insert_element(ir.Constant(ty, ir.Undefined), value, ir.Constant(I32, 0))
    return b.shuffle_vector(vec, ir.Constant(ty, ir.Undefined), ir.Constant(ir.VectorType(I32, ty.count), None))


def _const_vec(ty: ir.VectorType, values: list[int]) -> ir.Constant:
    return ir.Constant(ty, [ir.Constant(ty.element, v) for v in values])


def _at(b: ir.IRBuilder, block: ir.Value, offset: int, ty: ir.Type) -> ir.Value:
    p = b.gep(block, [ir.Constant(I32, offset)], inbounds=True) if offset else block
    return b.load(b.bitcast(p, ty.as_pointer()), align=1)


def _scale(b: ir.IRBuilder, block: ir.Value, offset: int) -> ir.Value:
    return b.fpext(_at(b, block, offset, F16), F32)


def _nibbles(b: ir.IRBuilder, block: ir.Value, offset: int) -> ir.Value:
    """32 × i8: low nibbles of 16 bytes (values 0-15), then their high nibbles (values 16-31)."""
    qs = _at(b, block, offset, V16I8)
    lo = b.and_(qs, _const_vec(V16I8, [0x0F] * 16))
    hi = b.lshr(qs, _const_vec(V16I8, [4] * 16))
    return b.shuffle_vector(lo, hi, _const_vec(ir.VectorType(I32, 32), list(range(32))))


def _fifth_bits(b: ir.IRBuilder, block: ir.Value, offset: int) -> ir.Value:
    """32 × i8: 16 where bit j of the little-endian u32 at `offset` is set, else 0, for value j.

    Byte-wise (broadcast byte j/8 to lane j, test bit j%8), which stays in one vector register.
    """
    qh = _at(b, block, offset, ir.VectorType(I8, 4))
    spread = b.shuffle_vector(qh, qh, _const_vec(ir.VectorType(I32, 32), [j // 8 for j in range(32)]))
    bits = b.and_(spread, _const_vec(V32I8, [(1 << (j % 8)) - 256 * ((1 << (j % 8)) > 127) for j in range(32)]))
    is_set = b.icmp_unsigned("!=", bits, ir.Constant(V32I8, None))
    return b.select(is_set, _const_vec(V32I8, [16] * 32), ir.Constant(V32I8, None))


def decode_block(b: ir.IRBuilder, module: ir.Module, dtype: DType, block: ir.Value) -> ir.Value:
    """The 32 weights starting at `block` (an i8*) as <32 x float>."""
    if dtype is DType.F32:
        return _at(b, block, 0, V32F)
    if dtype is DType.F16:
        return b.fpext(_at(b, block, 0, ir.VectorType(F16, LANES)), V32F)
    fma = intrinsic(module, "llvm.fmuladd.v32f32", V32F, [V32F, V32F, V32F])
    if dtype is DType.Q8_0:
        q = b.sitofp(_at(b, block, 2, V32I8), V32F)
        return b.fmul(q, _splat(b, _scale(b, block, 0), V32F))
    if dtype is DType.Q4_0:
        q = b.sub(_nibbles(b, block, 2), _const_vec(V32I8, [8] * 32))
        return b.fmul(b.sitofp(q, V32F), _splat(b, _scale(b, block, 0), V32F))
    if dtype is DType.Q4_1:
        q = b.uitofp(_nibbles(b, block, 4), V32F)
        return b.call(fma, [q, _splat(b, _scale(b, block, 0), V32F), _splat(b, _scale(b, block, 2), V32F)])
    if dtype is DType.Q5_0:
        q = b.sub(b.or_(_nibbles(b, block, 6), _fifth_bits(b, block, 2)), _const_vec(V32I8, [16] * 32))
        return b.fmul(b.sitofp(q, V32F), _splat(b, _scale(b, block, 0), V32F))
    if dtype is DType.Q5_1:
        q = b.or_(_nibbles(b, block, 8), _fifth_bits(b, block, 4))
        return b.call(fma, [b.uitofp(q, V32F), _splat(b, _scale(b, block, 0), V32F),
                            _splat(b, _scale(b, block, 2), V32F)])
    raise ValueError(f"no kernel for weight type {dtype.name}")


def row_pointer(b: ir.IRBuilder, w: ir.Value, row: ir.Value, row_bytes: int) -> ir.Value:
    return b.gep(w, [b.mul(row, ir.Constant(row.type, row_bytes))], inbounds=True)


