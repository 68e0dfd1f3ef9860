"""Our quantizers against the `gguf` package's reference ones: byte-identical output, same decoding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as ref_dequantize
from gguf.quants import quantize as ref_quantize

from runtime.quant.codec import bf16_to_float32, float32_to_bf16, quantize, to_float32
from runtime.quant.types import QUANTIZED_TYPES, DType

RNG = np.random.default_rng(1234)


def _cases() -> dict[str, np.ndarray]:
    ties = (RNG.integers(-16, 16, (8, 64)) * 0.5).astype(np.float32)  # x/d lands on .5 often
    ties[:, 0] = 8.0  # fixes the scale so the ties are exact
    outliers = RNG.normal(size=(8, 96)).astype(np.float32)
    outliers[::2, ::17] = 300.0
    mixed_sign_extremes = RNG.normal(size=(4, 64)).astype(np.float32)
    mixed_sign_extremes[:, 3], mixed_sign_extremes[:, 9] = 5.0, -5.0  # equal magnitudes, first wins
    return {
        "normal": RNG.normal(size=(37, 256)).astype(np.float32),
        "uniform": RNG.uniform(-1, 1, (16, 128)).astype(np.float32),
        "positive": RNG.uniform(0.5, 2, (16, 64)).astype(np.float32),
        "outliers": outliers,
        "zeros": np.zeros((3, 64), np.float32),
        "constant": np.full((3, 64), 0.7, np.float32),
        "ties": ties,
        "tiny": (RNG.normal(size=(8, 64)) * 1e-30).astype(np.float32),
        "huge": (RNG.normal(size=(8, 64)) * 1e6).astype(np.float32),  # f16 scales overflow
        "extremes": mixed_sign_extremes,
    }


CASES = _cases()


@pytest.mark.parametrize("dtype", QUANTIZED_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", sorted(CASES))
def test_quantize_is_byte_identical_to_gguf(dtype, case):
    x = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the 'huge' case overflows f16 in both
        ours = quantize(x, dtype)
        ref = ref_quantize(x, GGMLQuantizationType(int(dtype)))
        assert ours.shape == (x.shape[0], dtype.row_bytes(x.shape[1]))
        assert np.array_equal(ours, ref.reshape(ours.shape))
        back = to_float32(ours, dtype)
        want = ref_dequantize(ref, GGMLQuantizationType(int(dtype))).reshape(x.shape)
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.array_equal(back, want, equal_nan=True)


@pytest.mark.parametrize("dtype", QUANTIZED_TYPES, ids=lambda t: t.name)
def test_large_input_spanning_many_groups(dtype):
    x = RNG.normal(size=(70, 4096)).astype(np.float32)  # more blocks than one encoding group
    ref = ref_quantize(x, GGMLQuantizationType(int(dtype)))
    assert np.array_equal(quantize(x, dtype), ref.reshape(x.shape[0], -1))


@pytest.mark.parametrize(
    ("dtype", "bound"),
    [(DType.Q8_0, 0.005), (DType.Q5_1, 0.04), (DType.Q5_0, 0.07), (DType.Q4_1, 0.08), (DType.Q4_0, 0.13)],
)
def test_round_trip_error_is_what_the_bit_width_allows(dtype, bound):
    x = CASES["normal"]
    err = np.abs(to_float32(quantize(x, dtype), dtype) - x).max() / np.abs(x).max()
    assert 0 < err < bound


def test_float_types():
    x = CASES["normal"]
    assert quantize(x, DType.F32) is not None and np.array_equal(quantize(x, DType.F32), x)
    h = quantize(x, DType.F16)
    assert h.dtype == np.float16 and np.array_equal(to_float32(h, DType.F16), x.astype(np.float16).astype(np.float32))


def test_bf16_rounds_to_nearest_even_and_keeps_nan():
    # 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even one (1.0)
    # 1 + 3·2^-8 is halfway too and rounds up to the even 1 + 2^-6
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.5, np.inf, np.nan], dtype=np.float32)
    b = float32_to_bf16(x)
    back = bf16_to_float32(b)
    assert back[:4].tolist() == [1.0, 1 + 2**-6, 1 + 2**-7, -2.5]
    assert back[4] == np.inf and np.isnan(back[5])
    ref = ref_quantize(x, GGMLQuantizationType.BF16).view(np.uint16)
    assert np.array_equal(b, ref)


def test_columns_must_fill_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(np.zeros((2, 40), np.float32), DType.Q8_0)
