"""Chat flows driven through the keyboard: send and stream, stop, regenerate, continue, edit, fork, undo."""

from __future__ import annotations

import asyncio
import time

from textual import events

from runtime.chat.store import ConversationStore
from tests.tui.conftest import notes, screen_text, type_text, wait_for
from tui.app import RwkvApp
from tui.widgets.conversation import ConversationView, MessageView
from tui.widgets.pane import ChatPane
from tui.widgets.sidebar import ConversationList

SIZE = (110, 36)


def saved_messages(conversation_id: int):
    with ConversationStore.open() as store:
        return [m for m in store.messages(conversation_id) if m.role != "init"]


async def open_chat(pilot, app: RwkvApp) -> ChatPane:
    """Wait for the --model tab to load its model."""
    await wait_for(pilot, lambda: app.chat is not None and app.chat.panes, what="a tab")
    pane = app.chat.panes[0]
    await wait_for(pilot, lambda: pane.model is not None and not pane.busy, what="the model to load")
    return pane


async def send(pilot, pane: ChatPane, text: str) -> None:
    pane.prompt.focus()
    await type_text(pilot, text)
    await reply_to(pilot, pane, "enter")


async def reply_to(pilot, pane: ChatPane, *keys: str) -> None:
    """Press `keys` and wait for the reply they start to end."""
    before = pane.replies
    await pilot.press(*keys)
    await wait_for(pilot, lambda: pane.replies > before and not pane.busy, what=f"the reply to {keys}")
    await pilot.pause()


def shown(pane: ChatPane) -> list[tuple[str, str]]:
    return [(v.shown.role, v.shown.content) for v in pane.view.query(MessageView)]


def test_send_streams_a_reply_that_is_saved_and_shown(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            assert "tiny-a" in screen_text(app)
            # the text and its Enter in one burst, as a fast typist, a paste or tmux deliver them:
            # the whole message is sent, not the part the text area had taken when Enter arrived
            before = pane.replies
            for ch in "Hello there":
                app.post_message(events.Key("space" if ch == " " else ch, ch))
            app.post_message(events.Key("enter", "\r"))
            await wait_for(pilot, lambda: pane.replies > before and not pane.busy, what="the reply")
            await pilot.pause()
            conv = pane.conversation
            assert conv is not None
            saved = saved_messages(conv.id)
            assert [m.role for m in saved] == ["user", "assistant"]
            assert saved[0].content == "Hello there"
            # the view shows exactly what was saved, the prompt is empty again, the tab is named
            assert shown(pane) == [(m.role, m.content) for m in saved]
            assert pane.prompt.text == ""
            assert pane.tab_title == "Hello there"
            status = screen_text(app)
            assert "tok/s" in status and "state: " in status
            # the sidebar lists the new conversation, by its title (it re-reads the store on a message)
            listing = app.chat.query_one(ConversationList)

            def listed() -> list[tuple[str | None, str]]:
                options = [listing.get_option_at_index(i) for i in range(listing.option_count)]
                return [(o.id, str(o.prompt).split("\n")[0]) for o in options]

            await wait_for(pilot, lambda: listed() == [(f"c{conv.id}", "Hello there")], timeout=10,
                           what="the sidebar to list the conversation by its title")
            assert not [n for n in notes(app) if "rror" in n]

    asyncio.run(body())


def test_typing_stays_responsive_while_a_reply_streams_and_esc_keeps_the_partial_reply(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            # runs until stopped (end-of-text banned: a random model could otherwise stop at once)
            pane.set_sampling(pane.sampling().replace(max_tokens=100_000, banned_tokens=(0,)))
            pane.prompt.focus()
            await type_text(pilot, "Tell me a long story")
            await pilot.press("enter")
            await wait_for(pilot, lambda: pane.busy == "generating", what="generation")
            streaming = pane.view.query(MessageView).last()
            await wait_for(pilot, lambda: len(streaming.shown.content) > 20, what="streamed text")
            # type while the model writes: each key reaches the prompt while the reply still grows
            latencies = []
            typed = "while you write"
            for ch in typed:
                before = pane.prompt.text
                t0 = time.perf_counter()
                app.post_message(events.Key("space" if ch == " " else ch, ch))  # as the terminal driver does
                while pane.prompt.text == before:
                    assert time.perf_counter() - t0 < 20, f"key {ch!r} never reached the prompt (focus: {app.focused})"
                    await asyncio.sleep(0.0005)
                latencies.append(time.perf_counter() - t0)
                assert pane.busy == "generating"
            assert pane.prompt.text == typed
            grown = len(streaming.shown.content)
            await wait_for(pilot, lambda: len(streaming.shown.content) > grown, what="more streamed text")
            latencies.sort()
            print(f"\nkey to prompt while a reply streams: median {latencies[len(latencies) // 2] * 1e3:.1f} ms, "
                  f"worst {latencies[-1] * 1e3:.1f} ms over {len(latencies)} keys "
                  f"({len(streaming.shown.content)} characters streamed)")
            # the view follows the bottom while text arrives; scrolling up stops that, and scrolling
            # back to the end re-attaches it
            view = pane.view
            await wait_for(pilot, lambda: view.max_scroll_y > 5, what="a reply taller than the view")
            await pilot.pause(0.2)
            assert view.scroll_y >= view.max_scroll_y - 1
            view.scroll_home(animate=False, immediate=True)
            height = view.max_scroll_y
            await wait_for(pilot, lambda: view.max_scroll_y > height + 2, what="the reply to grow")
            assert view.scroll_y == 0  # left where the reader put it
            view.scroll_end(animate=False, immediate=True)
            height = view.max_scroll_y
            await wait_for(pilot, lambda: view.max_scroll_y > height + 2, what="the reply to grow again")
            await pilot.pause(0.2)
            assert view.scroll_y >= view.max_scroll_y - 1
            # esc stops; the partial reply stays, saved as cut short
            await pilot.press("escape")
            await wait_for(pilot, lambda: not pane.busy, what="the stop")
            saved = saved_messages(pane.conversation.id)
            assert saved[-1].role == "assistant" and not saved[-1].complete
            assert saved[-1].content and shown(pane)[-1] == ("assistant", saved[-1].content)
            assert pane.last_finish == "cancelled"
            assert "stopped" in screen_text(app)
            assert pane.prompt.text == typed  # what was typed meanwhile is kept

    asyncio.run(body())


def test_regenerate_continue_edit_fork_and_undo(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await send(pilot, pane, "First question")
            conv = pane.conversation
            first = saved_messages(conv.id)
            # regenerate (ctrl+r) replaces the reply and reads nothing again
            read_before = conv.tokens_read
            await reply_to(pilot, pane, "ctrl+r")
            again = saved_messages(conv.id)
            assert len(again) == 2 and again[0] == first[0] and again[1].id != first[1].id
            assert shown(pane)[-1] == ("assistant", again[1].content)
            generated = again[1].n_tokens
            assert conv.tokens_read - read_before <= generated + 4  # the reply (+ separator), no prompt re-read
            # a reply cut at max_tokens, then continued (ctrl+g): the same message grows
            pane.set_sampling(pane.sampling().replace(max_tokens=6, banned_tokens=(0,)))
            await send(pilot, pane, "Second question")
            cut = saved_messages(conv.id)[-1]
            assert not cut.complete and pane.last_finish == "length"
            await reply_to(pilot, pane, "ctrl+g")
            after = saved_messages(conv.id)
            assert shown(pane) == [(m.role, m.content) for m in after]
            assert after[-1].role == "assistant"
            assert "".join(m.content for m in after[3:]).startswith(cut.content)
            # edit the first message: select it with alt+up, move up, e, change the text, ctrl+s
            await pilot.press("alt+up")
            view = pane.view
            assert isinstance(app.focused, ConversationView)
            while view.selected is not None and view.selected is not view.views[0]:
                await pilot.press("up")
            await pilot.press("e")
            await wait_for(pilot, lambda: app.screen.__class__.__name__ == "TextDialog", what="the edit dialog")
            await pilot.press("ctrl+a", "ctrl+k")  # clear the line in the text area
            await type_text(pilot, "Edited question")
            await reply_to(pilot, pane, "ctrl+s")
            edited = saved_messages(conv.id)
            assert [m.role for m in edited] == ["user", "assistant"]
            assert edited[0].content == "Edited question"
            assert shown(pane) == [(m.role, m.content) for m in edited]
            # fork (f8) opens a copy in a new tab
            await pilot.press("f8")
            await wait_for(pilot, lambda: len(app.chat.panes) == 2, what="the fork's tab")
            fork = app.chat.active_pane
            await wait_for(pilot, lambda: fork.conversation is not None and fork.view.views, what="fork shown")
            assert fork.conversation.id != conv.id
            assert shown(fork) == shown(pane)
            assert fork.conversation.tokens_read == 0
            # undo (command palette action) removes the last exchange of the fork only
            await app.run_action("undo", app.chat)
            await wait_for(pilot, lambda: not fork.busy and not fork.view.views, what="undo")
            assert saved_messages(fork.conversation.id) == []
            assert len(saved_messages(conv.id)) == 2

    asyncio.run(body())


def test_novel_mode_continues_the_text(models):
    async def body():
        from tests.tui.conftest import register

        register("tiny-novel", models["tiny-b"], family="testnovel")
        app = RwkvApp(model="tiny-novel")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            assert pane.mode == "novel"
            assert pane.view.has_class("-novel")
            await send(pilot, pane, "Once upon a time")
            saved = saved_messages(pane.conversation.id)
            assert [m.role for m in saved] == ["text", "assistant"]
            await reply_to(pilot, pane, "ctrl+g")  # write more
            more = saved_messages(pane.conversation.id)
            assert len(more) > len(saved) or more[-1].content != saved[-1].content
            assert shown(pane) == [(m.role, m.content) for m in more]
            # Prose is shown as written, not as Markdown: indentation and asterisks stay.
            await send(pilot, pane, "    *She* said: `no code`")
            first = pane.view.views[-2]
            assert first.shown.role == "text" and first.plain
            assert str(first.body.render()).rstrip("\n") == "    *She* said: `no code`"
            assert all(v.plain for v in pane.view.views)

    asyncio.run(body())
