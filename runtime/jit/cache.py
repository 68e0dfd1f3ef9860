"""On-disk cache of compiled object code, so a warm start compiles nothing.

An entry is keyed by the sha256 of the IR text together with the host target's identity (triple,
CPU, features, llvmlite version); a model's forward module is stored under a second key that is known
before its IR is built (build_key.py). The file holds a magic, the sha256 of the object bytes and the
bytes; an entry that fails that check (truncated, corrupt, foreign) is deleted and rebuilt.
Entries are written atomically, so two processes compiling the same kernel at once are harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from runtime.atomic import atomic_write_bytes
from runtime.paths import cache_dir

MAGIC = b"RWKVOBJ1"
_DIGEST = 32


def default_cache_dir() -> Path:
    """The kernels folder inside rwkv-tui's cache dir (see `runtime.paths`)."""
    return cache_dir() / "kernels"


def cache_key(ir_text: str, identity: str) -> str:
    h = hashlib.sha256()
    h.update(identity.encode())
    h.update(b"\0")
    h.update(ir_text.encode())
    return h.hexdigest()


class ObjectCache:
    """A folder of compiled objects, one file per key."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.o"

    def load(self, key: str) -> bytes | None:
        """The object for `key`, or None if absent or corrupt (a corrupt entry is removed)."""
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        head = len(MAGIC) + _DIGEST
        if len(blob) > head and blob.startswith(MAGIC):
            obj = blob[head:]
            if hashlib.sha256(obj).digest() == blob[len(MAGIC) : head]:
                return obj
        with contextlib.suppress(OSError):
            path.unlink()
        return None

    def store(self, key: str, obj: bytes) -> None:
        """Save `obj` under `key`; a cache that cannot be written is not an error, only slower."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self._path(key), MAGIC + hashlib.sha256(obj).digest() + obj)
        except OSError:
            pass
