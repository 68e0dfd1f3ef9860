"""The native thread pool and barrier: every thread runs, writes before a barrier are seen after it,
oversubscription works, idle pools sleep and wake, closed pools refuse work and leave no threads."""

from __future__ import annotations

import gc
import resource
import threading
import time

import numpy as np
import pytest
from llvmlite import ir

from runtime.jit.engine import compile_module
from runtime.jit.irkit import I8P, I64, VOID, counted_loop, i64
from runtime.jit.threads import (
    BARRIER_ALIGN,
    BARRIER_BYTES,
    PoolClosedError,
    ThreadPool,
    default_threads,
    emit_barrier,
    emit_warm_barrier,
    new_barrier,
)

ROUNDS_PER_RUN = 5  # two barriers per round


def _task_module(warm_lines: int | None = None, mixed: bool = False) -> ir.Module:
    """task(args): each round r, slot[tid] = (base+r)·100 + tid; barrier; out[tid] += Σ slots; barrier.

    args = [barrier*, slots*, out*, base, calls*]; calls[tid] counts how often each thread ran. With
    `warm_lines`, the barrier is barrier_wait_warm prefetching that many lines (3 runs 4 KiB apart from
    the slots) while it waits; with `mixed` too, the second barrier of a round is barrier_wait on the
    same memory.
    """
    m = ir.Module("pool_test")
    plain = emit_barrier(m)
    bar = plain if warm_lines is None else emit_warm_barrier(m)
    fn = ir.Function(m, ir.FunctionType(VOID, [I8P, I64, I64]), "task")
    arg, tid, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block())
    p = b.bitcast(arg, I64.as_pointer())

    def ptr(k: int) -> ir.Value:
        return b.inttoptr(b.load(b.gep(p, [i64(k)])), I64.as_pointer())

    barrier = b.bitcast(ptr(0), I8P)
    slots, out, calls = ptr(1), ptr(2), ptr(4)
    wait = [barrier, n]
    if warm_lines is not None:
        wait += [b.bitcast(slots, I8P), i64(4096), i64(3), i64(warm_lines)]
    base = b.load(b.gep(p, [i64(3)]))
    mine_calls = b.gep(calls, [tid])
    b.store(b.add(b.load(mine_calls), i64(1)), mine_calls)
    total = b.alloca(I64)
    with counted_loop(b, i64(0), i64(ROUNDS_PER_RUN), name="r") as r:
        b.store(b.add(b.mul(b.add(base, r), i64(100)), tid), b.gep(slots, [tid]))
        b.call(bar, wait)
        b.store(i64(0), total)
        with counted_loop(b, i64(0), n, name="j") as j:
            b.store(b.add(b.load(total), b.load(b.gep(slots, [j]))), total)
        mine = b.gep(out, [tid])
        b.store(b.add(b.load(mine), b.load(total)), mine)
        if mixed:
            b.call(plain, [barrier, n])  # nobody overwrites a slot before everyone has read it
        else:
            b.call(bar, wait)  # nobody overwrites a slot before everyone has read it
    b.ret_void()
    return m


@pytest.fixture(scope="module")
def task():
    lib = compile_module(_task_module())
    return lib, lib.address("task")


def _run_many(pool: ThreadPool, addr: int, runs: int) -> None:
    n = pool.n_threads
    barrier = new_barrier()
    slots, out, calls = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    args = np.array([barrier.address, slots.ctypes.data, out.ctypes.data, 0, calls.ctypes.data], np.int64)
    want = 0
    for run in range(runs):
        args[3] = run
        pool.run(addr, args.ctypes.data)
        want += sum((run + r) * 100 * n + n * (n - 1) // 2 for r in range(ROUNDS_PER_RUN))
    assert calls.tolist() == [runs] * n  # every thread ran every task exactly once
    assert out.tolist() == [want] * n  # and saw every other thread's slot after each barrier


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
def test_every_thread_sees_every_write_after_the_barrier(task, n_threads):
    # 3 and 4 threads oversubscribe a 2-core machine: slower, still correct
    _, addr = task
    before = threading.active_count()
    with ThreadPool(n_threads) as pool:
        assert pool.n_threads == n_threads
        assert threading.active_count() == before + n_threads - 1
        _run_many(pool, addr, 2000)
    assert threading.active_count() == before


@pytest.mark.parametrize("warm_lines, mixed", [(0, False), (5, False), (1 << 40, False), (300, True)])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_prefetching_barrier_orders_writes_as_the_barrier_does(warm_lines, mixed, n_threads):
    """barrier_wait_warm is a barrier whatever it prefetches while it waits: with nothing to fetch, with a
    few lines, with more than any wait lasts (a waiter still leaves as soon as the others arrive), and
    taking turns with barrier_wait on the same memory (as a model's layers do)."""
    lib = compile_module(_task_module(warm_lines, mixed))
    with ThreadPool(n_threads) as pool:
        _run_many(pool, lib.address("task"), 500)


def test_hand_off_to_sleeping_workers_never_loses_a_wake_up(task):
    # spin_us=0: workers go to sleep at once, so every run goes through the futex / sleeper path
    _, addr = task
    with ThreadPool(3, spin_us=0) as pool:
        _run_many(pool, addr, 1000)
        assert pool.sleeps > 0


def test_idle_pool_goes_to_sleep_and_wakes_up(task):
    _, addr = task
    with ThreadPool(2) as pool:
        _run_many(pool, addr, 3)
        time.sleep(0.05)  # far past the ~100 µs of spinning
        assert pool.sleeps >= 1
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(0.3)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        assert cpu < 0.1  # a spinning worker would burn ~0.3 s here
        _run_many(pool, addr, 3)


def test_closed_pool_refuses_work(task):
    _, addr = task
    before = threading.active_count()
    pool = ThreadPool(2)
    pool.close()
    assert pool.closed and threading.active_count() == before
    pool.close()  # twice is fine
    with pytest.raises(PoolClosedError):
        pool.run(addr, 0)


def test_many_pools_leave_no_threads_behind():
    before = threading.active_count()
    for _ in range(20):
        with ThreadPool(3):
            pass
    for _ in range(20):
        ThreadPool(3)  # dropped without close(): the finalizer stops and joins them
    gc.collect()
    assert threading.active_count() == before


def test_thread_count():
    with ThreadPool() as pool:
        assert pool.n_threads == default_threads() >= 1
    with pytest.raises(ValueError, match="at least one thread"):
        ThreadPool(0)


def test_barrier_is_defined_once_per_module():
    m = ir.Module("twice")
    first, second = emit_barrier(m), emit_barrier(m)
    assert first is second and first.linkage == "internal"
    assert BARRIER_BYTES >= 128 and BARRIER_ALIGN == 64
    assert new_barrier().address % BARRIER_ALIGN == 0
