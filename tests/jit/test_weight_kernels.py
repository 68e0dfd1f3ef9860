"""matvec and matmul for every weight type against numpy (float64) on the dequantized weights."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from llvmlite import ir

from runtime.jit.engine import compile_module
from runtime.jit.kernels.matmul import emit_matmul
from runtime.jit.kernels.matvec import emit_matvec
from runtime.quant.codec import quantize, to_float32
from runtime.quant.types import DType

TYPES = [DType.F32, DType.F16, DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0]
FP = ctypes.POINTER(ctypes.c_float)
L = ctypes.c_int64


@pytest.fixture(scope="module")
def libs():
    """One module with every kernel variant the tests use (one compile)."""
    m = ir.Module("kernels_test")
    names = {}
    for t in TYPES:
        for cols in (64, 96):
            for acc in (False, True):
                names[("mv", t, cols, acc)] = emit_matvec(m, t, cols, accumulate=acc, linkage="external").name
                names[("mm", t, cols, acc)] = emit_matmul(m, t, cols, accumulate=acc, linkage="external").name
    lib = compile_module(m)
    mv = ctypes.CFUNCTYPE(None, ctypes.c_void_p, FP, FP, L, L)
    mm = ctypes.CFUNCTYPE(None, ctypes.c_void_p, FP, L, FP, L, L, L, L)
    return lib, {k: (mv if k[0] == "mv" else mm)(lib.address(v)) for k, v in names.items()}


def _weights(t: DType, rows: int, cols: int, seed: int):
    w = np.random.default_rng(seed).normal(size=(rows, cols)).astype(np.float32)
    raw = np.ascontiguousarray(quantize(w, t))
    return raw, to_float32(raw, t).reshape(rows, cols).astype(np.float64)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("cols", [64, 96])
@pytest.mark.parametrize("acc", [False, True])
def test_matvec(libs, t, cols, acc):
    _, fns = libs
    raw, wd = _weights(t, 37, cols, cols)
    x = np.random.default_rng(1).normal(size=cols).astype(np.float32)
    y = np.random.default_rng(2).normal(size=37).astype(np.float32)
    y0 = y.copy()
    fns[("mv", t, cols, acc)](raw.ctypes.data, x.ctypes.data_as(FP), y.ctypes.data_as(FP), 3, 29)
    want = wd @ x + (y0 if acc else 0)
    assert np.abs(y[3:29] - want[3:29]).max() <= 1e-5 * np.abs(want).max()
    assert np.array_equal(y[:3], y0[:3]) and np.array_equal(y[29:], y0[29:])  # rows outside untouched


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tok", [1, 5, 17])
@pytest.mark.parametrize("acc", [False, True])
def test_matmul(libs, t, n_tok, acc):
    _, fns = libs
    cols, rows, ldx, ldy = 96, 37, 104, 41
    raw, wd = _weights(t, rows, cols, 7)
    rng = np.random.default_rng(n_tok)
    x = rng.normal(size=(n_tok, ldx)).astype(np.float32)
    y = rng.normal(size=(n_tok, ldy)).astype(np.float32)
    y0 = y.copy()
    fns[("mm", t, cols, acc)](raw.ctypes.data, x.ctypes.data_as(FP), ldx, y.ctypes.data_as(FP), ldy, n_tok, 2, 31)
    want = x[:, :cols].astype(np.float64) @ wd.T + (y0[:, :rows] if acc else 0)
    assert np.abs(y[:, 2:31] - want[:, 2:31]).max() <= 1e-5 * np.abs(want).max()
    assert np.array_equal(y[:, :2], y0[:, :2]) and np.array_equal(y[:, 31:], y0[:, 31:])


def test_rows_must_fill_vectors():
    with pytest.raises(ValueError, match="multiple of 32"):
        emit_matvec(ir.Module(), DType.F32, 40)
