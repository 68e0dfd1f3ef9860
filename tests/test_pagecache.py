"""Page-cache hints: dropping a written file's pages, reading the 2 MB share of a mapping."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.atomic import atomic_output
from runtime.pagecache import advise_huge_pages, advise_small_pages, drop_cached_pages, huge_mapped_fraction
from tests.support.pagecache import assert_not_cached, require_droppable_page_cache, resident_pages

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux page cache")


def _mapping_address(m: mmap.mmap) -> int:
    return np.frombuffer(m, dtype=np.uint8).ctypes.data


def test_drop_cache_leaves_a_written_file_out_of_the_page_cache(tmp_path: Path) -> None:
    require_droppable_page_cache(tmp_path)
    data = os.urandom(8 << 20)
    kept, dropped = tmp_path / "kept.bin", tmp_path / "dropped.bin"
    for path, drop in ((kept, False), (dropped, True)):
        with atomic_output(path, drop_cache=drop) as f:
            f.write(data)
    resident, total = resident_pages(kept)
    assert resident > total // 2  # without the flag the written pages stay cached
    assert_not_cached(dropped)
    assert dropped.read_bytes() == data  # the file itself is intact


def test_drop_cached_pages_drops_a_file_written_without_fsync(tmp_path: Path) -> None:
    """As `cp` leaves a file (dirty pages, some still being written back): dropping it leaves nothing
    cached, so a benchmark's --drop-cache reads it back from disk."""
    require_droppable_page_cache(tmp_path)
    path = tmp_path / "copied.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(32 << 20))
    drop_cached_pages(path)
    assert_not_cached(path)


def test_drop_cached_pages_ignores_missing_files(tmp_path: Path) -> None:
    drop_cached_pages(tmp_path / "absent.bin")  # must not raise


def test_advise_huge_pages_keeps_the_mapping_readable(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(range(256)) * 4096)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        advise_huge_pages(m)
        assert m[:256] == bytes(range(256))
        assert m[-1] == 255


SMAPS = """\
55d0c0a00000-55d0c0a21000 r--p 00000000 fe:00 123   /usr/bin/python3
Size:                132 kB
Rss:                 132 kB
FilePmdMapped:         0 kB
VmFlags: rd mr mw me
7f0000000000-7f0000200000 r--s 00000000 fe:00 456   /models/a.bin
Size:               2048 kB
Rss:                2048 kB
FilePmdMapped:      2048 kB
VmFlags: rd mr me ms hg
7f0000200000-7f0000400000 r--s 00200000 fe:00 456   /models/a.bin
Size:               2048 kB
Rss:                 512 kB
FilePmdMapped:         0 kB
VmFlags: rd mr me ms nh
7f0000400000-7f0000c00000 r--s 00400000 fe:00 456   /models/a.bin
Size:               8192 kB
Rss:                6144 kB
Pss:                6144 kB
FilePmdMapped:      4096 kB
VmFlags: rd mr me ms hg
7f0000c00000-7f0000e00000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                   0 kB
FilePmdMapped:         0 kB
VmFlags: rd wr mr mw me ac
"""


def test_huge_mapped_fraction_sums_the_areas_of_the_mapping_but_small_page_ones(tmp_path: Path) -> None:
    smaps = tmp_path / "smaps"
    smaps.write_text(SMAPS)
    whole = huge_mapped_fraction(0x7F0000000000, 0xC00000, str(smaps))
    assert whole == pytest.approx((2048 + 4096) / (2048 + 6144))  # the "nh" area is left out
    assert huge_mapped_fraction(0x7F0000400000, 0x800000, str(smaps)) == pytest.approx(4096 / 6144)
    assert huge_mapped_fraction(0x55D0C0A00000, 0x21000, str(smaps)) == 0.0
    assert huge_mapped_fraction(0x7F0000C00000, 0x200000, str(smaps)) is None  # nothing resident
    assert huge_mapped_fraction(0x1000, 0x1000, str(smaps)) is None  # no mapping there
    assert huge_mapped_fraction(0x1000, 0x1000, str(tmp_path / "missing")) is None


def _areas_of(path: Path) -> list[tuple[int, int, list[str]]]:
    """(start, end, VmFlags) of this process's mappings of `path`."""
    areas, current = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                current = None
                if parts[-1] == str(path):
                    start, end = (int(v, 16) for v in parts[0].split("-"))
                    current = [start, end, []]
                    areas.append(current)
            elif current is not None and parts and parts[0] == "VmFlags:":
                current[2] = parts[1:]
    return [tuple(a) for a in areas]


@linux_only
def test_small_pages_are_advised_for_the_whole_pages_inside_the_range(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"\1" * (16 << 20))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        advise_huge_pages(m)
        advise_small_pages(m, (4 << 20) + 100, 8 << 20)
        assert m[0] == 1 and m[-1] == 1 and m[(8 << 20)] == 1  # still readable
        base = _mapping_address(m)
        areas = _areas_of(path)
        share = huge_mapped_fraction(base, len(m))
    if not areas or "hg" not in areas[0][2]:
        pytest.skip("this kernel takes no huge-page advice")
    small = [(s - base, e - base) for s, e, fl in areas if "nh" in fl]
    page = mmap.PAGESIZE
    assert small == [(-(-((4 << 20) + 100) // page) * page, ((12 << 20) + 100) // page * page)]
    assert share is None or 0.0 <= share <= 1.0
