"""Every native module the runtime builds also compiles for the other machines it promises to run on:
arm64 Linux, arm64 macOS and x86-64 macOS (and a plain x86-64 Linux CPU without AVX). Each build runs
in a fresh process with RWKV_TUI_TRIPLE/CPU/FEATURES set, so the kernels take the paths those
machines take (no x86 intrinsics on arm64, no futex outside Linux) and LLVM must accept the IR and
emit an object file of the right kind. The code is not run here; the kernels' generic paths are run on
this host by the other tests (`test_matvec_nibbles.test_other_cpus`), and the arm64 Linux code under
qemu by tools/arm64_check.py (CI runs its core)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import json
from llvmlite import ir
from runtime.jit.engine import compile_ir, prepare_module
from runtime.jit.kernels import sample, stream_read
from runtime.jit.kernels.quantize import emit_quantize
from runtime.jit.kernels.trie import emit_trie_longest_match
from runtime.jit.kernels.dequant import SUPPORTED
from runtime.jit.sync import futex_syscall_number
from runtime.jit.target import host_target
from runtime.jit.threads import pool_module
from runtime.model.arch import rwkv7
from runtime.model.arch.rwkv4 import Mat, ModelSpec, build_forward_module
from runtime.quant.types import K_QUANT_TYPES, DType

spec = ModelSpec(n_layer=len(SUPPORTED), n_embd=64, n_vocab=96, n_ffn=256,
                 layer_types=tuple((t,) * len(Mat) for t in SUPPORTED), emb_type=DType.F16,
                 head_type=DType.Q8_0, ln0_folded=True, chunk=16)
spec7 = rwkv7.ModelSpec(n_layer=3, n_embd=128, n_vocab=96, n_ffn=512, head_size=64, ranks=(32, 24, 64, 40),
                        layer_types=((DType.F16,) * 14, (DType.Q8_0,) * 4 + (DType.F16,) * 8 + (DType.Q5_1,) * 2,
                                     (DType.F32,) * 14),
                        emb_type=DType.F16, head_type=DType.Q5_1, ln0_folded=False, chunk=16)
spec_k = ModelSpec(n_layer=len(K_QUANT_TYPES), n_embd=256, n_vocab=96, n_ffn=1024,
                   layer_types=tuple((t,) * len(Mat) for t in K_QUANT_TYPES), emb_type=DType.F16,
                   head_type=DType.Q6_K, ln0_folded=True, chunk=16)
quant = ir.Module("quantizers")
for src in (DType.F32, DType.F16, DType.BF16):
    for dst in (DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0, DType.F16):
        emit_quantize(quant, src, dst)
trie = ir.Module("trie")
emit_trie_longest_match(trie)
modules = {"forward": build_forward_module(spec), "forward_kquant": build_forward_module(spec_k),
           "forward7": rwkv7.build_forward_module(spec7),
           "pool": pool_module(), "sample": sample.build_module(),
           "trie": trie, "quantize": quant, "stream_read": stream_read.build_module()}
heads = {}
for name, module in modules.items():
    prepare_module(module)
    heads[name] = compile_ir(str(module))[:20].hex()
print(json.dumps({"triple": host_target().triple, "futex": futex_syscall_number(), "heads": heads}))
"""

ELF_64 = bytes.fromhex("7f454c46" + "02" + "01")  # ELF, 64-bit, little-endian
MACHO_64 = bytes.fromhex("cffaedfe")  # MH_MAGIC_64, little-endian
EM_X86_64, EM_AARCH64 = 62, 183  # ELF e_machine, a uint16 at byte 18
CPU_TYPE_X86_64, CPU_TYPE_ARM64 = 0x01000007, 0x0100000C  # Mach-O cputype, a uint32 at byte 4


def object_kind(head: bytes) -> tuple[str, int]:
    """('elf', e_machine) or ('macho', cputype) of an object file's first 20 bytes."""
    if head.startswith(ELF_64):
        return "elf", int.from_bytes(head[18:20], "little")
    if head.startswith(MACHO_64):
        return "macho", int.from_bytes(head[4:8], "little")
    return "unknown", -1


def test_object_kind_reads_the_machine_field():
    elf = bytearray(ELF_64 + bytes(14))
    elf[18:20] = EM_AARCH64.to_bytes(2, "little")
    assert object_kind(bytes(elf)) == ("elf", EM_AARCH64)
    elf[18:20] = EM_X86_64.to_bytes(2, "little")
    assert object_kind(bytes(elf)) == ("elf", EM_X86_64)  # same first 8 bytes, another machine
    assert object_kind(MACHO_64 + CPU_TYPE_ARM64.to_bytes(4, "little") + bytes(12)) == ("macho", CPU_TYPE_ARM64)
    assert object_kind(b"\0" * 20) == ("unknown", -1)


@pytest.mark.parametrize("triple, cpu, features, kind, futex", [
    ("aarch64-unknown-linux-gnu", "neoverse-n1", "+neon,+fp-armv8,+crc,+lse", ("elf", EM_AARCH64), 98),
    ("arm64-apple-macosx13.0.0", "apple-m1", "+neon,+fp-armv8", ("macho", CPU_TYPE_ARM64), None),
    ("x86_64-apple-macosx13.0.0", "x86-64", "", ("macho", CPU_TYPE_X86_64), None),
    ("x86_64-unknown-linux-gnu", "x86-64", "", ("elf", EM_X86_64), 202),
], ids=["linux-arm64", "macos-arm64", "macos-x86-64", "linux-x86-64-baseline"])
def test_every_module_compiles_for(
    triple: str, cpu: str, features: str, kind: tuple[str, int], futex: int | None
) -> None:
    env = dict(os.environ, RWKV_TUI_TRIPLE=triple, RWKV_TUI_CPU=cpu, RWKV_TUI_FEATURES=features,
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["triple"] == triple
    assert result["futex"] == futex  # the pool sleeps on futexes only on Linux
    assert set(result["heads"]) == {"forward", "forward_kquant", "forward7", "pool", "sample", "trie", "quantize",
                                    "stream_read"}
    for name, head in result["heads"].items():
        assert object_kind(bytes.fromhex(head)) == kind, (name, head)
