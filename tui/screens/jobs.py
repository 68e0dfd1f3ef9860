"""The jobs screen: queued and running downloads and conversions with progress, rate and ETA; finished
and failed jobs with their messages. The work itself runs in the job runner's thread (`tui.job_link`)."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from tui.keymap import bindings
from tui.widgets.job_row import JobRow
from tui.widgets.pane import describe_error

EMPTY = "No jobs. Choose a model on the models screen (F2) and press g to get it."


class JobsScreen(Screen[None]):
    BINDINGS: ClassVar[list[Binding]] = bindings("jobs.cancel", "jobs.clear", "jobs.back")

    def compose(self) -> ComposeResult:
        yield Label("Jobs: downloads and conversions (they keep running when you leave this screen)",
                    classes="dialog-title", id="jobs-title")
        yield Static(EMPTY, id="jobs-empty", markup=False)
        yield VerticalScroll(id="jobs-list")
        yield Footer(compact=True)

    @property
    def link(self) -> Any:
        return self.app.jobs  # type: ignore[attr-defined]

    async def on_mount(self) -> None:
        await self.refresh_jobs()
        rows = list(self.query(JobRow))
        if rows:
            rows[-1].focus()

    async def refresh_jobs(self) -> None:
        views = self.link.views() if self.link is not None else []
        views.sort(key=lambda v: (v.job.finished, -v.job.id))  # unfinished first, newest first
        listing = self.query_one("#jobs-list", VerticalScroll)
        rows = {r.job_id: r for r in self.query(JobRow)}
        wanted = [v.job.id for v in views]
        stale = [r for job_id, r in rows.items() if job_id not in wanted]
        if stale:
            await listing.remove_children(stale)
        new = []
        for view in views:
            row = rows.get(view.job.id)
            if row is None:
                new.append(JobRow(view))
            else:
                row.show(view)
        if new:
            await listing.mount_all(new)
        if [r.job_id for r in self.query(JobRow)] != wanted:  # keep the order: rebuild
            await listing.remove_children()
            await listing.mount_all([JobRow(v) for v in views])
        self.query_one("#jobs-empty", Static).display = not views
        if self.link is None:
            self.query_one("#jobs-empty", Static).update("The job queue could not be started.")

    def _focused_row(self) -> JobRow:
        focused = self.focused
        while focused is not None and not isinstance(focused, JobRow):
            focused = focused.parent  # type: ignore[assignment]
        if focused is None:
            raise SkipAction()
        return focused

    async def action_cancel_job(self) -> None:
        row = self._focused_row()
        if row.view.job.finished:
            self.app.notify("That job has already finished.", severity="warning")
            return
        try:
            self.link.cancel(row.job_id)
        except Exception as e:
            self.app.notify(describe_error(e), title="Cannot cancel", severity="error")
            return
        self.app.notify(f"Cancelling job #{row.job_id}…", timeout=3)
        await self.refresh_jobs()

    async def action_clear_finished(self) -> None:
        n = self.link.clear_finished() if self.link is not None else 0
        self.app.notify(f"Cleared {n} finished job{'s' if n != 1 else ''}.", timeout=3)
        await self.refresh_jobs()

    def action_back(self) -> None:
        self.dismiss(None)
