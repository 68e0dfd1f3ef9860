"""The element-wise IR kernels (exp, sigmoid, layernorm, WKV) against numpy in float64."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from llvmlite import ir

from runtime.jit.engine import compile_module
from runtime.jit.irkit import F32P, I64, VOID, counted_loop, i64, load_at, store_at
from runtime.jit.kernels.mathfn import emit_exp, emit_sigmoid
from runtime.jit.kernels.norm import emit_layernorm
from runtime.jit.kernels.wkv import emit_wkv

FP = ctypes.POINTER(ctypes.c_float)


def ptr(a: np.ndarray):
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data_as(FP)


def _map_kernel(name: str, emit) -> ir.Module:
    """`void name(float* x, float* y, i64 n)`: y[i] = f(x[i]) in a loop LLVM vectorises."""
    m = ir.Module(name)
    f = emit(m)
    fn = ir.Function(m, ir.FunctionType(VOID, [F32P, F32P, I64]), name)
    b = ir.IRBuilder(fn.append_basic_block())
    x, y, n = fn.args
    with counted_loop(b, i64(0), n) as i:
        store_at(b, b.call(f, [load_at(b, x, i)]), y, i)
    b.ret_void()
    return m


@pytest.fixture(scope="module")
def maps():
    lib_exp = compile_module(_map_kernel("map_exp", emit_exp), use_cache=False)
    lib_sig = compile_module(_map_kernel("map_sig", emit_sigmoid), use_cache=False)
    proto = ctypes.CFUNCTYPE(None, FP, FP, ctypes.c_int64)
    return {
        "exp": (proto(lib_exp.address("map_exp")), lib_exp),
        "sigmoid": (proto(lib_sig.address("map_sig")), lib_sig),
    }


def test_exp_is_accurate_over_the_float_range(maps):
    fn, _ = maps["exp"]
    x = np.concatenate([np.linspace(-87, 88, 200_001), np.random.default_rng(0).normal(0, 3, 10_000)])
    x = x.astype(np.float32)
    y = np.empty_like(x)
    fn(ptr(x), ptr(y), len(x))
    want = np.exp(x.astype(np.float64))
    rel = np.abs(y - want) / want
    assert rel.max() < 5e-7


def test_exp_underflows_to_zero_and_clamps_overflow(maps):
    fn, _ = maps["exp"]
    x = np.array([-1e30, -1000, -88, -np.inf, 100, 1e30, 0], dtype=np.float32)
    y = np.empty_like(x)
    fn(ptr(x), ptr(y), len(x))
    assert y[:4].tolist() == [0, 0, 0, 0]
    assert np.isfinite(y[4:6]).all() and y[4] > 1e38
    assert y[6] == 1.0


def test_sigmoid(maps):
    fn, _ = maps["sigmoid"]
    x = np.linspace(-120, 120, 10_001).astype(np.float32)
    y = np.empty_like(x)
    fn(ptr(x), ptr(y), len(x))
    want = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert np.abs(y - want).max() < 2e-7
    assert np.isfinite(y).all()


@pytest.mark.parametrize("n", [64, 768, 1000])
def test_layernorm(n):
    m = ir.Module("ln")
    ln = emit_layernorm(m, n)
    ln.linkage = "external"
    lib = compile_module(m, use_cache=False)
    fn = ctypes.CFUNCTYPE(None, FP, FP, FP, FP)(lib.address(ln.name))
    rng = np.random.default_rng(n)
    x = (rng.normal(3, 5, n)).astype(np.float32)
    w, bias = rng.uniform(0.5, 1.5, n).astype(np.float32), rng.normal(0, 0.1, n).astype(np.float32)
    out = np.empty_like(x)
    fn(ptr(x), ptr(w), ptr(bias), ptr(out))
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-5) * w + bias
    assert np.abs(out - want).max() < 1e-5 * np.abs(want).max()
    fn(ptr(x), ptr(w), ptr(bias), ptr(x))  # in place
    assert np.array_equal(x, out)


def _wkv_numpy(k, v, r, w, u, aa, bb, pp):
    out = np.empty_like(k)
    for t in range(k.shape[0]):
        ww = u + k[t]
        p = np.maximum(pp, ww)
        e1, e2 = np.exp(pp - p), np.exp(ww - p)
        out[t] = 1 / (1 + np.exp(-r[t])) * (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
        ww = pp + w
        p = np.maximum(ww, k[t])
        e1, e2 = np.exp(ww - p), np.exp(k[t] - p)
        aa, bb, pp = e1 * aa + e2 * v[t], e1 * bb + e2, p
    return out, aa, bb, pp


def test_wkv_matches_numpy_on_a_channel_range():
    m = ir.Module("wkv")
    wkv = emit_wkv(m)
    wkv.linkage = "external"
    lib = compile_module(m, use_cache=False)
    i64t = ctypes.c_int64
    fn = ctypes.CFUNCTYPE(None, FP, FP, FP, FP, i64t, i64t, FP, FP, FP, FP, FP, i64t, i64t)(lib.address("wkv"))
    rng = np.random.default_rng(1)
    T, C, ld = 9, 40, 48
    k, v, r = (rng.normal(0, 2, (T, ld)).astype(np.float32) for _ in range(3))
    w = -np.exp(rng.uniform(-4, 1.5, C)).astype(np.float32)
    u = rng.uniform(-0.5, 1, C).astype(np.float32)
    aa, bb = np.zeros(C, np.float32), np.zeros(C, np.float32)
    pp = np.full(C, -1e30, np.float32)
    out = np.zeros((T, ld), np.float32)
    c0, c1 = 5, 37
    want = _wkv_numpy(*(a.astype(np.float64) for a in (k[:, :C], v[:, :C], r[:, :C], w, u, aa, bb, pp)))
    fn(ptr(k), ptr(v), ptr(r), ptr(out), ld, T, ptr(w), ptr(u), ptr(aa), ptr(bb), ptr(pp), c0, c1)
    sl = slice(c0, c1)
    assert np.allclose(out[:, sl], want[0][:, sl], rtol=1e-5, atol=1e-6)
    assert (out[:, :c0] == 0).all() and (out[:, c1:] == 0).all()
    for got, exp in zip((aa, bb, pp), want[1:], strict=True):
        assert np.allclose(got[sl], exp[sl], rtol=1e-5, atol=1e-6)
    assert (aa[:c0] == 0).all() and (pp[c1:] == np.float32(-1e30)).all()


@pytest.fixture(scope="module")
def non_finite_sum():
    from runtime.jit.kernels.finite import emit_non_finite_sum

    m = ir.Module("finite")
    fn = emit_non_finite_sum(m)
    fn.linkage = "external"
    lib = compile_module(m, use_cache=False)
    return ctypes.CFUNCTYPE(ctypes.c_float, FP, ctypes.c_int64)(lib.address(fn.name)), lib


@pytest.mark.parametrize("n", [1, 31, 32, 33, 4096, 4099])
def test_the_finite_check_is_zero_exactly_when_every_value_is_finite(non_finite_sum, n):
    fn, _ = non_finite_sum
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 1e30).astype(np.float32)
    x[:: max(1, n // 3)] = np.float32(3.4e38)  # finite extremes and their negatives still give 0
    x[1::7] = np.float32(-3.4e38)
    x[2::5] = np.float32(1e-45)  # a denormal
    assert fn(ptr(x), n) == 0.0
    for where in {0, n // 2, n - 1}:  # in the vector part and in the tail
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[where] = bad
            assert np.isnan(fn(ptr(y), n)), (where, bad)
            assert fn(ptr(y), where) == 0.0  # only the first `count` values are read
