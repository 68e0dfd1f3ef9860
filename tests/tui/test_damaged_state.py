"""A conversation whose last saved state was damaged comes back in the app: rebuilt by reading it
again, with a notification saying so (before, it failed to open on every start)."""

from __future__ import annotations

import asyncio
import sqlite3

from tests.tui.conftest import notes, wait_for
from tests.tui.test_chat import SIZE, open_chat, send, shown
from tests.tui.test_resume import loaded
from tui.app import RwkvApp


def test_a_damaged_saved_state_is_rebuilt_with_a_notice(models, tui_home):
    async def first_session() -> tuple[list, int]:
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "Remember this")
            transcript = shown(pane)
            last = pane.conversation.messages[-1].seq
            await pilot.press("ctrl+q")
        return transcript, last

    async def second_session(before: list, last: int) -> None:
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and len(app.chat.panes) == 1, what="the tab")
            pane = app.chat.panes[0]
            await loaded(pilot, pane)
            assert shown(pane) == before
            assert pane.conversation.tokens_read > 0  # the last reply was read again
            (note,) = [n for n in notes(app) if n.startswith("A saved state was damaged:")]
            assert f"The saved state after message {last} was damaged" in note
            assert f"from the state after message {last - 1} ({pane.conversation.tokens_read} tokens re-read)" in note
            await send(pilot, pane, "And go on")  # and it goes on

    transcript, last = asyncio.run(first_session())
    with sqlite3.connect(tui_home["data"] / "conversations.sqlite3") as c:  # an INTEGER where the blob was
        c.execute("UPDATE states SET blob = 7 WHERE hash = (SELECT ts.state_hash FROM turn_states ts "
                  "JOIN messages m ON m.id = ts.message_id WHERE m.seq = ?)", (last,))
    asyncio.run(second_session(transcript, last))
