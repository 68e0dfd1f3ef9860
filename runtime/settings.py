"""User settings that are not per conversation, from `settings.toml` in rwkv-tui's config folder.

    [storage]
    max_state_mb = 0     # disk for saved per-turn states; 0 keeps them all (the default)

A missing file means defaults; a malformed one is an error naming the file and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import RwkvError
from runtime.paths import config_dir


class SettingsError(RwkvError, ValueError):
    """settings.toml is malformed."""


@dataclass(frozen=True)
class Settings:
    max_state_bytes: int = 0  # 0: keep every per-turn state


def settings_path() -> Path:
    return config_dir() / "settings.toml"


def load_settings(path: Path | None = None) -> Settings:
    path = path or settings_path()
    if not path.is_file():
        return Settings()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: not valid TOML ({e})") from None
    storage = data.get("storage", {})
    mb = storage.get("max_state_mb", 0) if isinstance(storage, dict) else None
    if not isinstance(mb, int | float) or isinstance(mb, bool) or mb < 0:
        raise SettingsError(f"{path}: [storage] max_state_mb must be a number of megabytes ≥ 0 (0 keeps all)")
    return Settings(max_state_bytes=int(mb * 1_000_000))
