"""The conversation list: newest first, full-text search that opens the hit, rename, archive, delete."""

from __future__ import annotations

import asyncio

from runtime.chat.store import ConversationStore
from tests.tui.conftest import type_text, wait_for
from tests.tui.test_chat import SIZE
from tui.app import RwkvApp
from tui.screens.dialogs import ConfirmDialog, TextDialog
from tui.widgets.sidebar import ConversationList


def make_conversations() -> dict[str, int]:
    """Three saved conversations on the registered tiny model (records only: no states yet)."""
    ids = {}
    with ConversationStore.open() as store:
        for title, words in (("Gardening", "tomatoes need sun"), ("Rust questions", "the borrow checker"),
                             ("Zebra facts", "stripes are unique")):
            rec = store.create_conversation(title=title, mode="chat", family="testchat", model_ref="tiny-a",
                                            sampling={}, init_text="A chat.\n\n")
            store.add_message(rec.id, role="user", content=f"Tell me about {words}", n_tokens=0)
            store.add_message(rec.id, role="assistant", content=f"Yes: {words}.", n_tokens=0)
            ids[title] = rec.id
    return ids


def listed(app) -> list[str]:
    listing = app.chat.query_one(ConversationList)
    return [str(listing.get_option_at_index(i).prompt).split("\n")[0] for i in range(listing.option_count)]


def test_search_opens_the_hit_and_rename_archive_delete_work(models):
    ids = make_conversations()

    async def body():
        app = RwkvApp()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and listed(app), what="the list")
            assert listed(app) == ["Zebra facts", "Rust questions", "Gardening"]  # newest first
            # full-text search over messages; enter on a hit opens its conversation at that message
            await pilot.press("ctrl+f")
            await type_text(pilot, "borrow")
            # both messages that mention it, each under its conversation's title
            await wait_for(pilot, lambda: listed(app) == ["Rust questions"] * 2, what="the search result")
            await pilot.press("enter", "enter")  # to the list, then open the highlighted hit
            await wait_for(pilot, lambda: app.chat.panes, what="the opened tab")
            pane = app.chat.panes[0]
            assert pane.conversation_id == ids["Rust questions"]
            await wait_for(pilot, lambda: pane.conversation is not None and not pane.busy, what="resume")
            assert pane.view.views[0].shown.content == "Tell me about the borrow checker"
            # clear the search: every conversation again
            app.chat.sidebar.query_one("#search").value = ""
            await wait_for(pilot, lambda: len(listed(app)) == 3, what="the full list")
            listing = app.chat.query_one(ConversationList)
            listing.focus()
            listing.highlighted = listed(app).index("Rust questions")
            # rename the open conversation: the tab follows
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the rename dialog")
            app.screen.query_one("#dialog-input").value = ""
            await type_text(pilot, "Borrowing in Rust")
            await pilot.press("enter")
            await wait_for(pilot, lambda: "Borrowing in Rust" in listed(app), what="the new title")
            assert pane.tab_title == "Borrowing in Rust"
            with ConversationStore.open() as store:
                assert store.get_conversation(ids["Rust questions"]).title == "Borrowing in Rust"
            # archive hides it from the list (v shows archived ones again)
            listing.focus()
            listing.highlighted = listed(app).index("Gardening")
            await pilot.press("a")
            await wait_for(pilot, lambda: "Gardening" not in listed(app), what="archiving")
            await pilot.press("v")
            await wait_for(pilot, lambda: "Gardening (archived)" in listed(app), what="archived shown")
            # delete asks first; the open tab closes with it
            listing.highlighted = listed(app).index("Borrowing in Rust")
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
            await pilot.press("y")
            await wait_for(pilot, lambda: "Borrowing in Rust" not in listed(app), what="the delete")
            assert not app.chat.panes
            with ConversationStore.open() as store:
                remaining = {r.title for r in store.list_conversations(include_archived=True)}
            assert remaining == {"Gardening", "Zebra facts"}

    asyncio.run(body())
