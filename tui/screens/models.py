"""The models screen: the registry (shipped models.toml and the user's) with status, size on disk, what
fits this machine, and actions: get (download + convert), convert to another type, delete a file,
set the default per family, add a file, or start a chat on a ready model."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from tui.keymap import bindings
from tui.screens.dialogs import ChoiceDialog, ConfirmDialog, TextDialog
from tui.units import human_bytes
from tui.widgets.pane import describe_error

STATE_STYLE = {"ready": "bold green", "downloading": "yellow", "converting": "yellow", "download paused": "yellow",
               "source only": "cyan", "not downloaded": "dim"}


def _size(n: int | None) -> str:
    return human_bytes(n) if n else "—"


class ModelsScreen(Screen[None]):
    BINDINGS: ClassVar[list[Binding]] = bindings(
        "models.new_chat", "models.download", "models.convert", "models.delete", "models.default",
        "models.add", "models.add_state", "models.verify", "models.back",
    )

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, Any] = {}
        self._free: tuple[int, int] | None = None
        self._measuring = False  # _measure_read started (once a screen)

    def compose(self) -> ComposeResult:
        yield Label("Models: g gets one (download + convert), enter chats with a ready one", classes="dialog-title",
                    id="models-title")
        yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="model-details", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("id")
        table.add_column("name", width=30)
        table.add_columns("family", "shape", "status", "here", "on disk", "use", "RAM")
        self.refresh_models()
        table.focus()

    @property
    def app_(self) -> Any:
        return self.app

    def _resources(self) -> tuple[int, int]:
        if self._free is None:
            from runtime.registry.recommend import machine_resources
            from runtime.registry.status import models_dir

            self._free = machine_resources(models_dir())
        return self._free

    def refresh_models(self) -> None:
        """Re-read the registry and the files on disk (after a job, a delete, an added file)."""
        from runtime.registry.recommend import ram_bytes

        table = self.query_one(DataTable)
        try:
            statuses = self.app_.statuses()
            catalog_warnings = self.app_.catalog().warnings
        except Exception as e:
            self.app.notify(describe_error(e), title="Cannot read the registry", severity="error")
            return
        for w in catalog_warnings[:3]:
            self.app.notify(w, title="models.toml", severity="warning", timeout=8)
        self._free = None
        statuses = self._starter_first(statuses)
        defaults = self.app_.defaults()
        current = table.cursor_row
        selected = self._selected()  # the cursor follows its model: a model that is got moves up the list
        table.clear()
        self._statuses = {}
        for status in statuses:
            entry = status.entry
            self._statuses[entry.id] = status
            rec = self._recommendation(status)
            name = Text(entry.id)
            if defaults.get(entry.family) == entry.id:
                name.append(" ★", style="bold")
            shape = f"{entry.n_layer} × {entry.n_embd}" if entry.n_layer else "?"
            formats = ", ".join(sorted(t.name for t in status.converted)) or "—"
            # a model on disk shows the type it runs in; one still to get the recommended type
            use_type = status.best_type()  # (a DType, F32 is 0: compare with None)
            if use_type is None and rec is not None:
                use_type = rec.choice
            use = use_type.name if use_type is not None else "—"
            ram = _size(ram_bytes(entry, use_type)) if use_type is not None else "—"
            state = Text(status.state, style=STATE_STYLE.get(status.state, ""))
            if not entry.runnable:
                state = Text(f"RWKV-{entry.arch}: later", style="dim")
            title = Text(entry.name, overflow="ellipsis", no_wrap=True)
            table.add_row(name, title, entry.family, shape, state, formats, _size(status.bytes_on_disk), use, ram,
                          key=entry.id)
        if statuses:
            ids = [st.entry.id for st in statuses]
            if selected is not None and selected.entry.id in ids:
                current = ids.index(selected.entry.id)
            table.move_cursor(row=min(max(current, 0), len(statuses) - 1))
        self._show_details()

    def _starter_first(self, statuses: list[Any]) -> list[Any]:
        """The G1 model to start with on this machine (as `rwkv-tui models` says) first among the
        models still to get, and named in the title."""
        from runtime.registry.machine_speed import memory_read_gbs
        from runtime.registry.recommend import starter_model

        title = "Models: g gets one (download + convert), enter chats with a ready one"
        # the kept memory read (the welcome screen or `rwkv-tui models` measured it); none kept yet: measured
        # in a thread, and the list is refreshed with it (meanwhile the suggestion goes by memory alone)
        read_gbs = memory_read_gbs(measure=False)
        # not while a reply is generated: it would halve the figure, and slow the reply
        if read_gbs is None and not self._measuring and not self._generating():
            self._measuring = True
            app = self.app
            self.run_worker(lambda: self._measure_read(app), thread=True, exclusive=True, group="models-read")
        starter = starter_model((st.entry for st in statuses), free_ram=self._resources()[0], read_gbs=read_gbs)
        if starter is not None:
            title += f" · recommended here: {starter.entry.id} ({starter.choice.name})"
            statuses = sorted(statuses, key=lambda st: (not st.here, st.entry.id != starter.entry.id))
        self.query_one("#models-title", Label).update(title)
        return statuses

    def _generating(self) -> bool:
        chat = getattr(self.app, "chat", None)
        return chat is not None and any(pane.busy for pane in chat.panes)

    def _measure_read(self, app: Any) -> None:
        from runtime.registry.machine_speed import memory_read_gbs

        try:
            gbs = memory_read_gbs()
        except Exception:  # a suggestion is a courtesy: without the figure it goes by memory alone
            return
        if gbs is not None:  # the process keeps it (machine_speed), kept on disk or not
            with contextlib.suppress(RuntimeError):  # the app closed meanwhile
                app.call_from_thread(self._after_measuring)

    def _after_measuring(self) -> None:
        if self.is_attached:
            self.refresh_models()

    def _recommendation(self, status: Any) -> Any | None:
        from runtime.registry.recommend import recommend

        entry = status.entry
        if not entry.has_shape and not entry.size:
            return None
        ram, disk = self._resources()
        try:
            return recommend(entry, free_ram=ram, free_disk=disk, source_present=status.source is not None,
                             converted=frozenset(status.converted))
        except Exception:
            return None

    def _selected(self) -> Any | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        return self._statuses.get(key or "")

    def on_data_table_row_highlighted(self) -> None:
        self._show_details()

    def on_data_table_row_selected(self) -> None:
        self.action_use()

    def _show_details(self) -> None:
        status = self._selected()
        details = self.query_one("#model-details", Static)
        if status is None:
            details.update("The registry is empty.")
            return
        entry = status.entry
        default = " · the default " + entry.family + " model" if self.app_.defaults().get(entry.family) == entry.id \
            else ""
        lines = [f"{entry.name} [{entry.id}] · {entry.origin}{default}"]
        if not entry.runnable:
            lines.append(f"RWKV-{entry.arch}: this version runs RWKV-4 and RWKV-7; g downloads the file for later.")
        if entry.description:
            lines.append(entry.description)
        src = entry.path or entry.url
        if src:
            lines.append(f"source: {src}" + (f" ({human_bytes(entry.size)})" if entry.size else ""))
        if status.partial_bytes:
            lines.append(f"partial download: {human_bytes(status.partial_bytes)} (g resumes it)")
        for dtype, path in sorted(status.converted.items(), key=lambda kv: kv[0].name):
            lines.append(f"{dtype.name}: {path}{self._quality(path)}")
        rec = self._recommendation(status)
        if rec is not None:
            lines.append(f"recommended here: {rec.reason}")
        details.update("\n".join(lines))

    @staticmethod
    def _quality(path: Path) -> str:
        try:
            from runtime.eval.store import evaluation_for
        except ImportError:
            return ""
        try:
            result = evaluation_for(path)
        except Exception:
            return ""
        if result is None:
            return "  (not evaluated: `rwkv-tui eval` measures it)"
        return (f"  · KL {result.kl_mean:.2e}, top-1 {100 * result.top1:.0f}%, perplexity {result.perplexity:.2f}, "
                f"{result.tokens_per_second:.1f} tok/s")

    # --- actions -------------------------------------------------------------------------------

    def _require(self) -> Any:
        status = self._selected()
        if status is None:
            self.app.notify("No model selected.", severity="warning")
        return status

    def action_use(self) -> None:
        status = self._require()
        if status is None:
            return
        if not status.ready:
            self.app.notify(f"{status.entry.name} is {status.state}; press g to get it.", severity="warning")
            return
        try:
            choice = self.app_.choice_for(status.entry.id)
        except Exception as e:
            self.app.notify(describe_error(e), severity="error")
            return
        self.app_.show_chat_on(choice)

    def _submit(self, status: Any, dtype: Any, steps: tuple[str, ...], calibrate: str | None = None) -> None:
        link = self.app_.jobs
        if link is None:
            self.app.notify("The job queue is not running.", severity="error")
            return
        try:
            job = link.submit(status.entry.id, dtype, steps=steps, calibrate=Path(calibrate) if calibrate else None)
        except Exception as e:
            self.app.notify(describe_error(e), title="Cannot start", severity="error")
            return
        calibrated = f", calibrated on {Path(job.calibrate).name}" if job.calibrate else ""
        self.app.notify(f"Job #{job.id}: {' → '.join(job.steps)} {status.entry.name}"
                        f"{' to ' + job.dtype if job.dtype else ''}{calibrated}. F3 shows its progress.", timeout=6)
        self.refresh_models()

    def action_download(self) -> None:
        status = self._require()
        if status is None:
            return
        entry = status.entry
        if not entry.runnable:
            self._submit(status, None, ("download",))
            return
        rec = self._recommendation(status)
        if rec is not None and rec.choice in status.converted:
            self.app.notify(f"{entry.name} is ready in {rec.choice.name}; enter starts a chat.")
            return
        from runtime.registry.recommend import DEFAULT_FORMAT

        dtype = rec.choice if rec is not None else DEFAULT_FORMAT
        if rec is not None and rec.fit(dtype).fits is False:
            def confirmed(yes: bool | None) -> None:
                if yes:
                    self._submit(status, dtype, ("download", "convert"))

            self.app.push_screen(ConfirmDialog(f"{rec.reason}. Get {entry.name} anyway?", "Get it"), confirmed)
            return
        self._submit(status, dtype, ("download", "convert"))

    def action_convert(self) -> None:
        status = self._require()
        if status is None:
            return
        rec = self._recommendation(status)
        if rec is None:
            self.app.notify("The shape of this model is unknown until it is downloaded.", severity="warning")
            return
        choices = []
        for fit in rec.formats:
            mark = " (recommended)" if fit.dtype is rec.choice else ""
            have = " (already here)" if fit.dtype in status.converted else ""
            fits = {True: "fits", False: "does not fit", None: "?"}[fit.fits]
            label = (f"{fit.dtype.name}{mark}{have}: file {_size(fit.file_bytes)}, RAM {_size(fit.ram_bytes)}, "
                     f"{fits} here")
            choices.append((label, fit.dtype))
        steps = ("convert",) if status.source is not None else ("download", "convert")

        def chosen(dtype: Any) -> None:
            from runtime.quant.types import DType

            if dtype is None:
                return
            if dtype in (DType.F32, DType.F16):  # nothing is rounded: no calibration to ask for
                self._submit(status, dtype, steps)
                return

            def text_given(path: str | None) -> None:
                if path is not None:
                    self._submit(status, dtype, steps, path.strip() or None)

            self.app.push_screen(TextDialog(
                f"Calibration text for {dtype.name} (optional)", placeholder="path to a text file; empty: none",
                ok="Convert", help="The model reads this text first and the rounding favours what it activates "
                                   "(convert --calibrate): better quality at the same size, slower to convert."),
                text_given)

        self.app.push_screen(ChoiceDialog(f"Convert {status.entry.name} to which format?", choices), chosen)

    def action_delete_file(self) -> None:
        status = self._require()
        if status is None:
            return
        from runtime.registry.status import delete_files, delete_source

        entry = status.entry
        choices: list[tuple[str, Any]] = []
        for dtype, path in sorted(status.converted.items(), key=lambda kv: kv[0].name):
            if entry.path is not None and path == entry.path:
                continue  # the user's own file
            choices.append((f"{path.name} ({_size(path.stat().st_size if path.exists() else 0)})", ("format", dtype)))
        if status.source is not None and entry.path is None:
            choices.append((f"the source {status.source.name} ({_size(status.source.stat().st_size)})",
                            ("source", None)))
        if status.disk_bytes and entry.path is None:
            choices.append((f"everything in the model's folder ({_size(status.disk_bytes)})", ("all", None)))
        if not choices:
            self.app.notify("Nothing of this model is stored by rwkv-tui.", severity="warning")
            return

        def chosen(what: Any) -> None:
            if what is None:
                return
            kind, dtype = what
            try:
                freed = (delete_source(entry) if kind == "source" else
                         delete_files(entry, dtype if kind == "format" else None))
            except Exception as e:
                self.app.notify(describe_error(e), title="Cannot delete", severity="error")
                return
            self.app.notify(f"Freed {human_bytes(freed)}.", timeout=4)
            self.app_.refresh_models()

        self.app.push_screen(ChoiceDialog(f"Delete which file of {entry.name}?", choices), chosen)

    def action_set_default(self) -> None:
        status = self._require()
        if status is None:
            return
        entry = status.entry
        try:
            self.app_.set_default(entry.family, entry.id)
        except Exception as e:
            self.app.notify(describe_error(e), severity="error")
            return
        self.app.notify(f"{entry.name} is now the default {entry.family} model.", timeout=4)
        self.refresh_models()

    def action_verify(self) -> None:
        """Read every tensor of one of the model's files and name the first damaged value."""
        status = self._require()
        if status is None:
            return
        from tui.screens.verify import VerifyDialog

        files = list(dict.fromkeys([*status.converted.values(), status.source, status.entry.path]))
        files = [p for p in files if p is not None and Path(p).is_file()]
        if not files:
            self.app.notify(f"No file of {status.entry.name} is on disk to verify.", severity="warning")
            return
        if len(files) == 1:
            self.app.push_screen(VerifyDialog(files[0]))
            return
        choices = [(f"{Path(p).name} ({_size(Path(p).stat().st_size)})", Path(p)) for p in files]

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.app.push_screen(VerifyDialog(path))

        self.app.push_screen(ChoiceDialog(f"Verify which file of {status.entry.name}?", choices), chosen)

    def action_add_file(self) -> None:
        self.app_.add_model_file()

    def action_add_state(self) -> None:
        status = self._require()
        if status is not None:
            self.app_.add_state_file(status.entry.id)

    def action_back(self) -> None:
        self.dismiss(None)
