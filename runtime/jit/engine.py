"""Compile an llvmlite IR module for the host, through the on-disk object cache, and find its symbols.

    lib = compile_module(module)           # ir.Module or IR text
    addr = lib.address("matvec_q8_0_768")  # int, for ctypes.CFUNCTYPE(...)(addr)

A cache hit loads the stored object file into an MCJIT engine without running LLVM's optimiser or
code generator. `CompiledModule` keeps the engine (and so the code) alive; drop it and the addresses
dangle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llvmlite.binding as llvm
from llvmlite import ir

from runtime.jit.build_key import build_key
from runtime.jit.cache import ObjectCache, cache_key
from runtime.jit.target import host_target, new_target_machine, target_machine

_LOCK = threading.Lock()  # LLVM's global state is not thread-safe; compile one module at a time


@dataclass
class CompileStats:
    """How a module was obtained: compiled (with timing) or loaded from the cache."""

    cached: bool
    seconds: float
    object_bytes: int


@dataclass
class CompiledModule:
    """Native code ready to call. Keep a reference for as long as any address is used."""

    engine: llvm.ExecutionEngine
    stats: CompileStats
    _addresses: dict[str, int] = field(default_factory=dict)

    def address(self, name: str) -> int:
        """Address of the function or global `name`; KeyError if the module has none."""
        addr = self._addresses.get(name)
        if addr is None:
            with _LOCK:
                addr = self.engine.get_function_address(name) or self.engine.get_global_value_address(name)
            if not addr:
                raise KeyError(f"compiled module has no symbol '{name}'")
            self._addresses[name] = addr
        return addr


def prepare_module(module: ir.Module) -> None:
    """Give `module` the host's triple and data layout (call before emitting size-dependent code)."""
    host = host_target()
    module.triple = host.triple
    module.data_layout = str(target_machine().target_data)


def compile_ir(ir_text: str) -> bytes:
    """Optimise (O3) and compile IR text to an object file for the host. No cache."""
    tm = target_machine()
    mod = llvm.parse_assembly(ir_text)
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return tm.emit_object(mod)


def compile_module(
    module: ir.Module | str, cache: ObjectCache | None = None, use_cache: bool = True
) -> CompiledModule:
    """Native code for `module`, from the cache when an identical module was compiled before."""
    store = cache if cache is not None else ObjectCache()
    t0 = time.perf_counter()
    with _LOCK:  # the shared target machine too is made and used under the lock
        obj, cached = _object_for(module, store, use_cache)
        engine = _engine_for(obj)
    return CompiledModule(engine, CompileStats(cached, time.perf_counter() - t0, len(obj)))


def compile_built(
    description: str, build: Callable[[], ir.Module], cache: ObjectCache | None = None, use_cache: bool = True
) -> CompiledModule:
    """Native code for the module `build()` returns, looked up first by `description` (build_key.py),
    so a warm start does not build the IR at all. `description` must name everything `build` depends
    on besides the source and the module constants (for a model: its architecture and spec)."""
    store = cache if cache is not None else ObjectCache()
    t0 = time.perf_counter()
    key = build_key(description) if use_cache else None
    obj = store.load(key) if key is not None else None
    cached = obj is not None
    module = build() if obj is None else None  # pure Python: outside the lock
    with _LOCK:
        if module is not None:
            obj, cached = _object_for(module, store, use_cache)
            if key is not None:
                store.store(key, obj)
        engine = _engine_for(obj)
    return CompiledModule(engine, CompileStats(cached, time.perf_counter() - t0, len(obj)))


def _object_for(module: ir.Module | str, store: ObjectCache, use_cache: bool) -> tuple[bytes, bool]:
    """(object code of `module`, whether it came from the cache under its IR key); call under _LOCK."""
    if isinstance(module, ir.Module) and not module.triple:
        prepare_module(module)
    ir_text = str(module)
    key = cache_key(ir_text, host_target().cache_identity)
    obj = store.load(key) if use_cache else None
    if obj is not None:
        return obj, True
    obj = compile_ir(ir_text)
    if use_cache:
        store.store(key, obj)
    return obj, False


def _engine_for(obj: bytes) -> llvm.ExecutionEngine:
    empty = llvm.parse_assembly("")
    empty.triple = host_target().triple
    engine = llvm.create_mcjit_compiler(empty, new_target_machine())
    engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
    engine.finalize_object()
    return engine
