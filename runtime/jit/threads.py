"""Worker threads that live in native code, and the barrier they meet at.

`ThreadPool(n)` starts n-1 Python threads; each makes one ctypes call (the GIL is released) into
`pool_worker`, a native loop that waits for work, runs it and waits again until the pool closes.
`pool.run(fn, arg)` is one ctypes call into `pool_run`: it publishes `fn(arg, tid, n)` by bumping a
generation counter, runs it as thread 0 and returns when every thread has finished. So a decoding
step costs one Python→native transition however many layers and threads it has.

Waiting is spin-then-sleep: a worker spins on the generation counter with a CPU pause hint for a
short while (the next token usually arrives within microseconds), then sleeps on a futex (Linux) or
in short `usleep`s elsewhere, so an idle pool uses no CPU. `emit_barrier` gives any module a
generation-counting barrier (acq_rel counter, release/acquire generation) that yields the CPU when
a wait drags on (more threads than cores).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
import weakref

import numpy as np
from llvmlite import ir

from runtime.jit.engine import CompiledModule, compile_module
from runtime.jit.irkit import I8P, I32, I64, VOID, get_or_define, i64, intrinsic

BARRIER_BYTES = 128  # counter and generation on separate cache lines
BARRIER_ALIGN = 64
SPIN_BEFORE_YIELD = 2_000  # pause-loop iterations (tens of µs) before giving the core away
WORKER_SPIN = 40_000  # pause-loop iterations a worker waits for new work before sleeping

# pool memory: one 64-byte line per field
_GEN, _DONE, _STOP, _FN, _ARG, _NTHREADS, _SLEEPERS = (i * 8 for i in range(7))
_POOL_INT64S = 7 * 8
_TASK = ir.FunctionType(VOID, [I8P, I64, I64])

_FUTEX_SYSCALL = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129


def _futex_number() -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    return _FUTEX_SYSCALL.get(platform.machine().lower())


def _pause(b: ir.IRBuilder, module: ir.Module) -> None:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686"):
        b.asm(ir.FunctionType(VOID, []), "pause", "", [], side_effect=True)
    elif machine in ("aarch64", "arm64"):
        b.asm(ir.FunctionType(VOID, []), "yield", "", [], side_effect=True)


def _sched_yield(module: ir.Module) -> ir.Function:
    return intrinsic(module, "sched_yield", I32, [])


def _field(b: ir.IRBuilder, base: ir.Value, index: int, ty: ir.Type = I64) -> ir.Value:
    p = b.gep(b.bitcast(base, I64.as_pointer()), [i64(index)], inbounds=True)
    return p if ty is I64 else b.bitcast(p, ty.as_pointer())


def _spin_until_changed(
    b: ir.IRBuilder, module: ir.Module, ptr: ir.Value, old: ir.Value, yield_after: int, name: str
) -> None:
    """Spin (pause) while *ptr == old; call sched_yield every `yield_after` iterations."""
    head = b.append_basic_block(f"{name}.spin")
    body = b.append_basic_block(f"{name}.wait")
    done = b.append_basic_block(f"{name}.done")
    pre = b.block
    b.branch(head)
    b.position_at_end(head)
    count = b.phi(I64)
    count.add_incoming(i64(0), pre)
    cur = b.load_atomic(ptr, "acquire", ptr.type.pointee.width // 8)
    b.cbranch(b.icmp_signed("!=", cur, old), done, body)
    b.position_at_end(body)
    _pause(b, module)
    nxt = b.add(count, i64(1))
    with b.if_then(b.icmp_signed("==", b.urem(nxt, i64(yield_after)), i64(0))):
        b.call(_sched_yield(module), [])
    count.add_incoming(nxt, b.block)
    b.branch(head)
    b.position_at_end(done)


def emit_barrier(module: ir.Module) -> ir.Function:
    """`void barrier_wait(i8* barrier, i64 n_threads)` over BARRIER_BYTES of zeroed memory."""

    def build(fn: ir.Function) -> None:
        bar, n = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with b.if_then(b.icmp_signed("<=", n, i64(1))):
            b.ret_void()
        count = _field(b, bar, 0)
        gen = _field(b, bar, 8)
        g = b.load_atomic(gen, "acquire", 8)
        arrived = b.atomic_rmw("add", count, i64(1), "acq_rel")
        last = b.icmp_signed("==", arrived, b.sub(n, i64(1)))
        with b.if_else(last) as (release, wait):
            with release:
                b.store_atomic(i64(0), count, "monotonic", 8)
                b.atomic_rmw("add", gen, i64(1), "release")
            with wait:
                _spin_until_changed(b, module, gen, g, SPIN_BEFORE_YIELD, "bar")
        b.ret_void()

    return get_or_define(module, "barrier_wait", ir.FunctionType(VOID, [I8P, I64]), build)


def _emit_sleep(b: ir.IRBuilder, module: ir.Module, gen32: ir.Value, seen: ir.Value) -> None:
    """Block until *gen32 != seen (spurious returns are fine: the caller re-checks)."""
    nr = _futex_number()
    if nr is not None:
        syscall = module.globals.get("syscall") or ir.Function(
            module, ir.FunctionType(I64, [I64], var_arg=True), "syscall"
        )
        b.call(syscall, [i64(nr), b.ptrtoint(gen32, I64), i64(_FUTEX_WAIT_PRIVATE), b.trunc(seen, I32),
                         ir.Constant(I64, 0)])
    else:
        usleep = intrinsic(module, "usleep", I32, [I32])
        b.call(usleep, [ir.Constant(I32, 200)])


def _emit_wake(b: ir.IRBuilder, module: ir.Module, gen32: ir.Value) -> None:
    nr = _futex_number()
    if nr is not None:
        syscall = module.globals.get("syscall") or ir.Function(
            module, ir.FunctionType(I64, [I64], var_arg=True), "syscall"
        )
        b.call(syscall, [i64(nr), b.ptrtoint(gen32, I64), i64(_FUTEX_WAKE_PRIVATE), ir.Constant(I32, 2**31 - 1)])


def _pool_module() -> ir.Module:
    m = ir.Module("rwkv_pool")
    task_ptr = _TASK.as_pointer()

    # void pool_worker(i8* pool, i64 tid)
    w = ir.Function(m, ir.FunctionType(VOID, [I8P, I64]), "pool_worker")
    pool, tid = w.args
    b = ir.IRBuilder(w.append_basic_block("entry"))
    gen32 = _field(b, pool, _GEN, I32)
    entry = b.block
    loop = b.append_basic_block("loop")
    b.branch(loop)
    b.position_at_end(loop)
    seen = b.phi(I32)
    seen.add_incoming(ir.Constant(I32, 0), entry)  # the generation starts at 0
    # spin for a while, then sleep until the generation moves
    spin_head = b.append_basic_block("spin")
    spin_body = b.append_basic_block("spin.body")
    sleep = b.append_basic_block("sleep")
    got = b.append_basic_block("got")
    b.branch(spin_head)
    b.position_at_end(spin_head)
    k = b.phi(I64)
    k.add_incoming(i64(0), loop)
    cur = b.load_atomic(gen32, "acquire", 4)
    b.cbranch(b.icmp_unsigned("!=", cur, seen), got, spin_body)
    b.position_at_end(spin_body)
    _pause(b, m)
    k1 = b.add(k, i64(1))
    k.add_incoming(k1, spin_body)
    b.cbranch(b.icmp_signed("<", k1, i64(WORKER_SPIN)), spin_head, sleep)
    b.position_at_end(sleep)
    sleepers = _field(b, pool, _SLEEPERS)
    b.atomic_rmw("add", sleepers, i64(1), "seq_cst")
    _emit_sleep(b, m, gen32, b.zext(seen, I64))
    b.atomic_rmw("sub", sleepers, i64(1), "seq_cst")
    k.add_incoming(i64(0), sleep)
    b.branch(spin_head)
    b.position_at_end(got)
    stop = b.load_atomic(_field(b, pool, _STOP), "acquire", 8)
    with b.if_then(b.icmp_signed("!=", stop, i64(0))):
        b.ret_void()
    fn = b.inttoptr(b.load_atomic(_field(b, pool, _FN), "monotonic", 8), task_ptr)
    arg = b.inttoptr(b.load_atomic(_field(b, pool, _ARG), "monotonic", 8), I8P)
    n = b.load_atomic(_field(b, pool, _NTHREADS), "monotonic", 8)
    b.call(fn, [arg, tid, n])
    b.atomic_rmw("add", _field(b, pool, _DONE), i64(1), "release")
    seen.add_incoming(cur, b.block)
    b.branch(loop)

    # void pool_run(i8* pool, i8* fn, i8* arg)
    r = ir.Function(m, ir.FunctionType(VOID, [I8P, I8P, I8P]), "pool_run")
    pool, fnp, arg = r.args
    b = ir.IRBuilder(r.append_basic_block("entry"))
    n = b.load_atomic(_field(b, pool, _NTHREADS), "monotonic", 8)
    done = _field(b, pool, _DONE)
    b.store_atomic(b.ptrtoint(fnp, I64), _field(b, pool, _FN), "monotonic", 8)
    b.store_atomic(b.ptrtoint(arg, I64), _field(b, pool, _ARG), "monotonic", 8)
    b.store_atomic(i64(0), done, "monotonic", 8)
    gen32 = _field(b, pool, _GEN, I32)
    b.atomic_rmw("add", gen32, ir.Constant(I32, 1), "seq_cst")
    asleep = b.load_atomic(_field(b, pool, _SLEEPERS), "seq_cst", 8)
    with b.if_then(b.icmp_signed(">", asleep, i64(0))):
        _emit_wake(b, m, gen32)
    b.call(b.bitcast(fnp, task_ptr), [arg, i64(0), n])
    _wait_for(b, m, done, b.sub(n, i64(1)))
    b.ret_void()

    # void pool_stop(i8* pool)
    s = ir.Function(m, ir.FunctionType(VOID, [I8P]), "pool_stop")
    (pool,) = s.args
    b = ir.IRBuilder(s.append_basic_block("entry"))
    b.store_atomic(i64(1), _field(b, pool, _STOP), "seq_cst", 8)
    gen32 = _field(b, pool, _GEN, I32)
    b.atomic_rmw("add", gen32, ir.Constant(I32, 1), "seq_cst")
    _emit_wake(b, m, gen32)
    b.ret_void()
    return m


def _wait_for(b: ir.IRBuilder, module: ir.Module, ptr: ir.Value, target: ir.Value) -> None:
    head = b.append_basic_block("wait")
    body = b.append_basic_block("wait.body")
    out = b.append_basic_block("wait.done")
    pre = b.block
    b.branch(head)
    b.position_at_end(head)
    count = b.phi(I64)
    count.add_incoming(i64(0), pre)
    cur = b.load_atomic(ptr, "acquire", 8)
    b.cbranch(b.icmp_signed(">=", cur, target), out, body)
    b.position_at_end(body)
    _pause(b, module)
    nxt = b.add(count, i64(1))
    with b.if_then(b.icmp_signed("==", b.urem(nxt, i64(SPIN_BEFORE_YIELD)), i64(0))):
        b.call(_sched_yield(module), [])
    count.add_incoming(nxt, b.block)
    b.branch(head)
    b.position_at_end(out)


_LIB: CompiledModule | None = None
_LIB_LOCK = threading.Lock()


def _library() -> CompiledModule:
    global _LIB
    with _LIB_LOCK:
        if _LIB is None:
            _LIB = compile_module(_pool_module())
        return _LIB


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class PoolClosedError(RuntimeError):
    """A ThreadPool was used after close()."""


class ThreadPool:
    """n threads (the caller counts as thread 0) that run native tasks `void fn(i8*, i64 tid, i64 n)`."""

    def __init__(self, n_threads: int | None = None) -> None:
        n = default_threads() if n_threads is None else int(n_threads)
        if n < 1:
            raise ValueError(f"a thread pool needs at least one thread, got {n}")
        self.n_threads = n
        lib = _library()
        self._lib = lib
        raw = np.zeros(_POOL_INT64S + 8, dtype=np.int64)
        skip = (-raw.ctypes.data % 64) // 8
        self._mem = raw[skip : skip + _POOL_INT64S]
        self._mem[_NTHREADS] = n
        addr = self._mem.ctypes.data
        self._addr = addr
        self._run = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
            lib.address("pool_run")
        )
        worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(lib.address("pool_worker"))
        stop = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lib.address("pool_stop"))
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=worker, args=(addr, tid), name=f"rwkv-worker-{tid}", daemon=True)
            for tid in range(1, n)
        ]
        for t in self._threads:
            t.start()
        # stop the workers even if the pool is dropped without close(); keeps memory alive until then
        self._finalizer = weakref.finalize(self, _shutdown, stop, addr, self._threads, self._mem, lib)

    def run(self, fn_address: int, arg_address: int) -> None:
        """Run `fn(arg, tid, n_threads)` on every thread; returns when all have finished."""
        with self._lock:
            if self._closed:
                raise PoolClosedError("the thread pool is closed")
            self._run(self._addr, fn_address, arg_address)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._finalizer()

    def __enter__(self) -> ThreadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(stop, addr: int, threads: list[threading.Thread], mem: np.ndarray, lib: CompiledModule) -> None:
    stop(addr)
    for t in threads:
        t.join()
    del mem, lib
