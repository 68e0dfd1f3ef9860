"""The host CPU as LLVM sees it: triple, CPU name, features, and a target machine for it.

Everything compiled by the runtime targets the exact CPU it runs on (AVX2/FMA/F16C, AVX-512, NEON, …),
so the CPU name and feature string are also part of every cache key.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import llvmlite
import llvmlite.binding as llvm


@dataclass(frozen=True)
class HostTarget:
    """What code is compiled for. `vector_bits` is the widest SIMD register the features allow."""

    triple: str
    cpu: str
    features: str
    vector_bits: int

    @property
    def cache_identity(self) -> str:
        """Everything besides the IR that decides the machine code."""
        return f"{self.triple}|{self.cpu}|{self.features}|llvmlite {llvmlite.__version__}"

    @property
    def enabled(self) -> frozenset[str]:
        """The enabled features by name, without the "+": {"avx2", "fma", "f16c", …}."""
        return _enabled(self.features)

    @property
    def is_x86(self) -> bool:
        return self.triple.startswith(("x86_64", "i386", "i686"))

    @property
    def is_arm64(self) -> bool:
        return self.triple.startswith(("aarch64", "arm64"))

    @property
    def f32_lanes(self) -> int:
        """float32 lanes per SIMD register (8 with AVX2, 4 with SSE/NEON)."""
        return self.vector_bits // 32


@functools.cache
def _enabled(features: str) -> frozenset[str]:
    return frozenset(f[1:] for f in features.split(",") if f.startswith("+"))


@functools.cache
def _initialise() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()  # inline asm (the pause hint)


@functools.cache
def host_target() -> HostTarget:
    """The host's target description. `RWKV_TUI_CPU` / `RWKV_TUI_FEATURES` override it (for tests), and
    `RWKV_TUI_TRIPLE` compiles for another machine altogether (tests that build every module for
    arm64 Linux and macOS; such code is emitted, never run here)."""
    _initialise()
    triple = os.environ.get("RWKV_TUI_TRIPLE") or llvm.get_process_triple()
    foreign = triple != llvm.get_process_triple()
    if foreign:
        _initialise_all()
    # another machine's code gets a generic CPU unless told which: this host's name means nothing there
    cpu = os.environ.get("RWKV_TUI_CPU") or ("generic" if foreign else llvm.get_host_cpu_name())
    features = os.environ.get("RWKV_TUI_FEATURES")
    if features is None:
        features = "" if foreign else llvm.get_host_cpu_features().flatten()
        if not foreign and triple.startswith("aarch64") and "linux" in triple:
            features = with_cpuinfo_features(features, _cpuinfo_features())
    enabled = _enabled(features)
    # 256-bit vectors even with AVX-512 (kernels that gain from 512-bit ones ask for them): wider ones
    # downclock some CPUs and buy nothing when the work is bound by memory reads.
    bits = 256 if "avx2" in enabled or "avx" in enabled else 128
    return HostTarget(triple, cpu, features, bits)


# The arm64 extensions the kernels use: LLVM's feature name → the name Linux's /proc/cpuinfo gives it.
# LLVM reads a Linux host's features from /proc/cpuinfo but maps only some of them (crc, aes, sha2, lse,
# sve, …; not asimddp or i8mm), so these are read from the same line here.
CPUINFO_FEATURES = {"dotprod": "asimddp", "i8mm": "i8mm"}


def _cpuinfo_features(path: str = "/proc/cpuinfo") -> set[str]:
    """The names on the first `Features` line of /proc/cpuinfo (empty if there is none)."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "Features":
                    return set(value.split())
    except OSError:
        pass
    return set()


def with_cpuinfo_features(features: str, cpuinfo: set[str]) -> str:
    """`features` (LLVM's, of an arm64 Linux host) plus "+name" for each CPUINFO_FEATURES extension that
    /proc/cpuinfo lists (`cpuinfo`) and `features` does not already mention."""
    named = {f[1:] for f in features.split(",") if f[:1] in "+-"}
    extra = [f"+{name}" for name, shown in CPUINFO_FEATURES.items() if shown in cpuinfo and name not in named]
    return ",".join(f for f in [features, *extra] if f)


@functools.cache
def _initialise_all() -> None:
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()


DEFAULT_L2_BYTES = 1 << 20  # where the size cannot be read (not Linux, or no sysfs)


@functools.cache
def l2_cache_bytes() -> int:
    """Size of one core's L2 cache (Linux sysfs), for sizing tiles that must stay in it."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(base)):
            with open(f"{base}/{index}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{base}/{index}/size") as f:
                text = f.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
            return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return DEFAULT_L2_BYTES


@functools.cache
def target_machine() -> llvm.TargetMachine:
    """The shared target machine used to optimise and compile for the host (optimisation level 3)."""
    return new_target_machine()


def new_target_machine() -> llvm.TargetMachine:
    """A fresh target machine. An MCJIT engine takes ownership of the one it is given and frees it
    with itself, so every engine needs its own."""
    _initialise()
    host = host_target()
    target = llvm.Target.from_triple(host.triple)
    return target.create_target_machine(
        cpu=host.cpu, features=host.features, opt=3, reloc="default", codemodel="jitdefault", jit=True
    )
