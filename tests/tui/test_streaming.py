"""Streaming a reply into the view and the status line around it: the text shows completely and in
order (Markdown blocks once finished, plain text for the unfinished end), appending within a line
does not lay the screen out again, reading a long prompt shows its progress and rate, and the status
line fits its width by leaving out whole parts."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from dataclasses import replace

from textual.app import App, ComposeResult
from textual.widgets import Markdown, Static

from runtime.chat.conversation import INGEST_CHUNK, Conversation
from runtime.progress import Progress
from tests.tui.conftest import register, screen_text, type_text, wait_for
from tests.tui.test_chat import open_chat, reply_to
from tui.app import RwkvApp
from tui.widgets.conversation import ConversationView, MessageView, Shown, StreamBuffer, StreamingText
from tui.widgets.status import PaneStatus, StatusLine, render_status

REPLY = (
    "Here is a list:\n\n- one\n- two\n\nAnd some code:\n\n```python\nx = 1\n\ny = 2\n```\n\n"
    "A **long** closing paragraph that goes on for a while, so that it wraps over more than one line "
    "of the view and keeps streaming after the code block has closed."
)


class ViewApp(App):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def compose(self) -> ComposeResult:
        yield ConversationView(self.mode, "Model")


def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def shown_text(view: MessageView) -> str:
    """What the message view holds now: its body's text, then the streaming tail's."""
    body = view.body
    source = body.source if isinstance(body, Markdown) else str(body.content)
    tails = list(view.query(StreamingText))
    return source + (tails[0].text if tails else "")


def test_a_streamed_reply_shows_completely_and_in_order_markdown_once_blocks_finish():
    async def body():
        app = ViewApp("chat")
        async with app.run_test(size=(100, 40)) as pilot:
            conv = app.query_one(ConversationView)
            view = await conv.add(Shown("assistant", "", complete=False))
            streamed = ""
            for piece in pieces(REPLY):
                await view.append(piece)
                streamed += piece
                await pilot.pause()
                assert view.shown.content == streamed
                held = view.body.source
                # everything so far is shown, once, in order: the finished blocks as Markdown, the rest plain
                assert shown_text(view) == streamed
                # a code fence goes into the Markdown only once it is closed
                assert held.count("```") % 2 == 0
                assert held == "" or held.endswith("\n\n")
            assert "x = 1" in view.body.source and "closing paragraph" not in view.body.source
            await view.finish(Shown("assistant", REPLY, seq=3, n_tokens=40))
            await pilot.pause()
            assert not view.query(StreamingText)
            assert view.body.source == REPLY
            text = screen_text(app)
            assert "x = 1" in text and "y = 2" in text and "```" not in text and "**" not in text
            assert "• one" in text or "one" in text

    asyncio.run(body())


def test_a_streamed_novel_continuation_shows_as_plain_text_completely():
    async def body():
        app = ViewApp("novel")
        async with app.run_test(size=(100, 40)) as pilot:
            conv = app.query_one(ConversationView)
            view = await conv.add(Shown("assistant", "", complete=False))
            text = "The night was *dark*.\n  She said:\n\nnothing at all, and the sea went on " * 3
            for piece in pieces(text, 5):
                await view.append(piece)
            await pilot.pause()
            assert shown_text(view).replace("\n", "") == text.replace("\n", "")
            await view.finish(Shown("assistant", text, seq=2))
            await pilot.pause()
            assert not view.query(StreamingText)
            assert str(view.query_one(".message-body", Static).content) == text

    asyncio.run(body())


def test_text_streaming_within_a_line_does_not_lay_out_the_screen_again(monkeypatch):
    layouts = [0]

    async def body():
        app = ViewApp("chat")
        async with app.run_test(size=(100, 40)) as pilot:
            conv = app.query_one(ConversationView)
            view = await conv.add(Shown("assistant", "", complete=False))
            await view.append("Start")
            await pilot.pause()
            original = type(app.screen)._refresh_layout

            def counted(screen, *args, **kw):
                layouts[0] += 1
                return original(screen, *args, **kw)

            monkeypatch.setattr(type(app.screen), "_refresh_layout", counted)
            for _ in range(20):  # 20 updates, all within the first line of the message
                await view.append(" ab")
                await pilot.pause()
            assert shown_text(view) == "Start" + " ab" * 20
            assert "Start ab ab" in screen_text(app)
            assert layouts[0] <= 2, f"{layouts[0]} layouts of the screen for 20 updates within one line"
            for i in range(60):  # several lines: each new line is laid out, so all of it shows
                await view.append(f" w{i}")
                await pilot.pause()
            assert "w58 w59" in screen_text(app)

    asyncio.run(body())


def test_reading_a_long_prompt_shows_its_progress_and_rate_then_the_writing(models, monkeypatch):
    gate = threading.Event()
    chunks = [0]
    feed = Conversation._feed

    def held_feed(self, ids, state, want_logits, into=None):
        if len(ids) == INGEST_CHUNK:
            chunks[0] += 1
            if chunks[0] == 2:  # the prompt's second chunk waits until the test has looked
                gate.wait(60)
        return feed(self, ids, state, want_logits, into)

    monkeypatch.setattr(Conversation, "_feed", held_feed)

    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=(130, 36)) as pilot:
            pane = await open_chat(pilot, app)
            pane.prompt.focus()
            await type_text(pilot, "word " * (3 * INGEST_CHUNK))
            await pilot.press("enter")
            status = pane.query_one(StatusLine)
            await wait_for(pilot, lambda: "reading 256/" in screen_text(app), what="the reading progress")
            await pilot.pause(0.4)  # the status line refreshes a few times a second
            line = next(r for r in screen_text(app).splitlines() if "reading" in r)
            total = status.status.read_total
            assert total > 2 * INGEST_CHUNK
            assert f"reading {INGEST_CHUNK}/{total:,} tokens" in line
            assert re.search(r"reading [\d,/]+ tokens · [\d.]+ tok/s", line), line
            assert "writing" not in line
            gate.set()
            await wait_for(pilot, lambda: not pane.busy, what="the reply")
            await pilot.pause()
            line = next(r for r in screen_text(app).splitlines() if "state:" in r)
            assert "reading" not in line and "tok/s" in line

    asyncio.run(body())


def test_the_status_line_at_130_columns_leaves_out_whole_parts_never_a_figure_from_its_unit(
        models, tui_home, tmp_path):
    long_name = tmp_path / "rwkv-4-raven-1b5-v12-eng98-other2-ctx4096.gguf"
    shutil.copyfile(models["tiny-a"], long_name)
    register("long-named", long_name)

    async def body():
        app = RwkvApp(model="long-named")
        async with app.run_test(size=(130, 36)) as pilot:
            pane = await open_chat(pilot, app)
            pane.prompt.focus()
            await type_text(pilot, "A question")
            await reply_to(pilot, pane, "enter")
            status = pane.query_one(StatusLine)
            # wider figures, as a fast model with a larger state gives
            status.show(replace(status.status, rate=1234.5, state_bytes=20_480))
            await pilot.pause()
            full = render_status(status.status)
            width = status.content_region.width
            assert full.cell_len > width  # the whole line does not fit: something must go
            row = next(r for r in screen_text(app).splitlines() if "tok/s" in r).split("▎")[-1].rstrip()
            assert "1234.5 tok/s" in row and "state: " in row
            assert not re.search(r"\d$", row), f"a figure cut off its unit: {row!r}"
            assert "…" not in row.replace("rwkv-4-raven-1b5-v12-en…", "")

    asyncio.run(body())


def test_render_status_drops_the_least_useful_parts_first():
    s = PaneStatus(model="rwkv-4-raven-1b5", file_type="Q5_1", family="raven", activity="max tokens reached",
                   rate=24.3, tokens=1234, state_bytes=20_480)
    full = render_status(s).plain
    assert full == ("rwkv-4-raven-1b5 Q5_1 · raven · max tokens reached · 24.3 tok/s · state: 1,234 tokens, "
                    "20.5 KB")
    assert render_status(s, len(full)).plain == full
    assert render_status(s, len(full) - 1).plain == full.removesuffix(", 20.5 KB")
    narrow = render_status(s, 60).plain
    assert narrow == "rwkv-4-raven-1b5 · max tokens reached · 24.3 tok/s"
    reading = PaneStatus(model="m", read_done=256, read_total=6000, rate=430.0)
    assert "reading 256/6,000 tokens · 430.0 tok/s" in render_status(reading).plain


def test_the_status_line_names_the_state_a_conversation_started_from():
    s = PaneStatus(model="rwkv7-g1", family="g1", start_state="pirate", tokens=12)
    assert render_status(s).plain == "rwkv7-g1 · g1 · from state pirate · state: 12 tokens"
    assert "from state" not in render_status(PaneStatus(model="rwkv7-g1", family="g1")).plain
    busy = PaneStatus(model="rwkv7-g1e-1.5b-20250707-ctx8192", file_type="Q5_1", family="g1", think=False,
                      start_state="pirate", activity="done", rate=12.5, tokens=1234, state_bytes=13_000_000)
    full = render_status(busy).plain
    narrow = render_status(busy, len(full) - 45).plain  # sizes, file type, thinking and family go first
    assert "from state pirate" in narrow and "g1 ·" not in narrow and "12.5 tok/s" in narrow


def test_the_writing_rate_counts_from_the_end_of_the_reading():
    stream = StreamBuffer()
    stream.reset(reading=True)
    assert stream.reading
    stream.read(Progress("reading", 0, 600, "tok"))
    stream.read(Progress("reading", 256, 600, "tok"))
    assert stream.reading and (stream.read_done, stream.read_total) == (256, 600)
    before = time.monotonic()
    stream.read(Progress("reading", 600, 600, "tok"))
    assert not stream.reading and stream.started >= before  # the writing's clock starts here
    stream.reset()  # regenerate and continue read nothing first
    assert not stream.reading
