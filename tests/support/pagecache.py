"""Which pages of a file the page cache holds (mincore on a fresh mapping), for the page-cache tests."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest


def resident_pages(path: Path) -> tuple[int, int]:
    """(resident, total) pages of the file at `path`; reading nothing, so the answer is unchanged."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    size = path.stat().st_size
    n = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * n)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = np.frombuffer(m, dtype=np.uint8)
        rc = libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec)
        del view
    if rc != 0:
        pytest.skip(f"mincore failed: errno {ctypes.get_errno()}")
    return sum(v & 1 for v in vec), n


def require_droppable_page_cache(folder: Path) -> None:
    """Skip the test unless files in `folder` keep written pages cached and drop them on request
    (not so on tmpfs, or outside Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux page cache")
    probe = folder / ".probe"
    probe.write_bytes(os.urandom(1 << 20))
    if resident_pages(probe)[0] == 0:
        pytest.skip("this file system does not keep written pages cached")
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if resident_pages(probe)[0] > 0:
        pytest.skip("this file system keeps pages cached (tmpfs?)")
    probe.unlink()


def assert_not_cached(path: Path) -> None:
    resident, total = resident_pages(path)
    assert resident < max(1, total // 4), f"{resident} of {total} pages of {path.name} are still cached"
