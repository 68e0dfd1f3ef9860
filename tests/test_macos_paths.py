"""The macOS code paths, forced on Linux: what a Mac lacks is taken away and the runtime must still work.

A Mac has no futex (idle pool workers back off with usleep instead), no MADV_HUGEPAGE / MADV_NOHUGEPAGE,
no posix_fadvise, no sched_getaffinity, no /proc (smaps, status, maps), and platformdirs puts the
data and the config in one folder (~/Library/Application Support/rwkv-tui). The machine code for
arm64 macOS is built in tests/jit/test_other_targets.py; here the Python and IR choices are run.
"""

from __future__ import annotations

import builtins
import mmap
import os
import resource
import stat
import sys
import time
from pathlib import Path

import numpy as np
import platformdirs
import pytest
from platformdirs.macos import MacOS

from runtime import atomic, pagecache, paths, threadcount
from runtime.jit import threads
from runtime.jit.engine import compile_module
from runtime.jit.release import release_compiler_pages
from runtime.model.model import load_model
from runtime.quant.types import DType
from tests.jit.test_threads import _run_many, _task_module
from tests.support.gguf_model import write_model_gguf
from tests.support.synthetic import v4_state_dict


@pytest.fixture(scope="module")
def task():
    lib = compile_module(_task_module())
    return lib, lib.address("task")


def _external_calls(module) -> set[str]:
    return {f.name for f in module.functions if f.is_declaration and not f.name.startswith("llvm.")}


LINUX_POOL_CALLS = _external_calls(threads.pool_module())


@pytest.fixture
def pool_without_futex(monkeypatch):
    """ThreadPool's native half built as for a Mac (futex_syscall_number() is None off Linux)."""
    monkeypatch.setattr(threads, "futex_syscall_number", lambda: None)
    module = threads.pool_module()
    lib = compile_module(module)
    monkeypatch.setattr(threads, "_library", lambda: lib)
    return module


def test_the_pool_off_linux_calls_only_usleep_and_sched_yield(pool_without_futex):
    assert _external_calls(pool_without_futex) == {"usleep", "sched_yield"}
    if sys.platform.startswith("linux"):  # there the pool sleeps in futexes and moves woken workers
        assert {"syscall", "sched_getcpu", "sched_getaffinity"} <= LINUX_POOL_CALLS


def _wait_for_a_sleep(pool: threads.ThreadPool) -> None:
    """Until a worker has gone to sleep: ~100 µs of spinning, later on a loaded machine (5 s at most)."""
    deadline = time.monotonic() + 5
    while pool.sleeps == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.sleeps >= 1


def test_sleeping_workers_without_futex_never_miss_work(pool_without_futex, task):
    # spin_us=0: workers sleep at once, so every run finds them in the usleep back-off
    _, addr = task
    with threads.ThreadPool(3, spin_us=0) as pool:
        _run_many(pool, addr, 300)
        assert pool.sleeps > 0


def test_an_idle_pool_without_futex_backs_off_and_wakes_up(pool_without_futex, task):
    _, addr = task
    with threads.ThreadPool(2) as pool:
        _run_many(pool, addr, 3)
        _wait_for_a_sleep(pool)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(0.3)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        assert (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime) < 0.1  # naps up to 1 ms, no spinning
        _run_many(pool, addr, 3)


def test_thread_count_without_sched_getaffinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity")
    assert threadcount.default_threads() == (os.cpu_count() or 1)
    assert threadcount.check_threads(threadcount.max_threads()) == threadcount.max_threads()


@pytest.fixture
def no_linux_memory_calls(monkeypatch):
    """No MADV_HUGEPAGE/NOHUGEPAGE, no posix_fadvise, no /proc, as on a Mac."""
    for name in ("MADV_HUGEPAGE", "MADV_NOHUGEPAGE"):
        monkeypatch.delattr(mmap, name)
    for name in ("POSIX_FADV_DONTNEED", "posix_fadvise"):
        monkeypatch.delattr(os, name)
    real_open = builtins.open

    def open_without_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_without_proc)
    monkeypatch.setattr(sys, "platform", "darwin")


def test_a_model_loads_and_runs_without_linux_memory_calls(no_linux_memory_calls, tmp_path):
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=96, seed=5)
    path = write_model_gguf(tmp_path / "q.gguf", sd, DType.Q5_1, head=DType.Q8_0, emb=DType.F16)
    pagecache.drop_cached_pages(path)  # nothing to call: returns
    tokens = np.arange(10) % 96
    with load_model(path, threads=2) as model:
        every, _ = model.forward_all(tokens)
        state = model.new_state()
        for tok in tokens:
            logits, state = model.forward([int(tok)], state)
        assert np.abs(logits - every[-1]).max() <= 3e-4 * np.abs(every[-1]).max()
    assert release_compiler_pages() == 0  # madvise(MADV_PAGEOUT) is Linux's
    assert pagecache.huge_mapped_fraction(0, 1 << 20) is None  # no /proc/self/smaps


def test_page_hints_without_the_advice_constants(no_linux_memory_calls, tmp_path):
    f = tmp_path / "data"
    f.write_bytes(bytes(range(256)) * 64)
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pagecache.advise_huge_pages(m)
        pagecache.advise_small_pages(m, 100, 10_000)
        assert m[:256] == bytes(range(256))


def test_atomic_files_get_the_umask_mode_without_proc(no_linux_memory_calls, tmp_path):
    old = os.umask(0o027)
    try:
        atomic.atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640
    assert (tmp_path / "f").read_bytes() == b"x"


@pytest.fixture
def mac_folders(monkeypatch, tmp_path):
    """platformdirs as on a Mac, with HOME in tmp_path and no RWKV_TUI_*_DIR overrides."""
    monkeypatch.setattr(platformdirs, "PlatformDirs", MacOS)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RWKV_TUI_CACHE_DIR", "RWKV_TUI_DATA_DIR", "RWKV_TUI_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_folders_on_a_mac(mac_folders):
    support = mac_folders / "Library" / "Application Support" / "rwkv-tui"
    assert paths.cache_dir() == mac_folders / "Library" / "Caches" / "rwkv-tui"
    assert paths.data_dir() == support
    assert paths.config_dir() == support  # one folder for both on a Mac
    assert paths.cache_dir().is_dir() and support.is_dir()


def test_data_and_config_files_do_not_collide_in_the_one_mac_folder(mac_folders):
    from runtime.chat.store import default_path
    from runtime.eval.store import store_path
    from runtime.registry.catalog import user_path
    from runtime.registry.jobs import JobQueue
    from runtime.registry.status import models_dir
    from runtime.settings import settings_path
    from runtime.text.templates import user_catalog
    from tui.keymap import keymap_path

    assert user_catalog() == user_path()  # the one user catalog, read by both
    config = {settings_path(), user_path(), keymap_path()}
    data = {default_path(), store_path(), models_dir(), JobQueue().path}
    everything = config | data
    assert len(everything) == len(config) + len(data)
    assert {p.parent for p in everything} == {paths.config_dir()}


def test_overrides_still_win_on_a_mac(mac_folders, monkeypatch):
    monkeypatch.setenv("RWKV_TUI_DATA_DIR", str(mac_folders / "elsewhere"))
    assert paths.data_dir() == Path(mac_folders / "elsewhere")
    assert paths.config_dir() == mac_folders / "Library" / "Application Support" / "rwkv-tui"
