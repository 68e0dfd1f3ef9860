"""Render runtime Progress events as a rich progress bar (bytes, rate, ETA) on the terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import (
    Progress as RichProgress,
)

from runtime.progress import Progress, ProgressCallback


@contextmanager
def rich_progress(console: Console, unit: str = "B") -> Iterator[ProgressCallback]:
    """Yield a ProgressCallback drawing one bar per distinct `what`."""
    amount = (DownloadColumn(), TransferSpeedColumn()) if unit == "B" else (MofNCompleteColumn(),)
    bar = RichProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *amount,
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def update(event: Progress) -> None:
        task = tasks.get(event.what)
        if task is None:
            task = tasks[event.what] = bar.add_task(event.what, total=event.total or None)
        bar.update(task, completed=event.done, total=event.total or None)

    with bar:
        yield update
