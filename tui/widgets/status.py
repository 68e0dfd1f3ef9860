"""A pane's status line: model, file type, mode, what runs (reading the prompt, writing) and how fast,
tokens in the state, state size.

The line is fitted to its width by leaving out whole parts, the least useful first (the state's size,
the file type, the family, …), never by cutting a figure off its unit. Updating it repaints one row
and never lays out the screen again: while a reply streams it changes several times a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text
from textual.widget import Widget

from tui.units import human_bytes

MODEL_NAME_WIDTH = 24  # longer file names are cut, so the speed and state figures stay on the line


@dataclass
class PaneStatus:
    model: str = ""  # file name without suffix
    file_type: str = ""  # matrix type, e.g. Q5_1
    family: str = ""
    mode: str = "chat"
    activity: str = ""  # "loading…", "writing", "stopped", ...
    rate: float = 0.0  # tokens per second (live while reading or writing, then the last reply's)
    live: bool = False
    tokens: int = 0  # tokens in the state
    state_bytes: int = 0
    read_done: int = 0  # while the prompt is read: tokens read so far of read_total
    read_total: int = 0
    think: bool | None = None  # thinking on/off (thinking families); None: the family does not think
    start_state: str = ""  # the registered state-tuned state the conversation started from ("" for none)


@dataclass(frozen=True)
class _Part:
    text: str
    keep: int  # the higher, the longer it stays when the line is too narrow
    separator: str = " · "
    style: str = ""


def _parts(s: PaneStatus) -> list[_Part]:
    parts: list[_Part] = []
    if s.model:
        name = s.model if len(s.model) <= MODEL_NAME_WIDTH else s.model[: MODEL_NAME_WIDTH - 1] + "…"
        parts.append(_Part(name, 9, "", "bold"))
        if s.file_type:
            parts.append(_Part(s.file_type, 3, " "))
    else:
        parts.append(_Part("no model", 9, "", "italic"))
    parts.append(_Part(s.family or s.mode, 4))
    if s.start_state:
        parts.append(_Part(f"from state {s.start_state}", 6))  # what the model knows: kept past the family
    if s.think is not None:
        parts.append(_Part("thinking" if s.think else "fast (F6: think)", 3))
    if s.read_total:
        parts.append(_Part(f"reading {s.read_done:,}/{s.read_total:,} tokens", 8, style="bold"))
    elif s.activity:
        parts.append(_Part(s.activity, 8, style="bold"))
    if s.rate:
        parts.append(_Part(f"{s.rate:.1f} tok/s", 7))
    if s.model:
        parts.append(_Part(f"state: {s.tokens:,} tokens", 5))
        if s.state_bytes:
            parts.append(_Part(human_bytes(s.state_bytes), 2, ", "))
    return parts


def render_status(s: PaneStatus, width: int | None = None) -> Text:
    """The status line for `s`, within `width` cells if given (parts left out whole, least useful first)."""
    parts = _parts(s)
    if width is not None:
        while len(parts) > 1 and sum(cell_len(p.separator + p.text) for p in parts) > width:
            parts.remove(min(reversed(parts), key=lambda p: p.keep))
    text = Text(no_wrap=True, overflow="ellipsis")
    for i, part in enumerate(parts):
        text.append(part.separator if i else "")
        text.append(part.text, style=part.style)
    return text


class StatusLine(Widget):
    """One row: `show(status)` repaints it, fitted to the row's width when drawn."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.status = PaneStatus()

    def show(self, status: PaneStatus) -> None:
        if status != self.status:
            self.status = status
            self.refresh()

    def render(self) -> Text:
        return render_status(self.status, self.content_region.width or None)
