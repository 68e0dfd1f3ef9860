"""Benchmark the cost of handing work to the native thread pool and of one barrier.

    python bench/handoff.py [--quick] [--threads 1,2] [--spin-us 100]

- ctypes: a plain ctypes call of an empty native function (no args, and pool_run's 3 pointer args),
  the floor for any Python→native call.
- run hot: `pool.run(empty_task)` back to back (workers are still spinning), per-call µs.
- run cold: `pool.run(empty_task)` after 5 ms idle (workers asleep on the futex), per-call µs.
- barrier: one run of a task doing 10 000 barriers, minus an empty run, per barrier.
Median and p99 of per-call times measured with perf_counter_ns.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from llvmlite import ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.jit.engine import compile_module
from runtime.jit.irkit import I8P, I64, VOID, counted_loop, i64
from runtime.jit.threads import DEFAULT_SPIN_US, ThreadPool, default_threads, emit_barrier, new_barrier
from runtime.jit.threads import pause_seconds as _pause_seconds

BARRIERS = 10_000


def _module() -> ir.Module:
    m = ir.Module("handoff_bench")
    for name, args in (("empty0", []), ("empty3", [I8P, I8P, I8P]), ("empty_task", [I8P, I64, I64])):
        f = ir.Function(m, ir.FunctionType(VOID, args), name)
        ir.IRBuilder(f.append_basic_block()).ret_void()
    bar = emit_barrier(m)
    f = ir.Function(m, ir.FunctionType(VOID, [I8P, I64, I64]), "barrier_task")
    arg, _tid, n = f.args
    b = ir.IRBuilder(f.append_basic_block())
    with counted_loop(b, i64(0), i64(BARRIERS)):
        b.call(bar, [arg, n])
    b.ret_void()
    return m


def _stats(samples_ns: list[int]) -> tuple[float, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return float(np.median(a)), float(np.percentile(a, 99))


def _per_call(call: Callable[[], None], n: int, idle_s: float = 0.0) -> tuple[float, float]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        if idle_s:
            time.sleep(idle_s)
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return _stats(samples)


def _row(label: str, med: float, p99: float, note: str = "") -> None:
    print(f"  {label:<34} median {med:9.2f} µs   p99 {p99:9.2f} µs  {note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1,2)")
    ap.add_argument("--spin-us", type=float, default=DEFAULT_SPIN_US, help="idle spin before sleeping")
    opts = ap.parse_args()
    counts = [int(x) for x in opts.threads.split(",")] if opts.threads else [1, 2]
    hot_n, cold_n, bar_n = (2_000, 100, 5) if opts.quick else (20_000, 400, 20)

    lib = compile_module(_module())
    empty0 = ctypes.CFUNCTYPE(None)(lib.address("empty0"))
    empty3 = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(lib.address("empty3"))
    empty_task, barrier_task = lib.address("empty_task"), lib.address("barrier_task")
    print(f"cores available: {default_threads()}   pause hint: {_pause_seconds() * 1e9:.1f} ns   "
          f"idle spin: {opts.spin_us:g} µs")
    print("plain ctypes call of an empty native function")
    _row("void f(void)", *_per_call(empty0, hot_n))
    _row("void f(void*, void*, void*)", *_per_call(lambda: empty3(1, 2, 3), hot_n))

    for n in counts:
        with ThreadPool(n, spin_us=opts.spin_us) as pool:
            print(f"ThreadPool({n})")
            run = pool.run
            for _ in range(200):
                run(empty_task, 0)
            _row("run, back to back (spinning)", *_per_call(lambda run=run: run(empty_task, 0), hot_n))
            s0 = pool.sleeps
            med, p99 = _per_call(lambda run=run: run(empty_task, 0), cold_n, idle_s=0.005)
            _row("run after 5 ms idle (asleep)", med, p99, f"({pool.sleeps - s0} sleeps)")
            bar = new_barrier()
            per = []
            for _ in range(bar_n):
                t0 = time.perf_counter_ns()
                run(barrier_task, bar.address)
                t1 = time.perf_counter_ns()
                run(empty_task, 0)
                t2 = time.perf_counter_ns()
                per.append(((t1 - t0) - (t2 - t1)) / BARRIERS)
            med, p99 = _stats(per)
            _row(f"one barrier (of {BARRIERS} in a run)", med, p99)


if __name__ == "__main__":
    main()
