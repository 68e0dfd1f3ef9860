"""The first hour of a new user (issue 14): nothing typed is lost, and letters typed into the prompt
are text, never the single-letter keys of the message list or the sidebar."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from textual import events
from textual.widgets import Static

from runtime.chat.conversation import INGEST_CHUNK
from tests.tui.conftest import notes, wait_for
from tests.tui.test_chat import SIZE, open_chat, reply_to, saved_messages, send, shown
from tests.tui.test_resume import choose
from tui.app import RwkvApp
from tui.screens.dialogs import ChoiceDialog, TextDialog
from tui.screens.welcome import WelcomeScreen
from tui.widgets.conversation import MessageView
from tui.widgets.pane import ChatPane


async def burst(pilot, text: str) -> None:
    """Keys as a terminal delivers them, without waiting between them (the first thing a user types)."""
    for ch in text:
        pilot.app.post_message(events.Key("space" if ch == " " else ch, ch))
    await pilot.pause()


async def typed_lands_in_prompt(pilot, pane: ChatPane, text: str = "effect") -> None:
    await wait_for(pilot, lambda: pane.is_mounted and not pane.busy, what="the tab to settle")
    await pilot.pause()
    assert pilot.app.focused is pane.prompt, f"focus is on {pilot.app.focused!r}, not the prompt"
    await burst(pilot, text)
    assert pane.prompt.text == text


def test_a_model_tab_opened_at_start_next_to_restored_tabs_takes_the_typing(models):
    async def first() -> None:
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "An earlier chat")
            await pilot.press("ctrl+q")

    async def second() -> None:
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and len(app.chat.panes) == 2, what="two tabs")
            new = app.chat.panes[1]
            await wait_for(pilot, lambda: app.chat.active_pane is new, what="the new tab to be active")
            for pane in app.chat.panes:
                await wait_for(pilot, lambda p=pane: not p.busy, what="the tabs to load")
            await typed_lands_in_prompt(pilot, new)

    asyncio.run(first())
    asyncio.run(second())


def test_every_way_a_tab_opens_leaves_the_typing_in_its_prompt(models, model_files, tui_home):
    async def body():
        # first start with a model file: the tab opens with the focus in its prompt
        app = RwkvApp(model=str(model_files["tiny-a"]))
        async with app.run_test(size=SIZE) as pilot:
            one = await open_chat(pilot, app)
            await typed_lands_in_prompt(pilot, one)
            one.prompt.clear()
            await send(pilot, one, "The first chat")
            # ctrl+n and ctrl+t from the prompt, and from the message list
            for key, start in (("ctrl+n", "prompt"), ("ctrl+t", "prompt"), ("ctrl+n", "messages")):
                if start == "messages":
                    app.chat.tabs.active = one.id
                    await pilot.pause()
                    await pilot.press("alt+up")
                    await wait_for(pilot, lambda: app.focused is one.view, what="the message list")
                count = len(app.chat.panes)
                await pilot.press(key)
                await pilot.pause()
                if isinstance(app.screen, ChoiceDialog):  # two models could write a novel: take the first
                    await pilot.press("enter")
                await wait_for(pilot, lambda c=count: len(app.chat.panes) == c + 1, what=f"a tab from {key}")
                new = app.chat.active_pane
                await typed_lands_in_prompt(pilot, new)
                new.prompt.clear()
            # fork (f8): the new tab takes the typing
            app.chat.tabs.active = one.id
            await pilot.pause()
            count = len(app.chat.panes)
            await pilot.press("f8")
            await wait_for(pilot, lambda: len(app.chat.panes) == count + 1, what="the fork")
            fork = app.chat.active_pane
            assert fork is not one
            await typed_lands_in_prompt(pilot, fork)
            fork.prompt.clear()
            app.chat.tabs.active = one.id
            await pilot.pause()
            await pilot.press("ctrl+q")
        conversation_id = one.conversation.id

        # restart with the saved tabs
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and len(app.chat.panes) >= 2, what="restored tabs")
            for pane in app.chat.panes:
                await wait_for(pilot, lambda p=pane: not p.busy, what="the tabs to load")
            await typed_lands_in_prompt(pilot, app.chat.active_pane)
            await pilot.press("ctrl+q")

        # --resume next to the restored tabs
        app = RwkvApp(resume=str(conversation_id))
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and app.chat.panes, what="tabs")
            for pane in app.chat.panes:
                await wait_for(pilot, lambda p=pane: not p.busy, what="the tabs to load")
            active = app.chat.active_pane
            assert active.conversation_id == conversation_id
            await typed_lands_in_prompt(pilot, active)

    asyncio.run(body())


def test_single_letter_keys_of_the_lists_are_text_while_the_prompt_has_focus(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "Something to select")
            pane.prompt.focus()
            await pilot.pause()
            panes, screens = len(app.chat.panes), len(app.screen_stack)
            letters = "ecyfjkrdav"  # message list: edit copy copy-code fork down up; sidebar: rename delete archive
            await burst(pilot, letters)
            assert pane.prompt.text == letters
            assert len(app.chat.panes) == panes and len(app.screen_stack) == screens  # no fork, no dialog
            assert app.focused is pane.prompt

    asyncio.run(body())


def test_esc_while_a_long_message_is_read_gives_it_back_in_the_prompt(models, monkeypatch):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "A short one first")
            before = [(m.role, m.content) for m in saved_messages(pane.conversation.id)]
            # hold the model inside the reading of the long message until esc has been pressed
            model = pane.model
            reading, go_on = threading.Event(), threading.Event()
            forward = model.forward

            def held(ids, state=None, **kw):
                if len(ids) == INGEST_CHUNK and not reading.is_set():
                    reading.set()
                    go_on.wait(30)
                return forward(ids, state, **kw)

            monkeypatch.setattr(model, "forward", held)
            long = "\n".join(f"Line {i}: a long pasted text about recurrent networks." for i in range(400))
            assert len(long) > 20_000
            pane.prompt.focus()
            pane.prompt.text = long  # as a paste delivers it
            await pilot.press("enter")
            await wait_for(pilot, reading.is_set, what="the model to read the message")
            await pilot.press("escape")
            go_on.set()
            await wait_for(pilot, lambda: not pane.busy, what="the stop")
            await pilot.pause()
            # nothing was saved, nothing half-shown, the message is back where it was typed, and a notice says so
            assert [(m.role, m.content) for m in saved_messages(pane.conversation.id)] == before
            assert shown(pane) == before
            assert pane.prompt.text == long
            assert any("back in the input box" in n for n in notes(app))
            assert not [n for n in notes(app) if "failed" in n]
            # sending it again works
            monkeypatch.setattr(model, "forward", forward)
            await reply_to(pilot, pane, "enter")
            saved = saved_messages(pane.conversation.id)
            assert [m.content for m in saved[:3]] == [before[0][1], before[1][1], long]
            assert pane.prompt.text == ""

    asyncio.run(body())


def headers(pane: ChatPane) -> list[str]:
    return [str(v.query_one(".message-header", Static).render()) for v in pane.view.query(MessageView)]


def test_each_reply_keeps_the_name_of_the_model_that_wrote_it_after_f4(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "To the first model")
            await pilot.press("f4")
            await choose(pilot, app, "tiny-b.gguf")
            await wait_for(pilot, lambda: pane.model is not None and pane.model.path.name == "tiny-b.gguf"
                           and not pane.busy, what="the switch")
            await send(pilot, pane, "To the second model")
            saved = saved_messages(pane.conversation.id)
            assert [(m.role, m.model_ref, m.file_type) for m in saved] == [
                ("user", None, None), ("assistant", "tiny-a", "F32"), ("user", None, None),
                ("assistant", "tiny-b", "F32")]
            shown_headers = headers(pane)
            assert shown_headers[1].startswith("tiny-a · F32") and shown_headers[3].startswith("tiny-b · F32")
            # and so after a restart
            await pilot.press("ctrl+q")
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and app.chat.panes, what="the restored tab")
            pane = app.chat.panes[0]
            await wait_for(pilot, lambda: pane.conversation is not None and not pane.busy, what="the tab to load")
            await pilot.pause()
            shown_headers = headers(pane)
            assert shown_headers[1].startswith("tiny-a · F32") and shown_headers[3].startswith("tiny-b · F32")

    asyncio.run(body())


def test_a_database_from_before_the_writer_was_recorded_opens_and_labels_old_replies_plainly(models, tui_home):
    from runtime.chat import schema
    from runtime.chat.store import default_path

    # a version-1 database, as the previous release wrote it
    path = default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in schema.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO conversations (id, title, mode, family, model_ref, created_at, updated_at) "
                 "VALUES (1, 'Old chat', 'chat', 'testchat', 'tiny-b', 1.0, 1.0)")
    for seq, role, content in ((0, "init", "A chat.\n\n"), (1, "user", "Hello"), (2, "assistant", "Old reply")):
        conn.execute("INSERT INTO messages (conversation_id, seq, role, content, n_tokens, complete, created_at) "
                     "VALUES (1, ?, ?, ?, 3, 1, 1.0)", (seq, role, content))
    conn.close()

    async def body():
        app = RwkvApp(resume="1")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and app.chat.panes, what="the tab")
            pane = app.chat.panes[0]
            await wait_for(pilot, lambda: pane.conversation is not None and not pane.busy, what="the tab to load")
            await send(pilot, pane, "And now")
            shown_headers = headers(pane)
            assert shown_headers[1].startswith("Assistant")  # the writer of an old reply is not known
            assert shown_headers[3].startswith("tiny-b · F32")
            saved = saved_messages(1)
            assert [(m.content, m.model_ref) for m in saved[:2]] == [("Hello", None), ("Old reply", None)]
            assert saved[3].model_ref == "tiny-b"

    asyncio.run(body())


def test_two_forks_of_a_conversation_get_different_titles(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "Fork me")
            for count in (2, 3):
                app.chat.tabs.active = pane.id
                await pilot.pause()
                await pilot.press("f8")
                await wait_for(pilot, lambda c=count: len(app.chat.panes) == c, what="the fork")
            titles = [p.tab_title for p in app.chat.panes]
            assert titles == ["Fork me", "Fork me (fork)", "Fork me (fork 2)"]
            assert any("Fork me (fork 2)" in n for n in notes(app))

    asyncio.run(body())


def test_export_proposes_the_documents_folder_and_says_where_it_saved(models):
    async def export(pilot, app) -> Path:
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the export dialog")
        target = Path(app.screen.query_one("#dialog-input").value)
        await pilot.press("enter")
        await wait_for(pilot, target.exists, what="the exported file")
        return target

    async def body():
        documents = Path.home() / "Documents"
        documents.mkdir()
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "Export me")
            first = await export(pilot, app)
            assert first == documents / "export-me.md"
            assert any(f"Saved to {first}" in n for n in notes(app))
            second = await export(pilot, app)  # the first export is not replaced
            assert second == documents / "export-me-2.md" and first.exists()
            assert any(f"Saved to {second}" in n for n in notes(app))
            assert "# Export me" in second.read_text(encoding="utf-8")
            assert not list(Path.cwd().glob("*.md"))  # nothing lands where the app was started

    asyncio.run(body())


def test_the_first_start_with_a_file_of_ones_own_opens_a_tab_that_takes_the_typing(model_files, tui_home):
    async def body():
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, WelcomeScreen), what="the welcome screen")
            await pilot.press("tab", "enter")  # "Use a model file I have"
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the file dialog")
            app.screen.query_one("#dialog-input").value = str(model_files["tiny-a"])
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.chat.panes, what="a tab on the file")
            await typed_lands_in_prompt(pilot, app.chat.active_pane)

    asyncio.run(body())


def test_typing_sent_the_moment_a_tab_is_ready_lands_in_its_prompt(models):
    """A tab whose model is ready at once (kernels compiled earlier in the process, or the file
    already loaded by another tab) takes keys sent the moment it is ready: the focus is in its prompt
    from the moment it opens, not a refresh later (the sidebar's search used to take them)."""
    async def body():
        app = RwkvApp(model="tiny-a")
        app.pool.acquire(models["tiny-a"])  # already loaded: the tab's load takes no time
        async with app.run_test(size=SIZE) as pilot:
            def ready() -> bool:
                panes = app.chat.panes if app.chat is not None else []
                return bool(panes) and panes[0].model is not None and not panes[0].busy

            await wait_for(pilot, ready, what="the tab to be ready")
            pane = app.chat.panes[0]
            assert app.focused is pane.prompt, f"focus is on {app.focused!r}, not the prompt"
            await burst(pilot, "Hello")
            assert pane.prompt.text == "Hello"

    asyncio.run(body())
