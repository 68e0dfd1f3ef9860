"""First run without a model, help and remappable keys, the sampling dialog, export, copy, the palette."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from textual.widgets import DataTable

from runtime.chat.store import ConversationStore
from tests.tui.conftest import notes, screen_text, type_text, wait_for
from tests.tui.test_chat import SIZE, open_chat, reply_to, send
from tui.app import RwkvApp
from tui.screens.dialogs import TextDialog
from tui.screens.help import HelpScreen
from tui.screens.models import ModelsScreen
from tui.screens.settings import SamplingDialog
from tui.screens.welcome import WelcomeScreen


def test_first_run_without_a_model_explains_and_offers_the_registry(tui_home):
    async def body():
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, WelcomeScreen), what="the welcome screen")
            assert "No model is ready yet" in screen_text(app)
            # "Use a file I have" with a file that is not a model: a notice naming it, nothing else
            garbage = tui_home["data"].parent / "not-a-model.gguf"
            garbage.write_bytes(b"this is not a model file" * 10)
            await pilot.press("tab", "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the file dialog")
            app.screen.query_one("#dialog-input").value = str(garbage)
            await pilot.press("enter")
            await wait_for(pilot, lambda: any("Cannot add" in n for n in notes(app)), what="the notice")
            assert any("not-a-model.gguf" in n for n in notes(app))
            assert app.screen is app.chat and not app.chat.panes
            assert "No model is ready yet" in screen_text(app)
            # asking for a chat without a model leads to the registry, with a notice; nothing crashes
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models screen")
            assert any("No model for a chat" in n for n in notes(app))
            text = screen_text(app)
            assert "Raven" in text and "not downloaded" in text
            for key in ("enter", "f4", "f5", "ctrl+r", "ctrl+g", "f8", "ctrl+s"):
                await pilot.press(key)
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.chat, what="back to the main screen")
            for key in ("f4", "f5", "ctrl+r", "ctrl+g", "f8", "ctrl+s", "ctrl+w", "alt+c"):
                await pilot.press(key)  # no open conversation: these do nothing, and say so
            assert app.screen is app.chat and not app.chat.panes

    asyncio.run(body())


def test_keys_are_remapped_from_keymap_toml_and_listed_in_help(models, tui_home):
    (tui_home["config"] / "keymap.toml").write_text(
        '[keys]\n"pane.regenerate" = "f11"\n"no.such.binding" = "f12"\n"pane.fork" = 3\n', encoding="utf-8")

    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            warnings = [n for n in notes(app) if n.startswith("Keymap")]
            assert any("no.such.binding" in n for n in warnings) and any("pane.fork" in n for n in warnings)
            await send(pilot, pane, "Remap test")
            first = pane.conversation.messages[-1]
            await reply_to(pilot, pane, "f11")  # regenerate, on its new key
            assert pane.conversation.messages[-1].id != first.id
            assert "f11 Regen" in screen_text(app)  # the footer shows the new key
            await pilot.press("f1")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
            help_text = screen_text(app)
            assert re.search(r"f11 +│? *Regenerate the last reply +│? *pane\.regenerate", help_text), help_text
            assert "pane.stop" in help_text
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.chat, what="back")

    asyncio.run(body())


def test_sampling_dialog_validates_and_saves_per_conversation(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "Sampling test")
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, SamplingDialog), what="the dialog")
            dialog = app.screen
            dialog.query_one("#f-temperature").value = "hot"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: "temperature" in str(dialog.query_one("#sampling-error").render()),
                           what="the error")
            assert app.screen is dialog  # still open: nothing was saved
            dialog.query_one("#f-temperature").value = "0.5"
            dialog.query_one("#f-max_tokens").value = "5"
            dialog.query_one("#f-stop").value = "\\n\\nQ:"
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.screen is app.chat, what="the dialog to close")
            conv = pane.conversation
            assert conv.sampling.temperature == 0.5 and conv.sampling.max_tokens == 5
            assert conv.sampling.stop == ("\n\nQ:",)
            with ConversationStore.open() as store:
                saved = store.get_conversation(conv.id).sampling
            assert saved["temperature"] == 0.5 and saved["max_tokens"] == 5
            await send(pilot, pane, "Short reply please")
            assert pane.conversation.messages[-1].n_tokens <= 5 + 2

    asyncio.run(body())


def test_export_copy_editor_and_command_palette(models, tui_home, monkeypatch):
    async def body():
        app = RwkvApp(model="tiny-a")
        copied: list[str] = []
        app.copy_to_clipboard = copied.append  # OSC 52 goes to a terminal; here we keep the text
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "Export me")
            reply = pane.conversation.messages[-1].content
            # copy the last reply (alt+c), and the user's message via message selection (alt+up, up, c)
            await pilot.press("alt+c")
            assert copied[-1] == reply
            await pilot.press("alt+up", "up", "c")
            assert copied[-1] == "Export me"
            await pilot.press("h")  # typing in the message list goes to the prompt
            assert app.focused is pane.prompt and pane.prompt.text == "h"
            pane.prompt.clear()
            # export to Markdown (ctrl+s) at the proposed path
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the export dialog")
            target = Path(app.screen.query_one("#dialog-input").value)
            assert target.parent == Path.home()  # no Documents folder here
            await pilot.press("enter")
            await wait_for(pilot, target.exists, what="the exported file")
            text = target.read_text(encoding="utf-8")
            assert text.startswith("# Export me") and "**You:**\n\nExport me" in text and reply.strip() in text
            # no real terminal here: $EDITOR cannot take over the screen, which is reported, not fatal
            monkeypatch.setenv("EDITOR", "true")
            pane.prompt.focus()
            await pilot.press("ctrl+o")
            assert any("Editor" in n for n in notes(app))
            # every pane action is in the command palette
            await pilot.press("ctrl+p")
            await type_text(pilot, "regenerate")
            await pilot.pause(0.3)
            assert "Regenerate" in screen_text(app)
            before = pane.replies
            await pilot.press("enter")
            await wait_for(pilot, lambda: pane.replies > before and not pane.busy, what="regenerate from the palette")

    asyncio.run(body())


def test_a_file_added_on_the_models_screen_opens_one_chat_on_it(models, tui_home):
    """`o` on the models screen registers the file, goes back to the main screen and opens one tab on
    it; enter on a ready model then opens exactly one more."""
    added = tui_home["data"].parent / "my-own-model.gguf"
    added.write_bytes(models["tiny-b"].read_bytes())

    async def body():
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and app.screen is app.chat, what="the main screen")
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models screen")
            await pilot.press("o")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the file dialog")
            app.screen.query_one("#dialog-input").value = str(added)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen is app.chat and app.chat.panes, what="a tab on the added file")
            await pilot.pause(0.3)
            assert len(app.chat.panes) == 1
            pane = app.chat.panes[0]
            await wait_for(pilot, lambda: pane.model is not None and not pane.busy, what="the model to load")
            assert Path(pane.model.path) == added
            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models screen")
            screen = app.screen
            added_id = next(k for k, st in screen._statuses.items() if st.entry.path and Path(st.entry.path) == added)
            table = screen.query_one(DataTable)
            table.move_cursor(row=table.get_row_index(added_id))
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen is app.chat and len(app.chat.panes) > 1, what="a second tab")
            await pilot.pause(0.3)
            assert len(app.chat.panes) == 2

    asyncio.run(body())
