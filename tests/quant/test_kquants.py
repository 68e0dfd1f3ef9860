"""Tests of runtime.quant.kquants (Q2_K…Q6_K): decoding identical to gguf.quants on any block,
round-trip error bounds, edge cases, re-quantization, and the numpy behaviour the encoder relies on.

Byte equality of the encoder with ggml's `quantize_row_qN_K_ref` was checked outside the repository
against ggml's C code (see the kq-codec report); here the encoder is held to its own properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as ref_dequantize

from runtime.quant.codec import quantize, to_float32
from runtime.quant.types import K_QUANT_TYPES, DType

KTYPES = pytest.mark.parametrize("dtype", K_QUANT_TYPES, ids=lambda t: t.name)

# RMS error of quantize→dequantize on standard normal values, relative to their RMS (1): ggml's
# reference quantizers give about 0.29 / 0.15 / 0.072 / 0.036 / 0.018; the bounds leave a little room.
RMS_BOUND = {DType.Q2_K: 0.32, DType.Q3_K: 0.17, DType.Q4_K: 0.08, DType.Q5_K: 0.04, DType.Q6_K: 0.02}


def _ref_decode(raw: np.ndarray, dtype: DType) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return ref_dequantize(raw, GGMLQuantizationType(int(dtype))).reshape(raw.shape[0], -1)


def _random_blocks(dtype: DType, rng: np.random.Generator, n_rows: int, n_blocks: int) -> np.ndarray:
    """Random bytes with finite float16 scales (every code pattern, any scale bytes)."""
    raw = rng.integers(0, 256, (n_rows, n_blocks, dtype.block_bytes), dtype=np.uint8)
    offsets = {DType.Q2_K: (80, 82), DType.Q3_K: (108,), DType.Q4_K: (0, 2), DType.Q5_K: (0, 2),
               DType.Q6_K: (208,)}[dtype]
    for at in offsets:
        f = (rng.standard_normal((n_rows, n_blocks)) * 10.0 ** rng.integers(-6, 4, (n_rows, n_blocks)))
        raw[:, :, at : at + 2] = f.astype("<f2").view(np.uint8).reshape(n_rows, n_blocks, 2)
    return raw.reshape(n_rows, -1)


@KTYPES
def test_decoding_matches_gguf_bit_for_bit(dtype):
    raw = _random_blocks(dtype, np.random.default_rng(int(dtype)), 40, 3)
    ours = to_float32(raw, dtype)
    assert ours.shape == (40, 3 * 256) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours.view(np.uint32), _ref_decode(raw, dtype).astype(np.float32).view(np.uint32))


@KTYPES
def test_decoding_keeps_leading_dimensions_and_empty_input(dtype):
    raw = _random_blocks(dtype, np.random.default_rng(3), 6, 2).reshape(2, 3, -1)
    assert to_float32(raw, dtype).shape == (2, 3, 512)
    assert to_float32(np.zeros((0, dtype.block_bytes), np.uint8), dtype).shape == (0, 256)


@KTYPES
def test_round_trip_error_is_within_the_types_bound(dtype):
    x = np.random.default_rng(7).standard_normal((64, 1024)).astype(np.float32)
    q = quantize(x, dtype)
    assert q.shape == (64, dtype.row_bytes(1024)) and q.dtype == np.uint8
    rms = float(np.sqrt(np.mean((to_float32(q, dtype) - x) ** 2)))
    assert rms < RMS_BOUND[dtype]
    # scaled input: the error scales with it (while the float16 scales stay normal numbers)
    scaled = float(np.sqrt(np.mean((to_float32(quantize(x * 100, dtype), dtype) - x * 100) ** 2)))
    assert scaled < RMS_BOUND[dtype] * 100


@KTYPES
def test_quantize_is_row_independent_and_deterministic(dtype):
    x = np.random.default_rng(11).standard_normal((8, 512)).astype(np.float32)
    whole = quantize(x, dtype)
    for r in (0, 5):
        np.testing.assert_array_equal(quantize(x[r : r + 1], dtype)[0], whole[r])
    np.testing.assert_array_equal(quantize(x, dtype), whole)
