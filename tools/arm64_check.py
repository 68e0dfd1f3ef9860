"""Run the runtime's tests on arm64 (aarch64) under emulation, starting from nothing.

    sudo python3 tools/arm64_check.py            # every arm64 CPU model, the arm64-relevant tests (long)
    sudo python3 tools/arm64_check.py --core     # what CI runs: the forward pass per weight type
    sudo python3 tools/arm64_check.py --root DIR   # keep the arm64 root in DIR and reuse it next time

What it does, on an x86-64 Debian/Ubuntu host (root, network to Debian's mirrors and PyPI):

1. Installs Debian's `qemu-user-static` and `debootstrap` if they are missing (apt-get).
2. Builds a minimal arm64 Debian root with python3 (`debootstrap --variant=minbase --foreign`, then
   the downloaded packages are unpacked; the second stage, which would run the packages' scripts
   inside the root, is not needed to run Python and would need binfmt_misc, which VMs often lack).
3. Installs PyPI's aarch64 wheels of the project's dependencies (read from pyproject.toml) and
   pytest into the root's dist-packages with the host's pip (`--platform manylinux…_aarch64`).
4. For each CPU model below, runs the tests with `qemu-aarch64-static -cpu <model> -L <root>`. LLVM
   (llvmlite) learns the host CPU on Linux from /proc/cpuinfo, which qemu does not emulate; qemu's
   `-L` makes the emulated program read <root>/proc/cpuinfo instead, so the script writes there what
   the kernel of a real machine with that CPU would show: the `Features` line made from the hardware
   capabilities the emulated CPU reports (getauxval(AT_HWCAP/AT_HWCAP2), the same bits Linux prints)
   and that CPU's implementer/part numbers. The runtime then detects "the host" exactly as on real
   hardware (runtime/jit/target.py), and the run checks that LLVM named the expected CPU.

The CPU models cover the arm64 code paths the runtime can take: plain NEON (Cortex-A57, no dot
product), NEON with the dot-product extension (Neoverse N1), and dot product + i8mm + BF16 + SVE
(Neoverse V1, on qemu's `max` CPU, which implements all of them); in the full run also Apple M1
(dot product, no i8mm) and M2 (i8mm, BF16) by name. Speed means nothing under emulation: the cost
models of bench/ are for that. A test that starts a fresh Python process gets the emulated Python
too (`sys.executable` is a small wrapper script around qemu).

Exit status 0 when every run passed; the failing CPU models are named otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
MIRROR = os.environ.get("RWKV_TUI_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PY = "python3.11"  # bookworm's Python; the wheels are fetched for the same version
WHEEL_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")
DONE_MARK = ".rwkv-tui-arm64-root"

# Linux's arm64 hardware capability bits (arch/arm64/include/uapi/asm/hwcap.h) and the names
# /proc/cpuinfo prints for them, in bit order.
HWCAP_NAMES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
    "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
)
HWCAP2_NAMES = (
    "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
    "i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 sme_f16f32 sme_b16f32 "
    "sme_f32f32 sme_fa64 wfxt ebf16 sve_ebf16"
)
AT_HWCAP, AT_HWCAP2 = 16, 26


@dataclass(frozen=True)
class ArmCpu:
    """One arm64 machine to emulate: qemu's CPU model, and what that machine's /proc/cpuinfo shows."""

    name: str  # the CPU LLVM must detect
    qemu_cpu: str
    implementer: int
    part: int
    shows: str  # the machine's Features line; only what the emulated CPU also reports is written
    needs: tuple[str, ...]  # features the run is about: the emulated CPU must report them
    lacks: tuple[str, ...] = ()  # ... and must not report these (so using them would trap)
    core: bool = False  # also in the CI run


_V8 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82 = _V8 + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp ssbs"
_APPLE = _V82 + " jscvt fcma sha3 sha512 asimdfhm dit uscat ilrcpc flagm sb paca pacg dcpodp flagm2 frint"
CPUS = (
    ArmCpu("cortex-a57", "cortex-a57", 0x41, 0xD07, _V8, ("asimd",), ("asimddp", "i8mm", "sve"), core=True),
    ArmCpu("neoverse-n1", "neoverse-n1", 0x41, 0xD0C, _V82, ("asimd", "asimddp"), ("i8mm", "sve")),
    ArmCpu("neoverse-v1", "max", 0x41, 0xD40,
           _V82 + " jscvt fcma sha3 sm3 sm4 sha512 sve asimdfhm dit uscat ilrcpc flagm paca pacg dcpodp svei8mm "
           "svebf16 i8mm bf16 dgh rng", ("asimd", "asimddp", "i8mm", "bf16", "sve"), core=True),
    ArmCpu("apple-m1", "max", 0x61, 0x023, _APPLE, ("asimd", "asimddp")),
    ArmCpu("apple-m2", "max", 0x61, 0x033, _APPLE + " i8mm bf16 bti ecv", ("asimd", "asimddp", "i8mm", "bf16")),
)

# Under emulation a test takes 20-40 times as long as here, so the full run splits the arm64-relevant
# tests: what compiles code for the CPU runs on each CPU model (kernels against numpy, the forward pass
# against the official fixtures and numpy for every weight type, the native quantizers), the rest once,
# on the first model (thread pool, states, sampler, tokenizers, the numpy oracle, page hints, the macOS
# paths). --core is what CI runs.
PER_CPU_TESTS = (
    "tests/model/test_weight_types.py",
    "tests/model/test_forward.py",
    "tests/jit/test_kernels.py",
    "tests/jit/test_kernels_kquant.py",
    "tests/jit/test_elementwise.py",
    "tests/jit/test_matvec_nibbles.py",
    "tests/quant/test_native_quantize.py",
)
ONCE_TESTS = (
    "tests/jit/test_threads.py",
    "tests/jit/test_shared.py",
    "tests/model/test_state.py",
    "tests/text/test_sampling.py",
    "tests/text/test_tokenizers.py",
    "tests/test_reference_fixtures.py",
    "tests/test_pagecache.py",
    "tests/test_macos_paths.py",
)
CORE_TESTS = ("tests/model/test_weight_types.py",)


def log(message: str) -> None:
    print(f"[arm64 {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)


def ensure_host_tools() -> None:
    missing = [pkg for tool, pkg in (("qemu-aarch64-static", "qemu-user-static"), ("debootstrap", "debootstrap"))
               if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"arm64_check: install {' '.join(missing)} first (apt-get install), or run as root")
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, stdout=subprocess.DEVNULL).returncode:
        run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", *missing], env=env, stdout=subprocess.DEVNULL)


def project_requirements() -> list[str]:
    """The runtime's dependencies and pytest, as pyproject.toml states them."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    tests = [r for r in meta["optional-dependencies"]["test"] if r.startswith("pytest") and "snapshot" not in r]
    return [*meta["dependencies"], *tests]


def build_root(root: Path) -> None:
    """A minimal arm64 Debian with python3 at `root`, and the project's dependencies for it."""
    if (root / DONE_MARK).exists():
        log(f"reusing the arm64 root in {root}")
        return
    if os.geteuid() != 0:
        sys.exit("arm64_check: building the arm64 root needs root (debootstrap)")
    shutil.rmtree(root, ignore_errors=True)
    log(f"debootstrap {SUITE} arm64 (minbase, first stage) into {root}")
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    run([debootstrap, "--arch=arm64", "--variant=minbase", "--foreign", f"--include={PY},python3",
         SUITE, str(root), MIRROR], stdout=subprocess.DEVNULL)
    # the first stage unpacks only the essential packages; unpack the rest (python3 and its libraries)
    for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(root)])
    python = root / "usr/bin" / PY
    if not python.exists():
        sys.exit(f"arm64_check: {python} is missing after unpacking the packages")
    site = root / "usr/lib/python3/dist-packages"
    log("installing the aarch64 wheels: " + ", ".join(project_requirements()))
    platforms = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
    run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-warn-conflicts",
         "--root-user-action=ignore",
         "--target", str(site), *platforms, "--python-version", PY.removeprefix("python"),
         "--implementation", "cp", "--only-binary=:all:", *project_requirements()])
    (root / DONE_MARK).write_text(f"{SUITE} arm64 for {REPO}\n")


def write_wrapper(root: Path, work: Path, cpu: ArmCpu) -> Path:
    """An executable that runs the root's Python on the emulated `cpu`; it is also `sys.executable`
    inside (qemu's -0), so tests that start a fresh interpreter start an emulated one too."""
    wrapper = work / f"python-{cpu.name}"
    qemu = shutil.which("qemu-aarch64-static") or "/usr/bin/qemu-aarch64-static"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"PYTHONHOME='{root}/usr'; export PYTHONHOME\n"
        f"exec '{qemu}' -L '{root}' -cpu {cpu.qemu_cpu} -0 \"$0\" '{root}/usr/bin/{PY}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper


def hardware_caps(wrapper: Path) -> list[str]:
    """The feature names Linux would print for the emulated CPU (from its AT_HWCAP/AT_HWCAP2)."""
    probe = ("import ctypes; g = ctypes.CDLL(None).getauxval; g.restype = ctypes.c_ulong; "
             f"print(g({AT_HWCAP}), g({AT_HWCAP2}))")
    out = run([str(wrapper), "-S", "-c", probe], capture_output=True, text=True).stdout.split()
    caps, caps2 = int(out[0]), int(out[1])
    return ([n for i, n in enumerate(HWCAP_NAMES.split()) if caps >> i & 1]
            + [n for i, n in enumerate(HWCAP2_NAMES.split()) if caps2 >> i & 1])


def cpuinfo_text(cpu: ArmCpu, features: list[str], n_cpus: int) -> str:
    block = (f"BogoMIPS\t: 50.00\nFeatures\t: {' '.join(features)}\nCPU implementer\t: {cpu.implementer:#x}\n"
             f"CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {cpu.part:#05x}\nCPU revision\t: 1\n\n")
    return "".join(f"processor\t: {i}\n{block}" for i in range(n_cpus))


def check_cpu(root: Path, wrapper: Path, cpu: ArmCpu) -> str:
    """Write the emulated machine's /proc/cpuinfo and check that the runtime detects that CPU."""
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text("")  # nothing yet: the capabilities come from qemu itself
    caps = hardware_caps(wrapper)
    wrong = [f for f in cpu.needs if f not in caps] + [f for f in cpu.lacks if f in caps]
    if wrong:
        raise RuntimeError(f"qemu's {cpu.qemu_cpu} CPU does not match {cpu.name} in {wrong} (it has {caps})")
    features = [f for f in caps if f in cpu.shows.split()]
    (root / "proc/cpuinfo").write_text(cpuinfo_text(cpu, features, os.cpu_count() or 1))
    probe = ("from runtime.jit.target import host_target; h = host_target(); "
             "import platform; print(platform.machine(), h.cpu, h.features)")
    out = run([str(wrapper), "-c", probe], capture_output=True, text=True, cwd=REPO).stdout.split()
    machine, llvm_cpu, llvm_features = out[0], out[1], out[2] if len(out) > 2 else ""
    if machine != "aarch64" or llvm_cpu != cpu.name:
        raise RuntimeError(f"the runtime saw {machine} {llvm_cpu!r}, not aarch64 {cpu.name!r}")
    return f"{llvm_cpu} ({' '.join(features)}; LLVM features {llvm_features})"


def run_tests(root: Path, wrapper: Path, cpu: ArmCpu, tests: tuple[str, ...], extra: list[str]) -> bool:
    detected = check_cpu(root, wrapper, cpu)
    log(f"{cpu.name}: qemu -cpu {cpu.qemu_cpu}, the runtime detects {detected}")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("RWKV_TUI_CPU", None)
    env.pop("RWKV_TUI_FEATURES", None)
    env.pop("RWKV_TUI_TRIPLE", None)
    start = time.monotonic()
    proc = subprocess.run([str(wrapper), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, *extra],
                          cwd=REPO, env=env)
    log(f"{cpu.name}: {'passed' if proc.returncode == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s")
    return proc.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", action="store_true",
                        help="only the forward pass per weight type, on Cortex-A57 and Neoverse V1 (CI)")
    parser.add_argument("--root", type=Path,
                        help="keep the arm64 root here and reuse it (default: a temporary folder, removed)")
    parser.add_argument("--cpu", action="append", choices=[c.name for c in CPUS], help="only these CPU models")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)
    if ctypes.sizeof(ctypes.c_void_p) != 8 or sys.platform != "linux":
        sys.exit("arm64_check: needs a 64-bit Linux host")
    # a plain `kill` cleans up too: subprocess.run kills the emulated tests on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("arm64_check: terminated"))
    ensure_host_tools()
    work = Path(tempfile.mkdtemp(prefix="rwkv-tui-arm64-"))
    root = args.root.resolve() if args.root else work / "root"
    started = time.monotonic()
    try:
        build_root(root)
        log(f"arm64 root ready after {time.monotonic() - started:.0f} s")
        cpus = [c for c in CPUS if (c.name in args.cpu if args.cpu else (c.core or not args.core))]
        failed = []
        for i, cpu in enumerate(cpus):
            tests = CORE_TESTS if args.core else PER_CPU_TESTS + (ONCE_TESTS if i == 0 else ())
            if not run_tests(root, write_wrapper(root, work, cpu), cpu, tests, args.pytest_args):
                failed.append(cpu.name)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s" + (f"; FAILED on {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
