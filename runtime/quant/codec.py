"""Quantize float32 rows into ggml blocks and decode them back, for every type we store.

Layouts (32 values per block; nibble byte j holds value j low and value j+16 high):
    Q8_0  f16 d, 32 × int8                   x ≈ q·d
    Q4_0  f16 d, 16 nibble bytes             x ≈ (q-8)·d
    Q4_1  f16 d, f16 m, 16 nibble bytes      x ≈ q·d + m
    Q5_0  f16 d, u32 high bits, 16 bytes     x ≈ (q-16)·d
    Q5_1  f16 d, f16 m, u32 high bits, 16 B  x ≈ q·d + m
The arithmetic (scales in float32, the rounding rule of each type, which value sets the scale) is
ggml's reference, so output is byte-identical to `gguf.quants` and to llama.cpp: a file we write is
readable by any GGUF tool and vice versa. Everything is vectorised over (n_blocks, 32) views.
"""

from __future__ import annotations

import numpy as np

from runtime.quant.types import DType

QK = 32
_GROUP = 2048  # blocks encoded at a time
_F32 = np.float32


def _blocks(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"expected a 2-D array of rows, got shape {rows.shape}")
    if rows.shape[1] % QK:
        raise ValueError(f"rows of {rows.shape[1]} values cannot be quantized: need a multiple of {QK}")
    return np.ascontiguousarray(rows, dtype=_F32).reshape(-1, QK)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d where d != 0, else 0 (float32)."""
    out = np.zeros_like(d)
    np.divide(_F32(1.0), d, out=out, where=d != 0)
    return out


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 values < 16 (or the low 4 bits of larger ones) → (n, 16) bytes."""
    return (q[:, :16] & 0x0F) | (q[:, 16:] << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of 32 values as a little-endian uint32 → (n, 4) bytes."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def _signed_extreme(b: np.ndarray) -> np.ndarray:
    """Per block, the value of largest magnitude with its sign (the first one on ties)."""
    idx = np.abs(b).argmax(axis=1)
    return b[np.arange(b.shape[0]), idx][:, None]


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (C's roundf), exactly."""
    a = np.abs(v)
    t = np.trunc(a)
    a -= t  # the fraction, exactly
    t += a >= _F32(0.5)
    return np.copysign(t, v, out=t)


def _block_reduce(b: np.ndarray, op: np.ufunc) -> np.ndarray:
    """op-reduction of each 32-value block by halving (much faster than reducing a short axis)."""
    m = op(b[:, :16], b[:, 16:])
    for width in (8, 4, 2, 1):
        m = op(m[:, :width], m[:, width : 2 * width], out=m[:, :width])
    return m[:, :1].copy()


def _q8_0(b: np.ndarray) -> np.ndarray:
    d = _block_reduce(np.abs(b), np.maximum) / _F32(127)
    q = _round_half_away(b * _inverse(d)).astype(np.int8).view(np.uint8)
    return np.concatenate([_f16_bytes(d), q], axis=1)


def _symmetric(b: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0/Q5_0: scale from the signed extreme; codes trunc(x/d + levels/2 + 0.5)."""
    half = levels // 2
    d = _signed_extreme(b) / _F32(-half)
    q = np.trunc(b * _inverse(d) + _F32(half + 0.5)).clip(0, levels - 1).astype(np.uint8)
    return d, q


def _affine(b: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1/Q5_1: x ≈ q·d + min; codes trunc((x - min)/d + 0.5)."""
    lo = _block_reduce(b, np.minimum)
    d = (_block_reduce(b, np.maximum) - lo) / _F32(levels - 1)
    q = np.trunc((b - lo) * _inverse(d) + _F32(0.5)).clip(0, levels - 1).astype(np.uint8)
    return d, lo, q


def _q4_0(b: np.ndarray) -> np.ndarray:
    d, q = _symmetric(b, 16)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def _q4_1(b: np.ndarray) -> np.ndarray:
    d, lo, q = _affine(b, 16)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)], axis=1)


def _q5_0(b: np.ndarray) -> np.ndarray:
    d, q = _symmetric(b, 32)
    return np.concatenate([_f16_bytes(d), _high_bits(q), _pack_nibbles(q)], axis=1)


def _q5_1(b: np.ndarray) -> np.ndarray:
    d, lo, q = _affine(b, 32)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _high_bits(q), _pack_nibbles(q)], axis=1)


_QUANTIZERS = {DType.Q8_0: _q8_0, DType.Q4_0: _q4_0, DType.Q4_1: _q4_1, DType.Q5_0: _q5_0, DType.Q5_1: _q5_1}


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16), rounded to nearest even; NaNs stay (quiet) NaNs."""
    n = np.ascontiguousarray(x, dtype=_F32).view(np.uint32)
    is_nan = (n & 0x7FFFFFFF) > 0x7F800000
    rounded = ((n.astype(np.uint64) + 0x7FFF + ((n >> 16) & 1)) >> 16).astype(np.uint16)
    quiet_nan = ((n >> 16) | 0x40).astype(np.uint16)
    return np.where(is_nan, quiet_nan, rounded)


def bf16_to_float32(u16: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bits (uint16) to float32 exactly."""
    return (np.asarray(u16, dtype=np.uint16).astype(np.uint32) << 16).view(_F32)


def quantize(rows: np.ndarray, dtype: DType) -> np.ndarray:
    """Encode float32 rows (n_rows, n_cols) as `dtype`: uint8 (n_rows, row_bytes) for block types,
    float16 / uint16 (bf16 bits) / float32 arrays of the same shape for float types."""
    if dtype is DType.F32:
        return np.ascontiguousarray(rows, dtype=_F32)
    if dtype is DType.F16:
        return np.asarray(rows, dtype=_F32).astype(np.float16)
    if dtype is DType.BF16:
        return float32_to_bf16(rows)
    n_rows = np.asarray(rows).shape[0]
    blocks = _blocks(rows)
    encode = _QUANTIZERS[dtype]
    out = np.empty((blocks.shape[0], dtype.block_bytes), dtype=np.uint8)
    for start in range(0, blocks.shape[0], _GROUP):  # groups small enough that temporaries stay in cache
        out[start : start + _GROUP] = encode(blocks[start : start + _GROUP])
    return out.reshape(n_rows, -1)


def _split(raw: np.ndarray, dtype: DType) -> np.ndarray:
    raw = np.ascontiguousarray(raw).view(np.uint8)
    if raw.shape[-1] % dtype.block_bytes:
        raise ValueError(f"{raw.shape[-1]} bytes per row is not a whole number of {dtype.name} blocks")
    return raw.reshape(-1, dtype.block_bytes)


def _scale(b: np.ndarray, at: int) -> np.ndarray:
    return b[:, at : at + 2].copy().view(np.float16).astype(_F32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=1, bitorder="little") << 4


def to_float32(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """Decode rows stored as `dtype` (as `LazyTensor.read_raw_rows` returns them) to float32."""
    if dtype is DType.F32:
        return np.asarray(raw, dtype=_F32)
    if dtype is DType.F16:
        return np.asarray(raw).view(np.float16).astype(_F32)
    if dtype is DType.BF16:
        return bf16_to_float32(raw)
    n_rows = raw.shape[0]
    blocks = _split(raw, dtype)
    out = np.empty((blocks.shape[0], QK), dtype=_F32)
    for start in range(0, blocks.shape[0], _GROUP):
        out[start : start + _GROUP] = _decode(blocks[start : start + _GROUP], dtype)
    return out.reshape(n_rows, -1)


def _decode(b: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype is DType.Q8_0:
        v = b[:, 2:].view(np.int8).astype(_F32) * _scale(b, 0)
    elif dtype is DType.Q4_0:
        v = (_nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)).astype(_F32) * _scale(b, 0)
    elif dtype is DType.Q4_1:
        v = _nibbles(b[:, 4:]).astype(_F32) * _scale(b, 0) + _scale(b, 2)
    elif dtype is DType.Q5_0:
        q = (_nibbles(b[:, 6:]) | _fifth_bits(b[:, 2:6])).astype(np.int8) - np.int8(16)
        v = q.astype(_F32) * _scale(b, 0)
    else:  # Q5_1
        q = _nibbles(b[:, 8:]) | _fifth_bits(b[:, 4:8])
        v = q.astype(_F32) * _scale(b, 0) + _scale(b, 2)
    return v
