"""The sampling settings dialog of one conversation tab.

Each field is parsed and validated by the runtime (`SamplingSettings.set(key, text)`, the same
parser as the line-mode chat's `/set`), so the dialog and the CLI accept the same values. A bad
value is shown under the fields and the dialog stays open.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

FIELDS: tuple[tuple[str, str], ...] = (
    ("temperature", "Temperature (higher: more varied)"),
    ("top_p", "Top-p (0–1: keep the likeliest tokens up to this mass)"),
    ("top_k", "Top-k (0: off)"),
    ("presence_penalty", "Presence penalty"),
    ("frequency_penalty", "Frequency penalty"),
    ("penalty_decay", "Penalty decay per token"),
    ("max_tokens", "Max tokens per reply"),
    ("stop", "Extra stop strings: one, with \\n escapes, or a JSON list"),
    ("banned_tokens", "Banned token ids (comma separated)"),
)


def field_text(settings: Any, key: str) -> str:
    value = getattr(settings, key, "")
    if key == "stop":
        return json.dumps(list(value), ensure_ascii=False) if value else ""
    if key == "banned_tokens":
        return ", ".join(str(t) for t in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class SamplingDialog(ModalScreen[Any]):
    """Dismisses with new `SamplingSettings`, or None when cancelled."""

    BINDINGS: ClassVar[list[Binding]] = [
        Binding("escape", "cancel", "Cancel", id="sampling.cancel"),
        Binding("ctrl+s", "save", "Save", id="sampling.save"),
    ]

    def __init__(self, settings: Any, defaults: Any | None, title: str = "Sampling") -> None:
        super().__init__(classes="dialog")
        self.settings = settings
        self.defaults = defaults
        self.title_text = title

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog-box -wide", id="sampling-box"):
            yield Label(self.title_text, classes="dialog-title")
            with Grid(id="sampling-grid"):
                for key, label in FIELDS:
                    yield Label(label, classes="field-label")
                    placeholder = field_text(self.defaults, key) if self.defaults is not None else ""
                    yield Input(field_text(self.settings, key), placeholder=placeholder, id=f"f-{key}", compact=True)
            yield Static("", id="sampling-error", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Family defaults", id="defaults", disabled=self.defaults is None)
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#f-temperature", Input).focus()

    def _collect(self) -> Any:
        settings = self.settings
        for key, _ in FIELDS:
            text = self.query_one(f"#f-{key}", Input).value.strip()
            if text == field_text(settings, key):
                continue
            settings = settings.set(key, text)
        return settings

    def action_save(self) -> None:
        try:
            settings = self._collect()
        except (ValueError, TypeError) as e:
            self.query_one("#sampling-error", Static).update(str(e))
            return
        self.dismiss(settings)

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_save()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        elif event.button.id == "defaults" and self.defaults is not None:
            for key, _ in FIELDS:
                self.query_one(f"#f-{key}", Input).value = field_text(self.defaults, key)
        else:
            self.dismiss(None)
