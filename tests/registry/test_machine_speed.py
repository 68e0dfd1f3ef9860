"""This machine's memory read: measured once with the compiled read, kept in the cache folder per machine
(not when the machine was busy), measured again when the kept file is damaged, hostile or another
machine's, and never measured where asked not to."""

from __future__ import annotations

import json
import os
import threading

import pytest

from runtime.registry import machine_speed
from runtime.registry.machine_speed import CACHE_NAME, machine_identity, memory_read_gbs

REAL_MEASURE = machine_speed.measure_read_gbs  # before the session's fixture pins it
REAL_BUSY = machine_speed._busy


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_TUI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / CACHE_NAME


@pytest.fixture
def measured(monkeypatch) -> list[float]:
    """The figures handed out by a fake measurement, one per call (23.5, 24.5, …)."""
    calls: list[float] = []

    def fake() -> float:
        calls.append(23.5 + len(calls))
        return calls[-1]

    monkeypatch.setattr(machine_speed, "measure_read_gbs", fake)
    return calls


def test_the_read_is_measured_once_then_kept(cache, measured):
    assert memory_read_gbs(measure=False) is None and measured == []  # nothing kept: not measured
    assert memory_read_gbs() == 23.5
    assert memory_read_gbs() == 23.5 and memory_read_gbs(measure=False) == 23.5
    assert measured == [23.5]
    assert json.loads(cache.read_text()) == {"machine": machine_identity(), "read_gbs": 23.5}


@pytest.mark.parametrize("kept", [
    "not json at all", "[]", '{"machine": "another CPU|64 threads", "read_gbs": 99.0}',
    '{"read_gbs": 12.0}', '{"machine": "%s", "read_gbs": "fast"}', '{"machine": "%s", "read_gbs": NaN}',
    '{"machine": "%s", "read_gbs": -3}', '{"machine": "%s", "read_gbs": true}', '{"machine": "%s", "read_gbs": 1e9}',
    '{"machine": "%s", "read_gbs": 1' + "0" * 400 + '}', "[" * 4000,  # nested past json's recursion limit
    '{"machine": "%s", "read_gbs": 30.0}' + " " * 5000,  # a sane figure, but in a file too large to read
], ids=["text", "list", "other-machine", "no-machine", "string", "nan", "negative", "bool", "absurd", "huge-int",
        "nested", "oversized"])
def test_a_damaged_or_foreign_kept_figure_is_measured_again(cache, measured, kept):
    cache.parent.mkdir(parents=True)
    cache.write_text(kept.replace("%s", machine_identity().replace("\\", "\\\\")))
    assert memory_read_gbs(measure=False) is None
    assert memory_read_gbs() == 23.5 and measured == [23.5]
    assert json.loads(cache.read_text())["read_gbs"] == 23.5  # replaced by the new figure


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_a_folder_in_place_of_the_kept_file_is_not_read(cache, measured, monkeypatch):
    cache.parent.mkdir(parents=True)
    os.mkfifo(cache)  # opened to read the usual way, it would wait for a writer forever
    assert memory_read_gbs(measure=False) is None
    assert memory_read_gbs() == 23.5 and cache.is_file()  # measured, and kept in the FIFO's place
    cache.unlink()
    cache.mkdir()
    monkeypatch.setattr(machine_speed, "_measured", None)  # a new process
    assert memory_read_gbs(measure=False) is None
    assert memory_read_gbs() == 24.5 and measured == [23.5, 24.5] and cache.is_dir()  # not kept: a folder there


def test_a_figure_measured_while_the_machine_is_busy_is_used_but_not_kept(cache, measured, monkeypatch):
    loads = iter([(9.0, 9.0, 9.0), (0.0, 0.0, 0.0)])
    monkeypatch.setattr(machine_speed, "_busy", REAL_BUSY)  # the session's fixture pins it
    monkeypatch.setattr(os, "getloadavg", lambda: next(loads))
    monkeypatch.setattr(machine_speed, "default_threads", lambda: 2)
    assert memory_read_gbs() == 23.5 and not cache.exists()  # load 9 on 2 cores
    assert memory_read_gbs() == 23.5 and measured == [23.5]  # this process's figure, not measured again
    monkeypatch.setattr(machine_speed, "_measured", None)  # a new process, the machine quiet now
    assert memory_read_gbs() == 24.5 and json.loads(cache.read_text())["read_gbs"] == 24.5


def test_callers_at_once_share_one_measurement(cache, monkeypatch):
    """Two measurements at once would each see about half the memory; the second caller waits instead."""
    started, release, calls = threading.Event(), threading.Event(), []

    def slow() -> float:
        calls.append(1)
        started.set()
        release.wait(30)
        return 31.0

    monkeypatch.setattr(machine_speed, "measure_read_gbs", slow)
    results: list[float | None] = []
    first = threading.Thread(target=lambda: results.append(memory_read_gbs()))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=lambda: results.append(memory_read_gbs()))
    second.start()
    release.set()
    first.join(30)
    second.join(30)
    assert results == [31.0, 31.0] and calls == [1]


def test_the_buffer_read_is_a_sixteenth_of_the_memory_within_bounds(monkeypatch):
    from runtime import memory_read

    asked = []
    monkeypatch.setattr(memory_read, "stream_read_gbs", lambda mb, repeats, threads: asked.append(mb) or 30.0)
    for total, mb in ((2 << 30, 256), (8 << 30, 512), (64 << 30, 1024)):
        monkeypatch.setattr(machine_speed, "_total_memory", lambda total=total: total)
        assert REAL_MEASURE() == 30.0 and asked[-1] == mb


def test_a_failed_measurement_gives_none_and_keeps_nothing(cache, monkeypatch):
    def broken() -> float:
        raise RuntimeError("stream read summed 0.0, expected 1.0")

    monkeypatch.setattr(machine_speed, "measure_read_gbs", broken)
    assert memory_read_gbs() is None
    assert not cache.exists()


def test_the_measurement_reads_this_machine_s_memory(cache, monkeypatch):
    monkeypatch.setattr(machine_speed, "measure_read_gbs", REAL_MEASURE)
    monkeypatch.setattr(machine_speed, "MEASURE_MEGABYTES", (64, 64))
    gbs = memory_read_gbs()
    assert gbs is not None and machine_speed.PLAUSIBLE_GBS[0] <= gbs <= machine_speed.PLAUSIBLE_GBS[1]
    assert json.loads(cache.read_text())["read_gbs"] == gbs == memory_read_gbs(measure=False)
