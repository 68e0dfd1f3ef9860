"""The prompt: a multi-line text area where Enter sends, a key inserts a newline, another opens $EDITOR."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from tui.keymap import bindings, effective_keys
from tui.widgets.tab_focus import keep_focus_in_active_tab


def _text_area_bindings() -> list[Binding]:
    """TextArea's own keys, minus ctrl+w (it closes the tab here; ctrl+backspace deletes a word)."""
    out = []
    for b in TextArea.BINDINGS:
        if not isinstance(b, Binding):
            continue
        keys = [k for k in b.key.split(",") if k.strip() != "ctrl+w"]
        if keys:
            out.append(replace(b, key=",".join(keys)))
    return out


def _editor_command() -> list[str] | None:
    for var in ("VISUAL", "EDITOR"):
        value = os.environ.get(var, "").strip()
        if value:
            return shlex.split(value)
    for name in ("nano", "vim", "vi"):
        if shutil.which(name):
            return [name]
    return None


class PromptArea(TextArea, inherit_bindings=False):
    """Where the user writes. Posts `PromptArea.Submitted` on Enter."""

    BINDINGS: ClassVar[list[Binding]] = [
        *_text_area_bindings(),
        *bindings("prompt.send", "prompt.newline", "prompt.editor"),
    ]

    class Submitted(Message):
        def __init__(self, prompt: PromptArea, text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

        @property
        def control(self) -> PromptArea:
            return self.prompt

    def __init__(self, placeholder: str = "", **kw) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False,
                         highlight_cursor_line=False, placeholder=placeholder, **kw)

    async def _on_key(self, event: events.Key) -> None:
        """Enter sends. Handled here, in the order keys arrive, not as a priority binding: a priority
        binding runs before the text area has taken the keys typed just before it (a fast typist, a
        paste, tmux send-keys), and would send half the message."""
        keymap = getattr(self.app, "keymap", {})
        if event.key in effective_keys("prompt.send", keymap).split(","):
            event.stop()
            event.prevent_default()
            self.action_send()
            return
        await super()._on_key(event)

    async def _on_hide(self, event: events.Hide) -> None:
        """Hidden with its tab: the focus goes to the prompt of the tab that shows (see tab_focus)."""
        if keep_focus_in_active_tab(self, event):
            await super()._on_hide(event)  # TextArea's own (ends a mouse selection); Textual's blur is skipped

    def action_send(self) -> None:
        text = self.text
        if not text.strip():
            return
        self.post_message(self.Submitted(self, text))

    def action_newline(self) -> None:
        self.insert("\n")

    def action_editor(self) -> None:
        """Edit the prompt in $VISUAL / $EDITOR (the app is suspended meanwhile)."""
        command = _editor_command()
        if command is None:
            self.app.notify("Set $EDITOR to the editor you want to use.", title="No editor found",
                            severity="warning")
            return
        with tempfile.TemporaryDirectory(prefix="rwkv-tui-") as folder:
            path = Path(folder) / "message.md"
            path.write_text(self.text, encoding="utf-8")
            try:
                with self.app.suspend():
                    result = subprocess.run([*command, str(path)], check=False)
            except Exception as e:  # SuspendNotSupported (no real terminal), editor not found
                self.app.notify(f"Cannot open {command[0]}: {e}", title="Editor", severity="error")
                return
            if result.returncode != 0:
                self.app.notify(f"{command[0]} exited with status {result.returncode}; the prompt is unchanged.",
                                title="Editor", severity="warning")
                return
            self.text = path.read_text(encoding="utf-8").rstrip("\n")
        self.move_cursor(self.document.end)

