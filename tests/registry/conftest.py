"""Each registry test gets its own data and config folders (models, jobs database, user registry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import write_pth


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    dirs = {"data": tmp_path / "data", "config": tmp_path / "config"}
    monkeypatch.setenv("RWKV_TUI_DATA_DIR", str(dirs["data"]))
    monkeypatch.setenv("RWKV_TUI_CONFIG_DIR", str(dirs["config"]))
    return dirs


@pytest.fixture(scope="session")
def tiny_pth(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Bytes of a genuine torch-format RWKV-4 checkpoint: 2 layers, width 64, vocabulary 256."""
    path = tmp_path_factory.mktemp("pth") / "tiny.pth"
    write_pth(path, v4_state_dict(n_layer=2, n_embd=64, n_vocab=256, seed=3))
    return path.read_bytes()
