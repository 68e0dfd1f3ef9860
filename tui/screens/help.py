"""The help screen: every key, where it works, and its binding id for `keymap.toml`."""

from __future__ import annotations

from typing import ClassVar

from rich import box
from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Markdown, Static

from tui.keymap import CONTEXTS, KEYS, effective_keys, keymap_path

INTRO = """\
# rwkv-tui keys

Every action is also in the command palette (**ctrl+p**): type a few letters of its name.
To change a key, give its id a new key in `{path}`:

```toml
[keys]
"pane.regenerate" = "ctrl+r,f6"
```
"""


def keys_table(context: str, keymap: dict[str, str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, show_edge=False)
    table.add_column("keys", ratio=2, style="bold")
    table.add_column("action", ratio=4)
    table.add_column("id", ratio=2, style="dim")
    for k in KEYS.values():
        if k.context == context:
            table.add_row(effective_keys(k.id, keymap).replace(",", ", "), k.help, k.id)
    return table


def keys_text(keymap: dict[str, str]) -> str:
    """Every key as plain lines (context, keys, action, id), for tests and the README."""
    lines = []
    for context, heading in CONTEXTS.items():
        lines.append(heading)
        for k in KEYS.values():
            if k.context == context:
                lines.append(f"  {effective_keys(k.id, keymap)}  {k.help}  {k.id}")
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("escape,f1,q", "close", "Close", id="help.close"),
    ]

    def __init__(self, keymap: dict[str, str]) -> None:
        super().__init__()
        self.keymap = keymap

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(INTRO.format(path=keymap_path()), id="help-intro")
            for context, heading in CONTEXTS.items():
                yield Label(heading, classes="help-heading")
                yield Static(keys_table(context, self.keymap), classes="help-keys")

    def on_mount(self) -> None:
        self.query_one("#help-box").focus()

    def action_close(self) -> None:
        self.dismiss(None)
