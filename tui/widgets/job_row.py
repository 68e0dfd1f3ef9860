"""One job on the jobs screen: model, steps, state, a progress bar with rate and ETA, its message."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from tui.units import human_bytes


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def amount(value: float, unit: str) -> str:
    return human_bytes(value) if unit == "B" else f"{int(value):,} {unit}"


def describe(view: Any) -> tuple[str, str]:
    """(title, detail) lines for a job view."""
    job = view.job
    steps = " → ".join(job.steps)
    target = f" to {job.dtype}" if job.dtype and "convert" in job.steps else ""
    title = f"#{job.id} {job.model_id}: {steps}{target} · {job.state}"
    p = view.progress
    if p is not None and job.state == "running":
        parts = [p.what]
        if p.total:
            parts.append(f"{amount(p.done, p.unit)} of {amount(p.total, p.unit)} ({100 * p.done / p.total:.0f}%)")
        else:
            parts.append(amount(p.done, p.unit))
        if view.rate > 0:
            parts.append(f"{amount(view.rate, p.unit)}/s")
        if view.eta is not None:
            parts.append(f"{duration(view.eta)} left")
        return title, " · ".join(parts)
    return title, job.message


class JobRow(Vertical, can_focus=True):
    def __init__(self, view: Any) -> None:
        super().__init__(id=f"job-{view.job.id}")
        self.view = view

    def compose(self) -> ComposeResult:
        title, detail = describe(self.view)
        yield Static(title, classes="job-title", markup=False)
        yield ProgressBar(total=None, show_eta=False, classes="job-bar")
        yield Static(detail, classes="job-detail", markup=False)

    def on_mount(self) -> None:
        self.show(self.view)

    @property
    def job_id(self) -> int:
        return self.view.job.id

    def show(self, view: Any) -> None:
        self.view = view
        job = view.job
        title, detail = describe(view)
        self.query_one(".job-title", Static).update(title)
        self.query_one(".job-detail", Static).update(detail)
        bar = self.query_one(ProgressBar)
        p = view.progress
        bar.display = job.state == "running" and p is not None
        if p is not None and p.total:
            bar.update(total=p.total, progress=p.done)
        elif p is not None:
            bar.update(total=None)
        for state in ("queued", "running", "done", "failed", "cancelled"):
            self.set_class(job.state == state, f"-{state}")
