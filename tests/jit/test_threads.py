"""The native thread pool and barrier: every thread runs, writes before a barrier are seen after it,
oversubscription works, idle pools sleep, closed pools refuse work and leave no threads behind."""

from __future__ import annotations

import resource
import threading
import time

import numpy as np
import pytest
from llvmlite import ir

from runtime.jit.engine import compile_module
from runtime.jit.irkit import I8P, I64, VOID, counted_loop, i64
from runtime.jit.threads import BARRIER_BYTES, PoolClosedError, ThreadPool, emit_barrier

ROUNDS_PER_RUN = 5


@pytest.fixture(scope="module")
def task():
    """Each round: slot[tid] = (round·100 + tid); barrier; out[tid] += Σ slots; barrier."""
    m = ir.Module("pool_test")
    bar = emit_barrier(m)
    fn = ir.Function(m, ir.FunctionType(VOID, [I8P, I64, I64]), "task")
    arg, tid, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block())
    p = b.bitcast(arg, I64.as_pointer())
    barrier = b.inttoptr(b.load(p), I8P)
    slots = b.inttoptr(b.load(b.gep(p, [i64(1)])), I64.as_pointer())
    out = b.inttoptr(b.load(b.gep(p, [i64(2)])), I64.as_pointer())
    base = b.load(b.gep(p, [i64(3)]))
    total = b.alloca(I64)
    with counted_loop(b, i64(0), i64(ROUNDS_PER_RUN), name="r") as r:
        b.store(b.add(b.mul(b.add(base, r), i64(100)), tid), b.gep(slots, [tid]))
        b.call(bar, [barrier, n])
        b.store(i64(0), total)
        with counted_loop(b, i64(0), n, name="j") as j:
            b.store(b.add(b.load(total), b.load(b.gep(slots, [j]))), total)
        mine = b.gep(out, [tid])
        b.store(b.add(b.load(mine), b.load(total)), mine)
        b.call(bar, [barrier, n])
    b.ret_void()
    lib = compile_module(m)
    return lib, lib.address("task")


def _run_many(pool: ThreadPool, addr: int, runs: int) -> None:
    n = pool.n_threads
    barrier = np.zeros(BARRIER_BYTES // 8, np.int64)
    slots, out = np.zeros(n, np.int64), np.zeros(n, np.int64)
    args = np.array([barrier.ctypes.data, slots.ctypes.data, out.ctypes.data, 0], np.int64)
    want = 0
    for run in range(runs):
        args[3] = run
        pool.run(addr, args.ctypes.data)
        want += sum((run + r) * 100 * n + n * (n - 1) // 2 for r in range(ROUNDS_PER_RUN))
    assert out.tolist() == [want] * n


@pytest.mark.parametrize(("n_threads", "runs"), [(1, 500), (2, 2000), (3, 30), (4, 30)])
def test_every_thread_sees_every_write_after_the_barrier(task, n_threads, runs):
    _, addr = task
    before = threading.active_count()
    with ThreadPool(n_threads) as pool:
        assert threading.active_count() == before + n_threads - 1
        _run_many(pool, addr, runs)
    assert threading.active_count() == before


def test_closed_pool_refuses_work(task):
    _, addr = task
    pool = ThreadPool(2)
    pool.close()
    pool.close()  # twice is fine
    with pytest.raises(PoolClosedError):
        pool.run(addr, 0)


def test_dropped_pools_stop_their_threads(task):
    before = threading.active_count()
    for _ in range(20):
        ThreadPool(3)
    import gc

    gc.collect()
    assert threading.active_count() == before


def test_idle_pool_goes_to_sleep(task):
    _, addr = task
    with ThreadPool(2) as pool:
        _run_many(pool, addr, 3)
        time.sleep(0.05)  # past the spinning phase
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(0.3)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        assert cpu < 0.1  # a spinning worker would burn ~0.3 s here
        _run_many(pool, addr, 3)  # and wakes up for new work


def test_bad_thread_count():
    with pytest.raises(ValueError, match="at least one thread"):
        ThreadPool(0)
