"""Textual messages that thread workers post to the UI (never one per token: text is coalesced).

Workers call `widget.post_message(...)`, which does not block; the handlers run on the UI thread.
Streamed reply text does not travel as messages at all: it goes through a `StreamBuffer` that a
timer drains (see `tui.widgets.conversation`).
"""

from __future__ import annotations

from typing import Any

from textual.message import Message

from runtime.progress import Progress


class PaneLoaded(Message):
    """A pane's model is loaded and, for a saved conversation, the conversation resumed; `notice`: why
    the state chosen for a new chat cannot be used ("" when it can or none was chosen)."""

    def __init__(self, model: Any, conversation: Any | None, notice: str = "") -> None:
        super().__init__()
        self.model = model
        self.conversation = conversation
        self.notice = notice


class PaneFailed(Message):
    """Loading a model, resuming or switching failed; `error` says why."""

    def __init__(self, error: BaseException, doing: str) -> None:
        super().__init__()
        self.error = error
        self.doing = doing


class WorkProgress(Message):
    """Progress of long pane work (reading a transcript into a new model's state)."""

    def __init__(self, event: Progress) -> None:
        super().__init__()
        self.event = event


class ReplyFinished(Message):
    """A reply (send, regenerate, edit, continue) ended; `reply` is the runtime's `Reply`."""

    def __init__(self, reply: Any, conversation: Any) -> None:
        super().__init__()
        self.reply = reply
        self.conversation = conversation


class ReplyFailed(Message):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


class ConversationChanged(Message):
    """Blocking conversation work (undo, reset, switch model) finished; refresh the pane."""

    def __init__(self, conversation: Any, note: str = "") -> None:
        super().__init__()
        self.conversation = conversation
        self.note = note


class Forked(Message):
    """A fork was made; the app opens it in a new tab."""

    def __init__(self, conversation: Any) -> None:
        super().__init__()
        self.conversation = conversation


class PaneDone(Message):
    """Pane work that leaves the conversation as it was (saving its state) ended; `note` says how."""

    def __init__(self, note: str, title: str = "", severity: str = "information") -> None:
        super().__init__()
        self.note = note
        self.title = title
        self.severity = severity


class ConversationsChanged(Message):
    """The saved conversations changed (new, renamed, deleted, new reply): refresh the sidebar."""


class OpenConversation(Message):
    """Open a saved conversation in a tab (or switch to its tab); `seq` selects a message."""

    def __init__(self, conversation_id: int, seq: int | None = None) -> None:
        super().__init__()
        self.conversation_id = conversation_id
        self.seq = seq


class JobsChanged(Message):
    """The job queue changed (progress, a job finished or failed)."""
