"""settings.toml: defaults when missing, the storage cap, clear errors for bad values."""

from __future__ import annotations

import pytest

from runtime.settings import SettingsError, load_settings


def test_defaults_when_the_file_is_missing(tmp_path):
    assert load_settings(tmp_path / "settings.toml").max_state_bytes == 0


def test_state_cap_in_megabytes(tmp_path):
    p = tmp_path / "settings.toml"
    p.write_text("[storage]\nmax_state_mb = 250\n")
    assert load_settings(p).max_state_bytes == 250_000_000


@pytest.mark.parametrize("body", ["[storage]\nmax_state_mb = -1\n", "[storage]\nmax_state_mb = 'lots'\n", "[storage\n"])
def test_bad_settings_name_the_file(tmp_path, body):
    p = tmp_path / "settings.toml"
    p.write_text(body)
    with pytest.raises(SettingsError, match=r"settings\.toml"):
        load_settings(p)
