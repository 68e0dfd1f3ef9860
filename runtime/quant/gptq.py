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


def inverse_factor(hessian: np.ndarray) -> np.ndarray:
    """U, upper triangular with Uᵀ·U = (H + damping)⁻¹ (float64), the factor the column updates use."""
    h = np.array(hessian, dtype=np.float64)
    n = h.shape[0]
    diag = np.diag(h).copy()
    mean = float(diag.mean()) if diag.any() else 1.0
    h[np.diag_indices(n)] += DAMP * mean
    hinv = np.linalg.inv(h)
    hinv = (hinv + hinv.T) / 2
    return np.linalg.cholesky(hinv).T


def quantize_gptq(rows: np.ndarray, dtype: DType, importance: np.ndarray, factor: np.ndarray,
                  hessian: np.ndarray | None = None) -> np.ndarray:
    """Encode float32 rows (n_rows, n_cols) as `dtype` with error feedback through `factor`
    (inverse_factor of the rows' input second moments) and block grids weighted by `importance`.

    With `hessian` (those second moments), a row whose output error Δ·H·Δᵀ comes out larger than the
    weighted quantizer's alone keeps the latter (error feedback can push values past a block's grid,
    which is fixed when the block starts; rwkv.cpp's tiny RWKV-7 in Q3_K did so)."""
    dtype = DType(dtype)
    w = np.array(rows, dtype=np.float64)
    n_rows, n_cols = w.shape
    bs = dtype.block_size
    imp = np.asarray(importance, _F32).reshape(-1)
    if bs == 1 or dtype not in GRID_TYPES or n_cols % bs:
        return wq.quantize_weighted(rows, dtype, importance)
    sigma2 = (np.square(np.asarray(rows, _F32)).sum(axis=1, dtype=_F32) / _F32(n_cols)).astype(_F32)
    out = np.empty((n_rows, n_cols // bs, dtype.block_bytes), np.uint8)
    for b0 in range(0, n_cols, bs):
        b1 = b0 + bs
        block = w[:, b0:b1].astype(_F32)
        imp_b = np.broadcast_to(imp[b0:b1], block.shape)
        if bs == 256:
            grid = wq._k_grid(block, np.ascontiguousarray(imp_b), dtype)
        else:
            grid = wq._legacy_grid(block, wq._value_weights(block, imp_b, sigma2), dtype)
        q = np.empty((n_rows, bs), _F32)
        err = np.empty((n_rows, bs))
        for j in range(bs):
            c = b0 + j
            q[:, j] = grid.round(w[:, c].astype(_F32), j)
            e = (w[:, c] - q[:, j]) / factor[c, c]
            err[:, j] = e
            if j + 1 < bs:
                w[:, c + 1 : b1] -= np.outer(e, factor[c, c + 1 : b1])
        if b1 < n_cols:
            w[:, b1:] -= err @ factor[b0:b1, b1:]
        out[:, b0 // bs] = wq._k_pack(q, grid) if bs == 256 else wq._legacy_pack(q, grid)
    out = out.reshape(n_rows, dtype.row_bytes(n_cols))
    if hessian is not None:
        plain = wq.quantize_weighted(rows, dtype, importance)
        x = np.asarray(rows, np.float64)

        def row_errors(raw: np.ndarray) -> np.ndarray:
            d = to_float32(raw, dtype).reshape(n_rows, n_cols) - x
            return np.einsum("ri,ri->r", d @ hessian, d)

        worse = row_errors(out) > row_errors(plain)
        out[worse] = plain[worse]
    return out
