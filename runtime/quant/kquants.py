"""K-quant codec: ggml's Q2_K…Q6_K super-blocks of 256 values, decoded and encoded in numpy.

Layouts (one super-block; f16 values little-endian; 6-bit scale packing as in ggml's `get_scale_min_k4`):

    Q2_K  84 B  scales[16] (low nibble scale, high nibble min), qs[64] 2-bit, f16 d, f16 dmin
              x = d·sc·q − dmin·m         16 sub-blocks of 16
    Q3_K 110 B  hmask[32], qs[64] 2-bit low bits, scales[12] (16 × 6 bit, offset 32), f16 d
              x = d·(sc−32)·(q − 4·!high)  16 sub-blocks of 16
    Q4_K 144 B  f16 d, f16 dmin, scales[12] (8 scales + 8 mins, 6 bit), qs[128] nibbles
              x = d·sc·q − dmin·m         8 sub-blocks of 32
    Q5_K 176 B  as Q4_K plus qh[32] (the fifth bit) before qs
    Q6_K 210 B  ql[128] low nibbles, qh[64] 2 high bits, scales[16] int8, f16 d
              x = d·sc·(q−32)             16 sub-blocks of 16

Bit positions: in the 2-bit and high-bit arrays, value v of each 128 (2-bit) or 256 (high bits) sits
in byte v mod 32 of its 32-byte run, at the shift given by v div 32; nibble arrays hold value v of each
64 in byte v mod 32, low nibble for the first 32 (ggml's order; see `_pack_*`).

`quantize_k` reproduces ggml's unweighted reference quantizers (`quantize_row_qN_K_ref`: per sub-block
scale search by `make_qkx2_quants` for Q2/Q4/Q5, `make_q3_quants` for Q3 and `make_qx_quants` for Q6,
then the 6/4/8-bit super-block scales and a last rounding of every value against the stored scales)
with the same float32 operations in the same order, so the bytes are identical for finite input
(checked against ggml's C built without FMA contraction, on random, real and edge-case rows; NaN
and infinite input is refused). A ggml built for a host with FMA (-march=native) lets the compiler
fuse a·b + c, rounding once: its reference quantizer then differs from this in about one super-block
in ten, so files from such a llama-quantize need not match byte for byte.

Work is vectorised over all the sub-blocks of a group of super-blocks: the arrays are transposed to
(value index, sub-block) so that ggml's sequential sums are numpy reductions over the first axis
(row after row, the same order); make_qkx2_quants' trials run one after another (each starts from
the min the best so far chose), make_qx_quants' are independent and run as an extra leading axis.

Speed (CPU time, one core, Sapphire Rapids): 9-20 M values/s to encode (Q4_K 9, Q2_K 11, Q5_K 12,
Q6_K 14, Q3_K 20; the legacy Q5_1 300), 300-500 M/s to decode.

The building blocks are public so that weighted (importance-matrix) variants, ggml's
`quantize_row_qN_K_impl`, can sit beside this one: `nearest_int`, the sub-block searches
(`make_qkx2_quants` takes any weights; `make_q3_quants`, `make_qx_quants` are the unweighted forms),
the reference super-block steps `finish_*`, and `pack_*`, which take stored super-block scales and do
ggml's last rounding of every value and the packing (the same in the weighted quantizers).
"""

from __future__ import annotations

import numpy as np

from runtime.quant.types import K_QUANT_TYPES, DType

__all__ = [
    "QK_K",
    "dequantize_k",
    "finish_q2_k",
    "finish_q3_k",
    "finish_q6_k",
    "finish_q45_k",
    "make_q3_quants",
    "make_qkx2_quants",
    "make_qx_quants",
    "nearest_int",
    "pack_q2_k",
    "pack_q3_k",
    "pack_q6_k",
    "pack_q45_k",
    "quantize_k",
    "quantize_k_blocks",
]

QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)  # ggml: below this a group's largest magnitude counts as zero
_GROUP = 256  # super-blocks quantized at a time (of 32…512 measured, the best or near it for all types)
_GROUP_Q3_K = 1024  # make_q3_quants loops per value over all columns: larger groups pay
_DECODE_GROUP = 1024  # 1 MiB of float32 out at a time

_F32 = np.float32
_MAGIC = _F32(12582912.0)  # 1.5 * 2**23


# --- helpers ---------------------------------------------------------------------------------------


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's `nearest_int` bit for bit (int32): round half to even for |v| < 2**22, and for other
    values (and inf/NaN) the same low mantissa bits of `v + 1.5·2**23` that the C code returns."""
    t = np.add(v, _MAGIC, dtype=_F32)
    i = t.view(np.int32)
    i &= 0x7FFFFF
    i -= 0x400000
    return i


def _f16(v: np.ndarray) -> np.ndarray:
    """float32 → float16 → float32 (ggml's GGML_FP32_TO_FP16 then back: round to nearest even)."""
    return np.asarray(v, _F32).astype(np.float16).astype(_F32)


def _first_abs_max(x: np.ndarray) -> np.ndarray:
    """Per column of (n, S): the value of largest magnitude, the first one on ties, 0 if none is
    above 0 (ggml's `if (ax > amax) { amax = ax; max = x[i]; }` from amax = 0: NaN never wins)."""
    ax = np.abs(x)
    ax[np.isnan(ax)] = -1
    idx = ax.argmax(axis=0)
    cols = np.arange(x.shape[1])
    return np.where(ax[idx, cols] > 0, x[idx, cols], _F32(0)).astype(_F32)


def _seq_sum(terms: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in index order, one float32 addition at a time, as ggml's loops from 0.

    numpy reduces a C-ordered array over its first axis row after row (pairwise summation is only
    used along the contiguous axis; `tests/quant/test_kquants.py` checks this); adding +0 turns the
    -0 of an all -0 column into ggml's +0. A single column (terms[0] holds one value) is a contiguous
    run, which numpy would sum pairwise: it is summed beside a copy of itself."""
    if terms.ndim > 1 and terms[0].size == 1:
        pair = np.concatenate([terms, terms], axis=-1)
        return (np.add.reduce(pair, axis=0) + _F32(0))[..., :1]
    return np.add.reduce(terms, axis=0) + _F32(0)


# --- sub-block scale searches ----------------------------------------------------------------------


def make_qkx2_quants(
    x: np.ndarray,
    weights: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's `make_qkx2_quants` on every column of `x` (n values × S sub-blocks, float32).

    Returns (scale (S,), the_min (S,) — the offset to subtract, ≥ 0 —, L (n, S) int32 codes 0..nmax).
    The trials run one after the other, as in ggml: each starts from the min the best one so far chose.
    """
    mn = x[0].copy()
    mx = x[0].copy()
    for i in range(1, x.shape[0]):
        np.copyto(mn, x[i], where=x[i] < mn)
        np.copyto(mx, x[i], where=x[i] > mx)
    lowest = mn.copy()
    sum_w = _seq_sum(weights)
    sum_x = _seq_sum(weights * x)
    mn[mn > 0] = 0
    flat = mx == mn  # ggml returns at once for these: codes 0, scale 0, the min as found
    rounder = _CodeRounder(x, nmax)

    def iscale_for(a: np.float32) -> np.ndarray:
        iscale = a / (mx - mn)
        iscale[flat] = 0  # their results are discarded; 0 keeps their codes 0 and out of the way
        return iscale

    iscale = iscale_for(_F32(nmax))
    scale = _F32(1) / iscale
    codes = rounder.codes(iscale, mn, lowest, mx).copy()
    best_error = _error(scale, codes, mn, x, weights, use_mad, rounder.tmp)
    wl = rounder.wl
    tmp = rounder.tmp
    for step in range(nstep + 1):
        iscale = iscale_for((_F32(rmin) + _F32(rdelta) * _F32(step)) + _F32(nmax))
        lf = rounder.codes(iscale, mn, lowest, mx)
        np.multiply(weights, lf, out=wl)
        sum_l = _seq_sum(wl)
        sum_l2 = _seq_sum(np.multiply(wl, lf, out=tmp))
        sum_xl = _seq_sum(np.multiply(wl, x, out=tmp))
        d = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / d
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d
        pos = this_min > 0
        this_min[pos] = 0
        this_scale[pos] = (sum_xl / sum_l2)[pos]
        cur_error = _error(this_scale, lf, this_min, x, weights, use_mad, tmp)
        better = (d > 0) & (cur_error < best_error)
        if better.any():
            np.copyto(codes, lf, where=better)
            np.copyto(best_error, cur_error, where=better)
            np.copyto(scale, this_scale, where=better)
            np.copyto(mn, this_min, where=better)
            rounder.min_moved()
    codes[:, flat] = 0
    scale[flat] = 0
    return scale, -mn, codes.astype(np.int32)


class _CodeRounder:
    """clamp(nearest_int(iscale·(x − min)), 0, nmax) as float32, with reused buffers.

    When every |iscale·(x − min)| of the call is below 2**22 (known from per-column bounds), nearest_int
    is (v + 1.5·2**23) − 1.5·2**23 in float32, the same value in fewer steps; otherwise ggml's bit trick."""

    _SAFE = _F32(4e6)

    def __init__(self, x: np.ndarray, nmax: int) -> None:
        self.x = x
        self.nmax = nmax
        self.xm = np.empty_like(x)
        self.t = np.empty_like(x)
        self.out = np.empty_like(x)
        self.wl = np.empty_like(x)
        self.tmp = np.empty_like(x)
        self.stale = True

    def min_moved(self) -> None:
        self.stale = True

    def codes(self, iscale: np.ndarray, mn: np.ndarray, lowest: np.ndarray, mx: np.ndarray) -> np.ndarray:
        if self.stale:
            np.subtract(self.x, mn, out=self.xm)  # x[i] - min, as ggml computes it each time
            self.stale = False
        t = np.multiply(iscale, self.xm, out=self.t)
        span = np.maximum(np.abs(mx - mn), np.abs(lowest - mn))
        if (np.abs(iscale) * span < self._SAFE).all():  # also false for inf/NaN
            t += _MAGIC
            t -= _MAGIC
            return np.clip(t, 0, self.nmax, out=self.out)
        np.clip(nearest_int(t), 0, self.nmax, out=self.out, casting="unsafe")
        return self.out


def _error(scale, lf, mn, x, weights, use_mad: bool, tmp: np.ndarray) -> np.ndarray:
    """Σ w·|scale·L + min − x| (or its square) per column, in ggml's order."""
    diff = np.multiply(scale, lf, out=tmp)
    diff += mn
    diff -= x
    if use_mad:
        np.abs(diff, out=diff)
    else:
        diff *= diff
    diff *= weights
    return _seq_sum(diff)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `make_q3_quants(n, nmax, x, L, do_rmse=true)` on every column of `x` (n × S float32).

    Returns (scale (S,), L (n, S) int32 codes 0..2·nmax−1; 0 for all-zero sub-blocks)."""
    n, s = x.shape
    mx = _first_abs_max(x)
    zero = ~(np.abs(mx) >= GROUP_MAX_EPS)
    iscale = _F32(-nmax) / mx
    w = x * x
    wx = w * x
    lv = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
    lf = lv.astype(_F32)
    sumlx = _seq_sum(wx * lf)
    suml2 = _seq_sum((w * lf) * lf)
    for _ in range(5):
        changed = np.zeros(s, bool)
        for i in range(n):
            li = lf[i]
            slx = sumlx - wx[i] * li
            pos = slx > 0
            if not pos.any():
                continue
            sl2 = suml2 - (w[i] * li) * li
            new_l = np.clip(nearest_int((x[i] * sl2) / slx), -nmax, nmax - 1).astype(_F32)
            diff = pos & (new_l != li)
            slx = slx + wx[i] * new_l
            sl2 = sl2 + (w[i] * new_l) * new_l
            take = diff & (sl2 > 0) & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
            if take.any():
                li[take] = new_l[take]
                sumlx[take] = slx[take]
                suml2[take] = sl2[take]
                changed |= take
        if not changed.any():
            break
    scale = np.where(suml2 > 0, sumlx / suml2, _F32(0)).astype(_F32)
    codes = lf.astype(np.int32) + nmax
    if zero.any():
        codes[:, zero] = 0
        scale[zero] = 0
    return scale, codes


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)` on every column of `x` (n × S).

    Returns (scale (S,), L (n, S) int32 codes 0..2·nmax−1; 0 for all-zero sub-blocks)."""
    n, s = x.shape
    mx = _first_abs_max(x)
    zero = ~(np.abs(mx) >= GROUP_MAX_EPS)
    w = x * x
    wx = w * x
    steps = np.array([0] + [i for i in range(-9, 10) if i], dtype=_F32)
    iscales = -(_F32(nmax) + _F32(0.1) * steps)[:, None] / mx  # (T, S); trial 0 is -nmax/max
    t_count = steps.size
    codes = np.empty((t_count, n, s), np.int32)
    sumlx = np.zeros((t_count, s), _F32)
    suml2 = np.zeros((t_count, s), _F32)
    for i in range(n):
        li = np.clip(nearest_int(iscales * x[i]), -nmax, nmax - 1)
        codes[:, i] = li
        lf = li.astype(_F32)
        sumlx += wx[i] * lf
        suml2 += (w[i] * lf) * lf
    scale = np.where(suml2[0] != 0, sumlx[0] / suml2[0], _F32(0)).astype(_F32)
    best = scale * sumlx[0]
    choice = np.zeros(s, np.intp)
    for t in range(1, t_count):
        better = (suml2[t] > 0) & ((sumlx[t] * sumlx[t]) > best * suml2[t])
        new_scale = sumlx[t] / suml2[t]
        scale = np.where(better, new_scale, scale)
        best = np.where(better, scale * sumlx[t], best)
        choice[better] = t
    out = codes[choice, :, np.arange(s)].T + nmax
    if zero.any():
        out[:, zero] = 0
        scale[zero] = 0
    return scale.astype(_F32), out


# --- super-block steps: scales of scales, the last rounding, packing -------------------------------


def _strict_max(v: np.ndarray) -> np.ndarray:
    """Per row: the largest value if any is above 0, else 0 (ggml's `if (v > m) m = v` from m = 0)."""
    m = v.max(axis=1)
    return np.where(m > 0, m, _F32(0)).astype(_F32)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(v, _F32).astype("<f2")).view(np.uint8).reshape(-1, 2)


def _pack_2bit(codes: np.ndarray) -> np.ndarray:
    """(nb, 256) codes 0..3 → (nb, 64): byte 32c + l holds values 128c + l + 32k at bits 2k."""
    c = codes.reshape(-1, 2, 4, 32).astype(np.uint8)
    out = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    return out.reshape(-1, 64)


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """(nb, 256) codes 0..15 → (nb, 128): byte 32c + l holds value 64c + l low, 64c + 32 + l high."""
    c = codes.reshape(-1, 4, 2, 32).astype(np.uint8)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128)


def _high_bits(flags: np.ndarray) -> np.ndarray:
    """(nb, 256) booleans → (nb, 32): bit b of byte m is value 32b + m."""
    f = flags.reshape(-1, 8, 32).astype(np.uint8)
    out = np.zeros((f.shape[0], 32), np.uint8)
    for b in range(8):
        out |= f[:, b] << b
    return out


def _last_rounding(x: np.ndarray, d: np.ndarray, codes: np.ndarray, lo: int, hi: int, dm=None) -> None:
    """ggml's final pass: where the sub-block's d is not 0, code = clamp(nearest_int((x + dm) / d)).

    x and codes are (nb, n_sub, sub) and codes is updated in place; d, dm are (nb, n_sub)."""
    v = x + dm[:, :, None] if dm is not None else x
    q = np.clip(nearest_int(v / d[:, :, None]), lo, hi)
    np.copyto(codes, q, where=(d != 0)[:, :, None])


def finish_q2_k(x: np.ndarray, scales: np.ndarray, mins: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Q2_K blocks (nb, 84) from x (nb, 256), sub-block scales and mins (nb, 16), codes (nb, 256):
    ggml's reference 4-bit super-block scales, then `pack_q2_k`."""
    max_scale = _strict_max(scales)
    max_min = _strict_max(mins)
    has_s, has_m = max_scale > 0, max_min > 0
    q4 = _F32(15)
    ls = np.where(has_s[:, None], nearest_int((q4 / max_scale)[:, None] * scales), 0)
    lm = np.where(has_m[:, None], nearest_int((q4 / max_min)[:, None] * mins), 0)
    sc = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)
    d = _f16(np.where(has_s, max_scale / q4, _F32(0)))
    dmin = _f16(np.where(has_m, max_min / q4, _F32(0)))
    return pack_q2_k(x, d, dmin, sc, codes)


def pack_q2_k(x: np.ndarray, d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Q2_K blocks (nb, 84): ggml's last rounding of x (nb, 256) against the stored scales — d, dmin
    (nb,) float32 values of float16s, sc (nb, 16) bytes (scale low nibble, min high) — keeping `codes`
    (nb, 256, updated in place) where a sub-block's d·scale is 0, then the packing."""
    nb = x.shape[0]
    out = np.empty((nb, 84), np.uint8)
    dl = d[:, None] * (sc & 0xF).astype(_F32)
    ml = dmin[:, None] * (sc >> 4).astype(_F32)
    c = codes.reshape(nb, 16, 16)
    _last_rounding(x.reshape(nb, 16, 16), dl, c, 0, 3, ml)
    out[:, :16] = sc
    out[:, 16:80] = _pack_2bit(codes)
    out[:, 80:82] = _f16_bytes(d)
    out[:, 82:84] = _f16_bytes(dmin)
    return out


def finish_q3_k(x: np.ndarray, scales: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Q3_K blocks (nb, 110) from x (nb, 256), sub-block scales (nb, 16) and codes 0..7 (nb, 256):
    ggml's reference 6-bit super-block scales, then `pack_q3_k`."""
    max_scale = _first_abs_max(scales.T)
    has = max_scale != 0
    iscale = _F32(-32) / max_scale
    l8 = ((nearest_int(iscale[:, None] * scales) + 128) & 0xFF) - 128  # stored in an int8 first
    ls = np.where(has[:, None], np.clip(l8, -32, 31) + 32, 0).astype(np.uint8)  # (nb, 16) 6-bit
    d = _f16(np.where(has, _F32(1) / iscale, _F32(0)))
    return pack_q3_k(x, d, ls, codes)


def pack_q3_k(x: np.ndarray, d: np.ndarray, ls: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Q3_K blocks (nb, 110): ggml's last rounding of x against d (nb,) (a float16's value) times the
    6-bit scales ls (nb, 16, stored + 32), keeping `codes` (0..7, updated in place) where that is 0."""
    nb = x.shape[0]
    out = np.empty((nb, 110), np.uint8)
    packed = np.zeros((nb, 12), np.uint8)
    packed[:, :8] = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    hi = (ls >> 4).reshape(nb, 4, 4)  # [j // 4, j % 4]
    packed[:, 8:] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    dl = d[:, None] * (ls.astype(_F32) - _F32(32))
    c = codes.reshape(nb, 16, 16)
    _last_rounding(x.reshape(nb, 16, 16), dl, c, -4, 3)
    c[...] += 4 * (dl != 0)[:, :, None]
    high = codes > 3
    out[:, :32] = _high_bits(high)
    out[:, 32:96] = _pack_2bit(codes - 4 * high)
    out[:, 96:108] = packed
    out[:, 108:110] = _f16_bytes(d)
    return out


def finish_q45_k(
    x: np.ndarray, scales: np.ndarray, mins: np.ndarray, codes: np.ndarray, nmax: int
) -> np.ndarray:
    """Q4_K (nmax 15, 144 bytes) or Q5_K (nmax 31, 176 bytes) blocks from x (nb, 256), sub-block
    scales and mins (nb, 8) and codes (nb, 256): ggml's reference 6-bit super-block scales, then
    `pack_q45_k`."""
    max_scale = _strict_max(scales)
    max_min = _strict_max(mins)
    top = _F32(63)
    inv_scale = np.where(max_scale > 0, top / max_scale, _F32(0)).astype(_F32)
    inv_min = np.where(max_min > 0, top / max_min, _F32(0)).astype(_F32)
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    return pack_q45_k(x, _f16(max_scale / top), _f16(max_min / top), ls, lm, codes, nmax)


def pack_q45_k(
    x: np.ndarray, d: np.ndarray, dmin: np.ndarray, ls: np.ndarray, lm: np.ndarray, codes: np.ndarray, nmax: int
) -> np.ndarray:
    """Q4_K / Q5_K blocks: ggml's last rounding of x against d·ls − dmin·lm (d, dmin (nb,) values of
    float16s; ls, lm (nb, 8) 6-bit), keeping `codes` (updated in place) where d·ls is 0; packing."""
    nb = x.shape[0]
    packed = np.empty((nb, 12), np.uint8)
    packed[:, :4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    dl = d[:, None] * ls.astype(_F32)
    ml = dmin[:, None] * lm.astype(_F32)
    c = codes.reshape(nb, 8, 32)
    _last_rounding(x.reshape(nb, 8, 32), dl, c, 0, nmax, ml)
    five = nmax == 31
    out = np.empty((nb, 176 if five else 144), np.uint8)
    out[:, 0:2] = _f16_bytes(d)
    out[:, 2:4] = _f16_bytes(dmin)
    out[:, 4:16] = packed
    if five:
        out[:, 16:48] = _high_bits(codes > 15)  # bit b of byte j: value 32b + j's fifth bit
        out[:, 48:] = _pack_nibbles(codes & 0xF)
    else:
        out[:, 16:] = _pack_nibbles(codes)
    return out


def finish_q6_k(x: np.ndarray, scales: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Q6_K blocks (nb, 210) from x (nb, 256), sub-block scales (nb, 16) and codes 0..63 (nb, 256):
    ggml's reference 8-bit super-block scales, then `pack_q6_k`; blocks whose scales are all below
    GROUP_MAX_EPS are all zero bytes, as in ggml."""
    max_scale = _first_abs_max(scales.T)
    zero = ~(np.abs(max_scale) >= GROUP_MAX_EPS)
    iscale = _F32(-128) / max_scale
    sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
    out = pack_q6_k(x, _f16(_F32(1) / iscale), sc, codes)
    out[zero] = 0
    return out


def pack_q6_k(x: np.ndarray, d: np.ndarray, sc: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Q6_K blocks (nb, 210): ggml's last rounding of x against d (nb,) (a float16's value) times the
    int8 scales sc (nb, 16), keeping `codes` (0..63, updated in place) where that is 0; packing."""
    nb = x.shape[0]
    out = np.empty((nb, 210), np.uint8)
    dl = d[:, None] * sc.astype(_F32)
    c = codes.reshape(nb, 16, 16)
    _last_rounding(x.reshape(nb, 16, 16), dl, c, -32, 31)
    c[...] += 32 * (dl != 0)[:, :, None]
    q = codes.reshape(nb, 2, 4, 32).astype(np.uint8)
    lo = q & 0xF
    ql = np.empty((nb, 2, 2, 32), np.uint8)
    ql[:, :, 0] = lo[:, :, 0] | (lo[:, :, 2] << 4)
    ql[:, :, 1] = lo[:, :, 1] | (lo[:, :, 3] << 4)
    h = q >> 4
    qh = h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)
    out[:, :128] = ql.reshape(nb, 128)
    out[:, 128:192] = qh.reshape(nb, 64)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = _f16_bytes(d)
    return out


# --- quantize --------------------------------------------------------------------------------------


def _columns(x: np.ndarray, sub: int) -> np.ndarray:
    """(nb, 256) → (sub, nb·256/sub): one column per sub-block, value index first."""
    return np.ascontiguousarray(x.reshape(-1, sub).T)


def _rows(codes: np.ndarray, nb: int) -> np.ndarray:
    """Inverse of `_columns` for codes."""
    return np.ascontiguousarray(codes.T).reshape(nb, QK_K)


def _av_weights(xt: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's sub-block weights sqrt(Σx²/32) + |x| (columns of 32)."""
    sum_x2 = _seq_sum(xt * xt)
    av_x = np.sqrt(sum_x2 / _F32(32))
    return av_x + np.abs(xt)


def quantize_k_blocks(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Super-blocks x (nb, 256) float32, finite → (nb, dtype.block_bytes) uint8, as ggml's
    `quantize_row_qN_K_ref`."""
    nb = x.shape[0]
    with np.errstate(all="ignore"):  # all-zero and flat sub-blocks divide by 0 before being set aside
        if dtype is DType.Q2_K:
            xt = _columns(x, 16)
            scale, the_min, codes = make_qkx2_quants(xt, np.abs(xt), 3, -0.5, 0.1, 15, True)
            return finish_q2_k(x, scale.reshape(nb, 16), the_min.reshape(nb, 16), _rows(codes, nb))
        if dtype is DType.Q3_K:
            scale, codes = make_q3_quants(_columns(x, 16), 4)
            return finish_q3_k(x, scale.reshape(nb, 16), _rows(codes, nb))
        if dtype in (DType.Q4_K, DType.Q5_K):
            xt = _columns(x, 32)
            nmax, rmin, nstep = (15, -1.0, 20) if dtype is DType.Q4_K else (31, -0.5, 15)
            scale, the_min, codes = make_qkx2_quants(xt, _av_weights(xt), nmax, rmin, 0.1, nstep, False)
            return finish_q45_k(x, scale.reshape(nb, 8), the_min.reshape(nb, 8), _rows(codes, nb), nmax)
        if dtype is DType.Q6_K:
            scale, codes = make_qx_quants(_columns(x, 16), 32)
            return finish_q6_k(x, scale.reshape(nb, 16), _rows(codes, nb))
    raise ValueError(f"{dtype.name} is not a K-quant type")


def quantize_k(rows: np.ndarray, dtype: DType) -> np.ndarray:
    """Encode float32 `rows` (…, n_cols) as K-quant `dtype`: uint8 (…, dtype.row_bytes(n_cols)).

    n_cols must be a multiple of 256 and every value finite (ValueError otherwise, naming the row)."""
    dtype = DType(dtype)
    if dtype not in K_QUANT_TYPES:
        raise ValueError(f"{dtype.name} is not a K-quant type")
    x = np.asarray(rows)
    if x.ndim == 0:
        raise ValueError("quantize needs an array of rows, got a scalar")
    n_cols = x.shape[-1]
    if n_cols % QK_K:
        raise ValueError(
            f"cannot quantize to {dtype.name}: rows have {n_cols} values, which is not a multiple of "
            f"{QK_K} (K-quant super-blocks of {QK_K} values)"
        )
    x = np.ascontiguousarray(x, dtype=_F32)
    lead = x.shape[:-1]
    flat = x.reshape(-1, QK_K)
    out = np.empty((flat.shape[0], dtype.block_bytes), np.uint8)
    group = _GROUP_Q3_K if dtype is DType.Q3_K else _GROUP
    for start in range(0, flat.shape[0], group):
        g = flat[start : start + group]
        if not np.isfinite(g).all():
            block = start + int(np.argwhere(~np.isfinite(g))[0][0])
            row = block * QK_K // max(n_cols, 1)
            raise ValueError(f"cannot quantize to {dtype.name}: row {row} holds NaN or infinite values")
        out[start : start + group] = quantize_k_blocks(g, dtype)
    return out.reshape(*lead, dtype.row_bytes(n_cols))


# --- dequantize ------------------------------------------------------------------------------------


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """(nb, 64) → (nb, 256) codes 0..3 (inverse of `_pack_2bit`)."""
    q = qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, 256)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 0xF).reshape(-1, 256)


def _unpack_high(qh: np.ndarray) -> np.ndarray:
    """(nb, 32) → (nb, 256) bits: value 32b + m is bit b of byte m."""
    q = qh.reshape(-1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return (q & 1).reshape(-1, 256)


def _f16_at(b: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(b[:, at : at + 2]).view("<f2").astype(_F32)  # (nb, 1)


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 scale bytes → (scales, mins) (nb, 8) of 6 bits."""
    sc = np.empty((s.shape[0], 8), np.uint8)
    m = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, :4] & 63
    m[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:] & 0xF) | ((s[:, :4] >> 6) << 4)
    m[:, 4:] = (s[:, 8:] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, m


def _decode_group(b: np.ndarray, dtype: DType, out: np.ndarray) -> None:
    """Decode blocks b (nb, block_bytes) into out (nb, 256): codes copied in as float32, then the
    sub-block's d·scale multiplied (and d_min·min subtracted), as ggml's `dl * q - ml`."""
    nb = b.shape[0]
    if dtype is DType.Q2_K:
        sc = b[:, :16]
        o = out.reshape(nb, 16, 16)
        np.copyto(o, _unpack_2bit(b[:, 16:80]).reshape(nb, 16, 16))
        o *= (_f16_at(b, 80) * (sc & 0xF).astype(_F32))[:, :, None]
        o -= (_f16_at(b, 82) * (sc >> 4).astype(_F32))[:, :, None]
    elif dtype is DType.Q3_K:
        s = b[:, 96:108]
        lo = np.concatenate([s[:, :8] & 0xF, s[:, :8] >> 4], axis=1)
        hi = (s[:, 8:].reshape(nb, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)) & 3
        sc = (lo | (hi.reshape(nb, 16) << 4)).astype(_F32) - _F32(32)
        q = _unpack_2bit(b[:, 32:96]) | (_unpack_high(b[:, :32]) << 2)  # 0..7: value + 4
        o = out.reshape(nb, 16, 16)
        np.copyto(o, q.view(np.int8).reshape(nb, 16, 16))
        o -= _F32(4)
        o *= (_f16_at(b, 108) * sc)[:, :, None]
    elif dtype in (DType.Q4_K, DType.Q5_K):
        sc, m = _scale_min_k4(b[:, 4:16])
        if dtype is DType.Q4_K:
            q = _unpack_nibbles(b[:, 16:144])
        else:
            q = _unpack_nibbles(b[:, 48:176]) | (_unpack_high(b[:, 16:48]) << 4)
        o = out.reshape(nb, 8, 32)
        np.copyto(o, q.reshape(nb, 8, 32))
        o *= (_f16_at(b, 0) * sc.astype(_F32))[:, :, None]
        o -= (_f16_at(b, 2) * m.astype(_F32))[:, :, None]
    elif dtype is DType.Q6_K:
        ql = b[:, :128].reshape(nb, 2, 2, 32)
        lo = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        hi = (b[:, 128:192].reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
        o = out.reshape(nb, 16, 16)
        np.copyto(o, (lo | (hi << 4)).reshape(nb, 16, 16))
        o -= _F32(32)
        o *= (_f16_at(b, 208) * b[:, 192:208].view(np.int8).astype(_F32))[:, :, None]
    else:
        raise ValueError(f"{dtype.name} is not a K-quant type")


def dequantize_k(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """Decode K-quant rows: uint8 (…, row_bytes) → float32 (…, row_bytes / block_bytes · 256).

    Same float32 values as ggml's `dequantize_row_qN_K`; NaN/inf scales decode to NaN/inf."""
    dtype = DType(dtype)
    raw = np.ascontiguousarray(raw).view(np.uint8)
    if raw.ndim == 0:
        raise ValueError("to_float32 needs an array of rows, got a scalar")
    row_bytes = raw.shape[-1]
    if row_bytes % dtype.block_bytes:
        raise ValueError(
            f"rows of {row_bytes} bytes are not a whole number of {dtype.name} blocks "
            f"of {dtype.block_bytes} bytes"
        )
    lead = raw.shape[:-1]
    blocks = raw.reshape(-1, dtype.block_bytes)
    out = np.empty((blocks.shape[0], QK_K), _F32)
    with np.errstate(all="ignore"):
        for start in range(0, blocks.shape[0], _DECODE_GROUP):
            g = blocks[start : start + _DECODE_GROUP]
            _decode_group(g, dtype, out[start : start + g.shape[0]])
    return out.reshape(*lead, row_bytes // dtype.block_bytes * QK_K)
