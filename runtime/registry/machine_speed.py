"""How fast this machine reads memory: what bounds how fast it decodes, so that the model suggested first
(`recommend.starter_model`) answers at a readable speed, not only fits in memory.

    memory_read_gbs()               # measured once, then read back from the cache folder
    memory_read_gbs(measure=False)  # the kept figure or None: never blocks (the models screen)

The figure is the compiled read `rwkv-tui bench` prints (runtime.bench.stream_read_gbs) on as many
threads as decoding uses, over a buffer much larger than any CPU's last-level cache. Measuring takes
about a second the first time (the read kernel is compiled), a tenth of a second after that; the result
is kept in `cache_dir()/memory-read.json` together with what identifies the machine (CPU, threads, total
memory), so a copied home folder or a changed VM measures again. A missing, damaged or foreign file is
measured again; a measurement that fails gives None (the suggestion then goes by memory alone).
"""

from __future__ import annotations

import json
import math
import os
import platform

from runtime.atomic import atomic_write_bytes
from runtime.paths import cache_dir
from runtime.threadcount import default_threads

CACHE_NAME = "memory-read.json"
MEASURE_MEGABYTES = 256  # read per repeat: well past the largest last-level caches (32-96 MB)
MEASURE_REPEATS = 3  # the best kept
PLAUSIBLE_GBS = (0.1, 10_000.0)  # a kept figure outside this range is not believed


def _cpu_name() -> str:
    """The CPU's marketing name where the system says it (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_identity() -> str:
    """What a kept figure belongs to: architecture, CPU, threads and total memory."""
    import psutil

    return f"{platform.machine()}|{_cpu_name()}|{default_threads()} threads|{psutil.virtual_memory().total} bytes"


def _kept(identity: str) -> float | None:
    """The figure kept for `identity`, or None (no file, another machine's, or not a sane figure)."""
    try:
        data = json.loads((cache_dir() / CACHE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("machine") != identity:
        return None
    gbs = data.get("read_gbs")
    if not isinstance(gbs, (int, float)) or isinstance(gbs, bool) or not math.isfinite(gbs):
        return None
    return float(gbs) if PLAUSIBLE_GBS[0] <= gbs <= PLAUSIBLE_GBS[1] else None


def measure_read_gbs() -> float:
    """The compiled read's GB/s on default_threads() threads (runtime.bench.stream_read_gbs)."""
    from runtime.bench import stream_read_gbs

    return stream_read_gbs(MEASURE_MEGABYTES, MEASURE_REPEATS, threads=default_threads())


def memory_read_gbs(*, measure: bool = True) -> float | None:
    """This machine's memory read in GB/s: the kept figure, else (with `measure`) a new measurement,
    which is then kept; None where there is none and `measure` is off, or the measurement failed."""
    identity = machine_identity()
    gbs = _kept(identity)
    if gbs is not None or not measure:
        return gbs
    try:
        gbs = round(measure_read_gbs(), 2)  # as kept, so that every call gives the same figure
    except (OSError, RuntimeError, ValueError, MemoryError):
        return None
    if not (PLAUSIBLE_GBS[0] <= gbs <= PLAUSIBLE_GBS[1]):
        return None
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        atomic_write_bytes(cache_dir() / CACHE_NAME, json.dumps({"machine": identity, "read_gbs": gbs}).encode())
    except OSError:
        pass  # a read-only cache folder: measured again next time
    return gbs
