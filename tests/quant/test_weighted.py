"""The importance-weighted quantizers (runtime.quant.weighted): valid blocks (gguf.quants decodes them
to what our decoder gives), and a lower importance-weighted error than ggml's reference quantizers when
the importance is skewed, the case calibration exists for."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from runtime.quant.codec import quantize, to_float32
from runtime.quant.types import DType
from runtime.quant.weighted import WEIGHTED_TYPES, _row_sums, quantize_weighted

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
