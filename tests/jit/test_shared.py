"""Process-wide compiled modules (runtime/jit/shared.py): built once however many threads make the
first call at once, and never freed while anything may run them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from llvmlite import ir

from runtime.jit.irkit import I64
from runtime.jit.shared import shared_function, shared_module

REPO = Path(__file__).resolve().parents[2]
THREADS = 16

# Every thread waits at a barrier, then makes the process's first call into a cached native entry
# point: the stream read bench uses, a thread pool (its library and the pause calibration), the
# sampler. Before the registry, each thread compiled the stream read and the one whose result the
# cache replaced freed code another thread was running (a segfault at "measuring memory bandwidth").
_SCRIPT = f"""
import threading
import numpy as np
from runtime.jit.kernels.stream_read import stream_sum
from runtime.jit.kernels.sample import sample_kernels
from runtime.jit.threads import ThreadPool

n = {THREADS}
data = np.ones(1 << 22, np.float32)
barrier = threading.Barrier(n)
sums, pools, samplers, errors = [], [], [], []

def first_calls(i):
    try:
        barrier.wait()
        sums.append(stream_sum(data))
        with ThreadPool(1) as pool:
            pools.append(pool.spin_rounds)
        samplers.append(id(sample_kernels().compiled))
    except BaseException as e:
        errors.append(repr(e))

threads = [threading.Thread(target=first_calls, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors, len(sums), set(sums), len(pools), len(set(samplers)))
"""


def test_first_calls_from_many_threads_in_a_fresh_process(tmp_path: Path) -> None:
    env = {**os.environ, "RWKV_TUI_CACHE_DIR": str(tmp_path)}  # a cold object cache: real compiles
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[]", str(THREADS), f"{{{float(1 << 22)}}}", str(THREADS), "1"]


def _counting_module(calls: list[int]) -> ir.Module:
    calls.append(1)
    module = ir.Module(name="shared_test")
    fn = ir.Function(module, ir.FunctionType(I64, []), "answer")
    ir.IRBuilder(fn.append_basic_block()).ret(ir.Constant(I64, 42))
    return module


def test_one_build_and_one_module_for_every_caller() -> None:
    import ctypes

    calls: list[int] = []
    barrier = threading.Barrier(8)
    got = []

    def first_call() -> None:
        barrier.wait()
        fn = shared_function("shared-test", lambda: _counting_module(calls), "answer", ctypes.CFUNCTYPE(ctypes.c_int64))
        got.append((fn(), shared_module("shared-test", lambda: _counting_module(calls))))

    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert [answer for answer, _ in got] == [42] * 8
    assert len({id(module) for _, module in got}) == 1
