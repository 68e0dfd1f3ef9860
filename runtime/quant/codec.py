"""Quantization codec: float32 rows to ggml blocks and back, plus the float16/bfloat16 conversions.

The K-quants (Q2_K…Q6_K, super-blocks of 256) live in `runtime.quant.kquants`; `quantize` and
`to_float32` hand them over, so every caller handles them. The layouts below are the legacy types'.

`quantize` and `to_float32` are what conversion (`runtime.convert`) and loading (`LazyTensor.read_rows`)
use for every stored type. Block layouts (32 values a block; in nibble bytes, byte j holds value j in
its low nibble and value j+16 in its high nibble; the 4 high-bit bytes are a little-endian uint32 whose
bit i is bit 4 of value i):

    Q8_0  f16 d, 32 × int8                     x ≈ q·d         d = max|x| / 127, q = round(x/d)
    Q4_0  f16 d, 16 nibble bytes               x ≈ (q-8)·d     d = e / -8,  q = trunc(x/d + 8.5)
    Q5_0  f16 d, 4 high-bit bytes, 16 nibbles  x ≈ (q-16)·d    d = e / -16, q = trunc(x/d + 16.5)
    Q4_1  f16 d, f16 m, 16 nibble bytes        x ≈ q·d + m     d = (max-min)/15, q = trunc((x-min)/d + .5)
    Q5_1  f16 d, f16 m, 4 high bits, 16 nib.   x ≈ q·d + m     d = (max-min)/31, m = min

(e is the block's value of largest magnitude with its sign, the first one on ties; 1/d is taken as 0
when d is 0; Q8_0's round is half away from zero; codes are clipped to the type's range.) The float32
arithmetic is the same sequence of IEEE operations as ggml's reference quantizer (and `gguf.quants`), so
the bytes are identical, edge cases included: zero and constant blocks, ties, denormal scales whose
inverse overflows, scales that overflow float16, signed zeros.

Speed: everything works on groups of blocks small enough to stay in cache; per-block reductions are
done by pairwise halving over strided 1-D views (numpy's reduction over a 32-long axis is slow), and
nibble / high-bit packing runs on uint64 views. Numpy releases the GIL inside each operation, so several
threads can convert chunks at once.
"""

from __future__ import annotations

import numpy as np

from runtime.quant.kquants import dequantize_k, quantize_k
from runtime.quant.types import K_QUANT_TYPES, DType

__all__ = ["QK", "bf16_to_float32", "float32_to_bf16", "quantize", "to_float32"]

QK = 32  # values per block
_GROUP = 4096  # blocks handled at a time (512 KiB of float32)

_F32 = np.float32
_LO_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_LOW_BITS = np.uint64(0x0101010101010101)
_GATHER_BITS = np.uint64(0x0102040810204080)  # (bytes of 0/1) * this >> 56 = the 8 bits, byte 0 first
_SHIFT4 = np.uint64(4)
_SHIFT56 = np.uint64(56)
# round half away from zero as trunc(v + copysign(this, v)): exact for |v| < 2**23
_JUST_BELOW_HALF = np.nextafter(_F32(0.5), _F32(0))


def _spread_table() -> np.ndarray:
    """uint64 per byte value b: byte i of the result is (bit i of b) << 4 (a Q5 code's fifth bit)."""
    b = np.arange(256, dtype=np.uint64)
    out = np.zeros(256, dtype=np.uint64)
    for i in range(8):
        out |= ((b >> np.uint64(i)) & np.uint64(1)) << np.uint64(8 * i + 4)
    return out


_SPREAD = _spread_table()

_BLOCK_DTYPES = {
    DType.Q8_0: np.dtype([("d", "<f2"), ("qs", "V32")]),
    DType.Q4_0: np.dtype([("d", "<f2"), ("qs", "V16")]),
    DType.Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "V16")]),
    DType.Q5_0: np.dtype([("d", "<f2"), ("qh", "V4"), ("qs", "V16")]),
    DType.Q5_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "V4"), ("qs", "V16")]),
}


# --- float types -----------------------------------------------------------------------------------


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) of float32 values: round to nearest, ties to even; NaNs stay NaN (quieted).

    Same rule as ggml's `ggml_compute_fp32_to_bf16`.
    """
    n = np.ascontiguousarray(x, dtype=_F32).view(np.uint32)
    r = n + np.uint32(0x7FFF)  # no overflow: only NaNs lie above 0xFF800000
    r += (n >> np.uint32(16)) & np.uint32(1)
    r >>= np.uint32(16)
    nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        r[nan] = (n[nan] >> np.uint32(16)) | np.uint32(0x40)
    return r.astype(np.uint16)


def bf16_to_float32(u16: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bits (uint16); exact."""
    return (np.asarray(u16).view(np.uint16).astype(np.uint32) << np.uint32(16)).view(_F32)


# --- quantize --------------------------------------------------------------------------------------


def quantize(rows: np.ndarray, dtype: DType) -> np.ndarray:
    """Encode float32 `rows` (n_rows, n_cols) as `dtype`.

    Quantized types give uint8 (n_rows, dtype.row_bytes(n_cols)) and need n_cols to be a multiple of
    the block size (32; 256 for the K-quants of `runtime.quant.kquants`, which also refuse NaN/inf);
    F16 gives float16, BF16 uint16 bits and F32 float32, all of shape (n_rows, n_cols). Input of
    another float dtype is first converted to float32. Any leading dimensions are kept.
    """
    dtype = DType(dtype)
    x = np.asarray(rows)
    if x.ndim == 0:
        raise ValueError("quantize needs an array of rows, got a scalar")
    if dtype is DType.F32:
        return np.ascontiguousarray(x, dtype=_F32)
    if dtype is DType.F16:
        return np.asarray(x, dtype=_F32).astype(np.float16)
    if dtype is DType.BF16:
        return float32_to_bf16(x)
    if dtype in K_QUANT_TYPES:
        return quantize_k(x, dtype)
    n_cols = x.shape[-1]
    if n_cols % QK:
        raise ValueError(
            f"cannot quantize to {dtype.name}: rows have {n_cols} values, which is not a multiple of {QK} "
            f"(the {dtype.name} block size)"
        )
    x = np.ascontiguousarray(x, dtype=_F32)
    lead = x.shape[:-1]
    n_blocks = x.size // QK
    out = np.empty(n_blocks, dtype=_BLOCK_DTYPES[dtype])
    if n_blocks:
        _Encoder(dtype, min(n_blocks, _GROUP)).run(x.reshape(n_blocks, QK), out)
    return out.view(np.uint8).reshape(*lead, dtype.row_bytes(n_cols))


class _Encoder:
    """Scratch buffers for one quantize call, reused group after group (one per call: thread safe)."""

    def __init__(self, dtype: DType, group: int) -> None:
        self.dtype = dtype
        self.group = group
        self.t = np.empty((group, QK), _F32)  # per-value float work
        self.c = np.empty((group, QK), _F32) if dtype is DType.Q8_0 else None
        self.half = np.empty(group * QK // 2, _F32)  # reduction ping-pong
        self.quarter = np.empty(group * QK // 4, _F32)
        self.half2 = np.empty(group * QK // 2, _F32) if dtype is not DType.Q8_0 else None
        self.quarter2 = np.empty(group * QK // 4, _F32) if dtype is not DType.Q8_0 else None
        self.q = np.empty((group, QK), np.int8 if dtype is DType.Q8_0 else np.uint8)
        self.packed = np.empty(group * 2, np.uint64)  # 16 nibble bytes per block
        self.tmp64 = np.empty(group * 2, np.uint64)

    def run(self, blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
        encode = {
            DType.Q8_0: self._q8_0,
            DType.Q4_0: self._symmetric,
            DType.Q5_0: self._symmetric,
            DType.Q4_1: self._affine,
            DType.Q5_1: self._affine,
        }[self.dtype]
        with np.errstate(all="ignore"):  # denormal scales overflow 1/d; huge ones overflow float16
            for start in range(0, blocks.shape[0], self.group):
                encode(blocks[start : start + self.group], out[start : start + self.group])
        return out

    # per-block reductions -----------------------------------------------------------------------

    def _reduce(self, flat: np.ndarray, op: np.ufunc, nb: int, half: np.ndarray, quarter: np.ndarray):
        """op over each run of 32 consecutive values of `flat` (nb blocks) by pairwise halving."""
        n = nb * QK // 2
        m = op(flat[0::2], flat[1::2], out=half[:n])
        bufs = (quarter, half)
        k = 0
        while n > nb * 2:
            n //= 2
            m = op(m[0::2], m[1::2], out=bufs[k][:n])
            k ^= 1
        return op(m[0::2], m[1::2])  # a fresh (nb,) array

    def _min_max(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nb = g.shape[0]
        flat = g.reshape(-1)
        mx = self._reduce(flat, np.maximum, nb, self.half, self.quarter)
        mn = self._reduce(flat, np.minimum, nb, self.half2, self.quarter2)
        return mx, mn

    # encoders ------------------------------------------------------------------------------------

    def _q8_0(self, g: np.ndarray, out: np.ndarray) -> None:
        nb = g.shape[0]
        a = np.abs(g, out=self.t[:nb])
        amax = self._reduce(a.reshape(-1), np.maximum, nb, self.half, self.quarter)
        odd = np.flatnonzero(np.isnan(amax))
        if odd.size:  # NaN input: take the payload numpy's own reduction would give
            amax[odd] = np.abs(g[odd]).max(axis=1)
        d = amax / _F32(127)
        inv = _inverse(d)
        # 1/d overflowed (denormal d): the reference rounds ±inf and 0·inf, giving NaN for the whole block
        inv[np.isinf(inv)] = np.nan
        v = np.multiply(g, inv[:, None], out=self.t[:nb])
        c = np.copysign(_JUST_BELOW_HALF, v, out=self.c[:nb])
        v += c
        q = self.q[:nb]
        np.copyto(q, v, casting="unsafe")  # truncates: round half away from zero overall
        out["d"] = d
        out["qs"] = q.view("V32")[:, 0]

    def _symmetric(self, g: np.ndarray, out: np.ndarray) -> None:
        """Q4_0 / Q5_0."""
        nb = g.shape[0]
        five = self.dtype is DType.Q5_0
        half_range = 16 if five else 8
        mx, mn = self._min_max(g)
        neg_mn = -mn
        ext = np.where(mx > neg_mn, mx, mn)
        odd = np.flatnonzero(~((mx > neg_mn) | (neg_mn > mx)))  # equal magnitudes, zeros, NaN
        if odd.size:  # the first value of largest magnitude decides
            sub = g[odd]
            ext[odd] = sub[np.arange(odd.size), np.abs(sub).argmax(axis=1)]
        d = ext / _F32(-half_range)
        inv = _inverse(d)
        v = np.multiply(g, inv[:, None], out=self.t[:nb])
        v += _F32(half_range + 0.5)
        q = self.q[:nb]
        np.copyto(q, v, casting="unsafe")  # truncation toward zero, as trunc() then the cast
        np.minimum(q, np.uint8(2 * half_range - 1), out=q)
        out["d"] = d
        self._store_codes(q, out, five)

    def _affine(self, g: np.ndarray, out: np.ndarray) -> None:
        """Q4_1 / Q5_1."""
        nb = g.shape[0]
        five = self.dtype is DType.Q5_1
        top = 31 if five else 15
        mx, mn = self._min_max(g)
        odd = np.flatnonzero((mx == 0) | (mn == 0) | np.isnan(mx) | np.isnan(mn))
        if odd.size:  # the sign of a zero extreme (and NaN payloads) as numpy's reduction gives them
            sub = g[odd]
            mx[odd] = sub.max(axis=1)
            mn[odd] = sub.min(axis=1)
        d = (mx - mn) / _F32(top)
        inv = _inverse(d)
        v = np.subtract(g, mn[:, None], out=self.t[:nb])
        v *= inv[:, None]
        v += _F32(0.5)
        q = self.q[:nb]
        np.copyto(q, v, casting="unsafe")
        np.minimum(q, np.uint8(top), out=q)
        out["d"] = d
        out["m"] = mn
        self._store_codes(q, out, five)

    def _store_codes(self, q: np.ndarray, out: np.ndarray, five: bool) -> None:
        """Pack (nb, 32) codes: nibbles (value j low, j+16 high) and, for 5 bits, the high-bit word."""
        nb = q.shape[0]
        q64 = q.view(np.uint64).reshape(-1)  # 4 words per block: values 0-7, 8-15, 16-23, 24-31
        if five:
            hb = np.right_shift(q64, _SHIFT4)
            hb &= _LOW_BITS
            hb *= _GATHER_BITS
            hb >>= _SHIFT56
            out["qh"] = hb.astype(np.uint8).view("V4")
            q64 &= _LO_NIBBLES
        packed = self.packed[: 2 * nb]
        tmp = self.tmp64[:nb]
        for w in (0, 1):
            np.left_shift(q64[2 + w :: 4], _SHIFT4, out=tmp)
            np.bitwise_or(q64[w::4], tmp, out=packed[w::2])
        out["qs"] = packed.view("V16")


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d, and 0 where d is 0 (float32)."""
    inv = np.divide(_F32(1), d)
    inv[d == 0] = 0
    return inv


# --- decode ----------------------------------------------------------------------------------------


def to_float32(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """Decode rows stored as `dtype` to float32 (n_rows, n_cols).

    `raw` is what `LazyTensor.read_raw_rows` returns: float32 or float16 arrays, uint16 bits for BF16,
    uint8 (n_rows, row_bytes) blocks for the quantized types (any leading dimensions are kept).
    """
    dtype = DType(dtype)
    raw = np.asarray(raw)
    if dtype is DType.F32:
        return raw.astype(_F32, copy=False)
    if dtype is DType.F16:
        return raw.view(np.float16).astype(_F32)
    if dtype is DType.BF16:
        return bf16_to_float32(raw)
    if dtype in K_QUANT_TYPES:
        return dequantize_k(raw, dtype)
    if raw.ndim == 0:
        raise ValueError("to_float32 needs an array of rows, got a scalar")
    raw = np.ascontiguousarray(raw).view(np.uint8)
    row_bytes = raw.shape[-1]
    if row_bytes % dtype.block_bytes:
        raise ValueError(
            f"rows of {row_bytes} bytes are not a whole number of {dtype.name} blocks "
            f"of {dtype.block_bytes} bytes"
        )
    lead = raw.shape[:-1]
    blocks = raw.reshape(-1).view(_BLOCK_DTYPES[dtype])
    nb = blocks.shape[0]
    out = np.empty((nb, QK), _F32)
    if nb:
        group = min(nb, _GROUP)
        dec = _Decoder(dtype, group)
        with np.errstate(all="ignore"):  # inf/NaN scales decode to inf/NaN, as in ggml
            for start in range(0, nb, group):
                dec.decode(blocks[start : start + group], out[start : start + group])
    return out.reshape(*lead, row_bytes // dtype.block_bytes * QK)


class _Decoder:
    def __init__(self, dtype: DType, group: int) -> None:
        self.dtype = dtype
        self.codes = np.empty((group, QK), np.uint8)
        self.qs = np.empty(group * 2, np.uint64)

    def decode(self, b: np.ndarray, out: np.ndarray) -> None:
        nb = b.shape[0]
        dtype = self.dtype
        d = b["d"].astype(_F32)[:, None]
        if dtype is DType.Q8_0:
            q = self.codes[:nb]
            q.view("V32")[:, 0] = b["qs"]
            np.copyto(out, q.view(np.int8))
            out *= d
            return
        qs = self.qs[: 2 * nb]
        qs.view("V16")[:] = b["qs"]
        q = self.codes[:nb]
        q64 = q.view(np.uint64).reshape(-1)
        for w in (0, 1):
            np.bitwise_and(qs[w::2], _LO_NIBBLES, out=q64[w::4])
            np.right_shift(qs[w::2], _SHIFT4, out=q64[2 + w :: 4])
            q64[2 + w :: 4] &= _LO_NIBBLES
        if dtype in (DType.Q5_0, DType.Q5_1):
            q64 |= _SPREAD[b["qh"].copy().view(np.uint8).reshape(-1)]
        np.copyto(out, q)
        if dtype is DType.Q4_0:
            out -= _F32(8)
        elif dtype is DType.Q5_0:
            out -= _F32(16)
        out *= d
        if dtype in (DType.Q4_1, DType.Q5_1):
            out += b["m"].astype(_F32)[:, None]
