"""Compiled modules shared by the whole process: built once, on first use, and never freed.

    lib = shared_module("stream_read", build_module)            # CompiledModule
    fn = shared_function("stream_read", build_module, "stream_read", CTYPE)

Native code must outlive every call into it, and a function pointer taken from a module says nothing
to Python's reference counting. So process-wide kernels (the stream read, the thread pool, the sampler,
the quantizers, the tokenizer trie) live here, in one registry guarded by one lock: the first caller
compiles (or loads from the object cache) while any others wait for it, and every caller gets the same
module, which stays for the life of the process. A per-call-site cache (`functools.cache`) is not
enough: threads making the first call at once each compile, and the one whose result is replaced in
the cache frees the code another thread is running.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Hashable

from llvmlite import ir

from runtime.jit.engine import CompiledModule, compile_module

_MODULES: dict[Hashable, CompiledModule] = {}
_FUNCTIONS: dict[tuple[Hashable, str, type], ctypes._CFuncPtr] = {}
_LOCK = threading.RLock()  # re-entrant: a build may itself ask for another shared module


def shared_module(key: Hashable, build: Callable[[], ir.Module]) -> CompiledModule:
    """The module compiled from `build()` under `key`; compiled once per process, never freed."""
    module = _MODULES.get(key)
    if module is None:
        with _LOCK:
            module = _MODULES.get(key)
            if module is None:
                module = _MODULES[key] = compile_module(build())
    return module


def shared_function(key: Hashable, build: Callable[[], ir.Module], symbol: str,
                    ctype: type[ctypes._CFuncPtr]) -> ctypes._CFuncPtr:
    """`symbol` of the shared module `key` as a ctypes callable of type `ctype` (made once)."""
    fkey = (key, symbol, ctype)
    fn = _FUNCTIONS.get(fkey)
    if fn is None:
        with _LOCK:
            fn = _FUNCTIONS.get(fkey)
            if fn is None:
                fn = _FUNCTIONS[fkey] = ctype(shared_module(key, build).address(symbol))
    return fn
