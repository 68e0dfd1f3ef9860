"""bench/kernel_costs.py: the loops it cuts out of the kernels' assembly, and (where an llvm-mca that knows
Zen 4 is installed) the costs and picks it prints for a CPU we do not have."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from bench import kernel_costs
from runtime.quant.types import DType


# the scale loop of the AVX2 variant (8 iterations of gathers) is unrolled whole into the row loop
@pytest.mark.parametrize("dtype, variant, dot_loop, scale_loop", [
    (DType.F16, "float", "blk", False),
    (DType.Q5_1, "wide+gfni", "pair", True),
    (DType.Q5_1, "avx2", "blk", False),
    (DType.Q4_1, "bw", "blk", True),
])
def test_the_row_loops_inner_loops_are_found_with_one_unit_per_row(dtype: DType, variant: str, dot_loop: str,
                                                                    scale_loop: bool) -> None:
    """Compiled for Ice Lake (LLVM does not unroll the dot loops there): the dot-product loop holds one
    prefetch per row and unit, the scale loop (the rows' scales converted 8 at a time) one conversion
    per row, and the row loop's own code (what LLVM unrolled whole) is kept apart."""
    code = ("import json; from bench.kernel_costs import _assembly, inner_loops, _units; "
            "from runtime.quant.types import DType; "
            f"asm, rows = _assembly(DType.{dtype.name}, 2048, {variant!r}); loops = inner_loops(asm); "
            "print(json.dumps({'rows': rows, 'units': {k: _units(k, v) for k, v in loops.items() if k != 'row'}, "
            "'row': len(loops.get('row', []))}))")
    env = {"RWKV_TUI_CPU": "icelake-server", "RWKV_TUI_FEATURES": kernel_costs._ICX}
    out = _run(code, env)
    assert out["row"] > 0
    assert out["units"][dot_loop] == out["rows"]
    if scale_loop:
        assert out["units"]["scales"] == out["rows"]
    else:
        assert set(out["units"]) == {dot_loop}


@pytest.mark.parametrize("cpu, dtype, variant", [
    ("sapphirerapids", DType.Q3_K, "wide+gfni"),  # half → float by AVX512-FP16's scalar vcvtsh2ss
    ("haswell", DType.Q4_K, "avx2"),
    ("haswell", DType.Q2_K, "float"),
])
def test_k_quant_kernels_are_costed_per_super_block(cpu: str, dtype: DType, variant: str) -> None:
    """A K-quant kernel's super-block loop (`sblk`) is found inside the row loop with one unit (one half
    → float conversion) per row and super-block, for the integer variants and the float kernel alike."""
    features = next(c.features for c in kernel_costs.CPUS if c.name == cpu)
    code = ("import json; from bench.kernel_costs import _assembly, inner_loops, _units; "
            "from runtime.quant.types import DType; "
            f"asm, rows = _assembly(DType.{dtype.name}, 1024, {variant!r}); loops = inner_loops(asm); "
            "print(json.dumps({'rows': rows, 'units': {k: _units(k, v) for k, v in loops.items() if k != 'row'}}))")
    out = _run(code, {"RWKV_TUI_CPU": cpu, "RWKV_TUI_FEATURES": features})
    assert out["units"] == {"sblk": out["rows"]}


def test_a_switch_set_before_building_changes_the_kernel() -> None:
    """--set PREFETCH_BYTES=0 builds the float kernel for grouped rows (F16 rows of 256 values: 512 B)
    without its software prefetches (whose blocks per iteration then cannot be counted), as a
    re-measurement of that switch needs; FLOAT_STREAM_AHEAD=0 does the same for rows walked as streams
    (1024 values)."""
    code = ("import json; from bench.kernel_costs import _assembly, apply_switches, inner_loops, _units; "
            "from runtime.quant.types import DType; import runtime.jit.kernels.matvec as mv; "
            "counts, kept = [], {'PREFETCH_BYTES': mv.PREFETCH_BYTES, 'FLOAT_STREAM_AHEAD': mv.FLOAT_STREAM_AHEAD}\n"
            "for switches in ({}, {'PREFETCH_BYTES': 0}, {'FLOAT_STREAM_AHEAD': 0}):\n"
            "    apply_switches(switches)\n"
            "    for cols in (256, 1024):\n"
            "        asm, rows = _assembly(DType.F16, cols, 'float')\n"
            "        counts.append(_units('blk', inner_loops(asm)['blk']) // rows)\n"
            "    apply_switches(kept)\n"
            "print(json.dumps(counts))")
    grouped, streamed, grouped_off, streamed_kept, grouped_kept, streamed_off = _run(
        code, {"RWKV_TUI_CPU": "haswell", "RWKV_TUI_FEATURES": kernel_costs._HASWELL})
    assert grouped >= 1 and streamed >= 1 and streamed_kept >= 1 and grouped_kept >= 1
    assert grouped_off == 0 and streamed_off == 0


def test_zen4_f16_rows_alternate_conversions_unless_switched_off() -> None:
    """Built for Zen 4, the F16 row loop widens halves both ways (vcvtph2ps and shifts, matvec._HalfPairs);
    --set F16_BY_SHIFTS=0 builds the conversions alone, as on other CPUs."""
    code = ("import json; from bench.kernel_costs import _assembly, apply_switches, inner_loops; "
            "from runtime.quant.types import DType; "
            "found = []\n"
            "for switches in ({}, {'F16_BY_SHIFTS': 0}):\n"
            "    apply_switches(switches)\n"
            "    ops = {i.split()[0] for i in inner_loops(_assembly(DType.F16, 1024, 'float512')[0])['blk']}\n"
            "    found.append(['vcvtph2ps' in ops, 'vpsrad' in ops])\n"
            "print(json.dumps(found))")
    cpu = next(c for c in kernel_costs.CPUS if c.name == "znver4")
    default, switched_off = _run(code, {"RWKV_TUI_TRIPLE": cpu.triple, "RWKV_TUI_CPU": cpu.cpu,
                                        "RWKV_TUI_FEATURES": cpu.features})
    assert default == [True, True]
    assert switched_off == [True, False]


def _run(code: str, env: dict[str, str]) -> object:
    proc = subprocess.run([sys.executable, "-c", code], cwd=kernel_costs.REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(kernel_costs.REPO), **env), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mca_with_zen4() -> str | None:
    try:
        mca = kernel_costs.find_mca()
    except SystemExit:
        return None
    proc = subprocess.run([mca, "-mtriple=x86_64", "-mcpu=help"], capture_output=True, text=True)
    return mca if "znver4" in proc.stdout + proc.stderr else None


@pytest.mark.skipif(shutil.which("llvm-mca-19") is None and _mca_with_zen4() is None,
                    reason="no llvm-mca that knows Zen 4 (Debian: apt-get install llvm-19)")
def test_zen4_costs_and_picks() -> None:
    """Every variant Zen 4's features allow is costed, each at a positive finite number of cycles per
    block, and the pick is the one Zen 4's features give (AVX-512 VNNI, VBMI, GFNI: two blocks per 512-bit
    register), which the models and the measurements here favour (docs/ARCHITECTURE.md, Kernels)."""
    cpu = next(c for c in kernel_costs.CPUS if c.name == "znver4")
    results = kernel_costs.run_cpu(cpu, 1024, ["Q5_1", "Q4_0"], _mca_with_zen4())
    picks = {r["type"]: r["variant"] for r in results if r["picked"]}
    assert picks == {"Q5_1": "wide+gfni", "Q4_0": "wide+gfni"}
    assert {r["variant"] for r in results if r["type"] == "Q5_1"} == (set(kernel_costs.VARIANT_ORDER)
                                                                       - {"float512", *kernel_costs.ARM_VARIANTS})
    for r in results:
        assert math.isfinite(r["cycles_per_block"]) and 0 < r["cycles_per_block"] < 100, r


@pytest.mark.skipif(shutil.which("llvm-mca-19") is None, reason="no llvm-mca-19 (Debian: apt-get install llvm-19)")
def test_arm64_costs_and_picks() -> None:
    """Neoverse N1 (dot product): the quantized types are costed as the float kernel and as `dot`, the
    runtime picks `dot`, and the model prices it below the float kernel (docs/ARCHITECTURE.md, Kernels);
    the float types have the float kernel only."""
    cpu = next(c for c in kernel_costs.CPUS if c.name == "neoverse-n1")
    results = kernel_costs.run_cpu(cpu, 1024, ["Q8_0", "Q5_0", "F16"], "llvm-mca-19")
    cost = {(r["type"], r["variant"]): r["cycles_per_block"] for r in results}
    assert set(cost) == {("Q8_0", "float"), ("Q8_0", "dot"), ("Q5_0", "float"), ("Q5_0", "dot"), ("F16", "float")}
    assert {r["type"]: r["variant"] for r in results if r["picked"]} == {"Q8_0": "dot", "Q5_0": "dot", "F16": "float"}
    for t in ("Q8_0", "Q5_0"):
        assert 0 < cost[t, "dot"] < cost[t, "float"], cost
