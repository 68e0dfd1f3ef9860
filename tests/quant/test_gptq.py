"""Error-feedback quantization (runtime.quant.gptq): on inputs with correlated columns, a lower output
error E‖(W − Q)·x‖² than the weighted quantizers alone, in blocks the gguf package decodes the same."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from runtime.quant.codec import to_float32
from runtime.quant.gptq import GRID_TYPES, inverse_factor, quantize_gptq
from runtime.quant.types import DType
from runtime.quant.weighted import quantize_weighted

R, N, T = 32, 512, 1024


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((R, N)).astype(np.float32)
    mix = rng.standard_normal((N, N)) / np.sqrt(N) + np.eye(N)
    x = ((rng.standard_normal((T, N)) * np.exp(rng.standard_normal(N))) @ mix).astype(np.float32)
    h = x.T.astype(np.float64) @ x / T
    return w, x, np.diag(h).astype(np.float32), inverse_factor(h)


@pytest.mark.parametrize("dtype", sorted(GRID_TYPES, key=lambda t: t.name))
def test_error_feedback_lowers_the_output_error(problem, dtype):
    w, x, importance, factor = problem
    raw = quantize_gptq(w, dtype, importance, factor)
    got = to_float32(raw, dtype).reshape(R, N)

    def output_error(q: np.ndarray) -> float:
        return float(np.square((w - q) @ x.T).sum())

    plain = to_float32(quantize_weighted(w, dtype, importance), dtype).reshape(R, N)
    assert output_error(got) < 0.6 * output_error(plain)
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(dtype))).reshape(R, N)
    np.testing.assert_array_equal(got, want)


def test_types_without_a_grid_fall_back(problem):
    w, _, importance, factor = problem
    np.testing.assert_array_equal(quantize_gptq(w, DType.F16, importance, factor),
                                  quantize_weighted(w, DType.F16, importance))


def test_a_column_never_activated_is_damped_not_singular():
    h = np.diag([1.0, 0.0, 2.0, 0.0] * 8)
    u = inverse_factor(h)
    assert np.isfinite(u).all() and np.allclose(u, np.triu(u))


@pytest.mark.parametrize("dtype", [DType.Q3_K, DType.Q4_0, DType.Q2_K])
def test_with_the_hessian_no_row_is_worse_than_the_weighted_quantizer(problem, dtype):
    w, x, importance, factor = problem
    h = x.T.astype(np.float64) @ x / T
    rows = np.vstack([w, 40 * w[:4]])  # rows of very different scales push values past a block's grid

    def row_errors(raw: np.ndarray) -> np.ndarray:
        d = to_float32(raw, dtype).reshape(rows.shape) - rows
        return np.einsum("ri,ri->r", d @ h, d)

    got = row_errors(quantize_gptq(rows, dtype, importance, factor, h))
    plain = row_errors(quantize_weighted(rows, dtype, importance))
    assert (got <= plain * (1 + 1e-9)).all()
    assert got.sum() < 0.6 * plain.sum()
