"""Snapshot tests of the main screens (`pytest --snapshot-update` accepts a deliberate change).

Everything shown is deterministic: a saved conversation with fixed text, the test families' settings,
and no live reply (its speed would differ from run to run).
"""

from __future__ import annotations

from pathlib import Path

from runtime.chat.store import ConversationStore
from tests.tui.conftest import wait_for
from tui.app import RwkvApp
from tui.widgets.pane import ChatPane

SIZE = (110, 32)

REPLY = """RWKV is a recurrent network that trains like a transformer. Its whole context is a small state:

- the state has a fixed size, whatever the length of the conversation;
- so a conversation resumes at once from its saved state.

```python
state = model.new_state()
logits, state = model.forward(tokens, state)
```"""


def saved_conversation() -> int:
    with ConversationStore.open() as store:
        rec = store.create_conversation(title="What is RWKV?", mode="chat", family="testchat", model_ref="tiny-a",
                                        sampling={}, init_text="A chat.\n\n")
        store.add_message(rec.id, role="user", content="What is RWKV, in short?", n_tokens=0)
        store.add_message(rec.id, role="assistant", content=REPLY, n_tokens=0, model_ref="tiny-a", file_type="F32")
        store.set_app_value("open_tabs", {"ids": [rec.id], "active": rec.id})
        return rec.id


async def conversation_ready(pilot) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.chat is not None and app.chat.panes, what="the restored tab")
    pane: ChatPane = app.chat.panes[0]
    await wait_for(pilot, lambda: pane.conversation is not None and not pane.busy, what="resume")
    pane.prompt.cursor_blink = False
    await pilot.pause(0.3)


def test_welcome_screen(snap_compare, tui_home, monkeypatch):
    from runtime.registry import recommend
    from tui.screens.welcome import WelcomeScreen

    monkeypatch.setattr(recommend, "machine_resources", lambda folder: (6 << 30, 500 << 30))  # any machine

    async def suggested(pilot) -> None:  # the memory read is pinned (tests/conftest.py): the same suggestion
        app = pilot.app
        await wait_for(pilot, lambda: isinstance(app.screen, WelcomeScreen) and not app.screen.finding,
                       what="the welcome screen's suggestion")
        await pilot.pause(0.3)

    assert snap_compare(RwkvApp(), terminal_size=SIZE, run_before=suggested)


def test_main_screen_with_a_saved_conversation(snap_compare, models):
    saved_conversation()
    assert snap_compare(RwkvApp(), terminal_size=SIZE, run_before=conversation_ready)


def test_sampling_dialog(snap_compare, models):
    saved_conversation()

    async def open_dialog(pilot) -> None:
        await conversation_ready(pilot)
        await pilot.press("f5")
        await pilot.pause(0.2)
        pilot.app.screen.query_one("#f-temperature").cursor_blink = False

    assert snap_compare(RwkvApp(), terminal_size=SIZE, run_before=open_dialog)


def test_help_screen(snap_compare, models, monkeypatch):
    saved_conversation()
    # the test's config folder is a new temporary one each run; show the usual place instead
    monkeypatch.setattr("tui.screens.help.keymap_path", lambda: Path("~/.config/rwkv-tui/keymap.toml"))

    async def open_help(pilot) -> None:
        await conversation_ready(pilot)
        await pilot.press("f1")
        await pilot.pause(0.3)

    assert snap_compare(RwkvApp(), terminal_size=SIZE, run_before=open_help)


def test_jobs_screen_with_nothing_queued(snap_compare, models):
    saved_conversation()

    async def open_jobs(pilot) -> None:
        await conversation_ready(pilot)
        await pilot.press("f3")
        await pilot.pause(0.3)

    assert snap_compare(RwkvApp(), terminal_size=SIZE, run_before=open_jobs)
