"""Quitting and starting again: open tabs and conversations come back exactly, with nothing re-read;
a conversation whose model is gone still opens and moves to another model."""

from __future__ import annotations

import asyncio

from runtime.chat.store import ConversationStore
from tests.tui.conftest import notes, screen_text, type_text, wait_for
from tests.tui.test_chat import SIZE, open_chat, reply_to, saved_messages, send, shown
from tui.app import RwkvApp
from tui.messages import WorkProgress
from tui.screens.dialogs import ChoiceDialog
from tui.widgets.pane import ChatPane


async def loaded(pilot, pane: ChatPane) -> None:
    await wait_for(pilot, lambda: pane.is_mounted and pane.conversation is not None and not pane.busy,
                   what="the conversation to resume")
    await pilot.pause()


def test_quit_and_start_again_brings_back_the_tabs_with_zero_tokens_reread(models):
    async def first_session() -> list[list[tuple[str, str]]]:
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            one = await open_chat(pilot, app)
            await send(pilot, one, "First tab")
            await pilot.press("ctrl+n")  # the same model (the active tab's) in a new tab
            await wait_for(pilot, lambda: len(app.chat.panes) == 2, what="a second tab")
            two = app.chat.active_pane
            await wait_for(pilot, lambda: two.model is not None and not two.busy, what="the second tab")
            assert two.model is one.model  # one loaded model, shared
            await send(pilot, two, "Second tab")
            await pilot.press("alt+left")  # back to the first tab: it is the active one at exit
            assert app.chat.active_pane is one
            transcripts = [shown(one), shown(two)]
            await pilot.press("ctrl+q")
        return transcripts

    async def second_session(before: list[list[tuple[str, str]]]) -> None:
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and len(app.chat.panes) == 2, what="restored tabs")
            panes = app.chat.panes
            for pane in panes:
                await loaded(pilot, pane)
            assert [shown(p) for p in panes] == before
            assert all(p.conversation.tokens_read == 0 for p in panes)  # resumed from the saved states
            assert app.chat.active_pane is panes[0]
            assert len(app.pool.loaded()) == 1
            # and it goes on from there
            await send(pilot, panes[0], "Still here")
            assert [m.content for m in saved_messages(panes[0].conversation.id) if m.role == "user"] == [
                "First tab", "Still here"]

    transcripts = asyncio.run(first_session())
    assert [t[0] for t in transcripts] == [("user", "First tab"), ("user", "Second tab")]
    asyncio.run(second_session(transcripts))


def test_resume_last_opens_the_latest_conversation_and_a_bad_id_is_a_notice(models):
    async def make() -> int:
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "Remember me")
            await pilot.press("ctrl+w")  # close the tab: it is not restored, but --resume finds it
            await wait_for(pilot, lambda: not app.chat.panes, what="the tab to close")
            assert "No conversation open" in screen_text(app)
            assert app.pool.loaded() == []  # the last tab using the model let it go
            return pane.conversation.id

    async def resume(ref: str, expect: int | None) -> None:
        app = RwkvApp(resume=ref)
        async with app.run_test(size=SIZE) as pilot:
            if expect is None:
                await wait_for(pilot, lambda: notes(app), what="a notice")
                assert any("--resume" in n and ref in n for n in notes(app))
                assert app.screen is app.chat  # the app runs on (with the tabs of last time)
                return
            await wait_for(pilot, lambda: app.chat is not None and app.chat.panes, what="the resumed tab")
            pane = app.chat.panes[0]
            await loaded(pilot, pane)
            assert pane.conversation.id == expect
            assert shown(pane)[0] == ("user", "Remember me")
            assert pane.conversation.tokens_read == 0

    cid = asyncio.run(make())
    asyncio.run(resume("last", cid))
    asyncio.run(resume(str(cid), cid))
    asyncio.run(resume("12345", None))


async def choose(pilot, app, text: str) -> None:
    """Pick the option whose label contains `text` in the open ChoiceDialog."""
    await wait_for(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the choice dialog")
    dialog = app.screen
    labels = [str(label) for label, _ in dialog.choices]
    index = next(i for i, label in enumerate(labels) if text in label)
    for _ in range(index):
        await pilot.press("down")
    await pilot.press("enter")


def test_switch_model_builds_the_other_models_state_once_and_a_missing_model_is_no_crash(models):
    progress: list[WorkProgress] = []

    def hook(message) -> None:
        if isinstance(message, WorkProgress):
            progress.append(message)

    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE, message_hook=hook) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "Switch me")
            conv = pane.conversation
            before = shown(pane)
            read_before = conv.tokens_read
            await pilot.press("f4")
            await choose(pilot, app, "tiny-b.gguf")
            await wait_for(pilot, lambda: pane.model is not None and pane.model.path.name == "tiny-b.gguf"
                           and not pane.busy, what="the switch")
            # the transcript was read once into the new model's state, with progress events
            last = progress[-1].event
            assert last.done == last.total == conv.tokens_read - read_before > 0
            assert shown(pane) == before
            with ConversationStore.open() as store:
                assert store.get_conversation(conv.id).model_ref == "tiny-b"
            assert "tiny-b" in screen_text(app)
            pane.prompt.focus()
            await type_text(pilot, "On the other model")
            await reply_to(pilot, pane, "enter")
            assert len(saved_messages(conv.id)) == 4
            return conv.id

    async def gone(cid: int):
        # the conversation's model disappears from the registry: it opens read-only, and F4 moves it
        with ConversationStore.open() as store:
            store.update_conversation(cid, model_ref="a-model-that-was-deleted")
        app = RwkvApp(resume=str(cid))
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and app.chat.panes, what="the tab")
            pane = app.chat.panes[0]
            await wait_for(pilot, lambda: any("not on this machine" in n for n in notes(app)), what="the notice")
            assert pane.model is None and pane.view.views  # the transcript is shown anyway
            assert shown(pane)[0] == ("user", "Switch me")
            await pilot.press("f4")
            await choose(pilot, app, "tiny-a.gguf")
            await wait_for(pilot, lambda: pane.conversation is not None and not pane.busy, what="the move")
            assert pane.model.path.name == "tiny-a.gguf"
            pane.prompt.focus()
            await type_text(pilot, "Back again")
            await reply_to(pilot, pane, "enter")
            assert [m.content for m in saved_messages(cid) if m.role == "user"][-1] == "Back again"

    cid = asyncio.run(body())
    asyncio.run(gone(cid))
