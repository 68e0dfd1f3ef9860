"""Weight kernels (matvec, matmul) for the K-quant types against numpy float64 on gguf's dequantized
values of random valid super-blocks, on this host and, in fresh processes, on the other x86 variants.

Where matvec quantizes x to int16 per block of 32 (matvec_kquant.int_variant), its error is allowed the
derived bound `int16_bound` on top of the float tolerance (as for the legacy types in test_kernels.py).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from llvmlite import ir

from runtime.jit.kernels.library import KernelLibrary, make_test_library
from runtime.jit.kernels.matmul import emit_matmul
from runtime.jit.kernels.matvec import emit_matvec
from runtime.jit.kernels.matvec_int16 import TINY, XMAX
from runtime.jit.kernels.matvec_kquant import int_variant
from runtime.quant.types import K_QUANT_TYPES, DType
from tests.support.kquant_blocks import code_part, k_values, random_k_rows

TYPES = list(K_QUANT_TYPES)
COLS = [256, 768]
ROWS = 37
RTOL = 1e-5
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lib() -> KernelLibrary:
    return make_test_library([(t, c) for t in TYPES for c in COLS], use_cache=False)


def weights(t: DType, rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    raw = random_k_rows(t, rows, cols, np.random.default_rng(seed))
    return raw, k_values(raw, t).astype(np.float64)


def int16_bound(raw: np.ndarray, t: DType, x: np.ndarray) -> np.ndarray:
    """Per row, the most a matvec with x quantized to int16 per block of 32 may differ from W·x: only
    the code part scale·q of a weight meets X (the bias meets float Σx), so a block's error is at most
    0.5·sx_k·Σ_j |scale·q_j| (sx_k = max|x_k| / XMAX; blocks below TINY count as zero)."""
    n_blocks = x.size // 32
    part = np.abs(code_part(raw, t)).reshape(raw.shape[0], n_blocks, 32).sum(axis=2)
    big = np.abs(x.astype(np.float64).reshape(n_blocks, 32)).max(axis=1)
    per_unit = np.where(big >= TINY, (0.5 + 2.0**-10) * big / XMAX, big)
    return (part * per_unit).sum(axis=1)


def matvec_bound(raw: np.ndarray, t: DType, x: np.ndarray) -> np.ndarray:
    return int16_bound(raw, t, x) if int_variant(t) is not None else np.zeros(raw.shape[0])


def _close(got: np.ndarray, want: np.ndarray, bound: np.ndarray | float = 0.0) -> None:
    err = np.abs(got.astype(np.float64) - want) - bound
    assert err.max() <= RTOL * np.abs(want).max(), err.max()


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("acc", [False, True], ids=["set", "acc"])
def test_matvec(lib: KernelLibrary, t: DType, cols: int, acc: bool) -> None:
    raw, wd = weights(t, ROWS, cols, cols + int(t))
    rng = np.random.default_rng(1)
    x = rng.normal(size=cols).astype(np.float32)
    x[32:64] *= 1e-3  # blocks of x at other scales
    x[64:96] = 0.0
    y = rng.normal(size=ROWS).astype(np.float32)
    y0 = y.copy()
    fn = lib.matvec(t, cols, acc)
    bound = matvec_bound(raw, t, x)
    for lo, hi in ((3, 29), (0, ROWS), (5, 6), (30, 37), (4, 4), (9, 2)):
        y[:] = y0
        fn(raw.ctypes.data, x.ctypes.data, y.ctypes.data, lo, hi)
        if hi > lo:
            _close(y[lo:hi], wd[lo:hi] @ x + (y0[lo:hi] if acc else 0), bound[lo:hi])
        assert np.array_equal(y[:lo], y0[:lo]) and np.array_equal(y[max(lo, hi):], y0[max(lo, hi):])


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tok", [1, 5, 17])
@pytest.mark.parametrize("acc", [False, True], ids=["set", "acc"])
def test_matmul(lib: KernelLibrary, t: DType, n_tok: int, acc: bool) -> None:
    cols = 768
    ldx, ldy = cols + 8, ROWS + 4
    raw, wd = weights(t, ROWS, cols, 7 + int(t))
    rng = np.random.default_rng(n_tok)
    x = rng.normal(size=(n_tok, ldx)).astype(np.float32)
    y = rng.normal(size=(n_tok, ldy)).astype(np.float32)
    y0 = y.copy()
    for lo, hi in ((3, 29), (0, ROWS), (36, 37)):
        y[:] = y0
        lib.matmul(t, cols, acc)(raw.ctypes.data, x.ctypes.data, ldx, y.ctypes.data, ldy, n_tok, lo, hi)
        want = x[:, :cols].astype(np.float64) @ wd[lo:hi].T + (y0[:, lo:hi] if acc else 0)
        _close(y[:, lo:hi], want)
        assert np.array_equal(y[:, :lo], y0[:, :lo]) and np.array_equal(y[:, hi:], y0[:, hi:])


@pytest.mark.parametrize("lanes", [8, 16])
def test_matmul_with_super_blocks_dequantized_8_or_16_at_a_time(monkeypatch, lanes: int) -> None:
    """The prompt kernel's tile decoded 8 floats at a time (matmul.WIDE_K_DEQUANT off, as on AVX2 hosts)
    or 16 (AVX-512F hosts; forced here, 16-float vectors are legal IR on any host) gives the same
    products as numpy."""
    from runtime.jit.kernels import dequant_k, matmul

    assert matmul.dequant_lanes() == matmul.micro_lanes()
    if lanes == 8:
        monkeypatch.setattr(matmul, "WIDE_K_DEQUANT", False)
    else:
        monkeypatch.setattr(matmul, "micro_lanes", lambda: 16)
    assert matmul.dequant_lanes() == lanes
    with pytest.raises(ValueError, match="8 or 16"):
        dequant_k.dequantize_superblock(ir.IRBuilder(), TYPES[0], None, 32)
    cols, n_tok = 768, 7
    narrow = make_test_library([(t, cols) for t in TYPES], accumulate=(False,), kinds=("matmul",), use_cache=False)
    x = np.random.default_rng(3).normal(size=(n_tok, cols)).astype(np.float32)
    for t in TYPES:
        raw, wd = weights(t, ROWS, cols, 11 + int(t))
        y = np.zeros((n_tok, ROWS), np.float32)
        narrow.matmul(t, cols, False)(raw.ctypes.data, x.ctypes.data, cols, y.ctypes.data, ROWS, n_tok, 0, ROWS)
        _close(y, x.astype(np.float64) @ wd.T)


@pytest.mark.skipif(int_variant(DType.Q4_K) is None, reason="the integer kernel is not this host's")
@pytest.mark.parametrize("switches", [
    "matvec_kquant_int.SUM_SUBS", "matvec_kquant_int.LANE_MAJOR+matvec_kquant_int.SUM_SUBS",
    "matvec_kquant_int.BIAS_IN_XSUM", "dequant_k.SCALES_IN_QWORDS", "matvec_kquant_int.LANE_MAJOR",
    "matvec_kquant_int.LANE_MASKS", "matvec_kquant_int.USE_GFNI", "matvec_kquant_int.LOW_FROM_HIGH",
    "matvec.ROW_STREAMS",
])
def test_matvec_with_a_kernel_switch_off(monkeypatch: pytest.MonkeyPatch, switches: str) -> None:
    """The other side of each A/B switch of the integer kernel (bench/kernel_ab.py) computes the same
    products within the same bound (SUM_SUBS also with LANE_MAJOR off: the lane-major types ignore it)."""
    import importlib

    for item in switches.split("+"):
        module, switch = item.split(".")
        monkeypatch.setattr(importlib.import_module(f"runtime.jit.kernels.{module}"), switch, False)
    cols = 512
    lib = make_test_library([(t, cols) for t in TYPES], accumulate=(False,), kinds=("matvec",), use_cache=False)
    x = np.random.default_rng(5).normal(size=cols).astype(np.float32)
    x[32:64] *= 1e-3
    for t in TYPES:
        raw, wd = weights(t, ROWS, cols, 11 + int(t))
        y = np.zeros(ROWS, np.float32)
        lib.matvec(t, cols)(raw.ctypes.data, x.ctypes.data, y.ctypes.data, 0, ROWS)
        _close(y, wd @ x, matvec_bound(raw, t, x))


def in_bytes(raw: np.ndarray, t: DType, wd: np.ndarray, x: np.ndarray) -> np.ndarray:
    """W·x as the kernel computes it with x in bytes (matvec_kquant_int's BYTE_X_TYPES), in float64: per
    sub-block of 16 or 32 values s = max|x|·(1/BYTE_XMAX) and X8 = round(x·(BYTE_XMAX/max|x|)), both in
    float32 as the kernel rounds them (0 below TINY), meet the code parts scale·q; the biases meet float x."""
    from runtime.jit.kernels.dequant_k import sub_size
    from runtime.jit.kernels.matvec_kquant_int import BYTE_XMAX

    size = sub_size(t)
    blocks = x.astype(np.float32).reshape(-1, size)
    big = np.abs(blocks).max(axis=1, keepdims=True)
    inv = np.where(big >= TINY, np.float32(BYTE_XMAX) / np.maximum(big, TINY), np.float32(0)).astype(np.float32)
    x8 = np.rint(blocks * inv)
    assert np.abs(x8).max() <= 127
    s = big * np.float32(1.0 / BYTE_XMAX)
    seen = (x8 * s).astype(np.float64).reshape(-1)  # x as the code parts meet it
    return wd @ x.astype(np.float64) + code_part(raw, t) @ (seen - x)


def test_matvec_with_x_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """BYTE_X_TYPES (off by default; a precision trade left to the owners): the lane-major types listed
    compute W·x as x quantized to bytes per sub-block gives it (`in_bytes`, within the float tolerance), not
    as the int16 kernel does (the switch takes effect); the other types keep the int16 kernel exactly."""
    from runtime.jit.kernels import matvec_kquant_int
    from runtime.jit.kernels.matvec_int16 import host_variant

    assert not matvec_kquant_int.BYTE_X_TYPES
    variant = host_variant()
    lane_major = [t for t in TYPES if variant is not None and matvec_kquant_int.lane_codes(t, variant) is not None]
    if not lane_major:
        pytest.skip("no K type takes the lane-major kernel on this host")
    cols = 512
    x = np.random.default_rng(9).normal(size=cols).astype(np.float32)
    x[16:32] *= 1e-3  # a sub-block of x at another scale, inside a block of 32
    x[96:112] = 0.0

    def products() -> dict[DType, np.ndarray]:
        lib = make_test_library([(t, cols) for t in TYPES], accumulate=(False,), kinds=("matvec",), use_cache=False)
        out = {}
        for t in TYPES:
            raw, _ = weights(t, ROWS, cols, 13 + int(t))
            out[t] = np.zeros(ROWS, np.float32)
            lib.matvec(t, cols)(raw.ctypes.data, x.ctypes.data, out[t].ctypes.data, 0, ROWS)
        return out

    words = products()
    monkeypatch.setattr(matvec_kquant_int, "BYTE_X_TYPES", frozenset(TYPES))
    got = products()
    for t in TYPES:
        raw, wd = weights(t, ROWS, cols, 13 + int(t))
        if t in lane_major:
            _close(got[t], in_bytes(raw, t, wd, x))
            assert not np.array_equal(got[t], words[t]), t.name
        else:
            assert np.array_equal(got[t], words[t]), t.name


def test_rows_of_other_lengths_are_refused() -> None:
    for t in TYPES:
        with pytest.raises(ValueError, match="multiple of 256"):
            emit_matvec(ir.Module(), t, 384)
        with pytest.raises(ValueError, match="multiple of 256"):
            emit_matmul(ir.Module(), t, 96)


_SCRIPT = """
import json, numpy as np
from runtime.jit.kernels.library import make_test_library
from runtime.jit.kernels.matvec_kquant import int_variant
from tests.jit.test_kernels_kquant import TYPES, weights, matvec_bound
cols, rows = 512, 13
lib = make_test_library([(t, cols) for t in TYPES], accumulate=(False,), use_cache=False)
errors = {}
for t in TYPES:
    raw, wd = weights(t, rows, cols, int(t))
    x = np.random.default_rng(3).normal(size=cols).astype(np.float32)
    y = np.zeros(rows, np.float32)
    lib.matvec(t, cols)(raw.ctypes.data, x.ctypes.data, y.ctypes.data, 0, rows)
    want = wd @ x
    mv = float(((np.abs(y - want) - matvec_bound(raw, t, x)).max()) / np.abs(want).max())
    X = np.random.default_rng(4).normal(size=(6, cols)).astype(np.float32)
    Y = np.zeros((6, rows), np.float32)
    lib.matmul(t, cols)(raw.ctypes.data, X.ctypes.data, cols, Y.ctypes.data, rows, 6, 0, rows)
    mm = float(np.abs(Y - X @ wd.T).max() / np.abs(X @ wd.T).max())
    errors[t.name] = [mv, mm]
print(json.dumps({"variants": sorted({str(int_variant(t)) for t in TYPES}), "errors": errors}))
"""

_HASWELL = "+avx,+avx2,+fma,+f16c,+sse4.2,+popcnt"
_SKX = _HASWELL + ",+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512cd"
_AVX512 = _SKX + ",+avx512vnni"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
@pytest.mark.parametrize("cpu, features, variant", [
    ("x86-64", "", "None"),
    ("haswell", _HASWELL, "Variant(vnni=False, masks=False, wide=False, gfni=False)"),
    ("alderlake", _HASWELL + ",+avxvnni", "Variant(vnni=True, masks=False, wide=False, gfni=False)"),
    ("skylake-avx512", _SKX, "Variant(vnni=False, masks=True, wide=False, gfni=False)"),
    ("cascadelake", _AVX512, "Variant(vnni=True, masks=True, wide=False, gfni=False)"),
    ("icelake-server", _AVX512 + ",+avx512vbmi", "Variant(vnni=True, masks=True, wide=True, gfni=False)"),
    ("icelake-server", _AVX512 + ",+avx512vbmi,+gfni", "Variant(vnni=True, masks=True, wide=True, gfni=True)"),
], ids=["baseline", "avx2", "avxvnni", "avx512-bw", "avx512-vnni", "avx512-wide", "avx512-wide-gfni"])
def test_other_cpus(cpu: str, features: str, variant: str) -> None:
    """Compiled for another x86-64 CPU in a fresh process (run here, so the host must have what it
    uses): the float kernel without AVX2, the integer kernel's variant for the features otherwise; the
    same accuracy for every K type, matvec and matmul."""
    import llvmlite.binding as llvm

    host = llvm.get_host_cpu_features()
    missing = [f for f in features.split(",") if f and not host.get(f[1:], False)]
    if missing:
        pytest.skip(f"the host lacks {missing}")
    env = dict(os.environ, RWKV_TUI_CPU=cpu, RWKV_TUI_FEATURES=features, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["variants"] == [variant]
    assert sorted(result["errors"]) == sorted(t.name for t in TYPES)
    bad = {k: v for k, v in result["errors"].items() if max(v) > RTOL}
    assert not bad, (result["variants"], bad)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("masks", [True, False])
def test_lane_major_chunks_hold_each_value_once_in_its_sub_block_lane(t: DType, masks: bool) -> None:
    """LaneCodes (512-bit hosts; emulated here, so it runs on any CI host): gathering dword_index from
    each field's region and taking the lane's field bits gives, in chunk c, lane L, byte i, the code of
    value value_of(c, L) + i as code_fields defines it (times 1/factors()[L] where the mask leaves the bits in
    place), which is the order the prepared x is transposed to."""
    from runtime.jit.kernels.dequant_k import SUB, SUPER, code_fields
    from runtime.jit.kernels.matvec_kquant_int import LaneCodes

    block = np.random.default_rng(int(t)).integers(0, 256, size=t.block_bytes, dtype=np.uint8)

    def code(v: int) -> int:
        q = 0
        for f in code_fields(t, v // 32):
            q |= ((int(block[f.offset + v % 32]) >> f.shift) & ((1 << f.width) - 1)) << f.place
        return q

    lanes = LaneCodes(t, gfni=True, masks=masks)
    if len(lanes.fields) > 1 or not masks:  # fields moved into place need vgf2p8affineqb
        with pytest.raises(ValueError, match="need GFNI"):
            LaneCodes(t, gfni=False, masks=masks)
    factors = lanes.factors()
    seen = set()
    for c in range(SUPER // 64):
        got = np.zeros(64, np.int64)
        for field in range(len(lanes.fields)):
            start, dwords = lanes.region(field)
            assert start + 4 * dwords <= t.block_bytes  # the loads stay inside the super-block
            words = block[start:start + 4 * dwords].copy().view("<u4")[lanes.dword_index(field, c)]
            raw = words.view(np.uint8).astype(np.int64)
            for j in range(64):
                f = lanes.fields[field][j // 8]
                if lanes.masks:
                    got[j] |= raw[j] & (((1 << f.width) - 1) << f.shift)
                else:
                    got[j] |= ((raw[j] >> f.shift) & ((1 << f.width) - 1)) << f.place
        for j in range(64):
            lane, i = divmod(j, 4)
            v = lanes.value_of(c, lane) + i
            # the lane's scale and sx are its sub-block's (lanes 2g, 2g+1 share the 32-value ones)
            assert v // lanes.sub == lane * SUB // lanes.sub, (t.name, c, lane, i)
            seen.add(v)
            assert got[j] * factors[lane] == code(v), (t.name, c, lane, i)
    assert seen == set(range(SUPER))
