"""JobLink's rate and ETA when a step reports two kinds of progress (a calibrated conversion)."""

from __future__ import annotations

from types import SimpleNamespace

from runtime.progress import Progress
from runtime.registry.jobs import JobEvent
from tui import job_link


def test_calibrating_events_do_not_restart_the_conversion_rate(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(job_link.time, "monotonic", lambda: clock[0])
    app = SimpleNamespace(post_message=lambda message: None)
    link = job_link.JobLink(app, SimpleNamespace(add_listener=lambda listener: None), autostart=False)
    job = SimpleNamespace(id=1, finished=False)
    total = 1000
    for t, what, done, of in [(0, "converting", 0, total), (10, "calibrating", 1, 4), (20, "converting", 200, total),
                              (30, "calibrating", 2, 4), (40, "converting", 400, total)]:
        clock[0] = t
        link._on_event(JobEvent(job, Progress(what, done, of)))
    view = link._views[1]
    assert view.rate == 10.0  # 400 bytes in 40 s, the calibration time included
    assert view.eta == 60.0
