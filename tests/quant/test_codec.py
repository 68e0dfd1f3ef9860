"""Tests of runtime.quant.codec: byte-identical to gguf.quants (llama.cpp's reference) for every block type,
decoding identical to gguf's, sane round-trip error, exact float16/bfloat16 conversions."""

from __future__ import annotations

import struct
import threading
import warnings

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as ref_dequantize
from gguf.quants import quantize as ref_quantize

from runtime.quant import codec
from runtime.quant.codec import bf16_to_float32, float32_to_bf16, quantize, to_float32
from runtime.quant.types import QUANTIZED_TYPES, DType

QTYPES = pytest.mark.parametrize("dtype", QUANTIZED_TYPES, ids=lambda t: t.name)


def _ref(x: np.ndarray, dtype: DType) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return ref_quantize(x, GGMLQuantizationType(int(dtype))).reshape(x.shape[0], -1)


def _ref_decode(raw: np.ndarray, dtype: DType) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ref_dequantize(raw, GGMLQuantizationType(int(dtype))).reshape(raw.shape[0], -1)


def _tie_rows(dtype: DType, rng: np.random.Generator) -> np.ndarray:
    """Blocks whose scale is exactly 1, so that half-integer values land exactly on .5 when divided."""
    n = 64
    if dtype is DType.Q8_0:  # d = max|x| / 127 = 1
        x = rng.integers(-126, 126, (n, 64)) + 0.5
        x[:, ::32] = 127.0 * rng.choice([-1, 1], (n, 2))
    elif dtype in (DType.Q4_0, DType.Q5_0):  # d = e / -half = 1 with e = -half
        half = 8 if dtype is DType.Q4_0 else 16
        x = rng.integers(-half, half - 1, (n, 64)) + 0.5
        x[:, ::32] = -half
    else:  # d = (max - min) / top = 1 with min 0, max top; and shifted by a constant
        top = 15 if dtype is DType.Q4_1 else 31
        x = rng.integers(0, top, (n, 64)) + 0.5
        x[:, ::32] = 0.0
        x[:, 1::32] = top
        x[n // 2 :] -= 4.0  # min -4: (x - min) still lands on .5
    return x.astype(np.float32)


def _cases(dtype: DType) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(dtype) + 1000)
    outliers = rng.normal(size=(16, 256)).astype(np.float32)
    outliers[::2, ::37] = 300.0
    outliers[1::2, 5::41] = -900.0
    equal_extremes = rng.normal(size=(8, 64)).astype(np.float32)
    equal_extremes[:, 3], equal_extremes[:, 9] = 5.0, -5.0  # first of equal magnitudes decides the sign
    equal_extremes[4:, 3], equal_extremes[4:, 9] = -5.0, 5.0
    signed_zeros = np.zeros((8, 64), np.float32)
    signed_zeros[0, 5] = -0.0
    signed_zeros[1] = -0.0
    signed_zeros[1, 7] = 0.0
    signed_zeros[2, 0] = -0.0
    signed_zeros[3, 31] = -0.0
    signed_zeros[4] = -np.abs(rng.normal(size=64))
    signed_zeros[4, [3, 40]] = [-0.0, 0.0]
    signed_zeros[5] = np.abs(rng.normal(size=64))
    signed_zeros[5, [2, 50]] = [-0.0, 0.0]
    constant = np.repeat(np.array([[0.7], [-0.7], [3e-3], [-1e4], [0.0], [65504.0]], np.float32), 96, axis=1)
    return {
        "normal": rng.normal(size=(37, 512)).astype(np.float32),
        "uniform": rng.uniform(-1, 1, (16, 128)).astype(np.float32),
        "positive": rng.uniform(0.5, 2, (16, 64)).astype(np.float32),
        "negative": -rng.uniform(0.5, 2, (16, 64)).astype(np.float32),
        "outliers": outliers,
        "zeros": np.zeros((3, 64), np.float32),
        "signed_zeros": signed_zeros,
        "constant": constant,
        "ties": _tie_rows(dtype, rng),
        "equal_extremes": equal_extremes,
        "small": (rng.normal(size=(8, 64)) * 1e-30).astype(np.float32),
        "denormal_scale": (rng.normal(size=(8, 64)) * 1e-38).astype(np.float32),  # 1/d overflows
        "subnormal_values": (rng.normal(size=(8, 64)) * 1e-42).astype(np.float32),
        "f16_subnormal_scale": (rng.normal(size=(8, 64)) * 1e-5).astype(np.float32),
        "huge": (rng.normal(size=(8, 64)) * 1e6).astype(np.float32),  # scales overflow float16
        "near_float32_max": (rng.uniform(-1, 1, (4, 64)) * 3e38).astype(np.float32),
    }


@QTYPES
@pytest.mark.parametrize(
    "case",
    sorted(_cases(DType.Q8_0)),
)
def test_quantize_is_byte_identical_to_gguf_and_decodes_the_same(dtype, case):
    x = _cases(dtype)[case]
    ours = quantize(x, dtype)
    ref = _ref(x, dtype)
    assert ours.dtype == np.uint8 and ours.shape == (x.shape[0], dtype.row_bytes(x.shape[1]))
    diff = np.argwhere(ours != ref)
    assert diff.size == 0, f"first differing (row, byte): {diff[:4].tolist()}"
    back = to_float32(ours, dtype)
    assert back.dtype == np.float32 and back.shape == x.shape
    np.testing.assert_array_equal(back, _ref_decode(ref, dtype))


@QTYPES
def test_ties_land_on_half(dtype):
    """The tie cases really exercise ties: x/d is exactly k + 0.5 for most values."""
    x = _tie_rows(dtype, np.random.default_rng(0))
    if dtype in (DType.Q4_1, DType.Q5_1):
        x = x - x.reshape(-1, 32).min(axis=1).repeat(32).reshape(x.shape)
    frac = np.abs(x) % 1
    assert (frac == 0.5).mean() > 0.9
    ours = quantize(x, dtype)
    assert np.array_equal(ours, _ref(x, dtype))
    if dtype is DType.Q8_0:  # round half away from zero: 2.5 → 3, -2.5 → -3
        q = ours.reshape(-1, 34)[:, 2:].view(np.int8).astype(np.float64)
        xb = x.reshape(-1, 32).astype(np.float64)
        np.testing.assert_array_equal(q, np.sign(xb) * np.floor(np.abs(xb) + 0.5))


@QTYPES
def test_random_matrix_spanning_many_groups(dtype):
    rng = np.random.default_rng(7)
    n_rows = codec._GROUP * 32 // 1024 * 3 + 5  # several groups and a partial one
    x = (rng.standard_t(4, size=(n_rows, 1024)) * 0.02).astype(np.float32)
    ours = quantize(x, dtype)
    assert np.array_equal(ours, _ref(x, dtype))
    np.testing.assert_array_equal(to_float32(ours, dtype), _ref_decode(ours, dtype))


@QTYPES
def test_decodes_arbitrary_blocks_like_gguf(dtype):
    """Any bytes, not just ones we produced: random codes, random float16 scales (finite)."""
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (50, dtype.row_bytes(256)), dtype=np.uint8)
    blocks = raw.reshape(-1, dtype.block_bytes)
    n_scales = 2 if dtype in (DType.Q4_1, DType.Q5_1) else 1
    scales = rng.normal(size=(blocks.shape[0], n_scales)).astype(np.float16)
    blocks[:, : 2 * n_scales] = scales.view(np.uint8)
    np.testing.assert_array_equal(to_float32(raw, dtype), _ref_decode(raw, dtype))


@pytest.mark.parametrize(
    ("dtype", "factor"),
    [(DType.Q8_0, 0.57), (DType.Q5_1, 0.52), (DType.Q4_1, 0.52), (DType.Q5_0, 1.01), (DType.Q4_0, 1.01)],
)
def test_round_trip_error_within_the_block_step(dtype, factor):
    """|x - decode(quantize(x))| ≤ factor·d per block (d the block's step), and far from zero error."""
    x = np.random.default_rng(11).normal(size=(64, 1024)).astype(np.float32)
    q = quantize(x, dtype)
    err = np.abs(to_float32(q, dtype) - x).reshape(-1, 32)
    d = np.abs(q.reshape(-1, dtype.block_bytes)[:, :2].copy().view(np.float16).astype(np.float32))
    m = 0.0
    if dtype in (DType.Q4_1, DType.Q5_1):
        m = np.abs(q.reshape(-1, dtype.block_bytes)[:, 2:4].copy().view(np.float16).astype(np.float32))
    assert np.all(err <= factor * d + m * 2.0**-10)
    rel_rms = np.sqrt(np.mean(err**2) / np.mean(x**2))
    expected = {DType.Q8_0: 0.008, DType.Q5_1: 0.04, DType.Q5_0: 0.05, DType.Q4_1: 0.08, DType.Q4_0: 0.1}
    assert expected[dtype] / 4 < rel_rms < expected[dtype]


@QTYPES
def test_leading_dimensions_and_float64_input(dtype):
    x = np.random.default_rng(5).normal(size=(2, 3, 64))
    q = quantize(x, dtype)
    assert q.shape == (2, 3, dtype.row_bytes(64))
    assert np.array_equal(q.reshape(6, -1), _ref(x.astype(np.float32).reshape(6, 64), dtype))
    assert to_float32(q, dtype).shape == (2, 3, 64)


@QTYPES
def test_empty_rows(dtype):
    q = quantize(np.zeros((0, 64), np.float32), dtype)
    assert q.shape == (0, dtype.row_bytes(64))
    assert to_float32(q, dtype).shape == (0, 64)


@QTYPES
def test_threads_give_the_same_bytes(dtype):
    rng = np.random.default_rng(9)
    chunks = [rng.normal(size=(64, 2048)).astype(np.float32) for _ in range(6)]
    want = [quantize(c, dtype) for c in chunks]
    got: list[np.ndarray | None] = [None] * len(chunks)

    def work(i: int) -> None:
        got[i] = quantize(chunks[i], dtype)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))


@QTYPES
@pytest.mark.parametrize("n_cols", [40, 16, 33])
def test_columns_must_fill_whole_blocks(dtype, n_cols):
    msg = rf"{dtype.name}: rows have {n_cols} values, which is not a multiple of 32"
    with pytest.raises(ValueError, match=msg):
        quantize(np.zeros((2, n_cols), np.float32), dtype)


@QTYPES
def test_decode_rejects_partial_blocks(dtype):
    with pytest.raises(ValueError, match=f"not a whole number of {dtype.name} blocks"):
        to_float32(np.zeros((2, dtype.block_bytes + 1), np.uint8), dtype)


# --- float types -----------------------------------------------------------------------------------


def test_f32_and_f16():
    x = np.random.default_rng(1).normal(size=(5, 48)).astype(np.float32) * 1e3
    f32 = quantize(x, DType.F32)
    assert f32.dtype == np.float32 and np.array_equal(f32, x)
    assert np.array_equal(to_float32(f32, DType.F32), x)
    h = quantize(x, DType.F16)
    assert h.dtype == np.float16 and h.shape == x.shape
    # float16 round trip: within half an f16 ulp, and decoding is exact widening
    assert np.all(np.abs(h.astype(np.float64) - x) <= np.abs(x) * 2.0**-11)
    back = to_float32(h, DType.F16)
    assert back.dtype == np.float32 and np.array_equal(back, h.astype(np.float32))
    with np.errstate(over="ignore"):
        big = quantize(np.array([[70000.0, -70000.0, 65504.0]], np.float32), DType.F16)
    assert big.tolist() == [[np.inf, -np.inf, 65504.0]]


def _bf16_by_bits(v: float) -> int:
    """bfloat16 bits of a float32, computed bit by bit: nearest, ties to even; NaN quieted."""
    (bits,) = struct.unpack("<I", struct.pack("<f", v))
    upper, lower = bits >> 16, bits & 0xFFFF
    if (bits & 0x7F800000) == 0x7F800000 and bits & 0x007FFFFF:
        return upper | 0x40
    if lower > 0x8000 or (lower == 0x8000 and upper & 1):
        upper += 1
    return upper


def test_bf16_rounds_to_nearest_even_bit_exactly():
    rng = np.random.default_rng(2)
    special = np.array(
        [
            1 + 2**-8,  # halfway, even below: → 1.0
            1 + 3 * 2**-8,  # halfway, odd below: → 1 + 2**-6
            1 + 2**-8 + 2**-20,  # above halfway
            -(1 + 2**-8),
            float(np.uint32(0x7F7F8000).view(np.float32)),  # bf16 max + half an ulp: ties up to inf
            np.inf,
            -np.inf,
            0.0,
            -0.0,
            1e-45,
            np.nan,
        ],
        np.float32,
    )
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    bits[:200] = (bits[:200] & 0xFFFF0000) | 0x8000  # exact ties
    bits[200:210] = 0x7F800001 + np.arange(10)  # signalling NaNs
    bits[210:220] = 0xFFC00000 + np.arange(10)
    x = np.concatenate([special, bits.view(np.float32)])
    got = float32_to_bf16(x)
    assert got.dtype == np.uint16
    want = np.array([_bf16_by_bits(float(v)) for v in x], np.uint16)
    np.testing.assert_array_equal(got, want)
    back = bf16_to_float32(got)
    assert back[:4].tolist() == [1.0, 1 + 2**-6, 1 + 2**-7, -1.0]
    assert back[4] == np.inf and np.isnan(back[10])
    assert np.array_equal(np.isnan(back), np.isnan(x))
    # identical to gguf (ggml_compute_fp32_to_bf16) too
    np.testing.assert_array_equal(got, ref_quantize(x, GGMLQuantizationType.BF16).view(np.uint16))


def test_bf16_widening_is_exact():
    u = np.arange(0, 2**16, dtype=np.uint32).astype(np.uint16)
    f = bf16_to_float32(u)
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f.view(np.uint32), u.astype(np.uint32) << 16)
    finite = ~np.isnan(f)
    np.testing.assert_array_equal(float32_to_bf16(f[finite]), u[finite])  # bf16 values round-trip
    raw = u.reshape(256, 256)
    assert to_float32(raw, DType.BF16).shape == (256, 256)
    assert np.array_equal(quantize(to_float32(raw, DType.BF16)[:1], DType.BF16), raw[:1])
