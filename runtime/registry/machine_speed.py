"""How fast this machine reads memory: what bounds how fast it decodes, so that the model suggested first
(`recommend.starter_model`) answers at a readable speed, not only fits in memory.

    memory_read_gbs()               # measured once, then read back from the cache folder
    memory_read_gbs(measure=False)  # the kept figure or None: never measures

The figure is the compiled read (runtime.memory_read.stream_read_gbs, as `rwkv-tui bench` prints it over
1 GiB) on as many threads as decoding uses, over a sixteenth of the memory, 256 MiB to 1 GiB: past a
laptop's or desktop's last-level cache (a server's may hold it, and then the figure overstates a
machine that decodes fast anyway). Measuring takes about a second the first time (the read kernel is
compiled), a fraction of one after that. The result is kept in `cache_dir()/memory-read.json` with what
identifies the machine (CPU, threads, total memory), so a copied home folder or a changed VM measures
again; a figure measured while the machine was busy (load average above half its cores) is used, for
the rest of the process, but not kept. One measurement runs at a time (two at once would each see half
the memory): a second caller waits for the first's figure. The kept file is untrusted: anything but a
small regular file holding this machine's sane figure is ignored and measured again; a measurement that
fails gives None (the suggestion then goes by memory alone).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import stat
import threading

from runtime.atomic import atomic_write_bytes
from runtime.machine import cpu_name
from runtime.paths import cache_dir
from runtime.threadcount import default_threads

CACHE_NAME = "memory-read.json"
MEASURE_SHARE = 16  # of the total memory read per repeat …
MEASURE_MEGABYTES = (256, 1024)  # … within these bounds
MEASURE_REPEATS = 3  # the best kept
PLAUSIBLE_GBS = (0.1, 10_000.0)  # a figure outside this range is not believed
MAX_KEPT_BYTES = 4096  # the kept file is a line of JSON; a larger one is not read
BUSY_LOAD_SHARE = 0.5  # load average per core above which a measurement is not kept


def _total_memory() -> int:
    import psutil

    return psutil.virtual_memory().total


def machine_identity() -> str:
    """What a kept figure belongs to: architecture, CPU, threads and total memory."""
    return f"{platform.machine()}|{cpu_name()}|{default_threads()} threads|{_total_memory()} bytes"


def _plausible(value: object) -> float | None:
    """`value` as GB/s if it is a number in PLAUSIBLE_GBS, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        gbs = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return gbs if math.isfinite(gbs) and PLAUSIBLE_GBS[0] <= gbs <= PLAUSIBLE_GBS[1] else None


_lock = threading.Lock()  # one measurement at a time
_measured: float | None = None  # this process's figure: the kept one as read, or its own measurement


def _read_small_file(path: os.PathLike[str] | str) -> bytes | None:
    """The bytes of `path` if it is a regular file of at most MAX_KEPT_BYTES, else None. Opened without
    blocking and checked once open, so that a FIFO put there (even after a first look) cannot hang the
    caller and /dev/zero cannot make it read forever."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_KEPT_BYTES:
            return None
        return os.read(fd, MAX_KEPT_BYTES + 1)
    finally:
        os.close(fd)


def _kept(identity: str) -> float | None:
    """The figure kept for `identity`, or None (no file, not a small regular file, not JSON, another
    machine's, or not a sane figure)."""
    try:
        raw = _read_small_file(cache_dir() / CACHE_NAME)
        if raw is None or len(raw) > MAX_KEPT_BYTES:
            return None
        data = json.loads(raw)
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None
    if not isinstance(data, dict) or data.get("machine") != identity:
        return None
    return _plausible(data.get("read_gbs"))


def measure_read_gbs() -> float:
    """The compiled read's GB/s on default_threads() threads over MEASURE_SHARE of the memory."""
    from runtime.memory_read import stream_read_gbs

    megabytes = min(max(_total_memory() // MEASURE_SHARE >> 20, MEASURE_MEGABYTES[0]), MEASURE_MEGABYTES[1])
    return stream_read_gbs(megabytes, MEASURE_REPEATS, threads=default_threads())


def _busy() -> bool:
    """Whether other work was running (load average above BUSY_LOAD_SHARE per core); False where unknown."""
    try:
        return os.getloadavg()[0] > BUSY_LOAD_SHARE * default_threads()
    except (AttributeError, OSError):
        return False


def memory_read_gbs(*, measure: bool = True) -> float | None:
    """This machine's memory read in GB/s: the kept figure (read once a process) or this process's
    measurement, else (with `measure`) a new measurement, kept unless the machine was busy; None where
    there is none and `measure` is off, or the measurement failed."""
    global _measured
    if _measured is None:  # once known, this process neither reads the file nor measures again
        kept = _kept(machine_identity())
        if kept is not None:  # (never None over a figure another thread has just measured)
            _measured = kept
    if _measured is not None or not measure:
        return _measured
    with _lock:
        if _measured is not None:  # another caller measured meanwhile
            return _measured
        identity = machine_identity()
        try:
            gbs = _plausible(round(measure_read_gbs(), 2))  # as kept, so that every call gives the same figure
        except (OSError, RuntimeError, ValueError, MemoryError):
            return None
        if gbs is None:
            return None
        _measured = gbs
        if not _busy():
            with contextlib.suppress(OSError):  # a read-only cache folder: measured again by the next process
                atomic_write_bytes(cache_dir() / CACHE_NAME,
                                   json.dumps({"machine": identity, "read_gbs": gbs}).encode())
    return gbs
