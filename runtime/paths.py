"""Where rwkv-tui keeps its files: platformdirs' per-user folders, overridable by environment.

    cache_dir()   compiled kernels (safe to delete)          $RWKV_TUI_CACHE_DIR
    data_dir()    conversations database, downloaded models   $RWKV_TUI_DATA_DIR
    config_dir()  user models.toml, keymap, settings          $RWKV_TUI_CONFIG_DIR

The environment overrides exist for tests and for users who keep models on another disk. The folders
are created on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "rwkv-tui"


def _folder(env: str, kind: str) -> Path:
    override = os.environ.get(env)
    if override:
        path = Path(override)
    else:
        import platformdirs

        path = Path(getattr(platformdirs, f"user_{kind}_dir")(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    return _folder("RWKV_TUI_CACHE_DIR", "cache")


def data_dir() -> Path:
    return _folder("RWKV_TUI_DATA_DIR", "data")


def config_dir() -> Path:
    return _folder("RWKV_TUI_CONFIG_DIR", "config")
