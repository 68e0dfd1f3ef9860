"""Regenerate and continue in the app: a message whose reply a stopped app never saved gets one, and
with nothing to act on their keys say so."""

from __future__ import annotations

import asyncio

import runtime
from runtime.chat.conversation import Conversation
from runtime.chat.store import ConversationStore
from tests.tui.conftest import notes, wait_for
from tests.tui.test_chat import SIZE, open_chat, reply_to, saved_messages, shown
from tests.tui.test_resume import loaded
from tui.app import RwkvApp


def test_regenerate_and_continue_with_nothing_to_act_on_say_so(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            await open_chat(pilot, app)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: any("no reply to regenerate" in n for n in notes(app)), what="a notice")
            await pilot.press("ctrl+g")
            await wait_for(pilot, lambda: any("nothing to continue" in n for n in notes(app)), what="a notice")

    asyncio.run(body())


def _conversation_whose_reply_was_lost(path) -> int:
    """A conversation as a kill before the reply's first text leaves it: the user's message, no reply."""
    with ConversationStore.open() as store, runtime.load_model(path, threads=1) as model:
        conv = Conversation.start(store, model, family="testchat", model_ref="tiny-a")
        conv.send("Are you there?")
        store.truncate(conv.id, 1)
        return conv.id


def test_a_message_whose_reply_was_never_saved_gets_one_after_a_restart(models):
    async def body(conversation_id: int, key: str) -> None:
        app = RwkvApp(resume=str(conversation_id))
        async with app.run_test(size=SIZE) as pilot:
            def resumed():
                panes = app.chat.panes if app.chat is not None else []
                return next((p for p in panes if p.conversation is not None
                             and p.conversation.id == conversation_id), None)

            await wait_for(pilot, resumed, what="the resumed tab")  # (next to the tabs of the last run)
            pane = resumed()
            await loaded(pilot, pane)
            assert app.chat.active_pane is pane
            assert shown(pane) == [("user", "Are you there?")]
            await reply_to(pilot, pane, key)
            saved = saved_messages(conversation_id)
            assert [m.role for m in saved] == ["user", "assistant"]
            assert shown(pane) == [(m.role, m.content) for m in saved]

    for key in ("ctrl+r", "ctrl+g"):
        asyncio.run(body(_conversation_whose_reply_was_lost(models["tiny-a"]), key))
