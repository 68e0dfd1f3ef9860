"""Weight kernels (matvec, matmul) for every type against numpy float64 on the codec's dequantized weights.

Where matvec quantizes x to int16 per block (matvec_int16.py), its error is allowed the derived bound
`int16_bound` on top of the float tolerance.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from llvmlite import ir

from runtime.jit.engine import compile_module
from runtime.jit.irkit import F32P, I16, I64, VOID, counted_loop
from runtime.jit.kernels.dequant import NIBBLE_LAYOUTS
from runtime.jit.kernels.irhelpers import half_to_float, native_half
from runtime.jit.kernels.library import KernelLibrary, make_test_library
from runtime.jit.kernels.matmul import emit_matmul
from runtime.jit.kernels.matvec import emit_matvec
from runtime.jit.kernels.matvec_int16 import Q8_OFFSET, TINY, XMAX, int16_variant, unsigned_q8
from runtime.jit.target import host_target
from runtime.quant.codec import quantize, to_float32
from runtime.quant.types import DType

TYPES = [DType.F32, DType.F16, DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0]
COLS = [64, 96, 256]
ROWS = 37
RTOL = 1e-5


@pytest.fixture(scope="module")
def lib() -> KernelLibrary:
    """Every variant the tests use, in one module (one compile)."""
    return make_test_library([(t, c) for t in TYPES for c in COLS], use_cache=False)


def _weights(t: DType, rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw bytes of a random matrix in type `t`, and its dequantized float64 values."""
    w = np.random.default_rng(seed).normal(size=(rows, cols)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block (scale 0)
    raw = np.ascontiguousarray(quantize(w, t))
    return raw, to_float32(raw, t).reshape(rows, cols).astype(np.float64)


def code_and_bias(raw: np.ndarray, t: DType, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """The weights of `raw` split as the kernels use them: the code part d·q (rows, n_blocks, 32) and
    each block's bias (rows, n_blocks): the min m (Q4_1/Q5_1), offset·d (Q4_0/Q5_0), 0 (Q8_0), or for
    Q8_0 where the kernel makes its codes unsigned (matvec_int16.unsigned_q8), -128·d."""
    blocks = raw.view(np.uint8).reshape(-1, n_blocks, t.block_bytes)
    values = to_float32(raw, t).reshape(blocks.shape[0], n_blocks, 32).astype(np.float64)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    lay = NIBBLE_LAYOUTS.get(t)
    if lay is None:
        bias = Q8_OFFSET * d if unsigned_q8() else np.zeros_like(d)
    elif lay.has_min:
        bias = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    else:
        bias = lay.offset * d
    return values - bias[..., None], bias


def int16_bound(raw: np.ndarray, t: DType, x: np.ndarray) -> np.ndarray:
    """Per row, the most a matvec with x quantized to int16 per block may differ from the exact W·x.

    Block k of x is X = round(x / sx_k) with sx_k = max|x_k| / 32767, so |x_j - sx_k·X_j| ≤ 0.5·sx_k (plus
    float rounding of x/sx_k, well under 2^-10·sx_k); only the code part d·q of each weight meets X (the
    bias part m or offset·d meets float Σx), so the error of a block is ≤ 0.5·sx_k·Σ_j |d·q_j|.
    Blocks with max|x| < TINY count as zero: their error is ≤ max|x_k|·Σ_j |d·q_j|.
    """
    n_blocks = x.size // 32
    qd, _ = code_and_bias(raw, t, n_blocks)
    big = np.abs(x.astype(np.float64).reshape(n_blocks, 32)).max(axis=1)
    per_unit = np.where(big >= TINY, (0.5 + 2.0**-10) * big / XMAX, big)
    return (np.abs(qd).sum(axis=2) * per_unit).sum(axis=1)


def matvec_bound(raw: np.ndarray, t: DType, x: np.ndarray) -> np.ndarray:
    """The int16 bound where this host's matvec for `t` quantizes x, else zeros."""
    if int16_variant(t) is None:
        return np.zeros(raw.shape[0] if raw.ndim > 1 else 1)
    return int16_bound(raw, t, x)


def _close(got: np.ndarray, want: np.ndarray, bound: np.ndarray | float = 0.0) -> None:
    err = np.abs(got.astype(np.float64) - want) - bound
    assert err.max() <= RTOL * np.abs(want).max(), err.max()


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("acc", [False, True], ids=["set", "acc"])
def test_matvec(lib: KernelLibrary, t: DType, cols: int, acc: bool) -> None:
    raw, wd = _weights(t, ROWS, cols, cols)
    rng = np.random.default_rng(1)
    x = rng.normal(size=cols).astype(np.float32)
    y = rng.normal(size=ROWS).astype(np.float32)
    y0 = y.copy()
    fn = lib.matvec(t, cols, acc)
    bound = matvec_bound(raw, t, x)
    for lo, hi in ((3, 29), (0, ROWS), (5, 6), (30, 37)):
        y[:] = y0
        fn(raw.ctypes.data, x.ctypes.data, y.ctypes.data, lo, hi)
        want = wd[lo:hi] @ x + (y0[lo:hi] if acc else 0)
        _close(y[lo:hi], want, bound[lo:hi])
        assert np.array_equal(y[:lo], y0[:lo]) and np.array_equal(y[hi:], y0[hi:])  # other rows untouched


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_matvec_empty_range(lib: KernelLibrary, t: DType) -> None:
    raw, _ = _weights(t, ROWS, 64, 0)
    x = np.ones(64, np.float32)
    y = np.full(ROWS, 7.0, np.float32)
    for lo, hi in ((4, 4), (9, 2)):
        lib.matvec(t, 64)(raw.ctypes.data, x.ctypes.data, y.ctypes.data, lo, hi)
    assert (y == 7.0).all()


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tok", [1, 5, 17, 64])
@pytest.mark.parametrize("acc", [False, True], ids=["set", "acc"])
def test_matmul(lib: KernelLibrary, t: DType, n_tok: int, acc: bool) -> None:
    cols = 96 if n_tok != 64 else 256
    ldx, ldy = cols + 8, ROWS + 4
    raw, wd = _weights(t, ROWS, cols, 7)
    rng = np.random.default_rng(n_tok)
    x = rng.normal(size=(n_tok, ldx)).astype(np.float32)
    y = rng.normal(size=(n_tok, ldy)).astype(np.float32)
    y0 = y.copy()
    lo, hi = 3, 29
    lib.matmul(t, cols, acc)(raw.ctypes.data, x.ctypes.data, ldx, y.ctypes.data, ldy, n_tok, lo, hi)
    want = x[:, :cols].astype(np.float64) @ wd[lo:hi].T + (y0[:, lo:hi] if acc else 0)
    _close(y[:, lo:hi], want)
    assert np.array_equal(y[:, :lo], y0[:, :lo]) and np.array_equal(y[:, hi:], y0[:, hi:])


@pytest.mark.parametrize("t", [DType.Q4_0, DType.F16], ids=lambda t: t.name)
@pytest.mark.parametrize("acc", [False, True], ids=["set", "acc"])
@pytest.mark.parametrize("step", [3, 6], ids=["avx2-step", "avx512-step"])
def test_matmul_every_count_of_leftover_tokens(monkeypatch, t: DType, acc: bool, step: int) -> None:
    """n_tok from 0 to two whole steps and more, with AVX2's and AVX-512's tokens per step (built here: the
    IR is legal on any host): the tokens after the last whole step (every count from 0 to step − 1; 2 or
    more through a micro-kernel that wide, whose functions the module holds) come out as numpy's, for a
    whole tile, a 4-row group and a single row; the other rows are untouched."""
    from runtime.jit.kernels import matmul
    from runtime.jit.kernels.library import kernel_module

    monkeypatch.setattr(matmul, "tokens_per_step", lambda: step)
    cols = 64
    names = {g.name for g in kernel_module([(t, cols)], accumulate=acc).global_values}
    assert {f"matmul_micro_c{cols}_r4_t{n}{'_acc' if acc else ''}" for n in range(1, step + 1)} <= names
    lib = make_test_library([(t, cols)], accumulate=(acc,), kinds=("matmul",), use_cache=False)
    lo, hi = 2, 2 + matmul.tile_rows(cols) + 4 + 1  # a whole tile, a 4-row group, a single row
    rows = hi + 2
    raw, wd = _weights(t, rows, cols, 5)
    for n_tok in range(0, 2 * step + 2):
        rng = np.random.default_rng(100 + n_tok)
        x = rng.normal(size=(n_tok, cols)).astype(np.float32)
        y = rng.normal(size=(n_tok, rows)).astype(np.float32)
        y0 = y.copy()
        lib.matmul(t, cols, acc)(raw.ctypes.data, x.ctypes.data, cols, y.ctypes.data, rows, n_tok, lo, hi)
        if n_tok:
            _close(y[:, lo:hi], x.astype(np.float64) @ wd[lo:hi].T + (y0[:, lo:hi] if acc else 0))
        assert np.array_equal(y[:, :lo], y0[:, :lo]) and np.array_equal(y[:, hi:], y0[:, hi:])


@pytest.mark.parametrize("t", [DType.Q5_1, DType.F32], ids=lambda t: t.name)
def test_matmul_all_rows_and_odd_ranges(lib: KernelLibrary, t: DType) -> None:
    cols = 64
    raw, wd = _weights(t, ROWS, cols, 3)
    x = np.random.default_rng(4).normal(size=(7, cols)).astype(np.float32)
    want = x.astype(np.float64) @ wd.T
    for lo, hi in ((0, ROWS), (1, 2), (2, 9), (36, 37)):
        y = np.zeros((7, ROWS), np.float32)
        lib.matmul(t, cols)(raw.ctypes.data, x.ctypes.data, cols, y.ctypes.data, ROWS, 7, lo, hi)
        _close(y[:, lo:hi], want[:, lo:hi])
        assert not y[:, :lo].any() and not y[:, hi:].any()


def test_matvec_matches_matmul_on_one_token(lib: KernelLibrary) -> None:
    raw, _ = _weights(DType.Q4_1, ROWS, 256, 5)
    x = np.random.default_rng(6).normal(size=256).astype(np.float32)
    y1, y2 = np.zeros(ROWS, np.float32), np.zeros(ROWS, np.float32)
    lib.matvec(DType.Q4_1, 256)(raw.ctypes.data, x.ctypes.data, y1.ctypes.data, 0, ROWS)
    lib.matmul(DType.Q4_1, 256)(raw.ctypes.data, x.ctypes.data, 256, y2.ctypes.data, ROWS, 1, 0, ROWS)
    _close(y1, y2, matvec_bound(raw.reshape(ROWS, -1), DType.Q4_1, x))


def test_emit_is_idempotent_and_named() -> None:
    m = ir.Module()
    f1 = emit_matvec(m, DType.Q8_0, 768)
    assert emit_matvec(m, DType.Q8_0, 768) is f1
    assert f1.name == "matvec_q8_0_c768" and f1.linkage == "internal"
    assert emit_matvec(m, DType.Q8_0, 768, accumulate=True).name == "matvec_q8_0_c768_acc"
    g = emit_matmul(m, DType.F16, 3072, accumulate=True)
    assert g.name == "matmul_f16_c3072_acc" and emit_matmul(m, DType.F16, 3072, accumulate=True) is g
    assert [str(a.type) for a in f1.args][3:] == ["i64", "i64"]
    assert len(g.args) == 8


def test_unsupported_shapes_and_types() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        emit_matvec(ir.Module(), DType.F32, 40)
    with pytest.raises(ValueError, match="BF16"):
        emit_matmul(ir.Module(), DType.BF16, 64)


@pytest.mark.parametrize("native", [True, False], ids=["fpext", "integer"])
def test_half_to_float_exact(native: bool) -> None:
    """Both half → float paths give IEEE results for every one of the 65536 bit patterns."""
    if native and not native_half():
        pytest.skip("the host has no native half conversion")
    m = ir.Module()
    fn = ir.Function(m, ir.FunctionType(VOID, [I16.as_pointer(), F32P, I64]), "cvt")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    src, dst, n = fn.args
    with counted_loop(b, 0, n) as i:
        b.store(half_to_float(b, b.load(b.gep(src, [i])), native=native), b.gep(dst, [i]))
    b.ret_void()
    lib = compile_module(m, use_cache=False)
    bits = np.arange(65536, dtype=np.uint16)
    out = np.zeros(65536, np.float32)
    ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(lib.address("cvt"))(
        bits.ctypes.data, out.ctypes.data, 65536)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


@pytest.mark.parametrize("mode", [1, 2], ids=["all-rows", "every-other-row"])
def test_f16_rows_widened_by_shifts(monkeypatch: pytest.MonkeyPatch, mode: int) -> None:
    """F16 halves widened by integer shifts (matvec._HalfPairs, chosen for Zen 4) give the float result
    for every kind of half: zeros of both signs, subnormals, the largest, and random values; x tiny,
    large and mixed. Built here in 512-bit vectors, whatever this CPU's own choice is."""
    from runtime.jit.kernels import matvec

    if not matvec.wide_float_rows(DType.F16):
        pytest.skip("F16 rows in 512-bit vectors need AVX-512F")
    monkeypatch.setattr(matvec, "F16_BY_SHIFTS", mode)
    lib = make_test_library([(DType.F16, c) for c in (96, 256)], use_cache=False)
    rng = np.random.default_rng(7)
    special = np.array([0.0, -0.0, 2.0**-24, -(2.0**-24), 2.0**-14 - 2.0**-24, 2.0**-14, 65504.0, -65504.0,
                        1.0, -1.0, 0.333, -2.5e-5])
    for cols in (96, 256):
        w = rng.normal(size=(ROWS, cols)).astype(np.float16)
        w[0, :special.size] = special
        w[1] = np.resize(special, cols) * rng.choice([1.0, -1.0], cols)
        w[2] = (rng.normal(size=cols) * 2.0**-20).astype(np.float16)  # all subnormal
        wd = w.astype(np.float64)
        for x in (rng.normal(size=cols), rng.normal(size=cols) * 1e-6, rng.normal(size=cols) * 1e6,
                  rng.normal(size=cols) * 10.0 ** rng.uniform(-6, 4, cols)):
            x = x.astype(np.float32)
            y = np.zeros(ROWS, np.float32)
            lib.matvec(DType.F16, cols, False)(w.ctypes.data, x.ctypes.data, y.ctypes.data, 0, ROWS)
            want = wd @ x
            scale = np.abs(wd) @ np.abs(x.astype(np.float64))  # the size of the terms summed, per row
            assert np.all(np.abs(y - want) <= 1e-6 * scale + 1e-30), np.abs(y - want).max()


def test_k_kernels_take_their_own_rows_and_distance_target() -> None:
    """K-quant rows take matvec_kquant_int.PREFETCH_TARGET, not matvec_int16's: Q4_K rows of 2048 values
    (1152 B) go 2 at a time one group ahead at 2304, 4 at a time at 4608; the int16 types keep theirs."""
    from runtime.jit.kernels import matvec_int16 as m
    from runtime.jit.kernels import matvec_kquant_int as k
    from runtime.jit.kernels.matvec_kquant import int_variant, kquant_rows

    if int_variant(DType.Q4_K) is None:
        pytest.skip("the integer K kernel is not this host's")
    row = DType.Q4_K.row_bytes(2048)
    assert kquant_rows(DType.Q4_K, 2048) == m.rows_for(DType.Q4_K, 2048, k.PREFETCH_TARGET)
    assert m.rows_for(DType.Q4_K, 2048, 2304) == 2 and m.rows_for(DType.Q4_K, 2048, 4608) == 4
    assert m.prefetch_ahead(2 * row, 1, 2304) == 2 * row and m.prefetch_ahead(2 * row, 1) == 4 * row
    assert m.rows_for(DType.Q4_0, 1024) == 4  # the int16 kernels' target is unchanged


def test_row_streams_prefetch_whole_rows_about_the_target_ahead(monkeypatch):
    from runtime.jit.kernels import matvec_int16 as m

    assert m.stream_ahead(1536) == 3072 and m.stream_ahead(1088) == 2176  # Q5_1 / Q8_0 rows of 2048, 1024
    assert m.stream_ahead(8704, 2304) == 8704  # at least one row
    assert m.stream_ahead(576, 2304, 0) == 0
    monkeypatch.setattr(m, "PREFETCH_GROUPS", 0)
    assert m.stream_ahead(1536) == 0


@pytest.mark.skipif(int16_variant(DType.Q4_0) is None, reason="the int16 kernels are not this host's")
@pytest.mark.parametrize("streams", [True, False])
def test_int16_rows_walked_as_streams_or_in_groups_give_the_same_products(monkeypatch, streams: bool) -> None:
    """Rows walked as streams (matvec.ROW_STREAMS: rows r, r + n, …) or as consecutive groups: every row of
    every range, remainders included, gets its own product, written to its own y."""
    from runtime.jit.kernels import matvec as mv

    monkeypatch.setattr(mv, "ROW_STREAMS", streams)
    types = [DType.Q4_0, DType.Q5_1, DType.Q8_0]
    lib = make_test_library([(t, 1024) for t in types], accumulate=(False, True), kinds=("matvec",),
                            use_cache=False)
    x = np.random.default_rng(8).normal(size=1024).astype(np.float32)
    for t in types:
        raw, wd = _weights(t, 41, 1024, 9)
        bound = matvec_bound(raw, t, x)
        for acc in (False, True):
            for lo, hi in ((0, 41), (5, 38), (7, 9), (40, 41), (9, 2)):
                y = np.full(41, 7.0, np.float32)
                lib.matvec(t, 1024, acc)(raw.ctypes.data, x.ctypes.data, y.ctypes.data, lo, hi)
                if hi > lo:
                    _close(y[lo:hi], wd[lo:hi] @ x + (7.0 if acc else 0.0), bound[lo:hi])
                assert (y[:lo] == 7).all() and (y[max(lo, hi):] == 7).all()


@pytest.mark.parametrize("streams", [True, False])
@pytest.mark.parametrize(("wide", "shifts"), [(True, 0), (True, 2), (False, 0)])
def test_float_rows_walked_as_streams_or_in_groups_give_the_same_products(monkeypatch, streams: bool,
                                                                          wide: bool, shifts: int) -> None:
    """F32/F16 rows of 1 KB or more are walked as streams on x86 (matvec.float_streams), in 512-bit
    vectors or not, wide F16 rows widened by conversions or every other one by shifts (_HalfPairs): every
    row of every range, remainders included, gets its own product in its own y."""
    from runtime.jit.kernels import matvec as mv

    monkeypatch.setattr(mv, "FLOAT_STREAMS", streams)
    monkeypatch.setattr(mv, "WIDE_FLOAT_ROWS", wide)
    monkeypatch.setattr(mv, "F16_BY_SHIFTS", shifts)
    types = [DType.F16, DType.F32]
    lib = make_test_library([(t, 1024) for t in types], accumulate=(False, True), kinds=("matvec",),
                            use_cache=False)
    x = np.random.default_rng(8).normal(size=1024).astype(np.float32)
    for t in types:
        raw, wd = _weights(t, 41, 1024, 9)
        scale = np.abs(wd) @ np.abs(x.astype(np.float64))
        for acc in (False, True):
            for lo, hi in ((0, 41), (5, 38), (7, 9), (40, 41), (9, 2)):
                y = np.full(41, 7.0, np.float32)
                lib.matvec(t, 1024, acc)(raw.ctypes.data, x.ctypes.data, y.ctypes.data, lo, hi)
                if hi > lo:
                    want = wd[lo:hi] @ x + (7.0 if acc else 0.0)
                    assert np.all(np.abs(y[lo:hi] - want) <= 1e-6 * (scale[lo:hi] + 7.0)), (t, acc, lo, hi)
                assert (y[:lo] == 7).all() and (y[max(lo, hi):] == 7).all()


def test_float_streams_are_for_rows_of_a_kilobyte_or_more_on_x86(monkeypatch) -> None:
    """The LoRA factors' thin rows (32-64 values) keep groups of neighbours; rows of 1 KB or more are
    streams on x86 hosts, never elsewhere, and never for quantized rows (they have their own kernels)."""
    from runtime.jit.kernels import matvec as mv

    x86 = host_target().is_x86
    assert mv.float_streams(DType.F16, 1024) is x86 and mv.float_streams(DType.F32, 256) is x86
    assert not mv.float_streams(DType.F16, 64) and not mv.float_streams(DType.F32, 128)
    assert not mv.float_streams(DType.Q5_1, 4096)
    monkeypatch.setattr(mv, "ROW_STREAMS", False)  # the switch for every kernel's streams
    assert not mv.float_streams(DType.F16, 4096)
    monkeypatch.setattr(mv, "ROW_STREAMS", True)
    monkeypatch.setattr(mv, "FLOAT_STREAMS", False)
    assert not mv.float_streams(DType.F16, 4096)


def test_row_prefetches_reach_about_the_target_distance_in_whole_groups(monkeypatch):
    """A group of rows capped short of PREFETCH_TARGET (4 rows of 1024 Q4_0 values: 2304 B) prefetches
    two groups ahead; a group near the target one; the distance is always whole groups."""
    from runtime.jit.kernels import matvec_int16 as m

    assert m.rows_for(DType.Q4_0, 1024) == 4 and m.prefetch_ahead(4 * 576) == 2 * 2304
    assert m.prefetch_ahead(4 * 1088) == 4352  # Q8_0 rows of 1024 values: one group
    assert m.prefetch_ahead(3 * 1536) == 4608  # Q5_1 rows of 2048 values: one group
    assert m.prefetch_ahead(100_000) == 100_000  # at least PREFETCH_GROUPS groups
    monkeypatch.setattr(m, "PREFETCH_GROUPS", 0)
    assert m.prefetch_ahead(2304) == 0
