"""The 4-, 5- and 8-bit matvec kernels on longer rows (whole gathers of scales, and leftovers), hard
activations, and the kernels other CPUs use, each compiled in a fresh process for that CPU: plain x86-64
(float kernels, halves converted by integer code), AVX2 and AVX2 + AVX-VNNI (the int16 kernel without
AVX-512, float rows in 256-bit vectors), AVX-512 with and without VNNI, VBMI and GFNI, and the CPU models
the runtime knows by name (Zen 4); the float types F32/F16 too. Where x is quantized to int16, the error
may exceed the float tolerance by the bound derived in test_kernels.int16_bound."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.jit.kernels.library import KernelLibrary, make_test_library
from runtime.quant.codec import quantize, to_float32
from runtime.quant.types import DType
from tests.jit.test_kernels import code_and_bias, matvec_bound

REPO = Path(__file__).resolve().parents[2]
TYPES = [DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0, DType.Q8_0]
FLOAT_TYPES = [DType.F32, DType.F16]
COLS = [544, 1024]  # 17 blocks (whole gathers + leftovers), 32 blocks (whole gathers only)
ROWS = 14  # rows 1-13 are computed: whole groups of 2, 3 or 4 rows and one single leftover row
RTOL = 1e-5  # as in test_kernels.py, for normal activations: max error relative to max|W·x|
# Activations with a large block sum or a wide range make the factored sum d·Σq·x + m·Σx cancel, so the
# error relative to max|W·x| says more about the data than the kernel (arm64's float kernel: 5.4e-5 on
# Q4_1 with wide activations, x86-64's: 7.7e-6, same IR). There the float rounding is measured in units
# of eps·(Σ|d·q·x| + Σ|m|·|x|), the size of the terms the kernels add up: at most 2.6 on x86-64 and
# arm64 (Cortex-A57 … Neoverse V1); a decoding mistake costs orders of magnitude more.
EPS = 2.0**-24
HARD_ULPS = 8.0


def weights(t: DType, rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw bytes of a random matrix in type `t` (with an all-zero block, and blocks of very different
    scales), and its dequantized float64 values."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    w[0, 32:64] = 0.0
    w[1] *= np.repeat(10.0 ** rng.uniform(-4, 3, cols // 32), 32).astype(np.float32)
    raw = np.ascontiguousarray(quantize(w, t))
    return raw, to_float32(raw, t).reshape(rows, cols).astype(np.float64)


N_ACTIVATIONS = 5


def activations(cols: int, seed: int) -> list[np.ndarray]:
    """Normal values; values of widely different magnitudes; all equal; one spike; blocks of widely
    different magnitudes, with an all-zero block and one below matvec_int16.TINY."""
    rng = np.random.default_rng(seed)
    wide = (rng.normal(size=cols) * 10.0 ** rng.uniform(-6, 4, cols)).astype(np.float32)
    spike = np.zeros(cols, np.float32)
    spike[cols // 2 + 3] = 1e4
    blocks = (rng.normal(size=cols) * np.repeat(10.0 ** rng.uniform(-5, 5, cols // 32), 32)).astype(np.float32)
    blocks[32:64] = 0.0
    blocks[96:128] *= np.float32(1e-35 / np.abs(blocks[96:128]).max())
    out = [rng.normal(size=cols).astype(np.float32), wide, np.full(cols, 0.37, np.float32), spike, blocks]
    assert len(out) == N_ACTIVATIONS
    return out


def rounding_scale(raw: np.ndarray, t: DType, x: np.ndarray) -> np.ndarray:
    """Per row, Σ over blocks of Σ_j |d·q_j·x_j| + |m|·Σ_j |x_j|: what the kernels add up (see HARD_ULPS);
    Σ_j |w_j·x_j| for float rows."""
    if t in FLOAT_TYPES:
        return np.abs(to_float32(raw, t).reshape(-1, x.size).astype(np.float64)) @ np.abs(x.astype(np.float64))
    code, bias = code_and_bias(raw, t, x.size // 32)
    ax = np.abs(x.astype(np.float64)).reshape(-1, 32)
    return (np.abs(code) * ax).sum(axis=(1, 2)) + (np.abs(bias) * ax.sum(axis=1)).sum(axis=1)


def max_errors(lib: KernelLibrary, types: list[DType] = TYPES) -> dict[str, float]:
    """For every type × cols × x × accumulate: max error of a kernel call over a sub-range of rows
    beyond the int16 bound, relative to max|want| for normal activations, in units of eps·rounding_scale
    for the hard ones (or inf if rows outside the range were touched)."""
    out = {}
    for t in types:
        for cols in COLS:
            raw, wd = weights(t, ROWS, cols, cols)
            for n, x in enumerate(activations(cols, 3)):
                bound = matvec_bound(raw, t, x)
                unit = rounding_scale(raw, t, x) * EPS
                for acc in (False, True):
                    y0 = np.random.default_rng(n).normal(size=ROWS).astype(np.float32)
                    y = y0.copy()
                    lo, hi = 1, ROWS
                    lib.matvec(t, cols, acc)(raw.ctypes.data, x.ctypes.data, y.ctypes.data, lo, hi)
                    want = wd[lo:hi] @ x.astype(np.float64) + (y0[lo:hi] if acc else 0)
                    gap = np.abs(y[lo:hi] - want) - bound[lo:hi]
                    if n == 0:
                        err = float(gap.max() / np.abs(want).max())
                    else:  # accumulating adds y0 once, rounded once more
                        units = unit[lo:hi] + (EPS * np.abs(y0[lo:hi]) if acc else 0)
                        err = float(np.max(gap / np.where(units > 0, units, np.finfo(np.float64).tiny)))
                    if y[0] != y0[0]:
                        err = float("inf")
                    out[f"{t.name} c{cols} x{n} {'acc' if acc else 'set'}"] = err
    return out


@pytest.fixture(scope="module")
def lib() -> KernelLibrary:
    return make_test_library([(t, c) for t in TYPES for c in COLS], kinds=("matvec",), use_cache=False)


def test_long_rows_and_hard_activations(lib: KernelLibrary) -> None:
    errors = max_errors(lib)
    assert len(errors) == len(TYPES) * len(COLS) * N_ACTIVATIONS * 2
    assert not _too_large(errors), _too_large(errors)


def _too_large(errors: dict[str, float]) -> dict[str, float]:
    return {k: e for k, e in errors.items() if not e <= (RTOL if " x0 " in k else HARD_ULPS)}


_SCRIPT = """
import json
from runtime.quant.types import DType
from runtime.jit.kernels.library import make_test_library
from runtime.jit.kernels.matvec import shifted_row, wide_float_rows
from runtime.jit.kernels.matvec_int16 import int16_variant
from tests.jit.test_matvec_nibbles import COLS, FLOAT_TYPES, TYPES, max_errors
lib = make_test_library([(t, c) for t in TYPES + FLOAT_TYPES for c in COLS], kinds=("matvec",), use_cache=False)
variants = {str(int16_variant(t)) for t in TYPES}
print(json.dumps({"variants": sorted(variants), "wide_floats": wide_float_rows(DType.F16),
                  "shifted_f16": [shifted_row(DType.F16, i) for i in range(4)],
                  "errors": max_errors(lib, TYPES + FLOAT_TYPES)}))
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
    ("znver4", _AVX512 + ",+avx512vbmi,+gfni,+avx512bf16", "Variant(vnni=True, masks=True, wide=True, gfni=True)"),
], ids=["baseline", "avx2", "avxvnni", "avx512-bw", "avx512-256bit", "avx512-wide", "avx512-wide-gfni", "znver4"])
def test_other_cpus(cpu: str, features: str, variant: str) -> None:
    """Compiled for another x86-64 CPU in a fresh process (run here, so the host must have what it
    uses): float kernels without AVX2, the int16 kernel's variant for the features otherwise, F32/F16
    rows in 256- or 512-bit vectors; the same accuracy."""
    import llvmlite.binding as llvm

    host = llvm.get_host_cpu_features()
    missing = [f for f in features.split(",") if f and not host.get(f[1:], False)]
    if missing:
        pytest.skip(f"the host lacks {missing}")
    env = dict(os.environ, RWKV_TUI_CPU=cpu, RWKV_TUI_FEATURES=features, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["variants"] == [variant]
    assert result["wide_floats"] == ("avx512f" in features)  # F32/F16 rows in 512-bit vectors
    # Zen 4 widens every other F16 row by integer shifts (matvec._HalfPairs), the others convert
    assert result["shifted_f16"] == ([False, True] * 2 if cpu == "znver4" else [False] * 4)
    assert len(result["errors"]) == len(TYPES + FLOAT_TYPES) * len(COLS) * N_ACTIVATIONS * 2
    assert not _too_large(result["errors"]), _too_large(result["errors"])


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_partial_scale_group_ignores_the_bytes_around_it(t: DType) -> None:
    """Rows of 23 blocks end with a group of 7 whose scales are read from registers that also hold
    code bytes; with every code byte 0xFF (a NaN as a half) nothing of them may reach the result."""
    cols, rows = 23 * 32, 5
    raw, _ = weights(t, rows, cols, 7)
    lay = {DType.Q4_0: 2, DType.Q4_1: 4, DType.Q5_0: 6, DType.Q5_1: 8, DType.Q8_0: 2}[t]
    blocks = raw.view(np.uint8).reshape(rows, cols // 32, -1)
    blocks[:, :, lay:] = 0xFF if t != DType.Q8_0 else 0x7F
    want = to_float32(raw, t).reshape(rows, cols).astype(np.float64) @ np.ones(cols)
    x = np.ones(cols, np.float32)
    lib = make_test_library([(t, cols)], kinds=("matvec",), accumulate=(False,), use_cache=False)
    y = np.zeros(rows, np.float32)
    lib.matvec(t, cols)(raw.ctypes.data, x.ctypes.data, y.ctypes.data, 0, rows)
    assert np.all(np.isfinite(y)), y
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-3 * np.abs(want).max())


_ARM_SCRIPT = """
import json
from runtime.jit.kernels import matvec_dot
matvec_dot.USE_I8MM = {i8mm}
from runtime.jit.kernels.library import make_test_library
from runtime.jit.kernels.matvec_int16 import int16_variant
from tests.jit.test_matvec_nibbles import COLS, TYPES, max_errors
lib = make_test_library([(t, c) for t in TYPES for c in COLS], kinds=("matvec",), use_cache=False)
print(json.dumps({{"variants": sorted({{str(int16_variant(t)) for t in TYPES}}), "errors": max_errors(lib)}}))
"""


@pytest.mark.skipif(platform.machine() not in ("aarch64", "arm64"), reason="arm64 only (tools/arm64_check.py)")
@pytest.mark.parametrize("i8mm", [False, True], ids=["sdot", "sdot+i8mm"])
def test_arm64_dot_product_variants(i8mm: bool) -> None:
    """The arm64 kernels of matvec_dot.py, each run where the host has what it uses (under qemu: Neoverse N1
    for sdot, `max` for both), in a fresh process with the i8mm switch set: the same accuracy as every
    other kernel, within the int16 bound."""
    from runtime.jit.target import host_target

    host = host_target()
    missing = {"dotprod", "i8mm"} - host.enabled if i8mm else {"dotprod"} - host.enabled
    if missing and not (host.cpu.startswith("apple-m") and not i8mm):
        pytest.skip(f"the host lacks {sorted(missing)}")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _ARM_SCRIPT.format(i8mm=i8mm)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["variants"] == ["DotVariant(sdot+i8mm)" if i8mm else "DotVariant(sdot)"]
    assert len(result["errors"]) == len(TYPES) * len(COLS) * N_ACTIVATIONS * 2
    assert not _too_large(result["errors"]), _too_large(result["errors"])
