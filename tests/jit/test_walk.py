"""runtime/jit/kernels/walk.py: the native loop benchmarks time kernels with. It must call the model's
kernel once per matrix and pass, on the rows asked for, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.jit.kernels.library import make_test_library
from runtime.jit.kernels.walk import build_walkers
from runtime.quant.codec import quantize
from runtime.quant.types import DType
from tests.support.kquant_blocks import random_k_rows

ROWS, COLS = 24, 512


def _matrix(dtype: DType, rng: np.random.Generator) -> np.ndarray:
    if dtype is DType.Q4_K:
        return np.ascontiguousarray(random_k_rows(dtype, ROWS, COLS, rng))
    w = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    return np.ascontiguousarray(quantize(w, dtype)).view(np.uint8).reshape(ROWS, -1)


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_K])
@pytest.mark.parametrize("accumulate", [False, True])
def test_each_matrix_once_per_pass_on_the_rows_asked_for(dtype, accumulate):
    rng = np.random.default_rng(3)
    mats = [_matrix(dtype, rng), _matrix(dtype, rng)]
    x = rng.standard_normal(COLS).astype(np.float32)
    library = make_test_library([(dtype, COLS)], accumulate=(False,), kinds=("matvec",))
    products = []
    for m in mats:
        y = np.zeros(ROWS, dtype=np.float32)
        library.matvec(dtype, COLS)(m.ctypes.data, x.ctypes.data, y.ctypes.data, 0, ROWS)
        products.append(y)
    assert all(np.abs(p).max() > 0 for p in products) and not np.allclose(products[0], products[1])
    compiled, walkers = build_walkers([(dtype, COLS)], accumulate=accumulate)
    walk = walkers[(dtype, COLS)]
    addresses = np.array([m.ctypes.data for m in mats], dtype=np.int64)
    r0, r1 = 5, 17
    for n_matrices, times in ((0, 3), (1, 0), (1, 1), (2, 1), (2, 3)):
        y = np.full(ROWS, 7.0, dtype=np.float32)
        walk(addresses.ctypes.data, n_matrices, times, x.ctypes.data, y.ctypes.data, r0, r1)
        want = np.full(ROWS, 7.0, dtype=np.float32)
        if n_matrices and times:
            if accumulate:
                want[r0:r1] += times * sum(p[r0:r1] for p in products[:n_matrices])
            else:
                want[r0:r1] = products[n_matrices - 1][r0:r1]  # each call overwrites: the last matrix's
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
    del compiled
