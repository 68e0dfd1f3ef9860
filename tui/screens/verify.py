"""A dialog that verifies a model file (`rwkv-tui inspect --verify` in the app) with a progress bar.

Every tensor is read in a worker thread (`runtime.verify`); the dialog shows how far it got and then
the verdict: all values finite and in range, or the first damaged tensor, row and column. Closing it
while it runs cancels the scan.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, ProgressBar, Static

from runtime.progress import CancelToken, Progress
from tui.widgets.pane import describe_error


class VerifyDialog(ModalScreen[str | None]):
    """Verify `path`; dismisses with the verdict shown ("ok", "damaged", "error") or None if cancelled."""

    BINDINGS: ClassVar[list[Binding]] = [Binding("escape", "close", "Close", id="dialog.cancel")]

    def __init__(self, path: Path) -> None:
        super().__init__(classes="dialog")
        self.path = Path(path)
        self.cancel = CancelToken()
        self.verdict: str | None = None
        self._shown = -1  # percent last shown (progress events come far more often)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box -wide"):
            yield Label(f"Verifying {self.path.name}", classes="dialog-title")
            yield ProgressBar(total=None, show_eta=True, id="verify-progress")
            yield Static("Reading every tensor…", id="verify-result", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop", id="close")

    def on_mount(self) -> None:
        self.run_worker(self._verify, thread=True, exit_on_error=False, name="verify")

    def _verify(self) -> None:
        from runtime.errors import CancelledError
        from runtime.formats.checkpoint import open_checkpoint
        from runtime.verify import MAX_PLAUSIBLE, verify_tensors

        try:
            ckpt = open_checkpoint(self.path)
            finding = verify_tensors(ckpt, self._progress, self.cancel)
        except CancelledError:
            return
        except Exception as e:  # a file that cannot even be opened: say why
            self.app.call_from_thread(self._done, "error", describe_error(e))
            return
        if finding is None:
            text = (f"All {len(ckpt.tensors)} tensors are finite and within ±{MAX_PLAUSIBLE:g}: "
                    "the file is sound.")
            self.app.call_from_thread(self._done, "ok", text)
        else:
            text = f"Damaged: {finding.describe()}. Download or convert the model again."
            self.app.call_from_thread(self._done, "damaged", text)

    def _progress(self, event: Progress) -> None:
        percent = int(100 * event.fraction)
        if percent != self._shown:
            self._shown = percent
            self.app.call_from_thread(self._show_progress, event.done, event.total)

    def _show_progress(self, done: int, total: int) -> None:
        self.query_one(ProgressBar).update(total=max(1, total), progress=done)

    def _done(self, verdict: str, text: str) -> None:
        self.verdict = verdict
        result = self.query_one("#verify-result", Static)
        result.update(text)
        result.set_class(verdict != "ok", "-error")
        bar = self.query_one(ProgressBar)
        if verdict == "ok":
            bar.update(total=1, progress=1)
        elif verdict == "error":  # nothing was read
            bar.display = False
        self.query_one("#close", Button).label = "Close"

    def action_close(self) -> None:
        self.cancel.cancel()
        self.dismiss(self.verdict)

    @on(Button.Pressed)
    def _pressed(self) -> None:
        self.action_close()
