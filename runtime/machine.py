"""What this machine is, for the figures benchmarks print and for measurements kept between runs: the
CPU's name as the system gives it."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's marketing name where /proc/cpuinfo says it (Linux x86 "model name", arm64 "Model"),
    else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
