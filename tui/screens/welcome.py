"""First run: what rwkv-tui is, and how to get a model (nothing here needs one).

When the runtime runs RWKV-7, it names the G1 model to start with: the largest whose recommended
format fits the free memory and decodes at a readable speed here (`runtime.registry.recommend.
starter_model`, as `rwkv-tui models` says). The speed comes from this machine's memory read, measured
once (about a second, in a thread: the screen says it is checking meanwhile) and then kept."""

from __future__ import annotations

import contextlib
from typing import ClassVar

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Markdown

WELCOME = """\
# Welcome to rwkv-tui

rwkv-tui chats with RWKV language models on your own CPU: no GPU, no account, nothing leaves
this machine. **No model is ready yet**, so here is how to get one:

1. **Choose a model** from the registry (F2). {choose} rwkv-tui downloads it, converts it to a
   compact 5- or 8-bit file and tells you when it is ready; the download runs in the background (F3
   shows its progress) and resumes if it is interrupted.
2. **Use a file you already have**: a BlinkDL `.pth` checkpoint, an rwkv.cpp `.bin`, or a `.gguf`
   made by `rwkv-tui convert`.

Then **ctrl+n** opens a chat and **ctrl+t** a novel (the model continues your text). **F1** lists
every key, **ctrl+p** finds any action by name.
"""


CHOOSE_RAVEN = ("Raven is the chat model; start with Raven 1.5B or 3B if you have under 8 GB of RAM, 7B if you "
                "have 16 GB.")
CHOOSE_G1 = ("On this machine, start with **{name}** (`{id}`, {format}, about {ram} of memory{speed}): RWKV-7 G1 "
             "models chat, and think before they answer when you ask them to (F6).")
CHECKING = "_Checking this machine's memory and speed to suggest a model…_"


def starter_text(read_gbs: float | None = None) -> str | None:
    """The sentence naming the G1 model to start with on this machine (with `read_gbs`, this machine's
    memory read, also how fast it should answer); None if none fits or runs here."""
    from runtime.registry.catalog import load_catalog
    from runtime.registry.recommend import decode_rate, machine_resources, ram_bytes, starter_model
    from runtime.registry.status import models_dir
    from tui.units import human_bytes

    try:
        free_ram, _ = machine_resources(models_dir())
        rec = starter_model(load_catalog().models.values(), free_ram=free_ram, read_gbs=read_gbs)
    except (OSError, ValueError):
        return None
    if rec is None:
        return None
    rate = decode_rate(rec.entry, rec.choice, read_gbs) if read_gbs is not None else None
    return CHOOSE_G1.format(name=rec.entry.name, id=rec.entry.id, format=rec.choice.name,
                            ram=human_bytes(ram_bytes(rec.entry, rec.choice)),
                            speed=f", answering at about {rate:.0f} tokens a second" if rate else "")


def measured_starter_text() -> str | None:
    """starter_text with this machine's memory read (measured the first time: about a second)."""
    from runtime.registry.machine_speed import memory_read_gbs

    return starter_text(memory_read_gbs())


class WelcomeScreen(ModalScreen[str | None]):
    """Dismisses with "models", "add" or None (continue without a model)."""

    def __init__(self, starter: str | None = None, *, find_starter: bool = True) -> None:
        """`starter`: the sentence naming the model to start with (`starter_text`), else Raven's advice;
        with `find_starter` (and no `starter`) it is worked out in a thread (measured_starter_text)
        while the screen says so."""
        super().__init__()
        self.starter = starter
        self.finding = find_starter and starter is None

    BINDINGS: ClassVar[list[Binding]] = [
        Binding("escape", "dismiss_welcome", "Continue", id="welcome.close"),
        Binding("f2", "choose('models')", "Models", id="welcome.models"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="welcome-box"):
            yield Markdown(self._text(), id="welcome-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Choose a model (F2)", variant="primary", id="models")
                yield Button("Use a file I have", id="add")
                yield Button("Continue", id="continue")

    def _text(self) -> str:
        return WELCOME.format(choose=CHECKING if self.finding else self.starter or CHOOSE_RAVEN)

    def on_mount(self) -> None:
        self.query_one("#models", Button).focus()
        if self.finding:
            app = self.app
            self.run_worker(lambda: self._find_starter(app), thread=True, exclusive=True, group="welcome-starter")

    def _find_starter(self, app: App) -> None:
        try:
            starter = measured_starter_text()
        except Exception:  # a suggestion is a courtesy: without one the screen gives Raven's advice
            starter = None
        with contextlib.suppress(RuntimeError):  # the app closed meanwhile
            app.call_from_thread(self._show_starter, starter)

    def _show_starter(self, starter: str | None) -> None:
        self.starter, self.finding = starter, False
        if self.is_attached:
            self.query_one("#welcome-text", Markdown).update(self._text())

    def action_choose(self, what: str) -> None:
        self.dismiss(what)

    def action_dismiss_welcome(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "continue" else event.button.id)
