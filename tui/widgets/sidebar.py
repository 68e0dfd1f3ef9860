"""The sidebar: saved conversations (newest first) and full-text search over their messages.

Selecting an entry posts `OpenConversation`; rename, delete and archive act on the highlighted
entry and are carried out by the chat screen (it knows which tabs are open).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from tui.keymap import bindings
from tui.messages import OpenConversation


def ago(when: float, now: float | None = None) -> str:
    """'just now', '5 min ago', '3 h ago', '2 days ago', or the date."""
    seconds = max(0.0, (now if now is not None else time.time()) - when)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    if seconds < 7 * 86400:
        days = int(seconds // 86400)
        return f"{days} day{'s' if days > 1 else ''} ago"
    return time.strftime("%Y-%m-%d", time.localtime(when))


def model_label(model_ref: str | None) -> str:
    if not model_ref:
        return "no model"
    name = model_ref.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".gguf", ".bin", ".pth"):
        name = name.removesuffix(suffix)
    return name


class ConversationList(OptionList):
    """The list itself; its keys act on the highlighted conversation."""

    BINDINGS: ClassVar[list[Binding]] = bindings(
        "sidebar.rename", "sidebar.delete", "sidebar.archive", "sidebar.show_archived",
    )

    class Act(Message):
        def __init__(self, what: str, conversation_id: int | None) -> None:
            super().__init__()
            self.what = what
            self.conversation_id = conversation_id

    def _highlighted_id(self) -> int | None:
        if self.highlighted is None:
            return None
        option = self.get_option_at_index(self.highlighted)
        return _conversation_id(option.id)

    def action_rename(self) -> None:
        self.post_message(self.Act("rename", self._highlighted_id()))

    def action_delete(self) -> None:
        self.post_message(self.Act("delete", self._highlighted_id()))

    def action_archive(self) -> None:
        self.post_message(self.Act("archive", self._highlighted_id()))

    def action_toggle_archived(self) -> None:
        self.post_message(self.Act("toggle_archived", None))


def _conversation_id(option_id: str | None) -> int | None:
    """Option ids are "c<id>" for a conversation and "h<id>-<seq>" for a search hit."""
    if not option_id:
        return None
    return int(option_id[1:].split("-")[0])


class Sidebar(Vertical):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.show_archived = False
        self._search_timer: Timer | None = None
        self._records: dict[int, Any] = {}

    def compose(self) -> ComposeResult:
        yield Input(placeholder="Search messages…", id="search")
        yield ConversationList(id="conversations")
        yield Static("", id="sidebar-hint", markup=False)

    @property
    def store(self) -> Any:
        return self.app.store  # type: ignore[attr-defined]

    @property
    def query_text(self) -> str:
        return self.query_one("#search", Input).value.strip()

    def on_mount(self) -> None:
        self.reload()

    def record(self, conversation_id: int) -> Any | None:
        return self._records.get(conversation_id)

    def reload(self) -> None:
        """Re-read the list (or the search results) from the store."""
        if self.store is None:
            return
        listing = self.query_one(ConversationList)
        highlighted = listing._highlighted_id()
        query = self.query_text
        try:
            records = self.store.list_conversations(include_archived=self.show_archived)
            self._records = {r.id: r for r in records}
            options = self._search_options(query) if query else [self._option(r) for r in records]
        except Exception as e:
            self.app.notify(str(e), title="Cannot read conversations", severity="error")
            return
        listing.clear_options()
        listing.add_options(options)
        hint = self.query_one("#sidebar-hint", Static)
        if query:
            hint.update(f"{len(options)} match{'es' if len(options) != 1 else ''} · esc clears")
        elif not options:
            hint.update("No saved conversations yet.")
        else:
            archived = " (with archived)" if self.show_archived else ""
            hint.update(f"{len(options)} conversation{'s' if len(options) != 1 else ''}{archived}\n"
                        "r rename · d delete · a archive")
        target = 0 if options else None
        if highlighted is not None and not query:
            target = next((i for i, o in enumerate(options) if _conversation_id(o.id) == highlighted), target)
        listing.highlighted = target

    def _option(self, r: Any) -> Option:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(r.title or "Untitled", style="bold")
        if r.archived:
            text.append(" (archived)", style="dim")
        text.append("\n")
        mode = "" if r.mode == "chat" else f"{r.mode} · "
        text.append(f"{mode}{model_label(r.model_ref)} · {ago(r.updated_at)}", style="dim")
        return Option(text, id=f"c{r.id}")

    def _search_options(self, query: str) -> list[Option]:
        options = []
        seen: set[tuple[int, int]] = set()
        for hit in self.store.search(query, limit=50):
            key = (hit.conversation_id, hit.seq)
            if key in seen:
                continue
            seen.add(key)
            text = Text(no_wrap=True, overflow="ellipsis")
            text.append(hit.title or "Untitled", style="bold")
            text.append("\n")
            text.append(" ".join(hit.snippet.split()), style="dim")
            options.append(Option(text, id=f"h{hit.conversation_id}-{hit.seq}"))
        return options

    @on(Input.Changed, "#search")
    def _search_changed(self) -> None:
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(0.25, self.reload)

    @on(Input.Submitted, "#search")
    def _search_submitted(self) -> None:
        self.reload()
        self.query_one(ConversationList).focus()

    def on_key(self, event: Any) -> None:
        search = self.query_one("#search", Input)
        if event.key == "escape" and search.has_focus and search.value:
            search.value = ""
            event.stop()

    @on(OptionList.OptionSelected, "#conversations")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        option_id = event.option.id or ""
        conversation_id = _conversation_id(option_id)
        if conversation_id is None:
            return
        seq = int(option_id.split("-")[1]) if option_id.startswith("h") else None
        self.post_message(OpenConversation(conversation_id, seq))

    def show_current(self, conversation_id: int | None) -> None:
        """Highlight the conversation of the active tab (the list keeps its own focus)."""
        if conversation_id is None or self.query_text:
            return
        listing = self.query_one(ConversationList)
        for i in range(listing.option_count):
            if _conversation_id(listing.get_option_at_index(i).id) == conversation_id:
                listing.highlighted = i
                return

    def focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def toggle_archived(self) -> None:
        self.show_archived = not self.show_archived
        self.reload()
