"""Error feedback on top of the weighted quantizers, for calibrated conversions: with a matrix's input
second moments H = E[x·xᵀ] from the calibration text, columns are quantized left to right and each
column's rounding error is carried over to the columns not quantized yet (optimal brain quantization,
as GPTQ, Frantar et al. 2022), so what is minimised is the matrix's output error E‖(W − Q)·x‖² with the
correlations between inputs, not only its diagonal part (the importance vector).

Each block's grid (scales and minimums) is chosen by runtime.quant.weighted from the block's values as
updated so far, then its columns are rounded on that grid one at a time; the errors of a whole block are
applied to the later columns with one matrix product (GPTQ's lazy batch). H is damped by DAMP × its mean
diagonal; columns the text never activates get that diagonal alone.
"""

from __future__ import annotations

import numpy as np

from runtime.quant import weighted as wq
from runtime.quant.codec import to_float32
from runtime.quant.types import DType

# 0.01 (GPTQ's) overfitted the calibration text on rwkv.cpp's tiny RWKV-7 (Q4_K_M KL 1.19x the
# uncalibrated file's on another text); 0.1 gave 0.19x (bench/calibration.py)
DAMP = 0.1
GRID_TYPES = wq.WEIGHTED_TYPES | {DType.Q8_0}  # Q8_0: the reference's scales, rounding with error feedback
_F32 = np.float32
INVERT_BLOCK = 128  # columns a triangular inverse's smallest pieces have (numpy's inv, then the upper part)
GRID_ROWS = 64  # rows whose block grids are searched at a time (as weighted.quantize_weighted's 64 super-blocks)
SUB_BLOCK = 32  # columns whose errors are carried within a block one column at a time


def damping(hessian: np.ndarray) -> float:
    """What inverse_factor adds to the diagonal of `hessian`: DAMP × its mean diagonal (1 if all zero)."""
    diag = np.diag(hessian)
    return DAMP * (float(diag.mean()) if diag.any() else 1.0)


def inverse_factor(hessian: np.ndarray) -> np.ndarray:
    """U, upper triangular with Uᵀ·U = (H + damping)⁻¹ (float64), the factor the column updates use.

    With H + damping = R·Rᵀ, R upper triangular (the Cholesky factor of the matrix with rows and
    columns reversed, reversed back), U = R⁻¹: n³/3 flops for the factor and about 2n³/3 for the
    triangular inverse (blocked, matrix products), where inverting H and factoring the inverse took
    about 3n³ (8192 × 8192, the FFN value's input: 33 → 11 s of one core)."""
    h = np.array(hessian, dtype=np.float64)
    h[np.diag_indices(h.shape[0])] += damping(h)
    r = np.linalg.cholesky(h[::-1, ::-1])[::-1, ::-1]
    del h
    u = np.zeros_like(r)
    _invert_upper(r, u)
    return u


def _invert_upper(r: np.ndarray, out: np.ndarray) -> None:
    """out = r⁻¹ for r upper triangular (out zero below the diagonal on entry): [[A, B], [0, D]]⁻¹ is
    [[A⁻¹, −A⁻¹·B·D⁻¹], [0, D⁻¹]], halves inverted the same way down to INVERT_BLOCK columns."""
    n = r.shape[0]
    if n <= INVERT_BLOCK:
        out[:] = np.triu(np.linalg.inv(r))
        return
    m = (n // 2 + INVERT_BLOCK - 1) // INVERT_BLOCK * INVERT_BLOCK
    _invert_upper(r[:m, :m], out[:m, :m])
    _invert_upper(r[m:, m:], out[m:, m:])
    out[:m, m:] = -(out[:m, :m] @ r[:m, m:]) @ out[m:, m:]


def _grid(block: np.ndarray, imp: np.ndarray, dtype: DType, sigma2: np.ndarray) -> wq.BlockGrid:
    """The weighted quantizer's grid of each row's block (n_rows, block_size), GRID_ROWS rows at a
    time (each row's grid depends on that row alone; small pieces keep the trial arrays in cache)."""
    grids = []
    for s in range(0, block.shape[0], GRID_ROWS):
        x = block[s : s + GRID_ROWS]
        grids.append(wq.block_grid(x, np.broadcast_to(imp, x.shape), dtype, sigma2[s : s + GRID_ROWS]))
    return wq.BlockGrid.stacked(grids)


def quantize_gptq(rows: np.ndarray, dtype: DType, importance: np.ndarray, factor: np.ndarray,
                  hessian: np.ndarray | None = None) -> np.ndarray:
    """Encode float32 rows (n_rows, n_cols) as `dtype` with error feedback through `factor`
    (inverse_factor of the rows' input second moments) and block grids weighted by `importance`.

    With `hessian` (those second moments), a row whose output error Δ·H·Δᵀ comes out larger than the
    weighted quantizer's alone keeps the latter (error feedback can push values past a block's grid,
    which is fixed when the block starts; rwkv.cpp's tiny RWKV-7 in Q3_K did so).

    The values are held transposed (a column is a contiguous row of float64) and each column gets
    the earlier columns' errors when it is reached (left-looking): a block those of every earlier
    block with one matrix product before its grid is chosen, a SUB_BLOCK of its columns those of
    the block's earlier sub-blocks with another, a column those of its sub-block's earlier columns.
    Since Δ = E·U (E the scaled errors e_c = (w_c − q_c)/U_cc), the row's error with the damped
    second moments is ‖E‖², so its output error is ‖E‖² − damping·‖Δ‖² without a product by H."""
    dtype = DType(dtype)
    x = np.asarray(rows, _F32)
    n_rows, n_cols = x.shape
    bs = dtype.block_size
    imp = np.asarray(importance, _F32).reshape(-1)
    if bs == 1 or dtype not in GRID_TYPES or n_cols % bs:
        return wq.quantize_weighted(rows, dtype, importance)
    sigma2 = (np.square(x).sum(axis=1, dtype=_F32) / _F32(n_cols)).astype(_F32)
    wt = np.array(x.T, dtype=np.float64)  # (n_cols, n_rows)
    out = np.empty((n_rows, n_cols // bs, dtype.block_bytes), np.uint8)
    err_sq = np.zeros(n_rows)
    delta_sq = np.zeros(n_rows)
    q = np.empty((bs, n_rows), _F32)
    errors = np.empty((n_cols, n_rows))  # e_c of every column quantized so far
    for b0 in range(0, n_cols, bs):
        b1 = b0 + bs
        if b0:  # the errors of every earlier block
            wt[b0:b1] -= factor[:b0, b0:b1].T @ errors[:b0]
        grid = _grid(np.ascontiguousarray(wt[b0:b1].T, dtype=_F32), imp[b0:b1], dtype, sigma2)
        err = errors[b0:b1]
        for s0 in range(0, bs, SUB_BLOCK):
            s1 = min(s0 + SUB_BLOCK, bs)
            if s0:  # the errors of this block's earlier sub-blocks
                wt[b0 + s0 : b0 + s1] -= factor[b0 : b0 + s0, b0 + s0 : b0 + s1].T @ err[:s0]
            for j in range(s0, s1):
                c = b0 + j
                if j > s0:  # the errors of this sub-block's earlier columns
                    wt[c] -= factor[b0 + s0 : c, c] @ err[s0:j]
                q[j] = grid.round(wt[c].astype(_F32), j)
                err[j] = (wt[c] - q[j]) / factor[c, c]
        err_sq += np.einsum("jr,jr->r", err, err)
        d = x[:, b0:b1].T - q.astype(np.float64)
        delta_sq += np.einsum("jr,jr->r", d, d)
        packed = np.ascontiguousarray(q.T)
        out[:, b0 // bs] = wq.pack_on_grid(packed, grid)
    out = out.reshape(n_rows, dtype.row_bytes(n_cols))
    if hessian is not None:
        plain = wq.quantize_weighted(rows, dtype, importance)
        d = to_float32(plain, dtype).reshape(n_rows, n_cols) - np.asarray(x, np.float64)
        plain_errors = np.einsum("ri,ri->r", d @ hessian, d)
        worse = err_sq - damping(hessian) * delta_sq > plain_errors
        out[worse] = plain[worse]
    return out
