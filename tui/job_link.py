"""The app's side of the registry's job queue: a runner thread, and its events coalesced for the UI.

The registry's `JobRunner` works the persistent queue (downloads, conversions) in one background
thread and reports `JobEvent`s from that thread. Each event is stored here (the latest per job, plus
when its step started, for the rate and the ETA) and at most one `JobsChanged` message is in flight
to the app at a time, so a fast download never floods the UI. Jobs queued by another process (the
CLI's `rwkv-tui get`) are picked up on the next poll.

The thread is a daemon: quitting the app never waits for a 15 GB download. A job cut off that way is
put back in the queue by the registry the next time a queue is opened, and resumes from its `.part`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from tui.messages import JobsChanged

POLL_SECONDS = 5.0


@dataclass
class JobView:
    """What the UI shows about a job: its row, the latest progress, the rate and ETA of its step."""

    job: Any
    progress: Any | None = None
    rate: float = 0.0  # units per second since the step's first event of this kind
    eta: float | None = None  # seconds


class JobLink:
    def __init__(self, app: Any, runner: Any | None = None, *, autostart: bool = True) -> None:
        from runtime.registry.jobs import JobRunner

        self.app = app
        self.runner = runner if runner is not None else JobRunner()
        self.runner.add_listener(self._on_event)
        self._lock = threading.Lock()
        self._views: dict[int, JobView] = {}
        # (job, what) -> (time, done) of its first event: a calibrated conversion alternates "calibrating"
        # (layers) and "converting" (bytes), and neither's rate restarts when the other reports
        self._step_start: dict[tuple[int, str], tuple[float, int]] = {}
        self._posted = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.finished: list[Any] = []  # jobs that finished since the UI last looked
        self._thread: threading.Thread | None = None
        if autostart:
            self.start()

    # --- the runner thread ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rwkv-tui-jobs", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.runner.run_pending()
            except Exception as e:  # an internal error in one job: report it and keep the queue going
                self._notify_error(e)
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _notify_error(self, error: BaseException) -> None:
        with contextlib.suppress(Exception):
            self.app.call_from_thread(self.app.notify, f"{type(error).__name__}: {error}", title="Job failed",
                                      severity="error")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.runner.remove_listener(self._on_event)

    # --- events --------------------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        job = event.job
        now = time.monotonic()
        with self._lock:
            view = self._views.get(job.id) or JobView(job)
            view.job = job
            view.progress = event.progress
            if event.progress is not None:
                t0, done0 = self._step_start.setdefault((job.id, event.progress.what), (now, event.progress.done))
                elapsed = now - t0
                if elapsed > 0.5:
                    view.rate = (event.progress.done - done0) / elapsed
                    left = event.progress.total - event.progress.done
                    view.eta = left / view.rate if view.rate > 0 and event.progress.total > 0 else None
            if job.finished:
                view.progress, view.eta = None, None
                for key in [k for k in self._step_start if k[0] == job.id]:
                    del self._step_start[key]
                self.finished.append(job)
            self._views[job.id] = view
            post = not self._posted
            self._posted = True
        if post:
            self.app.post_message(JobsChanged())

    def take_changes(self) -> list[Any]:
        """Called by the UI when it handles `JobsChanged`: the jobs finished since the last call."""
        with self._lock:
            self._posted = False
            done, self.finished = self.finished, []
        return done

    # --- what the UI calls ---------------------------------------------------------------------

    def views(self) -> list[JobView]:
        """Every job (oldest first) with its latest progress."""
        jobs = self.runner.queue.list()
        with self._lock:
            out = []
            for job in jobs:
                view = self._views.get(job.id)
                if view is None:
                    view = JobView(job, job.progress)
                elif view.job.updated < job.updated:  # changed elsewhere (another process): the row wins
                    view = JobView(job, job.progress, view.rate, view.eta)
                out.append(view)
        return out

    def list(self) -> list[Any]:
        return self.runner.queue.list(include_finished=False)

    def submit(self, model_id: str, dtype: Any, **options: Any) -> Any:
        job = self.runner.submit(model_id, dtype, **options)
        self._wake.set()
        return job

    def cancel(self, job_id: int) -> Any:
        return self.runner.cancel(job_id)

    def clear_finished(self) -> int:
        with self._lock:
            for job_id in [i for i, v in self._views.items() if v.job.finished]:
                del self._views[job_id]
        return self.runner.queue.clear_finished()
