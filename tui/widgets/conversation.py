"""The conversation view: one Markdown block per message, streaming into the last one.

Reply text arrives on a worker thread through `StreamBuffer.push` (a lock and a list: never a UI
call per token); the pane drains the buffer on a timer and appends the text to the streaming
message. While a reply streams, its unfinished last paragraph is plain text in a `StreamingText`
(a repaint per update, a layout only when it takes another line); each finished paragraph moves into
the Markdown view (a layout of the screen each time). A layout per update made the UI thread take
a sixth of a core on a 2-core machine, which slowed the model's threads (bench/app_streaming.py).
The view stays anchored to the bottom while a reply streams; scrolling up releases it and scrolling
back to the end re-attaches (Textual's `anchor`).

With the view focused, a message is selected (up/down) and can be edited, copied or forked from.

A reply of a thinking model (G1) shows its reasoning in a dimmed, collapsible block above the answer:
streamed live while the model thinks, collapsed when the answer starts (a click on its title opens
it again). The split follows the setting the reply's prompt was given (`Shown.think`).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from markdown_it import MarkdownIt
from textual import events
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Collapsible, Markdown, Static
from textual.widgets.markdown import MarkdownStream

from runtime.progress import Progress
from runtime.text.reply_parts import THINKING, ReplyStream
from runtime.text.templates import split_reply
from tui.keymap import bindings
from tui.widgets.sidebar import model_label
from tui.widgets.tab_focus import keep_focus_in_active_tab


class StreamBuffer:
    """Text pushed from a worker thread, drained by the UI thread; and how far the reading of the
    prompt before the reply has got, so the status line can show it and time the writing alone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self.pieces = 0
        self.started = time.monotonic()  # when the writing started (the reading of the prompt ended)
        self.read_started = self.started
        self.read_done = self.read_total = 0
        self.reading = False  # the prompt is being read; the writing has not started

    def reset(self, reading: bool = False) -> None:
        """A new reply; `reading`: a prompt is read first (its progress comes through `read`)."""
        with self._lock:
            self._parts.clear()
            self.pieces = 0
            self.started = self.read_started = time.monotonic()
            self.read_done = self.read_total = 0
            self.reading = reading

    def push(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            self._parts.append(text)
            self.pieces += 1
            self.reading = False

    def read(self, event: Progress) -> None:
        """A progress callback for reading the prompt: the writing starts when the reading ends."""
        with self._lock:
            self.read_done, self.read_total = event.done, event.total
            if event.done >= event.total:
                self.started = time.monotonic()
                self.reading = False

    def read_rate(self) -> float:
        """Tokens per second of reading the prompt so far."""
        elapsed = time.monotonic() - self.read_started
        return self.read_done / elapsed if elapsed > 0.2 else 0.0

    def drain(self) -> str:
        with self._lock:
            text = "".join(self._parts)
            self._parts.clear()
        return text

    def rate(self, tokens: int | None = None) -> float:
        """Tokens per second since the writing started: `tokens` generated so far when the caller knows
        them, else the pieces of text pushed (about one per token)."""
        elapsed = time.monotonic() - self.started
        count = self.pieces if tokens is None else tokens
        return count / elapsed if elapsed > 0.2 else 0.0


@dataclass
class Shown:
    """What a message view shows: a saved message, or one still being written (seq None)."""

    role: str
    content: str
    seq: int | None = None
    complete: bool = True
    n_tokens: int = 0
    model: str = ""  # the model that wrote a reply ("" for yours, and for replies saved before it was recorded)
    file_type: str = ""
    think: bool | None = None  # thinking on/off when its prompt was fed; None: no think markup

    @classmethod
    def of(cls, record: Any) -> Shown:
        return cls(record.role, record.content, record.seq, bool(record.complete), int(record.n_tokens or 0),
                   model_label(record.model_ref) if record.model_ref else "", record.file_type or "",
                   getattr(record, "think", None))

    def parts(self) -> tuple[str | None, str]:
        """(thinking, answer) as shown: a reply's think block apart, blank starts dropped."""
        if self.role != "assistant" or self.think is None:
            return None, self.content
        thinking, answer = split_reply(self.content, self.think)
        return (None if thinking is None else thinking.strip()), answer.lstrip()


class StreamingText(Static):
    """The unfinished end of a streaming message as plain text. Updating it repaints it; the screen is
    laid out again only when its height changes."""

    def __init__(self, **kw: Any) -> None:
        super().__init__("", markup=False, **kw)
        self.text = ""

    def set_text(self, text: str) -> None:
        self.text = text
        self.update(text, layout=False)
        self.clear_cached_dimensions()
        region = self.content_region
        if not region.width or self.get_content_height(region.size, region.size, region.width) != region.height:
            self.refresh(layout=True)


_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.MULTILINE)


def finished_blocks(text: str, fenced: bool, plain: bool) -> int:
    """How much of `text` (the unfinished end of a streaming message) is finished blocks: up to its
    last paragraph break outside a code fence (plain text: its last line break). `fenced`: the text
    starts inside a code fence."""
    if plain:
        return text.rfind("\n") + 1
    end = 0
    for match in re.finditer(r"\n\n", text):
        fenced_here = fenced ^ (len(_FENCE.findall(text, 0, match.start())) % 2 == 1)
        if not fenced_here:
            end = match.end()
    return end


def _parser() -> MarkdownIt:
    # Models write single newlines as line breaks; keep them.
    return MarkdownIt("gfm-like", {"breaks": True})


class MessageView(Vertical):
    """One message: who wrote it and its text, as Markdown (chat) or as plain text (novel: prose,
    where indentation and asterisks are the writer's, not markup)."""

    def __init__(self, shown: Shown, speaker: str, plain: bool = False) -> None:
        super().__init__(classes=f"message -{shown.role}")
        self.shown = shown
        self.speaker = speaker
        self.plain = plain
        self._stream: MarkdownStream | None = None
        self._parts: ReplyStream | None = None  # splits a streaming reply with a think block
        self._thinking = ""
        self._folded = False  # the thinking block was folded when this reply's answer started
        self._tail: StreamingText | None = None  # while streaming: the text not yet in `body`
        self._fenced = False  # the text in `body` ends inside a code fence
        self._body_text = ""  # while streaming: the text `body` shows
        # append (the flush timer) and finish/set_content (the reply's end) await mounts and Markdown
        # writes: one at a time, or the end of a reply could take the tail away under an append
        self._changing = asyncio.Lock()

    def compose(self) -> ComposeResult:
        yield Static(self._header(), classes="message-header", markup=False)
        if self.plain:
            yield Static(self.shown.content, classes="message-body -plain", markup=False)
            return
        thinking, answer = self.shown.parts()
        self._thinking = thinking or ""
        if thinking is not None:
            yield self._thinking_block(thinking, collapsed=bool(answer))
        yield Markdown(answer, parser_factory=_parser, classes="message-body")

    @staticmethod
    def _thinking_block(text: str, collapsed: bool) -> Collapsible:
        return Collapsible(Static(text, classes="thinking-body", markup=False), title="Thinking",
                           collapsed=collapsed, classes="thinking")

    @property
    def thinking(self) -> Collapsible | None:
        found = self.query(".thinking")
        return found.first(Collapsible) if found else None

    def _show_thinking(self, text: str, collapsed: bool | None = None) -> None:
        block = self.thinking
        if block is None:
            return
        self._thinking = text
        block.query_one(".thinking-body", Static).update(text)
        block.display = bool(text) or not collapsed
        if collapsed is not None:
            block.collapsed = collapsed

    def _header(self) -> str:
        s = self.shown
        parts = [self.speaker]
        if s.role == "assistant" and s.file_type:
            parts.append(s.file_type)
        if s.role == "assistant" and s.n_tokens:
            parts.append(f"{s.n_tokens} tokens")
        if s.role == "assistant" and not s.complete and s.seq is not None:
            parts.append("cut short")
        return " · ".join(parts)

    @property
    def body(self) -> Markdown | Static:
        return self.query_one(".message-body")  # type: ignore[return-value]

    def refresh_header(self) -> None:
        self.query_one(".message-header", Static).update(self._header())

    async def _show(self, content: str) -> None:
        body = self.body
        if not isinstance(body, Markdown):
            body.update(content)
            return
        thinking, answer = self.shown.parts()
        if thinking is not None and self.thinking is None:
            await self.mount(self._thinking_block("", collapsed=True), before=body)
        self._show_thinking(thinking or "", collapsed=bool(answer))
        await body.update(answer)

    async def append(self, text: str) -> None:
        """Streamed text: a reply's reasoning into its thinking block (folded when the answer starts);
        the rest onto the plain tail, whose finished blocks move into the body."""
        async with self._changing:
            await self._append(text)

    async def _append(self, text: str) -> None:
        if self._tail is None:
            self._body_text = self.shown.parts()[1]  # what the body shows (a continued reply's answer)
            self._tail = StreamingText(classes="message-tail")
            await self.mount(self._tail)
            self._space_tail()
        self.shown.content += text
        if self.shown.think is None or self.shown.role != "assistant" or self.plain:
            await self._append_answer(text)
            return
        if self.shown.think and self.thinking is None:
            await self.mount(self._thinking_block("", collapsed=False), before=self.body)
        if self._parts is None:  # from what is shown already (a continued reply)
            self._parts = ReplyStream(None, self.shown.think, self.shown.content[:-len(text)] if text else "")
            if not self._parts.answering:
                self._show_thinking(self._thinking, collapsed=False)  # the reasoning streams in view
        for kind, piece in self._parts.feed(text):
            if kind == THINKING:
                self._show_thinking(self._thinking + piece)
                continue
            block = self.thinking
            if block is not None and not block.collapsed and not self._folded:
                self._folded = True
                self._show_thinking(self._thinking, collapsed=True)  # the answer starts: fold the reasoning
            await self._append_answer(piece)

    async def _append_answer(self, text: str) -> None:
        tail = self._tail.text + text
        done = finished_blocks(tail, self._fenced, self.plain)
        if done:
            await self._to_body(tail[:done])
            tail = tail[done:]
        self._tail.set_text(tail)

    def _space_tail(self) -> None:
        """A blank line between the Markdown above and the tail when the tail starts a new paragraph,
        as Markdown shows it; an empty body takes no line."""
        gap = 1 if self._body_text.strip() and self._body_text.endswith("\n\n") and not self.plain else 0
        if self._tail is not None and self._tail.styles.margin.top != gap:
            self._tail.styles.margin = (gap, 0, 0, 0)
        body = self.body
        if body.display != bool(self._body_text):
            body.display = bool(self._body_text)

    async def _to_body(self, text: str, last: bool = False) -> None:
        self._body_text += text
        body = self.body
        if not isinstance(body, Markdown):
            # the tail goes on below: the body ends at the line break before it
            body.update(self._body_text if last else self._body_text.removesuffix("\n"))
            self._space_tail()
            return
        self._fenced ^= len(_FENCE.findall(text)) % 2 == 1
        if self._stream is None:
            self._stream = Markdown.get_stream(body)
        await self._stream.write(text)
        self._space_tail()

    async def _stop_stream(self) -> None:
        if self._tail is not None:
            tail, rest = self._tail, self._tail.text
            self._tail = None
            if rest or self.plain:
                await self._to_body(rest, last=True)
            self.body.display = True
            await tail.remove()
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self._fenced = False

    async def finish(self, shown: Shown) -> None:
        """The message is saved: show its final text and details."""
        async with self._changing:
            await self._finish(shown)

    async def _finish(self, shown: Shown) -> None:
        await self._stop_stream()
        self._parts, self._folded = None, False
        changed = shown.content != self.shown.content or shown.think != self.shown.think
        self.shown = shown
        if changed:
            await self._show(shown.content)
        self.refresh_header()

    async def set_content(self, content: str) -> None:
        async with self._changing:
            await self._stop_stream()
            self._parts, self._folded = None, False
            self.shown.content = content
            await self._show(content)

    def on_click(self, event: events.Click) -> None:
        view = next((a for a in self.ancestors if isinstance(a, ConversationView)), None)
        if view is not None:
            view.select(self)
            view.focus()


class ConversationView(VerticalScroll, can_focus=True):
    """Every message of a conversation, newest at the bottom."""

    BINDINGS: ClassVar[list[Binding]] = bindings(
        "messages.up", "messages.down", "messages.edit", "messages.copy", "messages.copy_code",
        "messages.fork", "messages.back",
    )

    class Selected(Message):
        """A message action was asked for on the selected message."""

        def __init__(self, view: ConversationView, what: str, shown: Shown) -> None:
            super().__init__()
            self.view = view
            self.what = what
            self.shown = shown

        @property
        def control(self) -> ConversationView:
            return self.view

    def __init__(self, mode: str = "chat", model_name: str = "Model", **kw: Any) -> None:
        super().__init__(**kw)
        self.mode = mode
        self.model_name = model_name
        self._selected_view: MessageView | None = None

    HINTS: ClassVar[dict[str, str]] = {
        "chat": "Write to {model} below and press enter. The reply streams here; esc stops it, ctrl+r "
                "writes it again, ctrl+l edits your last message.",
        "novel": "Write the beginning of a story below and press enter: {model} continues it. ctrl+g writes "
                 "more, esc stops.",
    }

    def compose(self) -> ComposeResult:
        yield Static("", id="hint", markup=False)

    def on_mount(self) -> None:
        self.set_class(self.mode == "novel", "-novel")
        self._update_hint()

    def _update_hint(self) -> None:
        hint = self.query_one("#hint", Static)
        hint.display = not self.views
        hint.update(self.HINTS.get(self.mode, "").format(model=self.model_name))

    def set_mode(self, mode: str, model_name: str) -> None:
        self.mode = mode
        self.model_name = model_name
        self.set_class(mode == "novel", "-novel")
        if self.is_mounted:
            self._update_hint()
        for view in self.views:
            view.speaker = self.speaker(view.shown)
            view.refresh_header()

    def speaker(self, shown: Shown) -> str:
        """Who wrote a message: you, or the model that wrote that reply (each reply records its own, so
        replies written before a switch of model keep their writer's name)."""
        if shown.role == "user":
            return "You"
        if shown.role == "assistant":
            if self.mode == "chat":
                return shown.model or "Assistant"
            return f"{shown.model or 'The model'} continues"
        return "Your text"

    @property
    def views(self) -> list[MessageView]:
        return list(self.query_children(MessageView))

    def shown(self) -> list[Shown]:
        return [v.shown for v in self.views]

    @property
    def plain(self) -> bool:
        """Whether messages show as plain text (novel mode) rather than Markdown."""
        return self.mode == "novel"

    async def add(self, shown: Shown) -> MessageView:
        view = MessageView(shown, self.speaker(shown), self.plain)
        await self.mount(view)
        self._update_hint()
        return view

    async def set_messages(self, messages: list[Shown]) -> None:
        """Show exactly `messages`, keeping the views that already show the same thing."""
        views = self.views
        keep = 0
        while keep < min(len(views), len(messages)):
            have, want = views[keep].shown, messages[keep]
            if have.role != want.role or (have.seq is not None and have.seq != want.seq) \
                    or views[keep].plain != self.plain:
                break
            if have.content != want.content or have.seq is None or have.complete != want.complete \
                    or have.n_tokens != want.n_tokens or (have.model, have.file_type) != (want.model, want.file_type):
                views[keep].speaker = self.speaker(want)
                await views[keep].finish(Shown(**vars(want)))
            keep += 1
        if views[keep:]:
            if self._selected_view in views[keep:]:
                self._selected_view = None
            await self.remove_children(views[keep:])
        if messages[keep:]:
            await self.mount_all([MessageView(Shown(**vars(m)), self.speaker(m), self.plain)
                                  for m in messages[keep:]])
        self._update_hint()

    async def truncate(self, keep: int) -> None:
        """Remove every message view after the first `keep`."""
        views = self.views[keep:]
        if self._selected_view in views:
            self._selected_view = None
        if views:
            await self.remove_children(views)
        self._update_hint()

    def follow(self) -> None:
        """Stick to the bottom as text arrives (until the user scrolls up)."""
        self.anchor()

    # selection ----------------------------------------------------------------------------------

    @property
    def selected(self) -> MessageView | None:
        return self._selected_view

    def select(self, view: MessageView | None) -> None:
        if self._selected_view is not None:
            self._selected_view.remove_class("-selected")
        self._selected_view = view
        if view is not None:
            view.add_class("-selected")
            self.scroll_to_widget(view, animate=False)

    def select_seq(self, seq: int) -> None:
        for view in self.views:
            if view.shown.seq == seq:
                self.select(view)
                return

    def on_focus(self) -> None:
        if self._selected_view is None and self.views:
            self.select(self.views[-1])

    def on_blur(self) -> None:
        self.select(None)

    def _on_hide(self, event: events.Hide) -> None:
        """Hidden with its tab: the focus goes to the prompt of the tab that shows (see tab_focus)."""
        keep_focus_in_active_tab(self, event)

    def on_key(self, event: events.Key) -> None:
        """Typing a character that is not one of this list's keys goes to the prompt."""
        if not event.is_printable or not event.character or event.key in self._bindings.key_to_bindings:
            return
        event.stop()
        event.prevent_default()
        self.post_message(self.Selected(self, "type", Shown("", event.character)))

    def action_move(self, step: int) -> None:
        views = self.views
        if not views:
            return
        i = views.index(self._selected_view) if self._selected_view in views else len(views)
        self.select(views[max(0, min(len(views) - 1, i + step))])

    def _ask(self, what: str) -> None:
        if self._selected_view is None:
            raise SkipAction()
        self.post_message(self.Selected(self, what, self._selected_view.shown))

    def action_edit(self) -> None:
        self._ask("edit")

    def action_copy(self) -> None:
        self._ask("copy")

    def action_copy_code(self) -> None:
        self._ask("copy_code")

    def action_fork_here(self) -> None:
        self._ask("fork")

    def action_back(self) -> None:
        self.post_message(self.Selected(self, "back", Shown("", "")))
