"""Worker threads that live in native code, and the barrier they meet at.

`ThreadPool(n)` starts n-1 daemon Python threads; each makes one ctypes call (the GIL is released)
into `pool_worker`, a native loop that waits for work, runs it and waits again until the pool
closes. `pool.run(fn, arg)` is one ctypes call into `pool_run`: it publishes the task by bumping a
32-bit generation counter, runs `fn(arg, 0, n)` itself as thread 0, and spins on a done counter until
every worker has run `fn(arg, tid, n)`. So a decoding step costs one Python→native transition however
many layers, barriers and threads it has.

Waiting for work is spin-then-sleep. A worker spins on the generation with a CPU pause hint for about
`spin_us` (calibrated to pause rounds when the first pool is made): the next token usually comes
within that. Then it sleeps: on Linux in FUTEX_WAIT on the generation word (via libc's `syscall`),
having first counted itself in a sleeper count that `pool_run` checks after bumping the generation —
so the usual hand-off to spinning workers makes no system call, and a sleeper is never missed (both
sides use seq_cst operations: either `pool_run` sees the sleeper and wakes it, or the futex sees the
new generation and does not sleep). Elsewhere a sleeping worker polls with `usleep`, backing off
from 50 µs to 1 ms. An idle pool therefore uses no CPU after a fraction of a millisecond. A spinning
worker also calls `sched_yield` every few µs, so a caller or sibling that shares its core still runs.

Linux wakes a futex sleeper onto the waker's CPU whenever the sleeper's own CPU looks busy (in VMs
an idle vCPU always does); caller and worker would then share one core until the load balancer acts
(milliseconds, i.e. whole decoding steps at half speed). So a worker woken onto the caller's CPU
moves itself off it at once by briefly narrowing its affinity mask (measured on a 2-vCPU VM: a
250 µs task split over 2 threads after 5 ms idle took 315 µs without this, 213 µs with it).

The barrier emitters live in runtime.jit.sync and are re-exported here.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
import weakref

from llvmlite import ir

from runtime.jit.engine import CompiledModule
from runtime.jit.irkit import I8P, I32, I64, I64P, VOID, i64, intrinsic
from runtime.jit.shared import shared_module
from runtime.jit.sync import (
    BARRIER_ALIGN,
    BARRIER_BYTES,
    BARRIER_SPIN,
    AlignedBuffer,
    declare_sched_yield,
    emit_barrier,
    emit_futex_wait,
    emit_futex_wake_all,
    emit_pause,
    emit_spin_until,
    emit_warm_barrier,
    futex_syscall_number,
    i64_field,
    new_barrier,
)
from runtime.threadcount import check_threads, default_threads

__all__ = [
    "BARRIER_ALIGN",
    "BARRIER_BYTES",
    "DEFAULT_SPIN_US",
    "PoolClosedError",
    "ThreadPool",
    "default_threads",
    "emit_barrier",
    "emit_warm_barrier",
    "new_barrier",
    "pause_seconds",
]

DEFAULT_SPIN_US = 100.0  # how long an idle worker spins before it sleeps
MOVE_OFF_WAKER_CPU = True  # see _emit_move_off_cpu
YIELD_EVERY_US = 4.0  # a spinning idle worker calls sched_yield about this often

# pool memory (bytes); fields written by different sides sit on different cache lines
_GEN = 0  # u32 generation: bumped by pool_run / pool_stop, watched by workers (futex word)
_DONE = 64  # i64 workers finished with the current generation
_FN, _ARG, _NTHREADS, _SPIN, _YIELD_MASK, _STOP = 128, 136, 144, 152, 160, 168  # written by the caller only
_SLEEPERS, _SLEEPS = 192, 200  # workers asleep now; times a worker has gone to sleep
_WAKER_CPU = 256  # CPU the caller ran on when it last woke sleepers
POOL_BYTES = 320
_CPU_SET_BITS = 1024  # glibc's cpu_set_t

_TASK = ir.FunctionType(VOID, [I8P, I64, I64])
_USLEEP_FIRST, _USLEEP_MAX = 50, 1000  # µs, the non-futex sleep back-off


class PoolClosedError(RuntimeError):
    """A ThreadPool was used after close() (or in a child process made by fork())."""


def _emit_worker(m: ir.Module) -> None:
    """void pool_worker(i8* pool, i64 tid): run each new generation's task until the pool stops."""
    fn = ir.Function(m, ir.FunctionType(VOID, [I8P, I64]), "pool_worker")
    pool, tid = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    gen = i64_field(b, pool, _GEN, I32)
    spin_limit = b.load_atomic(i64_field(b, pool, _SPIN), "monotonic", 8)
    yield_mask = b.load_atomic(i64_field(b, pool, _YIELD_MASK), "monotonic", 8)
    masks = [b.alloca(I64, i64(_CPU_SET_BITS // 64)) for _ in range(2)]
    entry = b.block
    loop = b.append_basic_block("loop")
    spin = b.append_basic_block("spin")
    spin_more = b.append_basic_block("spin.pause")
    sleep = b.append_basic_block("sleep")
    nap = b.append_basic_block("nap")
    nap_body = b.append_basic_block("nap.body")
    woke = b.append_basic_block("woke")
    got = b.append_basic_block("got")
    b.branch(loop)

    # the generation starts at 0; a worker that starts late still runs generation 1 (pool_run
    # cannot finish it without this worker)
    b.position_at_end(loop)
    seen = b.phi(I32, name="seen")
    seen.add_incoming(ir.Constant(I32, 0), entry)
    b.branch(spin)

    b.position_at_end(spin)
    k = b.phi(I64, name="k")
    k.add_incoming(i64(0), loop)
    cur = b.load_atomic(gen, "acquire", 4)
    b.cbranch(b.icmp_unsigned("!=", cur, seen), got, spin_more)
    b.position_at_end(spin_more)
    emit_pause(b)
    k1 = b.add(k, i64(1))
    # give the core away now and then: the thread we wait for may be queued behind us (more
    # threads than cores, or the scheduler woke us onto the caller's core)
    with b.if_then(b.icmp_unsigned("==", b.and_(k1, yield_mask), i64(0)), likely=False):
        b.call(declare_sched_yield(m), [])
    k.add_incoming(k1, b.block)
    b.cbranch(b.icmp_unsigned("<", k1, spin_limit), spin, sleep)

    b.position_at_end(sleep)
    sleepers = i64_field(b, pool, _SLEEPERS)
    b.atomic_rmw("add", sleepers, i64(1), "seq_cst")
    b.atomic_rmw("add", i64_field(b, pool, _SLEEPS), i64(1), "monotonic")
    b.branch(nap)

    b.position_at_end(nap)
    delay = b.phi(I32, name="delay_us")
    delay.add_incoming(ir.Constant(I32, _USLEEP_FIRST), sleep)
    now = b.load_atomic(gen, "seq_cst", 4)
    b.cbranch(b.icmp_unsigned("!=", now, seen), woke, nap_body)
    b.position_at_end(nap_body)
    if futex_syscall_number() is not None:
        emit_futex_wait(b, m, gen, seen)  # returns at once if the generation has moved
        delay.add_incoming(delay, nap_body)
    else:
        b.call(intrinsic(m, "usleep", I32, [I32]), [delay])
        doubled = b.shl(delay, ir.Constant(I32, 1))
        capped = b.select(b.icmp_unsigned("<", doubled, ir.Constant(I32, _USLEEP_MAX)), doubled,
                          ir.Constant(I32, _USLEEP_MAX))
        delay.add_incoming(capped, nap_body)
    b.branch(nap)

    b.position_at_end(woke)
    b.atomic_rmw("sub", sleepers, i64(1), "seq_cst")
    if futex_syscall_number() is not None and MOVE_OFF_WAKER_CPU:
        _emit_move_off_cpu(b, m, pool, masks[0], masks[1])
    woke_end = b.block
    b.branch(got)

    b.position_at_end(got)
    new_gen = b.phi(I32, name="gen")
    new_gen.add_incoming(cur, spin)
    new_gen.add_incoming(now, woke_end)
    stop = b.load_atomic(i64_field(b, pool, _STOP), "acquire", 8)
    with b.if_then(b.icmp_unsigned("!=", stop, i64(0)), likely=False):
        b.ret_void()
    # ordered after the task's publication by the acquire load of the generation
    task = b.inttoptr(b.load_atomic(i64_field(b, pool, _FN), "monotonic", 8), _TASK.as_pointer())
    arg = b.inttoptr(b.load_atomic(i64_field(b, pool, _ARG), "monotonic", 8), I8P)
    n = b.load_atomic(i64_field(b, pool, _NTHREADS), "monotonic", 8)
    b.call(task, [arg, tid, n])
    b.atomic_rmw("add", i64_field(b, pool, _DONE), i64(1), "release")
    seen.add_incoming(new_gen, b.block)
    b.branch(loop)


def _emit_publish(b: ir.IRBuilder, m: ir.Module, pool: ir.Value) -> None:
    """Bump the generation, then wake sleepers if there are any (Dekker pair with the worker)."""
    gen = i64_field(b, pool, _GEN, I32)
    b.atomic_rmw("add", gen, ir.Constant(I32, 1), "seq_cst")
    if futex_syscall_number() is not None:
        asleep = b.load_atomic(i64_field(b, pool, _SLEEPERS), "seq_cst", 8)
        with b.if_then(b.icmp_signed(">", asleep, i64(0))):
            cpu = b.sext(b.call(intrinsic(m, "sched_getcpu", I32, []), []), I64)
            b.store_atomic(cpu, i64_field(b, pool, _WAKER_CPU), "seq_cst", 8)
            emit_futex_wake_all(b, m, gen)


def _emit_move_off_cpu(b: ir.IRBuilder, m: ir.Module, pool: ir.Value, old: ir.Value, new: ir.Value) -> None:
    """Linux: if this (just woken) worker runs on the CPU of the thread that woke it, move it.

    The scheduler likes to put a woken thread on its waker's CPU — always so in VMs, where idle vCPUs
    look busy — and the two then share one core until the load balancer notices (milliseconds).
    Narrowing our affinity to exclude this CPU migrates us at once; the old mask is then restored.
    `old` and `new` point to _CPU_SET_BITS of stack each (allocated in the entry block).
    """
    me = b.sext(b.call(intrinsic(m, "sched_getcpu", I32, []), []), I64)
    waker = b.load_atomic(i64_field(b, pool, _WAKER_CPU), "seq_cst", 8)
    with b.if_then(b.and_(b.icmp_signed(">=", me, i64(0)),
                          b.and_(b.icmp_signed("<", me, i64(_CPU_SET_BITS)), b.icmp_signed("==", me, waker))),
                   likely=False):
        getaff = intrinsic(m, "sched_getaffinity", I32, [I32, I64, I64P])
        setaff = intrinsic(m, "sched_setaffinity", I32, [I32, I64, I64P])
        words = _CPU_SET_BITS // 64
        nbytes = i64(_CPU_SET_BITS // 8)
        ok = b.icmp_signed("==", b.call(getaff, [ir.Constant(I32, 0), nbytes, old]), ir.Constant(I32, 0))
        with b.if_then(ok):
            others = i64(0)
            word = b.udiv(me, i64(64))
            bit = b.shl(i64(1), b.urem(me, i64(64)))
            for w in range(words):
                v = b.load(b.gep(old, [i64(w)]))
                v = b.select(b.icmp_unsigned("==", word, i64(w)), b.and_(v, b.not_(bit)), v)
                b.store(v, b.gep(new, [i64(w)]))
                others = b.or_(others, v)
            with b.if_then(b.icmp_unsigned("!=", others, i64(0))):
                b.call(setaff, [ir.Constant(I32, 0), nbytes, new])
                b.call(setaff, [ir.Constant(I32, 0), nbytes, old])


def _emit_run(m: ir.Module) -> None:
    """void pool_run(i8* pool, i8* fn, i8* arg): run fn on every thread, return when all are done."""
    fn = ir.Function(m, ir.FunctionType(VOID, [I8P, I8P, I8P]), "pool_run")
    pool, fnp, arg = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    task = b.bitcast(fnp, _TASK.as_pointer())
    n = b.load_atomic(i64_field(b, pool, _NTHREADS), "monotonic", 8)
    with b.if_then(b.icmp_signed("<=", n, i64(1))):
        b.call(task, [arg, i64(0), i64(1)])
        b.ret_void()
    done = i64_field(b, pool, _DONE)
    b.store_atomic(b.ptrtoint(fnp, I64), i64_field(b, pool, _FN), "monotonic", 8)
    b.store_atomic(b.ptrtoint(arg, I64), i64_field(b, pool, _ARG), "monotonic", 8)
    b.store_atomic(i64(0), done, "monotonic", 8)
    _emit_publish(b, m, pool)
    b.call(task, [arg, i64(0), n])
    workers = b.sub(n, i64(1))

    def all_done(bb: ir.IRBuilder):
        cur = bb.load_atomic(done, "acquire", 8)  # pairs with the workers' release increments
        return bb.icmp_signed(">=", cur, workers), cur

    emit_spin_until(b, m, all_done, BARRIER_SPIN, "done")
    b.ret_void()


def _emit_stop(m: ir.Module) -> None:
    """void pool_stop(i8* pool): make every worker return from pool_worker."""
    fn = ir.Function(m, ir.FunctionType(VOID, [I8P]), "pool_stop")
    (pool,) = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.store_atomic(i64(1), i64_field(b, pool, _STOP), "seq_cst", 8)
    _emit_publish(b, m, pool)
    b.ret_void()


def _emit_calibration(m: ir.Module) -> None:
    """void pool_spin(i64 rounds): `rounds` pause hints, to time one round."""
    fn = ir.Function(m, ir.FunctionType(VOID, [I64]), "pool_spin")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    pre = b.block
    head = b.append_basic_block("head")
    body = b.append_basic_block("body")
    out = b.append_basic_block("out")
    b.branch(head)
    b.position_at_end(head)
    k = b.phi(I64)
    k.add_incoming(i64(0), pre)
    b.cbranch(b.icmp_unsigned("<", k, fn.args[0]), body, out)
    b.position_at_end(body)
    emit_pause(b)
    k.add_incoming(b.add(k, i64(1)), body)
    b.branch(head)
    b.position_at_end(out)
    b.ret_void()


def pool_module() -> ir.Module:
    """The native half of ThreadPool: pool_worker, pool_run, pool_stop, pool_spin."""
    m = ir.Module("rwkv_pool")
    _emit_worker(m)
    _emit_run(m)
    _emit_stop(m)
    _emit_calibration(m)
    return m


def _library() -> CompiledModule:
    return shared_module("rwkv_pool", pool_module)


_VOID_P3 = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_WORKER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
_STOP_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_SPIN_FN = ctypes.CFUNCTYPE(None, ctypes.c_int64)


@functools.cache
def pause_seconds() -> float:
    """Measured time of one pause round on this CPU (~1 ns to ~40 ns depending on the core)."""
    spin = _SPIN_FN(_library().address("pool_spin"))
    rounds = 20_000
    spin(rounds)  # warm up
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        spin(rounds)
        best = min(best, time.perf_counter() - t0)
    return max(best / rounds, 1e-10)


_LIVE: weakref.WeakSet[ThreadPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # the worker threads did not survive fork(); a run would wait for them forever
    for pool in list(_LIVE):
        pool._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ThreadPool:
    """`n_threads` threads (the caller is thread 0) that run native `void fn(i8* arg, i64 tid, i64 n)`.

    `spin_us` is how long an idle worker spins for new work before it sleeps.
    """

    def __init__(self, n_threads: int | None = None, spin_us: float = DEFAULT_SPIN_US) -> None:
        n = default_threads() if n_threads is None else check_threads(n_threads)
        self.n_threads = n
        lib = _library()
        self._run = _VOID_P3(lib.address("pool_run"))
        self._mem = AlignedBuffer(POOL_BYTES, 64)
        self._addr = self._mem.address
        self._mem.int64(_NTHREADS).value = n
        pause = pause_seconds()
        self._mem.int64(_SPIN).value = max(1, round(spin_us * 1e-6 / pause)) if spin_us > 0 else 0
        yield_rounds = round(YIELD_EVERY_US * 1e-6 / pause)
        self._mem.int64(_YIELD_MASK).value = (1 << max(4, yield_rounds.bit_length())) - 1
        self._lock = threading.Lock()
        self._closed = False
        self._forked = False
        worker = _WORKER(lib.address("pool_worker"))
        threads = [
            threading.Thread(target=worker, args=(self._addr, tid), name=f"rwkv-worker-{tid}", daemon=True)
            for tid in range(1, n)
        ]
        for t in threads:
            t.start()
        self._threads = threads
        # stops and joins the workers on close(), when the pool is garbage-collected, or at exit;
        # it holds the memory and the code, so both outlive the threads
        stop = _STOP_FN(lib.address("pool_stop"))
        self._finalizer = weakref.finalize(self, _shutdown, stop, self._mem, threads, lib)
        _LIVE.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def spin_rounds(self) -> int:
        """Pause rounds an idle worker spins before sleeping."""
        return self._mem.int64(_SPIN).value

    @property
    def sleeps(self) -> int:
        """How many times a worker has run out of spinning and gone to sleep."""
        return self._mem.int64(_SLEEPS).value

    def run(self, fn_address: int, arg_address: int) -> None:
        """Run native `fn(arg, tid, n_threads)` on every thread; return when all have finished."""
        if not fn_address:
            raise ValueError("null task address")
        with self._lock:
            if self._closed:
                raise PoolClosedError("this thread pool is closed")
            if self._forked:
                raise PoolClosedError("this thread pool was created before fork(); make a new one")
            self._run(self._addr, fn_address, arg_address)

    def close(self) -> None:
        """Stop and join the worker threads. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if not self._forked:
                    self._finalizer()
                else:
                    self._finalizer.detach()

    def __enter__(self) -> ThreadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ThreadPool n_threads={self.n_threads} {state}>"


def _shutdown(stop, mem: AlignedBuffer, threads: list[threading.Thread], lib: CompiledModule) -> None:
    stop(mem.address)
    for t in threads:
        if t.ident is not None:
            t.join()
