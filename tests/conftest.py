"""Test-session setup: kernels, data and config go to private folders, never the user's; this machine's
memory read (which the suggested model depends on) is pinned, so that what the app suggests does not
depend on the machine the tests run on (tests/registry/test_machine_speed.py measures it for real)."""

from __future__ import annotations

import os

import pytest

_FOLDERS = ("RWKV_TUI_CACHE_DIR", "RWKV_TUI_DATA_DIR", "RWKV_TUI_CONFIG_DIR")


@pytest.fixture(scope="session", autouse=True)
def _private_folders(tmp_path_factory: pytest.TempPathFactory):
    old = {k: os.environ.get(k) for k in _FOLDERS}
    for k in _FOLDERS:
        os.environ[k] = str(tmp_path_factory.mktemp(k.lower()))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


PINNED_READ_GBS = 40.0


@pytest.fixture(autouse=True)
def _pinned_memory_read(monkeypatch: pytest.MonkeyPatch) -> float:
    from runtime.registry import machine_speed

    monkeypatch.setattr(machine_speed, "measure_read_gbs", lambda: PINNED_READ_GBS)
    monkeypatch.setattr(machine_speed, "_busy", lambda: False)  # kept whatever else the machine runs
    monkeypatch.setattr(machine_speed, "_measured", None)  # no figure carried over from another test
    return PINNED_READ_GBS
