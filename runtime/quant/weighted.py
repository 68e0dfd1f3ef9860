"""Importance-weighted quantization: ggml's algorithms for quantizing with an importance matrix
(`quantize_row_qN_K_impl` and `quantize_row_qN_0/1_impl` with quant_weights), vectorised in numpy.

`importance` holds one non-negative weight per input column of a matrix (runtime.quant.calibrate: the
mean of x² over the calibration tokens). Each value's weight is importance·sqrt(σ² + x²), σ² the mean
square of the row (legacy types) or of the super-block (K types: twice it for Q3_K/Q4_K/Q5_K), and
the sub-block scale and minimum are searched to minimise the weighted squared error:

- Q4_0 / Q5_0: a weighted `make_qx_quants` (19 trial scales, the least-squares scale of each);
- Q4_1 / Q5_1, Q4_K / Q5_K sub-blocks, Q2_K sub-blocks: `make_qkx3_quants` (37 trial scales with a
  least-squares scale and minimum each; ggml's make_qkx2_quants with these weights and steps);
- the K super-block scales: `make_qp_quants` (Q2_K, Q4_K, Q5_K: the 4/6-bit scales and minimums of
  the sub-blocks weighted by the sub-block's total weight, with a few passes of coordinate descent),
  a weighted `make_qx_quants` (Q3_K's signed 6-bit scales);
- Q6_K: a weighted `make_qx_quants` per sub-block of 16 with the importance itself as weight, then
  the reference's 8-bit scales.
Q8_0 and the float types ignore the importance, as ggml does.

Arrays follow runtime.quant.kquants' layout: one column per sub-block, value index first, so ggml's
sequential sums become vector additions (kquants._seq_sum; `_row_sums` for sums along a row). Where
it matters for the bytes, the float32 operations are ggml's, in ggml's order: σ² and the sub-block
weight totals are added value after value (numpy's pairwise sum rounds differently and moved about
one block in a hundred), errors are (w·diff)·diff, and make_qp_quants keeps its codes in bytes as
ggml does (see there), whose stored scale fields the last rounding then reads back.

Checked byte for byte against ggml's quantize_q2_K … quantize_q6_K and quantize_q4_0/q4_1/q5_0/q5_1
with quant_weights (ggml-org/ggml d99724f, ggml-quants.c compiled with gcc -O2 -ffp-contract=off,
called through a small driver kept outside this repository): 0 differing blocks for every type over
10 kinds of rows × importance vectors (normal, scaled, Laplace, Student-t, uniform, outliers, zeros,
constants; gamma, log-normal, uniform, squared, with zeros) for seeds 0-9 (14,400 super-blocks and
115,200 blocks of 32 per type), sparsely weighted rows of mixed scales (192 rows × 1024 per seed,
seeds 0-11), edge cases (importance zero over a super-block or everywhere, rows of 1e-17, 1e-20,
subnormals, 1e15, a matrix of one row or one block) and rwkv.cpp's tiny 5v2/7v0 weights (2,304
super-blocks). Before, 0.6-5 % of the blocks of those random rows differed per type (Q6_K none),
and most of the edge cases. As for kquants: a ggml built with FMA contraction (-march=native)
rounds some a·b + c once and then differs in some blocks. The tests here check, without ggml, the
behaviour these rules give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.quant import kquants as kq
from runtime.quant.codec import quantize
from runtime.quant.types import DType

_F32 = np.float32
QK = 32
WEIGHTED_TYPES = frozenset({DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.Q2_K, DType.Q3_K, DType.Q4_K,
                            DType.Q5_K, DType.Q6_K})


def make_qx_quants_weighted(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `make_qx_quants(n, nmax, x, L, 1, qw)` on every column of x (n × S): the symmetric scale
    minimising Σ qw·(x − scale·l)² over 19 trial rounding scales. Returns (scale (S,), codes (n, S)
    0..2·nmax−1)."""
    s = x.shape[1]
    mx = kq._first_abs_max(x)
    zero = ~(np.abs(mx) >= kq.GROUP_MAX_EPS)
    wx = qw * x
    steps = np.array([0] + [i for i in range(-9, 10) if i], dtype=_F32)
    with np.errstate(all="ignore"):
        iscales = -(_F32(nmax) + _F32(0.1) * steps)[:, None] / mx
        codes = np.clip(kq.nearest_int(iscales[None] * x[:, None]), -nmax, nmax - 1)  # (n, T, S)
        lf = codes.astype(_F32)
        sumlx = kq._seq_sum(wx[:, None] * lf)  # (T, S), adding value after value
        suml2 = kq._seq_sum(qw[:, None] * lf * lf)
        scale = np.where(suml2[0] != 0, sumlx[0] / suml2[0], _F32(0)).astype(_F32)
        best = scale * sumlx[0]
        choice = np.zeros(s, np.intp)
        for t in range(1, steps.size):
            better = (suml2[t] > 0) & (sumlx[t] * sumlx[t] > best * suml2[t])
            scale = np.where(better, sumlx[t] / suml2[t], scale).astype(_F32)
            best = np.where(better, scale * sumlx[t], best)
            choice[better] = t
    out = codes[:, choice, np.arange(s)] + nmax
    out[:, zero] = 0
    scale[zero] = 0
    return scale, out


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `make_qp_quants` on every column of x (n × S, meant to be ≥ 0): the scale of codes 0..nmax
    minimising Σ qw·(x − scale·l)² (9 trial scales, then up to 5 passes of coordinate descent on the
    codes). Returns (scale (S,), codes (n, S) 0..255).

    As in ggml, a column whose largest value is below GROUP_MAX_EPS is all zero, and the scale is 0
    when every weight is. ggml keeps the codes in bytes: a value below 0 (a sub-block scale the
    search left negative) gets a negative code stored modulo 256, and the first trial's error and
    the descent read that byte back (e.g. 193 for −63), while the sums use the signed code."""
    n = x.shape[0]
    mx = x.max(axis=0)
    zero = ~(mx >= kq.GROUP_MAX_EPS)
    with np.errstate(all="ignore"):
        iscale = (_F32(nmax) / mx).astype(_F32)
        stored = (kq.nearest_int(iscale * x) & 0xFF).astype(_F32)
        diff = x - (_F32(1) / iscale) * stored
        best = kq._seq_sum(qw * diff * diff)
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            trial = ((_F32(0.1) * _F32(step) + _F32(nmax)) / mx).astype(_F32)
            lt = np.minimum(kq.nearest_int(trial * x), nmax).astype(_F32)
            diff = x - (_F32(1) / trial) * lt
            mse = kq._seq_sum(qw * diff * diff)
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, trial, iscale).astype(_F32)
        codes = np.minimum(kq.nearest_int(iscale * x), nmax)
        lf = codes.astype(_F32)
        sumlx = kq._seq_sum(qw * x * lf)
        suml2 = kq._seq_sum(qw * lf * lf)
        stored = (codes & 0xFF).astype(_F32)
        for _ in range(5):
            changed = False
            for i in range(n):
                w, li = qw[i], stored[i]
                slx = sumlx - w * x[i] * li
                sl2 = suml2 - w * li * li
                ok = (slx > 0) & (sl2 > 0)
                new_code = np.minimum(kq.nearest_int(x[i] * sl2 / slx), nmax)
                new_l = new_code.astype(_F32)
                slx = slx + w * x[i] * new_l
                sl2 = sl2 + w * new_l * new_l
                take = ok & (new_l != li) & (slx * slx * suml2 > sumlx * sumlx * sl2)
                if take.any():
                    li[take] = (new_code & 0xFF)[take]
                    sumlx[take] = slx[take]
                    suml2[take] = sl2[take]
                    changed = True
            if not changed:
                break
        scale = np.where(suml2 > 0, sumlx / suml2, _F32(0)).astype(_F32)
    out = stored.astype(np.int32)
    out[:, zero] = 0
    scale[zero] = 0
    return scale, out


def _make_qkx3(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx3_quants(…, weights, rmin −0.9, rdelta 0.05, nstep 36, use_mad false): with weights
    given it is make_qkx2_quants' search, which runtime.quant.kquants implements."""
    with np.errstate(all="ignore"):
        return kq.make_qkx2_quants(x, w, nmax, -0.9, 0.05, 36, False)


def _columns(v: np.ndarray, sub: int) -> np.ndarray:
    return np.ascontiguousarray(v.reshape(-1, sub).T)


def _rows(codes: np.ndarray, nb: int, n: int) -> np.ndarray:
    return np.ascontiguousarray(codes.T).reshape(nb, n)


def _row_sums(v: np.ndarray) -> np.ndarray:
    """Σ over each row of v (R, n) in float32, added one value at a time from the first, as ggml's loops
    do (numpy's own sum adds pairwise and rounds differently: a different σ² or sub-block weight can
    choose a different scale). Transposed 64 rows at a time, which stays in cache (8x faster on a
    1024 × 2048 matrix than one transposed copy)."""
    out = np.empty(v.shape[0], _F32)
    for r in range(0, v.shape[0], 64):
        out[r : r + 64] = kq._seq_sum(np.ascontiguousarray(v[r : r + 64].T))
    return out


def _value_weights(x: np.ndarray, imp: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """importance · sqrt(σ² + x²) per value; x and imp (nb, n), sigma2 (nb,)."""
    return (imp * np.sqrt(sigma2[:, None] + x * x)).astype(_F32)


# --- K super-blocks ----------------------------------------------------------------------------------


@dataclass
class BlockGrid:
    """The values a block may take: value = s·l − o per sub-block, l an integer in [lo, hi], with what
    packing needs (the stored scales) and codes for sub-blocks whose s is 0."""

    dtype: DType
    sub: int  # values per sub-block
    s: np.ndarray  # (nb, n_sub) float32
    o: np.ndarray  # (nb, n_sub) float32
    lo: int
    hi: int
    params: tuple  # what _pack needs besides the values
    codes: np.ndarray  # (nb, block_size) initial codes

    @classmethod
    def stacked(cls, grids: list[BlockGrid]) -> BlockGrid:
        """One grid for the blocks of `grids` in turn (same type and layout)."""
        if len(grids) == 1:
            return grids[0]

        def joined(parts: list) -> np.ndarray | None:
            return None if parts[0] is None else np.concatenate(parts)

        g = grids[0]
        params = tuple(joined([p.params[i] for p in grids]) for i in range(len(g.params)))
        return cls(g.dtype, g.sub, joined([p.s for p in grids]), joined([p.o for p in grids]), g.lo, g.hi,
                   params, joined([p.codes for p in grids]))

    def round(self, x: np.ndarray, col: int) -> np.ndarray:
        """The grid value nearest to x (nb,) at column `col` of the block."""
        k = col // self.sub
        s, o = self.s[:, k], self.o[:, k]
        with np.errstate(all="ignore"):
            lv = np.clip(kq.nearest_int(((x + o) / s).astype(_F32)), self.lo, self.hi)
        return np.where(s != 0, s * lv - o, -o).astype(_F32)


def _k_grid(x: np.ndarray, imp: np.ndarray, dtype: DType) -> BlockGrid:
    """The weighted quantizer's grid for super-blocks x (nb, 256) with per-value importance imp."""
    nb = x.shape[0]
    if dtype is DType.Q6_K:
        scale, codes = make_qx_quants_weighted(_columns(x, 16), 32, _columns(imp, 16))
        scales = scale.reshape(nb, 16)
        max_scale = kq._first_abs_max(scales.T)
        zero = ~(np.abs(max_scale) >= kq.GROUP_MAX_EPS)
        with np.errstate(all="ignore"):
            iscale = _F32(-128) / max_scale
            sc = np.minimum(kq.nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
            d = kq._f16(_F32(1) / iscale)
        dl = np.where(zero[:, None], _F32(0), d[:, None] * sc.astype(_F32)).astype(_F32)
        return BlockGrid(dtype, 16, dl, np.zeros_like(dl), -32, 31, (scales,), kq._rows(codes, nb))
    sum_x2 = _row_sums(x * x)
    sigma2 = (sum_x2 if dtype is DType.Q2_K else _F32(2) * sum_x2) / _F32(256)
    w = _value_weights(x, imp, sigma2)
    if dtype is DType.Q3_K:
        scale, codes = make_qx_quants_weighted(_columns(x, 16), 4, _columns(w, 16))
        sw = _row_sums(w.reshape(-1, 16)).reshape(nb, 16)
        d_block, ls = make_qx_quants_weighted(np.ascontiguousarray(scale.reshape(nb, 16).T), 32,
                                              np.ascontiguousarray(sw.T))
        ls = ls.T.astype(np.uint8)
        d = kq._f16(d_block)
        dl = (d[:, None] * (ls.astype(_F32) - _F32(32))).astype(_F32)
        return BlockGrid(dtype, 16, dl, np.zeros_like(dl), -4, 3, (d, ls), kq._rows(codes, nb))
    sub, nmax = (16, 3) if dtype is DType.Q2_K else (32, 15 if dtype is DType.Q4_K else 31)
    scale, the_min, codes = _make_qkx3(_columns(x, sub), _columns(w, sub), nmax)
    n_sub = 256 // sub
    sw = np.ascontiguousarray(_row_sums(w.reshape(-1, sub)).reshape(nb, n_sub).T)
    top = 15 if dtype is DType.Q2_K else 63
    dm, ls = make_qp_quants(np.ascontiguousarray(scale.reshape(nb, n_sub).T), top, sw)
    mm, lm = make_qp_quants(np.ascontiguousarray(the_min.reshape(nb, n_sub).T), top, sw)
    ls, lm = ls.T.astype(np.uint8), lm.T.astype(np.uint8)
    d, dmin = kq._f16(dm), kq._f16(mm)
    # the stored scale bytes as ggml writes them (a code above the field's bits spills into its
    # neighbours' bits), then the scales read back from them, which the last rounding uses
    if dtype is DType.Q2_K:
        sc = ls | (lm << 4)
        params = (d, dmin, sc)
        ls, lm = sc & 0xF, sc >> 4
    else:
        if dtype is DType.Q5_K:  # ggml clamps Q5_K's codes to 63 (Q4_K's are written as they are)
            ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
        packed = np.empty((nb, 12), np.uint8)
        packed[:, :4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
        packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
        packed[:, 8:] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
        ls, lm = kq._scale_min_k4(packed)
        params = (d, dmin, ls, lm)
    dl = (d[:, None] * ls.astype(_F32)).astype(_F32)
    ml = (dmin[:, None] * lm.astype(_F32)).astype(_F32)
    return BlockGrid(dtype, sub, dl, ml, 0, nmax, params, kq._rows(codes, nb))


def _k_pack(x: np.ndarray, grid: BlockGrid) -> np.ndarray:
    """Super-blocks of `grid` holding the values nearest to x (values already on the grid stay):
    runtime.quant.kquants' last rounding against the stored scales, and its packing."""
    codes = grid.codes.copy()
    with np.errstate(all="ignore"):
        if grid.dtype is DType.Q6_K:
            return kq.finish_q6_k(x, grid.params[0], codes)
        if grid.dtype is DType.Q3_K:
            return kq.pack_q3_k(x, *grid.params, codes)
        if grid.dtype is DType.Q2_K:
            return kq.pack_q2_k(x, *grid.params, codes)
        return kq.pack_q45_k(x, *grid.params, codes, grid.hi)


def _k_blocks(x: np.ndarray, imp: np.ndarray, dtype: DType) -> np.ndarray:
    """Super-blocks x (nb, 256) with per-value importance imp (nb, 256) → (nb, block_bytes)."""
    return _k_pack(x, _k_grid(x, imp, dtype))


# --- legacy blocks of 32 -------------------------------------------------------------------------------


def _legacy_grid(x: np.ndarray, w: np.ndarray, dtype: DType) -> BlockGrid:
    """The weighted quantizer's grid for blocks x (nb, 32) with value weights w (Q8_0: the reference's
    scale, max |x| / 127, which ggml uses whatever the weights)."""
    five = dtype in (DType.Q5_0, DType.Q5_1)
    nb = x.shape[0]
    if dtype is DType.Q8_0:
        d = (np.abs(x).max(axis=1) / _F32(127)).astype(_F32)
        s = kq._f16(d)[:, None]
        with np.errstate(all="ignore"):
            codes = np.clip(kq.nearest_int(x / s), -127, 127)
        return BlockGrid(dtype, QK, s, np.zeros_like(s), -127, 127, (d, None), codes)
    if dtype in (DType.Q4_0, DType.Q5_0):
        nmax = 16 if five else 8
        d, codes = make_qx_quants_weighted(_columns(x, QK), nmax, _columns(w, QK))
        s = kq._f16(d)[:, None]
        return BlockGrid(dtype, QK, s, np.zeros_like(s), -nmax, nmax - 1, (d, None), _rows(codes, nb, QK))
    nmax = 31 if five else 15
    d, the_min, codes = _make_qkx3(_columns(x, QK), _columns(w, QK), nmax)
    m = -the_min
    s = kq._f16(d)[:, None]
    return BlockGrid(dtype, QK, s, -kq._f16(m)[:, None], 0, nmax, (d, m), _rows(codes, nb, QK))


def _legacy_pack(x: np.ndarray | None, grid: BlockGrid) -> np.ndarray:
    """Blocks of `grid`: its own codes (x None), or those of the values x, which lie on the grid."""
    d, m = grid.params
    codes = grid.codes.astype(np.int64)
    if x is not None:
        with np.errstate(all="ignore"):
            lv = np.clip(kq.nearest_int((x + grid.o) / grid.s), grid.lo, grid.hi)
        codes = np.where(grid.s != 0, lv - grid.lo if m is None else lv, codes)
    if grid.dtype is DType.Q8_0:
        signed = codes + grid.lo if x is not None else codes
        return np.concatenate([kq._f16_bytes(d), signed.astype(np.int8).view(np.uint8)], axis=1)
    codes = codes.astype(np.uint32)
    nb = codes.shape[0]
    parts = [kq._f16_bytes(d)]
    if m is not None:
        parts.append(kq._f16_bytes(m))
    if grid.dtype in (DType.Q5_0, DType.Q5_1):
        hb = (codes >> 4) & 1
        qh = (hb << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)  # bit j: value j's fifth bit
        parts.append(qh.astype("<u4").view(np.uint8).reshape(nb, 4))
    low = (codes & 0xF).astype(np.uint8)
    parts.append(low[:, :16] | (low[:, 16:] << 4))
    return np.concatenate(parts, axis=1)


def _legacy_blocks(x: np.ndarray, w: np.ndarray, dtype: DType) -> np.ndarray:
    """Blocks x (nb, 32) with value weights w → (nb, block_bytes)."""
    return _legacy_pack(None, _legacy_grid(x, w, dtype))


# --- entry points: whole rows, and the grids error feedback (gptq.py) rounds to ---------------------


def block_grid(x: np.ndarray, imp: np.ndarray, dtype: DType, sigma2: np.ndarray | None = None) -> BlockGrid:
    """The weighted quantizer's grid for blocks x (nb, block_size) of `dtype` with per-value importance
    imp (nb, block_size): what error feedback (gptq.py) rounds each column to. Legacy blocks of 32 weigh
    their values by sigma2 (nb,), the mean square of each block's row; K super-blocks take their own."""
    if dtype.block_size == 256:
        return _k_grid(x, np.ascontiguousarray(imp), dtype)
    if sigma2 is None:
        raise ValueError(f"{dtype.name} blocks need their rows' mean squares (sigma2) for their grid")
    return _legacy_grid(x, _value_weights(x, imp, sigma2), dtype)


def pack_on_grid(values: np.ndarray, grid: BlockGrid) -> np.ndarray:
    """The blocks of `grid` holding `values` (nb, block_size), which lie on it → (nb, block_bytes)."""
    return _k_pack(values, grid) if grid.dtype.block_size == 256 else _legacy_pack(values, grid)


def quantize_weighted(rows: np.ndarray, dtype: DType, importance: np.ndarray | None) -> np.ndarray:
    """Encode float32 `rows` (n_rows, n_cols) as `dtype` with one importance weight per column: uint8
    (n_rows, dtype.row_bytes(n_cols)) for quantized types, as runtime.quant.codec.quantize. Without an
    importance, or for a type ggml quantizes without one (Q8_0, floats), the reference quantizer."""
    dtype = DType(dtype)
    x = np.ascontiguousarray(rows, dtype=_F32)
    if importance is None or dtype not in WEIGHTED_TYPES:
        return quantize(x, dtype)
    n_rows, n_cols = x.shape
    imp = np.asarray(importance, _F32).reshape(-1)
    if imp.size != n_cols:
        raise ValueError(f"importance has {imp.size} weights for rows of {n_cols} values")
    if n_cols % dtype.block_size:
        raise ValueError(f"{dtype.name} needs rows of a multiple of {dtype.block_size} values, got {n_cols}")
    if not np.isfinite(x).all():
        raise ValueError("cannot quantize NaN or infinite values")
    size = dtype.block_size
    blocks = x.reshape(-1, size)
    imp_blocks = np.broadcast_to(imp.reshape(1, -1), (n_rows, n_cols)).reshape(-1, size)
    if dtype.block_size == 256:
        out = np.concatenate([_k_blocks(blocks[s : s + 64], imp_blocks[s : s + 64], dtype)
                              for s in range(0, blocks.shape[0], 64)]) if blocks.size else \
            np.empty((0, dtype.block_bytes), np.uint8)
    else:
        sigma2 = _row_sums(x * x) / _F32(n_cols)
        w = _value_weights(x, np.broadcast_to(imp, x.shape), sigma2).reshape(-1, size)
        out = np.concatenate([_legacy_blocks(blocks[s : s + 4096], w[s : s + 4096], dtype)
                              for s in range(0, blocks.shape[0], 4096)]) if blocks.size else \
            np.empty((0, dtype.block_bytes), np.uint8)
    return out.reshape(n_rows, dtype.row_bytes(n_cols))
