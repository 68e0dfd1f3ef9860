"""Test-session setup: compiled kernels go to a private cache, never the user's."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_kernel_cache(tmp_path_factory: pytest.TempPathFactory):
    old = os.environ.get("RWKV_TUI_CACHE_DIR")
    os.environ["RWKV_TUI_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("RWKV_TUI_CACHE_DIR", None)
    else:
        os.environ["RWKV_TUI_CACHE_DIR"] = old
