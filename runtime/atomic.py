"""Atomic file output: write to a temporary file beside the target, fsync, then rename.

A crash or kill at any moment leaves either the old file or the new one at the target path, never a
partial file; on any error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from runtime.errors import InsufficientDiskSpaceError
from runtime.pagecache import drop_cached_pages


def check_free_space(folder: str | os.PathLike[str], needed: int, margin: int = 64 << 20) -> None:
    """Raise InsufficientDiskSpaceError unless `needed` bytes (plus a margin) fit in `folder`."""
    free = shutil.disk_usage(folder).free
    if needed + margin > free:
        raise InsufficientDiskSpaceError(folder, needed + margin, free)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, drop_cache: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file (readable too); on success it is flushed, fsynced and renamed onto `path`.

    On an exception (including KeyboardInterrupt) the temporary file is deleted and `path` is left
    as it was. `drop_cache` (for model files) drops the written pages from the page cache afterwards,
    so that the first load maps the file with 2 MB pages (see runtime/pagecache.py).
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the result should be an ordinary file
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(folder)
        if drop_cache:
            drop_cached_pages(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask is racy with threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_output(path) as f:
        f.write(data)
