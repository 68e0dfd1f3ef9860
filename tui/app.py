"""The full-screen Textual app. For now: a start screen that works with no model downloaded.

The conversation panes, the model registry and the jobs screen are built on the runtime's public
API (issue 5); until then this screen tells a new user how to get a model.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Markdown

MODELS_TOML = Path(__file__).resolve().parent.parent / "models.toml"

WELCOME = """\
# Welcome to rwkv-tui

No model is ready yet. Models known to rwkv-tui are listed below. To make one ready from a
checkpoint you already have:

```
rwkv-tui convert RWKV-4-Raven-7B-….pth raven-7b-q5_1.gguf --type q5_1
```
"""


class RwkvApp(App[int]):
    TITLE = "rwkv-tui"
    BINDINGS: ClassVar[list[Binding]] = [Binding("q", "quit", "Quit", id="app.quit")]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Markdown(WELCOME, id="welcome")
            yield DataTable(id="known-models", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#known-models", DataTable)
        table.add_columns("id", "name", "layers × width", "download")
        for m in _known_models():
            size = f"{m['size'] / 1e9:.2f} GB" if "size" in m else "?"
            table.add_row(m["id"], m.get("name", ""), f"{m.get('n_layer')} × {m.get('n_embd')}", size)


def _known_models() -> list[dict]:
    try:
        with open(MODELS_TOML, "rb") as f:
            return list(tomllib.load(f).get("model", []))
    except (OSError, tomllib.TOMLDecodeError):
        return []


def run_app(model: str | None = None, resume: str | None = None) -> int:
    RwkvApp().run()
    return 0
