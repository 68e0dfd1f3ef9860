"""Page-cache hints that let a model's weights be mapped with 2 MB pages (Linux; no-ops elsewhere).

Decoding reads every weight once per token, so how the mapping is paged shows in the decode rate: on
this project's machine a 1.5B Q5_1 file mapped with 4 KB pages decodes at 57 ms/token, the same file
mapped with 2 MB pages at 49 ms (side by side, same kernels). Linux maps a file with 2 MB pages where
its page cache holds 2 MB folios, which it creates when it reads the file from disk, but not when the
pages were created by writing the file (a model just converted or downloaded).

- `advise_huge_pages(mapping)`: MADV_HUGEPAGE on the weights mapping, so pages read from disk come in
  as 2 MB folios where the kernel would otherwise read smaller ones. The loader parses the header
  through this mapping too (see formats/tensors.FileHandle): plain reads of the tensor headers
  and vectors, spread over the whole file, would leave small folios in most 2 MB stretches.
- `advise_small_pages(mapping, offset, nbytes)`: the embedding is read one row per token, so it keeps
  small pages (2 MB ones would add 2 MB to the RSS per row read).
- `drop_cached_pages(path)`: after a model file is written and fsynced its cached pages are clean;
  dropping them makes the first load read the file back from disk (slower, once) in large folios.
- `huge_mapped_fraction(address)`: the share of a mapping backed by 2 MB pages, from
  /proc/self/smaps; `rwkv-tui bench` prints it next to the decode figures.
"""

from __future__ import annotations

import contextlib
import mmap
import os


def advise_huge_pages(mapping: mmap.mmap) -> None:
    """Ask for 2 MB pages on `mapping` where the platform knows the hint (never raises)."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # AttributeError: no madvise
            mapping.madvise(advice)


def advise_small_pages(mapping: mmap.mmap, offset: int, nbytes: int) -> None:
    """Ask for small pages on the whole pages inside [offset, offset + nbytes) of `mapping`: for data
    read a row at a time, such as the embedding, where 2 MB pages would map (and count in the RSS)
    2 MB per row read (never raises)."""
    advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
    start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (offset + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if advice is not None and end > start:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            mapping.madvise(advice, start, end - start)


def drop_cached_pages(path: str | os.PathLike[str]) -> None:
    """Drop the page cache of the file at `path` where the platform allows (never raises). The file is
    fsynced first: the kernel keeps dirty or still-writing pages (a fresh `cp` copy kept a quarter of
    its pages otherwise). Pages another process has mapped stay."""
    advice = getattr(os, "POSIX_FADV_DONTNEED", None)
    if advice is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, advice)
    except OSError:
        pass
    finally:
        os.close(fd)


def huge_mapped_fraction(address: int, size: int, smaps: str = "/proc/self/smaps") -> float | None:
    """The share of the resident pages of the mapping [address, address + size) held in 2 MB pages
    (FilePmdMapped over Rss), leaving out parts advised to keep small pages; None where /proc does
    not say or nothing is resident."""
    try:
        with open(smaps) as f:
            text = f.read()
    except OSError:
        return None
    rss = pmd = 0
    inside = seen = False
    fields: dict[str, int] = {}
    flags: list[str] = []

    def close_area() -> None:
        nonlocal rss, pmd
        if inside and "nh" not in flags:
            rss += fields.get("Rss", 0)
            pmd += fields.get("FilePmdMapped", 0)

    for line in text.splitlines():
        head = line.split(maxsplit=1)[0] if line else ""
        if "-" in head and not head.endswith(":"):  # an area's first line: "start-end perms offset …"
            close_area()
            start, _, end = head.partition("-")
            try:
                inside = int(start, 16) < address + size and int(end, 16) > address
            except ValueError:
                inside = False
            seen |= inside
            fields, flags = {}, []
        elif head == "VmFlags:":
            flags = line.split()[1:]
        elif head.endswith(":") and len(line.split()) >= 2:
            with contextlib.suppress(ValueError):
                fields[head[:-1]] = int(line.split()[1])
    close_area()
    if not seen or rss == 0:
        return None
    return pmd / rss
