"""Error-feedback quantization (runtime.quant.gptq): on inputs with correlated columns, a lower output
error E‖(W − Q)·x‖² than the weighted quantizers alone, in blocks the gguf package decodes the same."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from runtime.quant import weighted as wq
from runtime.quant.codec import to_float32
from runtime.quant.gptq import DAMP, GRID_TYPES, INVERT_BLOCK, inverse_factor, quantize_gptq
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


def _inverse_factor_by_definition(h: np.ndarray) -> np.ndarray:
    """Uᵀ·U = (H + damping)⁻¹ the direct way: invert the damped matrix, then factor the inverse."""
    diag = np.diag(h)
    damped = h + DAMP * (diag.mean() if diag.any() else 1.0) * np.eye(len(h))
    inverse = np.linalg.inv(damped)
    return np.linalg.cholesky((inverse + inverse.T) / 2).T


def _second_moments(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    tokens = max(4, n // 3) if kind == "rank-deficient" else 2 * n
    x = rng.standard_normal((tokens, n))
    if kind == "ill-conditioned":
        x *= np.exp(4 * rng.standard_normal(n))  # column scales over ~10 orders of magnitude
    if kind == "dead columns":
        x[:, rng.random(n) < 0.3] = 0  # columns the text never activates: zero rows and columns
    if kind == "all zero":
        x[:] = 0
    return x.T @ x / tokens


@pytest.mark.parametrize("n", [1, 7, INVERT_BLOCK, INVERT_BLOCK + 1, 3 * INVERT_BLOCK + 5, 700])
@pytest.mark.parametrize("kind", ["plain", "ill-conditioned", "dead columns", "rank-deficient", "all zero"])
def test_inverse_factor_is_the_factor_of_the_damped_inverse(n, kind):
    h = _second_moments(np.random.default_rng(n), n, kind)
    got = inverse_factor(h)
    want = _inverse_factor_by_definition(h)
    assert np.array_equal(got, np.triu(got))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def _gptq_column_by_column(w: np.ndarray, dtype: DType, importance: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Error feedback without batching: each column's error reaches every later column at once."""
    w = w.astype(np.float64)
    n_rows, n_cols = w.shape
    bs = dtype.block_size
    out = []
    for b0 in range(0, n_cols, bs):
        block = w[:, b0 : b0 + bs].astype(np.float32)
        grid = wq.block_grid(block, np.broadcast_to(importance[b0 : b0 + bs], block.shape), dtype)
        q = np.empty((n_rows, bs), np.float32)
        for j in range(bs):
            c = b0 + j
            q[:, j] = grid.round(w[:, c].astype(np.float32), j)
            e = (w[:, c] - q[:, j]) / factor[c, c]
            w[:, c + 1 :] -= np.outer(e, factor[c, c + 1 :])
        out.append(wq.pack_on_grid(q, grid))
    return np.stack(out, axis=1).reshape(n_rows, -1)


@pytest.mark.parametrize("dtype", [DType.Q4_K, DType.Q3_K, DType.Q6_K])
def test_batched_updates_quantize_as_column_by_column_feedback(problem, dtype):
    w, _, importance, factor = problem
    got = quantize_gptq(w, dtype, importance, factor).reshape(R, -1, dtype.block_bytes)
    want = _gptq_column_by_column(w, dtype, importance, factor).reshape(R, -1, dtype.block_bytes)
    assert (got != want).any(axis=2).mean() <= 0.01  # the sums' order differs: a rounding tie may go either way
