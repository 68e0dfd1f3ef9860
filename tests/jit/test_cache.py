"""The on-disk object cache: a warm start compiles nothing; a corrupt entry is detected and rebuilt."""

from __future__ import annotations

import ctypes

from llvmlite import ir

from runtime.jit.cache import ObjectCache
from runtime.jit.engine import compile_module
from runtime.jit.irkit import I64


def _module(k: int) -> ir.Module:
    m = ir.Module(f"scale{k}")
    f = ir.Function(m, ir.FunctionType(I64, [I64]), "scale")
    b = ir.IRBuilder(f.append_basic_block())
    b.ret(b.mul(f.args[0], ir.Constant(I64, k)))
    return m


def _call(lib, x: int) -> int:
    return ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(lib.address("scale"))(x)


def test_second_compile_comes_from_the_cache(tmp_path):
    cache = ObjectCache(tmp_path)
    first = compile_module(_module(3), cache)
    second = compile_module(_module(3), cache)
    assert not first.stats.cached and second.stats.cached
    assert _call(first, 7) == _call(second, 7) == 21
    assert len(list(tmp_path.iterdir())) == 1


def test_different_ir_gets_a_different_entry(tmp_path):
    cache = ObjectCache(tmp_path)
    assert _call(compile_module(_module(3), cache), 2) == 6
    lib = compile_module(_module(5), cache)
    assert not lib.stats.cached and _call(lib, 2) == 10
    assert len(list(tmp_path.iterdir())) == 2


def test_corrupt_entry_is_rebuilt(tmp_path):
    cache = ObjectCache(tmp_path)
    compile_module(_module(3), cache)
    (entry,) = tmp_path.iterdir()
    blob = bytearray(entry.read_bytes())
    blob[-10] ^= 0xFF  # flip bits inside the object code
    entry.write_bytes(bytes(blob))
    lib = compile_module(_module(3), cache)
    assert not lib.stats.cached and _call(lib, 4) == 12
    assert compile_module(_module(3), cache).stats.cached  # the rebuilt entry is good again


def test_truncated_and_foreign_entries_are_rebuilt(tmp_path):
    cache = ObjectCache(tmp_path)
    compile_module(_module(3), cache)
    (entry,) = tmp_path.iterdir()
    for junk in (b"", b"RWKVOBJ1", b"\x7fELF" + b"\0" * 100):
        entry.write_bytes(junk)
        lib = compile_module(_module(3), cache)
        assert not lib.stats.cached and _call(lib, 1) == 3


def test_unwritable_cache_only_costs_speed(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    lib = compile_module(_module(2), ObjectCache(blocker / "kernels"))
    assert _call(lib, 8) == 16
