"""Static cost of the decoding kernels' inner block loops on CPUs we do not have, from LLVM's machine models.

    python bench/kernel_costs.py [--cols 2048] [--cpus znver4,haswell,...] [--types f16,q8_0,...]
                                 [--metric ports|simulated] [--markdown | --summary]
                                 [--measure] [--calibrate sapphirerapids] [--set PREFETCH_GROUPS=0 ...]
                                 [--mca llvm-mca-19] [--json FILE]

For every CPU model below, in a fresh process with RWKV_TUI_TRIPLE/CPU/FEATURES set to it, each
matvec kernel variant that CPU's features allow is compiled for every weight type exactly as the
runtime would compile it (the variant forced where it is not the runtime's pick), the assembly is
emitted (llvmlite, verbose, so LLVM names each loop), and the loops inside the main row loop
(`scales`: the scale conversion, 8 blocks per iteration; `pair`/`blk`: the dot products, 2 or 1
blocks; and the row loop's own code, where LLVM unrolled a loop whole) are cut out and given to
`llvm-mca -mcpu=<model>`. Blocks per iteration are counted, not assumed (one prefetch per row and
block or pair, one gather or half conversion per row in the scale loop), since LLVM unrolls some
loops for some CPUs. Cycles per row group over blocks and rows give cycles per 32-weight block and
row; the block's bytes over that give bytes per cycle, and at the nominal clock NOMINAL_GHZ GB/s per
core: the compute ceiling of one core running one thread. Decoding needs it well above the memory
bandwidth a core gets (≈ 10-30 GB/s); two threads sharing a core (SMT) share it.

Cycles are "ports" by default: llvm-mca's Block RThroughput, the bound set by the execution ports
alone (a streaming loop over independent rows overlaps its iterations). "simulated" is llvm-mca's
simulation, which also waits on dependencies, some of them false: the zeroing `vxorps` before a
vpdpbusd does not break the dependency there (Sapphire Rapids' model never, Zen 4's not for xmm16-31),
so every row's dot product waits for the previous one's.
The models err, differently per variant (LLVM's Zen 4 model prices a ymm vpgatherdd at 0.33 cycles):
--measure times each variant on this machine (one thread; rows in L2, the compute ceiling; and from
memory), and --calibrate MODEL (MODEL: this machine) scales every CPU's figure for a variant by how
far MODEL's figure for it missed the time measured here, relative to MODEL's pick.

llvm-mca needs an LLVM that knows the models: Debian's llvm-19 (`apt-get install llvm-19`) knows
znver4 and znver5 (whose model there is Zen 4's: 512-bit instructions in two halves, so its lines
repeat Zen 4's) and Apple M1-M3 as apple-a14/a15/a16 (one model for all); LLVM 14's llvm-mca knows no
Zen 4. The newest llvm-mca on PATH is used.

Variants (runtime/jit/kernels/matvec_int16.Variant for Q4/Q5/Q8_0, matvec.py for the rest):
  float      the generic float kernel in 256-bit vectors (F32/F16 everywhere without AVX-512F; every type
             on x86 without AVX2 and on arm64 without the dot-product extension)
  float512   F32/F16 rows in 512-bit vectors (matvec._WideFloatRow)
  avx2       int16 words, vpmaddwd, scales gathered
  vnni       vpdpwssd (AVX-VNNI or AVX512-VNNI), scales gathered
  bw         AVX-512BW/VL: fifth bits added under masks, scales picked by word permutations (no gathers)
  bw+vnni    both (Q5 codes as bytes, vpdpbusd)
  wide       bw+vnni and two 4-/5-bit blocks per 512-bit register, Q8_0 one block per 512-bit vpdpwssd
  wide+gfni  + nibbles split by vgf2p8affineqb
  dot        arm64 with the dot-product extension: x as int16 in two signed bytes, sdot (matvec_dot.py)
  dot+i8mm   the same, two rows at a time through smmla (i8mm)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NOMINAL_GHZ = 3.0  # one clock for every CPU, so that the GB/s compare instructions, not clocks
DEFAULT_COLS = 2048  # 1.5B rows (430M: 1024, 169M: 768)
MCA_ITERATIONS = 200
X86 = "x86_64-unknown-linux-gnu"
ARM64 = "aarch64-unknown-linux-gnu"

_HASWELL = "+sse4.2,+popcnt,+avx,+avx2,+fma,+f16c,+bmi,+bmi2"
_SKX = _HASWELL + ",+avx512f,+avx512cd,+avx512bw,+avx512dq,+avx512vl"
_ICX = _SKX + ",+avx512vnni,+avx512vbmi,+avx512vbmi2,+avx512bitalg,+avx512vpopcntdq,+avx512ifma,+gfni,+vaes"
_NEON = "+neon,+fp-armv8"


@dataclass(frozen=True)
class CpuModel:
    """A CPU as LLVM names it for code generation (`cpu`) and for llvm-mca (`mca`), with the features the
    runtime would read from such a host (they decide the variant)."""

    name: str
    triple: str
    cpu: str
    features: str
    mca: str


CPUS = [
    CpuModel("haswell", X86, "haswell", _HASWELL, "haswell"),
    CpuModel("znver3", X86, "znver3", _HASWELL + ",+vaes", "znver3"),
    CpuModel("alderlake", X86, "alderlake", _HASWELL + ",+avxvnni,+gfni,+vaes", "alderlake"),
    CpuModel("skylake-avx512", X86, "skylake-avx512", _SKX, "skylake-avx512"),
    CpuModel("icelake-server", X86, "icelake-server", _ICX, "icelake-server"),
    CpuModel("sapphirerapids", X86, "sapphirerapids", _ICX + ",+avxvnni,+avx512bf16,+avx512fp16", "sapphirerapids"),
    CpuModel("znver4", X86, "znver4", _ICX + ",+avx512bf16", "znver4"),
    CpuModel("znver5", X86, "znver5", _ICX + ",+avx512bf16,+avxvnni", "znver5"),
    CpuModel("apple-m1", ARM64, "apple-m1", _NEON + ",+dotprod", "apple-a14"),
    CpuModel("apple-m2", ARM64, "apple-m2", _NEON + ",+dotprod,+i8mm", "apple-a15"),
    CpuModel("apple-m3", ARM64, "apple-m3", _NEON + ",+dotprod,+i8mm", "apple-a16"),
    CpuModel("neoverse-n1", ARM64, "neoverse-n1", _NEON + ",+dotprod", "neoverse-n1"),
    CpuModel("neoverse-n2", ARM64, "neoverse-n2", _NEON + ",+dotprod,+i8mm", "neoverse-n2"),
    CpuModel("neoverse-v1", ARM64, "neoverse-v1", _NEON + ",+dotprod,+i8mm", "neoverse-v1"),
    CpuModel("neoverse-v2", ARM64, "neoverse-v2", _NEON + ",+dotprod,+i8mm", "neoverse-v2"),
]
TYPE_NAMES = ["F32", "F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]
# K-quant types (matvec_kquant.py), costed when --types names them
K_TYPE_NAMES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# the int16 kernel's variants by name, as Variant(vnni, masks, wide, gfni)
INT16_VARIANTS = {
    "avx2": (False, False, False, False),
    "vnni": (True, False, False, False),
    "bw": (False, True, False, False),
    "bw+vnni": (True, True, False, False),
    "wide": (True, True, True, False),
    "wide+gfni": (True, True, True, True),
}
# the arm64 kernel's variants (runtime/jit/kernels/matvec_dot.py)
ARM_VARIANTS = ("dot", "dot+i8mm")
VARIANT_ORDER = ["float", "float512", *INT16_VARIANTS, *ARM_VARIANTS]
LOOP_KINDS = ("scales", "pair", "blk", "sblk")  # counted_loop names inside the row loop
BLOCKS_PER_UNIT = {"scales": 8, "pair": 2, "blk": 1, "sblk": 8}  # sblk: a K-quant super-block of 256


# -- the worker: runs in a process whose host_target() is the CPU model ---------------------------------


def _variant_name(v: object | None) -> str:
    if v is None:
        return "float"
    if type(v).__name__ == "DotVariant":
        return "dot+i8mm" if v.i8mm else "dot"
    flags = (v.vnni, v.masks, v.wide, v.gfni)
    return next(name for name, f in INT16_VARIANTS.items() if f == flags)


def _k_variant_name(v: object | None) -> str:
    """A K-quant kernel variant's name: matvec_kquant_int reads vnni, wide and gfni, not masks (AVX-512BW
    without VNNI and VBMI builds the avx2 kernel)."""
    if v is None:
        return "float"
    return _variant_name(type(v)(vnni=v.vnni, masks=v.wide, wide=v.wide, gfni=v.gfni))


def _allowed(dtype: object) -> list[str]:
    """The variants this CPU's features allow for `dtype` (every one needing no more than its pick)."""
    from runtime.jit.kernels import matvec_int16, matvec_kquant
    from runtime.jit.target import host_target
    from runtime.quant.types import K_QUANT_TYPES, DType

    feats = host_target().enabled
    if dtype in K_QUANT_TYPES:
        pick = matvec_kquant.int_variant(dtype)
        if pick is None:
            return ["float"]
        ok = [name for name, (vnni, masks, wide, gfni) in INT16_VARIANTS.items()
              if masks == wide and (not vnni or pick.vnni) and (not wide or pick.wide) and (not gfni or pick.gfni)]
        return ["float", *ok]
    if dtype in (DType.F32, DType.F16):
        return ["float", "float512"] if "avx512f" in feats else ["float"]
    if not host_target().is_x86:
        if matvec_int16.int16_variant(dtype) is None:
            return ["float"]
        return ["float", "dot", "dot+i8mm"] if "i8mm" in feats else ["float", "dot"]
    pick = matvec_int16.host_variant()
    if pick is None:
        return ["float"]
    out = ["float"]
    for name, (vnni, masks, wide, gfni) in INT16_VARIANTS.items():
        if ((not vnni or pick.vnni) and (not masks or pick.masks) and (not wide or pick.wide)
                and (not gfni or pick.gfni)):
            out.append(name)
    return out


def _runtime_pick(dtype: object) -> str:
    from runtime.jit.kernels import matvec, matvec_int16, matvec_kquant
    from runtime.quant.types import K_QUANT_TYPES, DType

    if dtype in K_QUANT_TYPES:
        return _k_variant_name(matvec_kquant.int_variant(dtype))
    if dtype in (DType.F32, DType.F16):
        return "float512" if matvec.wide_float_rows(dtype) else "float"
    return _variant_name(matvec_int16.int16_variant(dtype))


@contextmanager
def _forced(variant: str) -> Iterator[None]:
    """emit_matvec builds `variant` inside the block (its two decisions, module globals looked up per
    call, replaced for the time being)."""
    from runtime.jit.kernels import matvec, matvec_dot, matvec_int16, matvec_kquant

    if variant in ("float", "float512"):
        forced = None
    elif variant in ARM_VARIANTS:
        forced = matvec_dot.DotVariant(i8mm=variant == "dot+i8mm")
    else:
        forced = matvec_int16.Variant(*INT16_VARIANTS[variant])
    saved = matvec.int16_variant, matvec.wide_float_rows, matvec_kquant.int_variant
    matvec.int16_variant = lambda t: forced if t in matvec_int16.INT16_TYPES else None
    matvec.wide_float_rows = lambda t: variant == "float512"
    matvec_kquant.int_variant = lambda t: forced if isinstance(forced, matvec_int16.Variant) else None
    try:
        yield
    finally:
        matvec.int16_variant, matvec.wide_float_rows, matvec_kquant.int_variant = saved


def _module(dtype: object, cols: int, variant: str) -> tuple[object, int]:
    """An IR module holding the matvec kernel `matvec_<type>_c<cols>` built as `variant`, and the rows it
    walks side by side."""
    from llvmlite import ir

    from runtime.jit.engine import prepare_module
    from runtime.jit.kernels import matvec

    with _forced(variant):
        module = ir.Module(name="costs")
        prepare_module(module)
        matvec.emit_matvec(module, dtype, cols, linkage="external")
        return module, matvec.rows_per_step(dtype, cols)


def _assembly(dtype: object, cols: int, variant: str) -> tuple[str, int]:
    """Assembly of the matvec kernel for `dtype` rows of `cols` values built as `variant`, optimised as the
    runtime optimises it (runtime.jit.engine.compile_ir), and the rows it walks side by side."""
    import llvmlite.binding as llvm

    from runtime.jit.target import new_target_machine

    module, rows = _module(dtype, cols, variant)
    tm = new_target_machine()
    mod = llvm.parse_assembly(str(module))
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    tm.set_asm_verbosity(True)
    return tm.emit_assembly(mod), rows


L2_BYTES = 512 << 10  # the matrix timed in L2 (on every CPU here)
MEMORY_BYTES = 256 << 20  # copies of it filling this much, timed from memory


def measured_gbs(dtype: object, cols: int, variant: str) -> tuple[float, float]:
    """GB/s of weights one thread reads through the kernel built as `variant`: with its rows in L2 (the
    compute ceiling on this machine) and from memory (copies of the matrix walked in turn, as decoding
    walks each matrix once per token); best of several rounds."""
    import numpy as np

    from bench.kernels import _arena, _best, weight_bytes
    from runtime.jit.engine import compile_module
    from runtime.jit.kernels.library import MATVEC_CTYPE
    from runtime.jit.kernels.matvec import kernel_name

    module, _ = _module(dtype, cols, variant)
    compiled = compile_module(module, use_cache=False)
    fn = MATVEC_CTYPE(compiled.address(kernel_name("matvec", dtype, cols, False)))
    rows = max(4, L2_BYTES // dtype.row_bytes(cols) // 4 * 4)
    rng = np.random.default_rng(0)
    mat = weight_bytes(dtype, rows, cols, rng)
    x = rng.normal(size=cols).astype(np.float32)
    y = np.zeros(rows, np.float32)
    xp, yp = x.ctypes.data, y.ctypes.data
    calls = 50

    def hot() -> None:
        for _ in range(calls):
            fn(mat.ctypes.data, xp, yp, 0, rows)

    buf, addrs = _arena(mat, MEMORY_BYTES)

    def cold() -> None:
        for a in addrs:
            fn(a, xp, yp, 0, rows)

    in_l2 = mat.nbytes * calls / _best(hot, 0.3) / 1e9
    from_memory = mat.nbytes * len(addrs) / _best(cold, 0.5) / 1e9
    del buf
    return in_l2, from_memory


_LABEL = re.compile(r"^(\.LBB\d+_\d+|(?:#|//) %bb\.\d+):\s*(?:(?:#|//)\s*%(\S+))?")


def inner_loops(asm: str, comment: str = "#") -> dict[str, list[str]]:
    """The instructions of each innermost loop directly inside the `row` loop, by loop name, from
    LLVM's verbose comments (`# %blk.body`, `=>  This Inner Loop Header`, `in Loop: Header=BB0_9`;
    `comment` is the assembly's comment marker: "#" on x86, "//" on arm64, where "#" marks immediates)."""
    blocks: list[dict] = []
    for line in asm.splitlines():
        m = _LABEL.match(line)
        if m:
            label = re.sub(r"^(#|//) %bb\.", "BB?_", m.group(1).lstrip("."))
            blocks.append({"label": label, "name": m.group(2) or "", "loop": None, "parent": None,
                           "inner": False, "insns": []})
            continue
        if not blocks:
            continue
        blk = blocks[-1]
        s = line.strip()
        if "Inner Loop Header" in s or "Loop Header:" in s:
            blk["loop"] = blk["label"][1:] if blk["label"].startswith("L") else blk["label"]
            blk["inner"] = "Inner" in s
        elif (h := re.search(r"in Loop: Header=(BB\d+_\d+)", s)) and blk["loop"] is None:
            blk["loop"] = h.group(1)
        elif p := re.search(r"Parent Loop (BB\d+_\d+)", s):
            blk["parent"] = p.group(1)
        elif s and not s.startswith((comment, ".")):
            blk["insns"].append(s.split(comment)[0].strip())
    headers = {b["label"].removeprefix("L"): b for b in blocks if b["loop"] is not None
               and b["label"].removeprefix("L") == b["loop"]}
    row = next((h for h, b in headers.items() if b["name"].startswith("row.")), None)
    out: dict[str, list[str]] = {}
    for head, hb in headers.items():
        kind = hb["name"].split(".")[0]
        if hb["inner"] and hb["parent"] == row and kind in LOOP_KINDS:
            out[kind] = [i for b in blocks if b["loop"] == head for i in b["insns"]]
    if row is not None:  # the row loop's own code (what LLVM unrolled whole, the sums): once per group
        out["row"] = [i for b in blocks if b["loop"] == row for i in b["insns"]]
    return out


def _units(kind: str, insns: list[str]) -> int:
    """Loop units (of BLOCKS_PER_UNIT blocks) per iteration and row group: one prefetch per row and block
    (or pair) in the dot-product loops, one gather (or one half → float conversion) per row in the
    scale loop, one half → float conversion per row and super-block in the K-quant loop. Counted rather
    than assumed: LLVM may unroll a loop for some CPUs."""
    ops = [i.split()[0] for i in insns if i]
    if kind == "sblk":  # (with AVX512-FP16 the scalar vcvtsh2ss)
        return sum(op.startswith(("vcvtph2ps", "vcvtsh2ss")) for op in ops)
    if kind == "scales":
        gathers = sum(op.startswith("vpgather") for op in ops)
        return gathers or sum(op.startswith("vcvtph2ps") for op in ops)
    return sum(op.startswith(("prefetch", "prfm")) for op in ops)


def mca_cycles(mca: str, triple: str, cpu: str, insns: list[str]) -> tuple[float, float]:
    """Cycles per iteration of the loop body `insns` on `cpu` by llvm-mca: bound by the execution ports
    alone (Block RThroughput), and as simulated (which also waits on dependencies, some of them false:
    see the module docstring)."""
    with tempfile.NamedTemporaryFile("w", suffix=".s", delete=False) as f:
        f.write("\n".join(insns) + "\n")
        path = f.name
    try:
        proc = subprocess.run([mca, f"-mtriple={triple}", f"-mcpu={cpu}", f"-iterations={MCA_ITERATIONS}", path],
                              capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise RuntimeError(f"llvm-mca -mcpu={cpu} failed: {proc.stderr.strip()[:600]}")
    total = int(re.search(r"Total Cycles:\s+(\d+)", proc.stdout).group(1))
    ports = float(re.search(r"Block RThroughput:\s+([\d.]+)", proc.stdout).group(1))
    return ports, total / MCA_ITERATIONS


# Kernel switches `--set` may change (name: module): what was measured elsewhere can be re-measured on
# the machine at hand, e.g. the prefetch distance on Zen 4 (the variant switches need none: every
# variant is built anyway)
SWITCHES = {"PREFETCH_BYTES": "matvec", "FLOAT_ROWS": "matvec", "F16_BY_SHIFTS": "matvec",
            "PREFETCH_GROUPS": "matvec_int16", "PREFETCH_TARGET": "matvec_int16", "LONG_ROW": "matvec_int16",
            "MIN_ROWS": "matvec_int16", "MAX_ROWS": "matvec_int16", "Q8_BYTES": "matvec_int16",
            "USE_I8MM": "matvec_dot", "SUM_SUBS": "matvec_kquant_int", "SHIFT_BY_SHUFFLE": "matvec_kquant_int",
            "USE_GFNI": "matvec_kquant_int", "PREFETCH_LOCALITY": "matvec_kquant_int",
            "SCALES_IN_QWORDS": "dequant_k", "BIAS_IN_XSUM": "matvec_kquant_int",
            "LANE_MAJOR": "matvec_kquant_int", "LANE_MASKS": "matvec_kquant_int",
            "LOW_FROM_HIGH": "matvec_kquant_int", "BYTE_X_TYPES": "matvec_kquant_int",
            "ROW_STREAMS": "matvec", "STREAM_TARGET": "matvec_int16", "FLOAT_STREAMS": "matvec",
            "FLOAT_STREAM_AHEAD": "matvec"}


def switch_value(old: object, text: str) -> object:
    """A switch's new value from the command line's text, typed as its current value `old`: a set of
    weight types as names joined by "+" (q2_k+q3_k; empty: none), anything else as a Python literal
    (1, True, 2304, 0.5), made an int or a bool where `old` is one."""
    import ast

    from runtime.quant.types import DType

    if isinstance(old, frozenset):
        return frozenset(DType.parse(name) for name in text.split("+") if name)
    value = ast.literal_eval(text)
    return type(old)(value) if isinstance(old, (bool, int)) else value


def apply_switches(switches: dict[str, int | str]) -> None:
    """Set the kernel modules' switches (SWITCHES) before anything is built, each value as switch_value
    reads its text (None, a switch chosen per CPU unless set, takes the value as given)."""
    for name, value in switches.items():
        module = importlib.import_module(f"runtime.jit.kernels.{SWITCHES[name]}")
        setattr(module, name, switch_value(getattr(module, name), str(value)))


def worker(cpu_name: str, cols: int, types: list[str], mca: str, measure: bool = False,
           switches: dict[str, int | str] | None = None) -> list[dict]:
    """Costs of every allowed variant × type on the CPU this process compiles for (and with `measure`,
    the GB/s each reaches on this machine with its rows in L2 and from memory), with `switches` set."""
    from runtime.quant.types import DType

    apply_switches(switches or {})

    cpu = next(c for c in CPUS if c.name == cpu_name)
    results = []
    for tname in types:
        dtype = DType.parse(tname)
        pick = _runtime_pick(dtype)
        for variant in _allowed(dtype):
            asm, rows = _assembly(dtype, cols, variant)
            n_blocks = cols // 32
            covered = {"scales": n_blocks // 8 * 8, "pair": 0, "blk": n_blocks, "sblk": n_blocks // 8 * 8}
            detail = {}
            countable = True  # blocks per iteration are counted by prefetches: not without them
            for kind, insns in inner_loops(asm, "#" if cpu.triple == X86 else "//").items():
                ports, simulated = mca_cycles(mca, cpu.triple, cpu.mca, insns)
                trips = 1.0
                if kind != "row":
                    units = _units(kind, insns)
                    if not units:
                        countable = False
                        continue
                    if units % rows:
                        raise RuntimeError(f"{cpu_name} {tname} {variant}: {units} units in loop {kind}, {rows} rows")
                    if kind == "pair":
                        covered["pair"] = n_blocks // 2 * 2
                        covered["blk"] = n_blocks - covered["pair"]
                    trips = covered[kind] / (units // rows * BLOCKS_PER_UNIT[kind])
                detail[kind] = {"ports": ports, "simulated": simulated, "trips": trips, "insns": len(insns)}
            per_block = {m: sum(d[m] * d["trips"] for d in detail.values()) / (n_blocks * rows) if countable else None
                         for m in ("ports", "simulated")}
            results.append({"cpu": cpu_name, "type": tname, "variant": variant, "picked": variant == pick,
                            "rows": rows, "cycles_per_block": per_block["ports"],
                            "simulated_per_block": per_block["simulated"], "block_bytes": dtype.row_bytes(256) / 8,
                            "loops": detail})
            if measure:
                results[-1]["l2_gbs"], results[-1]["memory_gbs"] = measured_gbs(dtype, cols, variant)
    return results


# -- the driver -----------------------------------------------------------------------------------------


def find_mca() -> str:
    """The newest llvm-mca on PATH (llvm-mca-NN, then plain llvm-mca)."""
    found = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if os.path.isdir(d):
            found += [n for n in os.listdir(d) if re.fullmatch(r"llvm-mca(-\d+)?", n)]
    if not found:
        raise SystemExit("no llvm-mca on PATH (Debian: apt-get install llvm-19)")
    return max(found, key=lambda n: int(n.rsplit("-", 1)[1]) if "-" in n[8:] else 0)


def run_cpu(cpu: CpuModel, cols: int, types: list[str], mca: str, measure: bool = False,
            switches: dict[str, int | str] | None = None) -> list[dict]:
    env = dict(os.environ, RWKV_TUI_TRIPLE=cpu.triple, RWKV_TUI_CPU=cpu.cpu, RWKV_TUI_FEATURES=cpu.features,
               PYTHONPATH=str(REPO))
    code = ("import json, sys; from bench.kernel_costs import worker; "
            f"print(json.dumps(worker({cpu.name!r}, {cols}, {types!r}, {mca!r}, {measure!r}, {switches!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"{cpu.name}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(results: list[dict], cpus: list[str], types: list[str], markdown: bool, metric: str) -> None:
    """One line per CPU and type: for each variant `metric` (the runtime's pick marked *): "ports" or
    "simulated" cycles per block and row, then the pick's bytes per cycle and GB/s per core at
    NOMINAL_GHZ; or GB/s measured on this machine with the rows in L2 ("l2") or from "memory"."""
    key = {"ports": "cycles_per_block", "simulated": "simulated_per_block", "l2": "l2_gbs",
           "memory": "memory_gbs", "calibrated": "calibrated_per_block"}[metric]
    results = [r for r in results if r.get(key) is not None]
    if not results:
        print("(none: without software prefetches the blocks per loop iteration cannot be counted)")
        return
    variants = [v for v in VARIANT_ORDER if any(r["variant"] == v for r in results)]
    head = ["cpu", "type", *variants]
    measured = metric in ("l2", "memory")
    if not measured:
        head += ["pick B/cyc", f"GB/s @{NOMINAL_GHZ:g}GHz"]
    rows = []
    for cpu in cpus:
        for t in types:
            mine = {r["variant"]: r for r in results if r["cpu"] == cpu and r["type"] == t}
            if not mine:
                continue
            cells = [f"{mine[v][key]:.{1 if measured else 2}f}{'*' if mine[v]['picked'] else ''}"
                     if v in mine else "-" for v in variants]
            if not measured:
                pick = next((r for r in mine.values() if r["picked"]), None)
                per_cycle = pick["block_bytes"] / pick[key] if pick else float("nan")
                cells += [f"{per_cycle:.1f}", f"{per_cycle * NOMINAL_GHZ:.0f}"]
            rows.append([cpu, t, *cells])
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        cells = enumerate(zip(r, widths, strict=True))
        print("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in cells))


def print_summary(results: list[dict], cpus: list[str], types: list[str], metric: str) -> None:
    """A Markdown table of the runtime's picks only: one line per CPU, the quantized types' variant, then
    per type "cycles per block and row / GB/s per core at NOMINAL_GHZ"."""
    key = {"ports": "cycles_per_block", "simulated": "simulated_per_block"}[metric]
    print(f"| cpu | variant (quantized) | {' | '.join(types)} |")
    print("|---|---|" + "---:|" * len(types))
    for cpu in cpus:
        picks = {r["type"]: r for r in results if r["cpu"] == cpu and r["picked"]}
        if not picks:
            continue
        names = sorted({r["variant"] for t, r in picks.items() if t not in ("F32", "F16")})
        cells = [f"{picks[t][key]:.2f} / {picks[t]['block_bytes'] / picks[t][key] * NOMINAL_GHZ:.0f}"
                 if t in picks else "-" for t in types]
        print(f"| {cpu} | {', '.join(names)} | {' | '.join(cells)} |")


def calibrate(results: list[dict], host: str, metric: str) -> None:
    """Add "calibrated_per_block" to every result whose variant was timed on `host` (this machine): the
    modelled cycles × e, where e = (the variant's measured cycles ÷ the host pick's) ÷ (the same ratio as
    modelled for the host). It assumes each variant's model error carries over to other CPUs; no more
    than a check on how far a ranking by the models can be trusted."""
    key = {"ports": "cycles_per_block", "simulated": "simulated_per_block"}[metric]
    for t in {r["type"] for r in results}:
        here = {r["variant"]: r for r in results if r["cpu"] == host and r["type"] == t}
        pick = next(r for r in here.values() if r["picked"])
        for r in results:
            mine = here.get(r["variant"]) if r["type"] == t else None
            if mine is None or r[key] is None or mine[key] is None or pick[key] is None:
                continue
            error = (pick["l2_gbs"] / mine["l2_gbs"]) / (mine[key] / pick[key])
            r["calibrated_per_block"] = r[key] * error


def runs_here(cpu: CpuModel) -> bool:
    """Whether code for `cpu` runs on this machine (same triple, every feature present)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    if cpu.triple.split("-")[0] != llvm.get_process_triple().split("-")[0]:
        return False
    host = llvm.get_host_cpu_features()
    return all(host.get(f[1:], False) for f in cpu.features.split(",") if f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cols", type=int, default=DEFAULT_COLS, help="values per row (a multiple of 32)")
    ap.add_argument("--cpus", help="comma-separated CPU models (default: all: " + ", ".join(c.name for c in CPUS) + ")")
    ap.add_argument("--types", help="comma-separated weight types (default: " + ",".join(TYPE_NAMES)
                    + "; the K-quants " + ",".join(K_TYPE_NAMES) + " when named)")
    ap.add_argument("--mca", help="llvm-mca to use (default: the newest on PATH)")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    ap.add_argument("--summary", action="store_true",
                    help="a Markdown table of the picks only (cycles per block / GB/s), one line per CPU")
    ap.add_argument("--metric", choices=("ports", "simulated"), default="ports",
                    help="cycles bound by the execution ports (default), or as llvm-mca simulates them")
    ap.add_argument("--measure", action="store_true",
                    help="also time each variant here (one thread, rows in L2 and from memory) for the CPU models "
                         "whose code runs here")
    ap.add_argument("--calibrate", metavar="MODEL",
                    help="the model of this machine (e.g. sapphirerapids): time its variants here and print every "
                         "CPU's cycles scaled, per variant, by how far this machine's model missed the measurement")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="set a kernel switch before building (repeatable): " + ", ".join(SWITCHES))
    ap.add_argument("--jobs", type=int, default=2, help="CPU models built at once (default 2)")
    ap.add_argument("--json", help="also write every figure (per loop) to this file")
    args = ap.parse_args()
    if args.cols <= 0 or args.cols % 32:
        ap.error("--cols must be a positive multiple of 32")
    names = [c.name for c in CPUS]
    cpus = args.cpus.split(",") if args.cpus else names
    unknown = [c for c in cpus if c not in names]
    if unknown:
        ap.error(f"unknown CPU model(s) {unknown}; known: {', '.join(names)}")
    types = [t.upper() for t in args.types.split(",")] if args.types else TYPE_NAMES
    bad = [t for t in types if t not in TYPE_NAMES + K_TYPE_NAMES]
    if bad:
        ap.error(f"unknown type(s) {bad}; known: {', '.join(TYPE_NAMES + K_TYPE_NAMES)}")
    if args.calibrate and args.calibrate not in names:
        ap.error(f"unknown CPU model {args.calibrate!r}; known: {', '.join(names)}")
    if args.calibrate and not runs_here(next(c for c in CPUS if c.name == args.calibrate)):
        ap.error(f"code for {args.calibrate} does not run on this machine")
    if args.calibrate and args.calibrate not in cpus:
        cpus.append(args.calibrate)
    switches = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in SWITCHES:
            ap.error(f"--set {item!r}: give NAME=VALUE with NAME one of {', '.join(SWITCHES)}")
        module = importlib.import_module(f"runtime.jit.kernels.{SWITCHES[name]}")
        try:
            switch_value(getattr(module, name), value)
        except (ValueError, SyntaxError) as e:
            ap.error(f"--set {item!r}: {e}")
        switches[name] = value
    mca = args.mca or find_mca()
    if not shutil.which(mca):
        ap.error(f"{mca} not found")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # one process per CPU model
        per_cpu = pool.map(lambda c: run_cpu(c, args.cols, types, mca,
                                             c.name == args.calibrate or (args.measure and runs_here(c)), switches),
                           [c for c in CPUS if c.name in cpus])
        results = [r for rs in per_cpu for r in rs]
    print(f"cycles per 32-weight block and row, {args.metric} ({args.cols} columns; {mca}; * = the runtime's "
          f"pick), the pick's bytes per cycle and GB/s per core at a nominal {NOMINAL_GHZ:g} GHz"
          + (f"; switches {switches}" if switches else "") + "\n")
    if args.summary:
        print_summary(results, cpus, types, args.metric)
    else:
        print_table(results, cpus, types, args.markdown, args.metric)
    if args.calibrate:
        calibrate(results, args.calibrate, args.metric)
        print(f"\ncalibrated on {args.calibrate}: each variant's cycles × (its cycles measured here ÷ modelled for "
              f"{args.calibrate}), both relative to {args.calibrate}'s pick\n")
        print_table(results, cpus, types, args.markdown, "calibrated")
    if args.measure:
        for metric, where in (("l2", "rows in L2"), ("memory", "rows from memory")):
            print(f"\nmeasured here: GB/s of weights, one thread, {where} (each model's code run here)\n")
            print_table(results, cpus, types, args.markdown, metric)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
