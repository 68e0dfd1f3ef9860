"""The importance-weighted quantizers (runtime.quant.weighted): valid blocks (gguf.quants decodes them
to what our decoder gives), and a lower importance-weighted error than ggml's reference quantizers when
the importance is skewed, the case calibration exists for."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from runtime.quant import kquants
from runtime.quant.codec import quantize, to_float32
from runtime.quant.types import DType
from runtime.quant.weighted import (
    WEIGHTED_TYPES,
    _make_qkx3,
    _row_sums,
    block_grid,
    make_qp_quants,
    make_qx_quants_weighted,
    pack_on_grid,
    quantize_weighted,
)

R, N = 48, 512


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((R, N)).astype(np.float32) * (1 + rng.random(N).astype(np.float32))
    importance = np.exp(2 * rng.standard_normal(N)).astype(np.float32)  # a few columns matter most
    return x, importance


def _decode(raw: np.ndarray, dtype: DType) -> np.ndarray:
    return to_float32(raw, dtype).reshape(R, N)


@pytest.mark.parametrize("dtype", sorted(WEIGHTED_TYPES, key=lambda t: t.name))
def test_weighted_error_beats_the_reference_quantizer(dtype):
    x, importance = _data()
    weighted = quantize_weighted(x, dtype, importance)
    assert weighted.shape == (R, dtype.row_bytes(N))
    got = _decode(weighted, dtype)
    ref = _decode(quantize(x, dtype), dtype)
    err_weighted = float((importance * (x - got) ** 2).sum())
    err_reference = float((importance * (x - ref) ** 2).sum())
    assert err_weighted < 0.8 * err_reference, (err_weighted, err_reference)
    # the blocks are valid: the gguf package's dequantizer reads the same values
    want = gguf.quants.dequantize(weighted, gguf.GGMLQuantizationType(int(dtype))).reshape(R, N)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [DType.Q4_K, DType.Q3_K, DType.Q5_0])
def test_uniform_importance_is_no_worse_than_the_reference(dtype):
    x, _ = _data(1)
    got = _decode(quantize_weighted(x, dtype, np.ones(N, np.float32)), dtype)
    ref = _decode(quantize(x, dtype), dtype)
    assert ((x - got) ** 2).sum() <= 1.01 * ((x - ref) ** 2).sum()


def test_types_without_a_weighted_algorithm_use_the_reference():
    x, importance = _data()
    for dtype in (DType.Q8_0, DType.F16):
        np.testing.assert_array_equal(quantize_weighted(x, dtype, importance), quantize(x, dtype))
    np.testing.assert_array_equal(quantize_weighted(x, DType.Q4_K, None), quantize(x, DType.Q4_K))


def test_zero_rows_and_bad_inputs():
    x = np.zeros((2, 256), np.float32)
    for dtype in (DType.Q4_K, DType.Q3_K, DType.Q2_K, DType.Q6_K, DType.Q4_1):
        assert not to_float32(quantize_weighted(x, dtype, np.ones(256, np.float32)), dtype).any()
    with pytest.raises(ValueError, match="importance has 3 weights"):
        quantize_weighted(x, DType.Q4_K, np.ones(3, np.float32))
    x[1, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize_weighted(x, DType.Q4_K, np.ones(256, np.float32))


def test_sums_are_added_in_order_in_float32():
    """ggml sums σ² (Σx² of a row or super-block) and the sub-block weight totals one value at a time in
    float32, so later values can be absorbed: 2**24 + 1 is a tie that rounds back to the even 2**24, so
    after 2**24 every added 1 is lost; numpy's pairwise sum adds the ones together first."""
    big = np.float32(2**24)
    absorbed = np.concatenate([[big], np.ones(255, np.float32)])[None]
    assert _row_sums(absorbed)[0] == big
    assert absorbed.sum(dtype=np.float32) != big  # pairwise: the ones survive
    # ones first: 255 is exact, then 2**24 + 255 is a tie between 2**24 + 254 and + 256; even wins
    ones_first = absorbed[:, ::-1].copy()
    assert _row_sums(ones_first)[0] == big + 256
    # one sum per row
    np.testing.assert_array_equal(_row_sums(np.stack([absorbed[0], ones_first[0]])), [big, big + 256])


@pytest.mark.parametrize("dtype", sorted(WEIGHTED_TYPES, key=lambda t: t.name))
def test_a_row_alone_is_quantized_as_among_others(dtype):
    """ggml quantizes row after row and super-block after super-block, each on its own: a row of one
    super-block quantized alone gives the bytes it gets beside other rows. (numpy sums a single column
    pairwise, as one contiguous run, unless told otherwise: σ² and the scales of scales then differ.)"""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((24, 256)) * np.exp(2 * rng.standard_normal(256))).astype(np.float32)
    importance = (rng.gamma(0.5, size=256) * (rng.random(256) < 0.7)).astype(np.float32)
    together = quantize_weighted(x, dtype, importance)
    alone = np.concatenate([quantize_weighted(row[None], dtype, importance) for row in x])
    np.testing.assert_array_equal(alone, together)


def test_make_qp_quants_keeps_codes_in_bytes():
    """ggml's make_qp_quants stores codes in bytes: a negative value (a sub-block scale the search left
    below 0) gets a negative code kept modulo 256, and the coordinate descent reads that byte back.
    x = (−1, 1 × 9), weights 1, nmax 63: the best trial scale is 1/63.1, codes (−63, 63 × 9), Σwxl 630,
    Σwl² 39690, and −63 is stored as 193. Descent at value 0: without it Σwxl 630 + 193 = 823,
    Σwl² 39690 − 193² = 2441, new code nearest(−2441 / 823) = −3; with it Σwxl 826, Σwl² 2450, and
    826²·39690 > 630²·2450, so −3 (stored 253) is taken. Nothing else improves: scale 826 / 2450."""
    x = np.array([-1.0] + [1.0] * 9, np.float32)[:, None]
    scale, codes = make_qp_quants(x, 63, np.ones_like(x))
    assert codes[:, 0].tolist() == [253] + [63] * 9
    assert scale[0] == np.float32(826) / np.float32(2450)


@pytest.mark.parametrize("dtype", [DType.Q2_K, DType.Q4_K, DType.Q5_K])
def test_super_block_scales_of_a_block_without_weight_or_values(dtype):
    """make_qp_quants gives scale 0 when every weight is 0 (not 0/0), and counts a column whose largest
    value is below GROUP_MAX_EPS (1e-15) as zero: scale 0 and all codes 0, as ggml does."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    d_at = {DType.Q2_K: 80, DType.Q4_K: 0, DType.Q5_K: 0}[dtype]
    scales_at = {DType.Q2_K: slice(0, 16), DType.Q4_K: slice(4, 16), DType.Q5_K: slice(4, 16)}[dtype]
    unweighted = quantize_weighted(x, dtype, np.zeros(256, np.float32))
    assert not unweighted[:, d_at : d_at + 4].any()  # d and dmin are +0
    assert not to_float32(unweighted, dtype).any()  # finite: every value decodes to 0
    tiny = quantize_weighted(x * np.float32(1e-17), dtype, np.ones(256, np.float32))
    assert not tiny[:, d_at : d_at + 4].any()
    assert not tiny[:, scales_at].any()


@pytest.mark.parametrize("dtype", [DType.Q2_K, DType.Q4_K, DType.Q5_K])
def test_values_are_rounded_on_the_grid_the_block_stores(dtype):
    """ggml rounds every value last against the scales as stored: d·sc and dmin·m read back from the
    block's bytes. That matters when a sub-block scale came out negative (all-negative values with one
    weighted value per sub-block can do it): its byte code (e.g. 253 for −3) is written as it is into
    Q2_K's nibble pair and Q4_K's 6-bit fields, spilling into the neighbours' bits, and Q5_K's is
    clamped to 63; each value must then be the stored grid's nearest one."""
    rng = np.random.default_rng(0)
    x = -(1 + rng.random((64, 256))).astype(np.float32)
    sub, nmax = (16, 3) if dtype is DType.Q2_K else (32, 15 if dtype is DType.Q4_K else 31)
    importance = np.zeros(256, np.float32)
    importance[7::sub] = 1
    # the case under test occurs: some sub-block scales are negative
    sigma2 = _row_sums(x * x) * np.float32(1 if dtype is DType.Q2_K else 2) / np.float32(256)
    w = importance * np.sqrt(sigma2[:, None] + x * x)
    scales = _make_qkx3(np.ascontiguousarray(x.reshape(-1, sub).T), np.ascontiguousarray(w.reshape(-1, sub).T), nmax)[0]
    assert (scales < 0).any()
    raw = quantize_weighted(x, dtype, importance)
    got = to_float32(raw, dtype).reshape(x.shape)
    if dtype is DType.Q2_K:
        d, dmin = raw[:, 80:82].view("<f2").astype(np.float32), raw[:, 82:84].view("<f2").astype(np.float32)
        sc, m = raw[:, :16] & 0xF, raw[:, :16] >> 4
    else:
        d, dmin = raw[:, 0:2].view("<f2").astype(np.float32), raw[:, 2:4].view("<f2").astype(np.float32)
        sc, m = kquants._scale_min_k4(raw[:, 4:16])
    dl = np.repeat(d * sc.astype(np.float32), sub, axis=1)
    ml = np.repeat(dmin * m.astype(np.float32), sub, axis=1)
    with np.errstate(all="ignore"):
        q = np.clip(kquants.nearest_int((x + ml) / dl), 0, nmax).astype(np.float32)
    rounded = dl != 0
    np.testing.assert_array_equal(got[rounded], (dl * q - ml)[rounded])
    if dtype is DType.Q5_K:  # the super-block codes of the scales, as make_qp_quants gives them (bytes)
        sw = _row_sums(w.reshape(-1, sub)).reshape(64, 8)
        codes = make_qp_quants(np.ascontiguousarray(scales.reshape(64, 8).T), 63, np.ascontiguousarray(sw.T))[1].T
        assert (codes > 63).any()
        np.testing.assert_array_equal(sc, np.minimum(codes, 63))


def test_make_qx_quants_weighted_treats_each_column_alone():
    """Each column (sub-block) is searched on its own, its sums added value after value: one column
    alone gives the scale and codes it gets beside others (numpy sums a lone column pairwise unless
    the value axis stays the outer one)."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((32, 200)) * np.exp(3 * rng.standard_normal(200))).astype(np.float32)
    w = rng.gamma(0.5, size=(32, 200)).astype(np.float32)
    scale, codes = make_qx_quants_weighted(x, 8, w)
    for j in range(200):
        s1, c1 = make_qx_quants_weighted(x[:, j : j + 1].copy(), 8, w[:, j : j + 1].copy())
        assert s1[0] == scale[j] and (c1[:, 0] == codes[:, j]).all(), j


@pytest.mark.parametrize("dtype", [DType.Q4_K, DType.Q5_1, DType.Q8_0])
def test_values_rounded_to_a_block_grid_pack_back_to_themselves(dtype):
    """block_grid / pack_on_grid, what error feedback (gptq.py) uses: every value rounded to its block's
    grid is stored exactly; legacy blocks cannot be gridded without their rows' mean squares."""
    x, importance = _data(3)
    blocks = x.reshape(-1, dtype.block_size)
    imp = np.tile(importance, R).reshape(blocks.shape)
    sigma2 = np.repeat((x * x).mean(axis=1), N // dtype.block_size).astype(np.float32)
    grid = block_grid(blocks, imp, dtype, sigma2)
    on_grid = np.stack([grid.round(blocks[:, j], j) for j in range(dtype.block_size)], axis=1)
    packed = pack_on_grid(on_grid, grid)
    assert packed.shape == (blocks.shape[0], dtype.block_bytes)
    np.testing.assert_array_equal(to_float32(packed, dtype).reshape(blocks.shape), on_grid)
    assert np.abs(on_grid - blocks).mean() < 0.5 * np.abs(blocks).mean()  # a grid of the values, not any grid
    if dtype.block_size == 256:  # the weighted quantizer is the values packed on their own grid
        np.testing.assert_array_equal(pack_on_grid(blocks, grid),
                                      quantize_weighted(x, dtype, importance).reshape(blocks.shape[0], -1))
    else:
        with pytest.raises(ValueError, match="mean squares"):
            block_grid(blocks, imp, dtype)
