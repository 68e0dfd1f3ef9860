"""Give the compiler's code pages back to the OS once a model is loaded.

LLVM (inside llvmlite's shared library) is only needed to compile or to load cached kernels; after
that about 45 MB of its code stay resident for nothing, next to a model whose own pages we want to
count. On Linux, `madvise(MADV_PAGEOUT)` over the library's file-backed mappings drops those clean
pages (they fault back in from disk if LLVM is used again, e.g. to load another model). Elsewhere,
or if the kernel refuses, nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

MADV_PAGEOUT = 21
_PAGE = 4096


def _mappings(fragment: str) -> list[tuple[int, int]]:
    spans = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and fragment in parts[5] and "w" not in parts[1]:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    spans.append((lo, hi))
    except OSError:
        return []
    return spans


def release_compiler_pages() -> int:
    """Ask the kernel to drop llvmlite's read-only pages from memory; returns bytes advised."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for lo, hi in _mappings("libllvmlite"):
        if libc.madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
            advised += hi - lo
    return advised
