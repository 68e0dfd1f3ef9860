"""Fixtures for the app's tests: small real models, private folders, and Pilot helpers.

Every test gets its own data and config folders (conversations, registry, keymap); the kernel cache
is shared by the session, so each model shape compiles once. The models are random RWKV-4 weights
with the 20B vocabulary (50277 ids, the real tokenizer) and a tiny width, so they load in a moment
and write gibberish at a few hundred tokens a second. The user registry lists them under two test
families whose replies are short (`max_tokens`), which keeps every flow quick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.quant.types import DType
from tests.support.gguf_model import write_model_gguf
from tests.support.synthetic import v4_state_dict

N_VOCAB = 50277

FAMILIES = """
[family.testchat]
description = "Test chat (Bob and Alice)"
mode = "chat"
tokenizer = "20b"
init = "A chat.\\n\\n"
user = "Bob: {message}\\n\\nAlice:"
separator = "\\n\\n"
stop = ["\\n\\nBob:", "\\n\\nAlice:"]

[family.testchat.sampling]
temperature = 1.0
top_p = 0.9
max_tokens = 12

[family.testnovel]
description = "Test novel (free text)"
mode = "novel"
tokenizer = "20b"

[family.testnovel.sampling]
temperature = 1.0
top_p = 0.9
max_tokens = 12
"""


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different tiny models (different weights, so different fingerprints)."""
    folder = tmp_path_factory.mktemp("tui-models")
    out = {}
    for name, seed in (("tiny-a", 11), ("tiny-b", 12)):
        sd = v4_state_dict(n_layer=1, n_embd=32, n_vocab=N_VOCAB, seed=seed)
        out[name] = write_model_gguf(folder / f"{name}.gguf", sd, DType.F32)
    return out


def register(model_id: str, path: Path, family: str = "testchat", name: str | None = None) -> None:
    from runtime.registry.catalog import save_user_entry

    save_user_entry({
        "id": model_id, "name": name or model_id.replace("-", " ").title(), "family": family, "arch": "4",
        "n_layer": 1, "n_embd": 32, "vocab": N_VOCAB, "file": path.name, "path": str(path),
    })


@pytest.fixture(autouse=True)
def tui_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Private data and config folders, with the test families in the user's models.toml."""
    dirs = {"data": tmp_path / "data", "config": tmp_path / "config"}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setenv("RWKV_TUI_DATA_DIR", str(dirs["data"]))
    monkeypatch.setenv("RWKV_TUI_CONFIG_DIR", str(dirs["config"]))
    home = tmp_path / "home"  # exports go to ~/Documents or ~: never the real ones
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_DOCUMENTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    (dirs["config"] / "models.toml").write_text(FAMILIES, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return dirs


@pytest.fixture
def models(model_files: dict[str, Path], tui_home: dict[str, Path]) -> dict[str, Path]:
    """Both tiny models registered as ready (family testchat)."""
    for model_id, path in model_files.items():
        register(model_id, path)
    return model_files


async def wait_for(pilot, condition: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    """Let the app run until `condition()` is true (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}\n{app_state(pilot.app)}")
        await pilot.pause(0.02)


def app_state(app) -> str:
    """What the app shows (its screen and its notifications), for a failure message."""
    try:
        screen = screen_text(app)
    except Exception as exc:  # a failure message must not fail itself
        screen = f"(screen not readable: {exc!r})"
    shown_notes = "\n".join(notes(app)) or "(none)"
    return f"--- screen ---\n{screen}\n--- notifications ---\n{shown_notes}"


def screen_text(app) -> str:
    """The characters on the app's screen, one line per row."""
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


def notes(app) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


async def type_text(pilot, text: str) -> None:
    """Type `text` as a terminal would send it (one key event per character), then let the app settle.

    Pilot.press waits for the whole screen to settle after every key; posting the events the way the
    terminal driver does and waiting once is the same input, much faster."""
    from textual import events

    for ch in text:
        key = {" ": "space", "\n": "ctrl+j"}.get(ch, ch)
        pilot.app.post_message(events.Key(key, ch))
    await pilot.pause()


@pytest.fixture
def run_sync():
    """Run a coroutine to completion (the tests drive Pilot from plain test functions)."""
    def run(coro):
        return asyncio.run(coro)

    return run
