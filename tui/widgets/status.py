"""A pane's status line: model, file type, mode, speed while generating, tokens in the state, state size."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from tui.units import human_bytes

MODEL_NAME_WIDTH = 24  # longer file names are cut, so the speed and state figures stay on the line


@dataclass
class PaneStatus:
    model: str = ""  # file name without suffix
    file_type: str = ""  # matrix type, e.g. Q5_1
    family: str = ""
    mode: str = "chat"
    activity: str = ""  # "loading…", "generating", "stopped", ...
    rate: float = 0.0  # tokens per second (live while generating, then the last reply's)
    live: bool = False
    tokens: int = 0  # tokens in the state
    state_bytes: int = 0
    think: bool | None = None  # thinking on/off (thinking families); None: the family does not think


class StatusLine(Static):
    def __init__(self, **kw) -> None:
        super().__init__("", markup=False, **kw)
        self.status = PaneStatus()

    def show(self, status: PaneStatus) -> None:
        self.status = status
        self.update(self.render_status(status))

    @staticmethod
    def render_status(s: PaneStatus) -> Text:
        text = Text()
        if s.model:
            name = s.model if len(s.model) <= MODEL_NAME_WIDTH else s.model[: MODEL_NAME_WIDTH - 1] + "…"
            text.append(name, style="bold")
            if s.file_type:
                text.append(f" {s.file_type}")
        else:
            text.append("no model", style="italic")
        text.append(f" · {s.family or s.mode}")
        if s.think is not None:
            text.append(" · thinking" if s.think else " · fast (F6: think)")
        if s.activity:
            text.append(f" · {s.activity}", style="bold")
        if s.rate:
            text.append(f" · {s.rate:.1f} tok/s")
        if s.model:
            text.append(f" · state: {s.tokens:,} tokens")
            if s.state_bytes:
                text.append(f", {human_bytes(s.state_bytes)}")
        return text
