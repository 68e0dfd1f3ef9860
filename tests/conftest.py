"""Test-session setup: kernels, data and config go to private folders, never the user's."""

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
