"""Short Q8_0 rows (matvec_q8short.py, RWKV-7's LoRA second factors), alone and as a group of products,
against numpy on the codec's dequantized weights, within the int16 bound of x's quantization, in each x86
variant this host can run."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from llvmlite import ir

from runtime.jit.engine import compile_module
from runtime.jit.kernels import matvec_q8short
from runtime.jit.kernels.library import make_test_library
from runtime.jit.kernels.matvec_int16 import Variant, host_variant
from runtime.jit.kernels.matvec_q8short import emit_short_q8_group
from runtime.quant.codec import quantize, to_float32
from runtime.quant.types import DType
from tests.jit.test_kernels import _close, int16_bound

COLS = (32, 64, 128, 256)
ROWS = 37

pytestmark = pytest.mark.skipif(host_variant() is None, reason="the short Q8_0 kernel needs x86 with AVX2")


def _variants() -> list[Variant]:
    """The host's own variant, and the 256-bit ones (which every AVX2 host here can run)."""
    host = host_variant()
    return [v for v in (host, Variant(vnni=False, masks=False), Variant(vnni=host.vnni, masks=False))
            if v is not None] if host is not None else []


def test_short_rows_are_chosen_for_q8_0_rows_up_to_256() -> None:
    assert all(matvec_q8short.uses_short_q8(DType.Q8_0, c) for c in COLS)
    assert not matvec_q8short.uses_short_q8(DType.Q8_0, 288)
    assert not matvec_q8short.uses_short_q8(DType.F16, 64)
    assert not matvec_q8short.uses_short_q8(DType.Q5_1, 64)


@pytest.mark.parametrize("variant", _variants(), ids=str)
def test_short_q8_rows_match_the_dequantized_weights(monkeypatch: pytest.MonkeyPatch, variant: Variant) -> None:
    monkeypatch.setattr(matvec_q8short, "host_variant", lambda: variant)
    lib = make_test_library([(DType.Q8_0, c) for c in COLS], kinds=("matvec",), use_cache=False)
    rng = np.random.default_rng(3)
    for cols in COLS:
        w = rng.normal(size=(ROWS, cols)).astype(np.float32)
        w[0, :32] = 0.0  # an all-zero block (scale 0)
        raw = np.ascontiguousarray(quantize(w, DType.Q8_0))
        wd = to_float32(raw, DType.Q8_0).reshape(ROWS, cols).astype(np.float64)
        for x in (rng.normal(size=cols), rng.normal(size=cols) * 1e-4, np.zeros(cols)):
            x = x.astype(np.float32)
            x[:16] *= 50.0  # blocks of different scales
            bound = int16_bound(raw, DType.Q8_0, x)
            for acc in (False, True):
                y0 = rng.normal(size=ROWS).astype(np.float32)
                for lo, hi in ((3, 29), (0, ROWS), (5, 6), (30, 37), (8, 8)):
                    y = y0.copy()
                    lib.matvec(DType.Q8_0, cols, acc)(raw.ctypes.data, x.ctypes.data, y.ctypes.data, lo, hi)
                    want = wd[lo:hi] @ x + (y0[lo:hi] if acc else 0)
                    if hi > lo:
                        _close(y[lo:hi], want, bound[lo:hi])
                    assert np.array_equal(y[:lo], y0[:lo]) and np.array_equal(y[hi:], y0[hi:])


def test_a_group_of_short_q8_products_matches_each_product() -> None:
    """emit_short_q8_group (RWKV-7's second factors in one call): each matrix's rows in the range against
    its own x, into its own y, within the int16 bound; rows outside the range untouched."""
    cols = (64, 32, 128, 256)
    module = ir.Module(name="group")
    fn = emit_short_q8_group(module, cols)
    fn.linkage = "external"
    compiled = compile_module(module, use_cache=False)
    P, L = ctypes.c_void_p, ctypes.c_int64
    call = ctypes.CFUNCTYPE(None, *([P, P, P] * len(cols)), L, L)(compiled.address(fn.name))
    rng = np.random.default_rng(4)
    raws = [np.ascontiguousarray(quantize(rng.normal(size=(ROWS, c)).astype(np.float32), DType.Q8_0)) for c in cols]
    xs = [rng.normal(size=c).astype(np.float32) for c in cols]
    for lo, hi in ((0, ROWS), (3, 29), (36, 37), (8, 8)):
        ys = [rng.normal(size=ROWS).astype(np.float32) for _ in cols]
        y0s = [y.copy() for y in ys]
        call(*[a for r, x, y in zip(raws, xs, ys, strict=True) for a in (r.ctypes.data, x.ctypes.data, y.ctypes.data)],
             lo, hi)
        for raw, x, y, y0, c in zip(raws, xs, ys, y0s, cols, strict=True):
            want = to_float32(raw, DType.Q8_0).reshape(ROWS, c).astype(np.float64)[lo:hi] @ x
            if hi > lo:
                _close(y[lo:hi], want, int16_bound(raw, DType.Q8_0, x)[lo:hi])
            assert np.array_equal(y[:lo], y0[:lo]) and np.array_equal(y[hi:], y0[hi:])
    with pytest.raises(ValueError, match="no short Q8_0 kernel"):
        emit_short_q8_group(module, (64, 288))
