"""A cache key for a module's object code that is known before its IR is built.

The object cache (cache.py) keys an entry by the sha256 of the IR text, so a warm start still builds
the whole IR and prints it: for a 1.5B RWKV-7 that was 0.28 s of a 0.31 s warm load (CPU time; the
IR is 1.15 M characters). `build_key(description)` stands for that IR without building it: the
sha256 of the description (an architecture's name and its spec's repr: dimensions and every matrix's
type), of the source of every module under runtime/ (read once per process), of the current values
of the upper-case module constants of every module under runtime/jit, runtime/model and
runtime/quant (the kernel switches benchmarks change at run time, such as PREFETCH_BYTES; all are
imported first, so the key does not depend on what the process happened to import), of the host
target's identity and of the L2 cache size (tile sizes follow it). Any change to what decides the
IR therefore changes the key; the entry it names holds the same object the IR key would.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from runtime.jit.target import host_target, l2_cache_bytes

_RUNTIME = Path(__file__).resolve().parents[1]  # the runtime package
_SIMPLE = (bool, int, float, str, bytes, tuple, frozenset)
SCANNED_PACKAGES = ("runtime.jit", "runtime.model", "runtime.quant")  # where the IR's inputs live


@functools.lru_cache(maxsize=1)
def source_digest() -> bytes | None:
    """sha256 over the path and text of every .py file under runtime/ (in a stable order); None where
    the sources cannot be read (a frozen build), and then no key stands for the IR."""
    h = hashlib.sha256()
    paths = sorted(_RUNTIME.rglob("*.py"))
    if Path(__file__).resolve() not in paths:
        return None
    for path in paths:
        h.update(path.relative_to(_RUNTIME).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.digest()


@functools.lru_cache(maxsize=1)
def scanned_modules() -> tuple[ModuleType, ...]:
    """Every module of SCANNED_PACKAGES, imported."""
    modules = []
    for package_name in SCANNED_PACKAGES:
        package = importlib.import_module(package_name)
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            modules.append(importlib.import_module(info.name))
    return tuple(sorted(modules, key=lambda m: m.__name__))


def switch_values() -> str:
    """`module.NAME=repr` for every upper-case constant of a simple type in scanned_modules()."""
    lines = []
    for module in scanned_modules():
        for attr, value in sorted(vars(module).items()):
            if attr.isupper() and isinstance(value, _SIMPLE):
                text = repr(sorted(map(repr, value))) if isinstance(value, frozenset) else repr(value)
                lines.append(f"{module.__name__}.{attr}={text}")
    return "\n".join(lines)


def build_key(description: str) -> str | None:
    """The cache key of the module `description` names (see the module docstring), or None where the
    source cannot be read."""
    digest = source_digest()
    if digest is None:
        return None
    h = hashlib.sha256(b"built\0")
    for part in (description, host_target().cache_identity, str(l2_cache_bytes()), switch_values()):
        h.update(part.encode())
        h.update(b"\0")
    h.update(digest)
    return h.hexdigest()
