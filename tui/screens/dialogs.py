"""Small modal dialogs: a line or a text to enter, a yes/no question, a choice from a list."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option


class _Dialog(ModalScreen[Any]):
    BINDINGS: ClassVar[list[Binding]] = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)


class TextDialog(_Dialog):
    """Ask for one line (rename, a file path) or, with `multiline`, a text (edit a message)."""

    BINDINGS: ClassVar[list[Binding]] = [Binding("ctrl+s", "save", "Save", id="dialog.save")]

    def __init__(self, title: str, value: str = "", *, placeholder: str = "", multiline: bool = False,
                 ok: str = "OK", help: str = "") -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.value = value
        self.placeholder = placeholder
        self.multiline = multiline
        self.ok = ok
        self.help = help

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box" + (" -wide" if self.multiline else "")):
            yield Label(self.title_text, classes="dialog-title")
            if self.multiline:
                yield TextArea(self.value, id="dialog-text", soft_wrap=True, tab_behavior="focus")
            else:
                yield Input(self.value, placeholder=self.placeholder, id="dialog-input")
            if self.help:
                yield Static(self.help, classes="dialog-help", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.ok, variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        if self.multiline:
            area = self.query_one(TextArea)
            area.focus()
            area.move_cursor(area.document.end)
        else:
            self.query_one(Input).focus()

    def _value(self) -> str:
        return self.query_one(TextArea).text if self.multiline else self.query_one(Input).value

    def action_save(self) -> None:
        self.dismiss(self._value())

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.dismiss(self._value())

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self._value() if event.button.id == "ok" else None)


class ConfirmDialog(_Dialog):
    """A yes/no question; dismisses with True or False."""

    BINDINGS: ClassVar[list[Binding]] = [Binding("y", "yes", "Yes", id="dialog.yes"),
                                         Binding("n", "cancel", "No", id="dialog.no")]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(self.question, classes="dialog-title", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.yes, variant="error", id="yes")
                yield Button("Cancel", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class ChoiceDialog(_Dialog):
    """Pick one of `choices` ((label, value) pairs); dismisses with the value or None."""

    def __init__(self, title: str, choices: list[tuple[Any, Any]], *, help: str = "",
                 empty: str = "Nothing to choose from.") -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.choices = choices
        self.help = help
        self.empty = empty

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box -wide"):
            yield Label(self.title_text, classes="dialog-title")
            if self.choices:
                yield OptionList(*[Option(label, id=str(i)) for i, (label, _) in enumerate(self.choices)],
                                 id="choices")
            else:
                yield Static(self.empty, classes="dialog-help", markup=False)
            if self.help:
                yield Static(self.help, classes="dialog-help", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        if self.choices:
            self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.choices[int(event.option.id or 0)][1])

    @on(Button.Pressed)
    def _pressed(self) -> None:
        self.dismiss(None)
