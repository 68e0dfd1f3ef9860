"""The persistent job queue and its runner: the whole pipeline, restarts, cancelling, one at a time."""

from __future__ import annotations

import hashlib
import os

import pytest

from runtime.formats.gguf_file import read_gguf
from runtime.quant.types import DType
from runtime.registry.catalog import load_catalog, save_user_entry
from runtime.registry.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobEvent, JobQueue, JobRunner
from runtime.registry.status import (
    READY,
    SOURCE_ONLY,
    converted_path,
    model_status,
    read_sidecar,
    register_url,
    source_path,
)
from tests.registry.server import Behaviour, serve

DEAD_OWNER = f"{os.getpid()}:1.000"  # our pid with another start time: a previous, dead process


def add_model(url: str, data: bytes, model_id: str = "tiny", **extra) -> None:
    raw = {"id": model_id, "name": "Tiny", "family": "pile", "arch": "4", "n_layer": 2, "n_embd": 64,
           "vocab": 256, "file": "tiny.pth", "url": url, "size": len(data),
           "sha256": hashlib.sha256(data).hexdigest(), **extra}
    save_user_entry(raw)


def runner(**kw) -> JobRunner:
    kw.setdefault("download_options", {"chunk": 16384})
    kw.setdefault("sleep", lambda s: None)
    return JobRunner(**kw)


def test_download_then_convert_with_events(tiny_pth):
    sha = hashlib.sha256(tiny_pth).hexdigest()
    events: list[JobEvent] = []
    with serve({"/tiny.pth": tiny_pth}) as srv:
        add_model(srv.url("/tiny.pth"), tiny_pth)
        r = runner()
        r.add_listener(events.append)
        job = r.submit("tiny", "q8_0")
        final = r.run(job.id)
    assert final.state == DONE and final.result.endswith("tiny-q8_0.gguf")
    entry = load_catalog().get("tiny")
    out = converted_path(entry, DType.Q8_0)
    assert final.message == f"ready: {out}" and out.exists()
    assert read_gguf(out).metadata["rwkv_tui.source.sha256"] == sha
    assert read_sidecar(entry) == sha and source_path(entry).read_bytes() == tiny_pth
    assert model_status(entry).state == READY
    whats = [e.progress.what for e in events if e.progress]
    assert whats.index("downloading") < whats.index("converting")
    dl = [e.progress.done for e in events if e.progress and e.progress.what == "downloading"]
    assert dl == sorted(dl) and dl[-1] == len(tiny_pth)
    assert [e.job.state for e in events if e.progress is None][-1] == DONE
    again = JobQueue().get(job.id)  # a fresh connection sees the same row
    assert (again.state, again.message, again.steps, again.dtype) == (DONE, final.message, ("download", "convert"),
                                                                      "Q8_0")


def test_interrupted_download_resumes_after_a_restart(tiny_pth):
    with serve({"/tiny.pth": tiny_pth}) as srv:
        add_model(srv.url("/tiny.pth"), tiny_pth)
        first = JobQueue()
        job = first.submit("tiny", "q5_1")
        first.update(job.id, state=RUNNING, step="download", owner=DEAD_OWNER, done=5000)  # the process died here
        part = source_path(load_catalog().get("tiny")).with_name("tiny.pth.part")
        part.parent.mkdir(parents=True)
        part.write_bytes(tiny_pth[:5000])

        second = JobQueue()  # "rwkv-tui starts again"
        back = second.get(job.id)
        assert back.state == QUEUED and "interrupted during download" in back.message
        final = runner(queue=second).run(job.id)
        assert srv.requests == [("/tiny.pth", "bytes=5000-")]
    assert final.state == DONE and not part.exists()


def test_interrupted_conversion_starts_again(tiny_pth):
    add_model("https://example.invalid/tiny.pth", tiny_pth)  # never contacted: the source is already here
    entry = load_catalog().get("tiny")
    src = source_path(entry)
    src.parent.mkdir(parents=True)
    src.write_bytes(tiny_pth)
    stale = src.parent / ".tiny-q4_0.gguf.abc123.tmp"  # what a killed conversion leaves
    stale.write_bytes(b"half a file")
    q = JobQueue()
    job = q.submit("tiny", "q4_0")
    q.update(job.id, state=RUNNING, step="convert", owner=DEAD_OWNER)
    final = runner(queue=JobQueue()).run(job.id)
    assert final.state == DONE and converted_path(entry, DType.Q4_0).exists()
    assert not stale.exists()
    meta = read_gguf(converted_path(entry, DType.Q4_0)).metadata
    assert meta["rwkv_tui.source.sha256"] == hashlib.sha256(tiny_pth).hexdigest()


def test_cancel_keeps_the_part_and_a_new_job_resumes(tiny_pth):
    with serve({"/tiny.pth": tiny_pth}) as srv:
        add_model(srv.url("/tiny.pth"), tiny_pth)
        r = runner()
        job = r.submit("tiny", "q8_0")

        def cancel_midway(event: JobEvent) -> None:
            if event.progress and event.progress.what == "downloading" and event.progress.done >= 32768:
                r.cancel(job.id)

        r.add_listener(cancel_midway)
        final = r.run(job.id)
        assert final.state == CANCELLED and "partial download is kept" in final.message
        entry = load_catalog().get("tiny")
        held = model_status(entry).partial_bytes
        assert 32768 <= held < len(tiny_pth)
        r.remove_listener(cancel_midway)
        again = r.submit("tiny", "q8_0")
        assert again.id != job.id
        assert r.run(again.id).state == DONE
        assert srv.requests[-1] == ("/tiny.pth", f"bytes={held}-")


def test_cancel_requested_by_another_process(tiny_pth):
    with serve({"/tiny.pth": tiny_pth}) as srv:
        add_model(srv.url("/tiny.pth"), tiny_pth)
        r = runner()
        job = r.submit("tiny", "q8_0")
        other = JobQueue()  # another process's view of the same database

        def ask(event: JobEvent) -> None:
            if event.progress and not event.job.cancel_requested:
                other.request_cancel(job.id)

        r.add_listener(ask)
        final = r.run(job.id)
    assert final.state == CANCELLED


def test_one_job_at_a_time_and_the_second_waits(tiny_pth):
    add_model("https://example.invalid/tiny.pth", tiny_pth)
    add_model("https://example.invalid/b/tiny.pth", tiny_pth, model_id="other")
    entry = load_catalog().get("other")
    source_path(entry).parent.mkdir(parents=True)
    source_path(entry).write_bytes(tiny_pth)
    q = JobQueue()
    first = q.claim(q.submit("tiny", "q8_0").id)  # running in a live process (this one)
    assert first is not None and first.state == RUNNING
    second = q.submit("other", "q8_0")
    assert q.claim(second.id) is None
    waits: list[str] = []

    def sleep(_s: float) -> None:  # while "waiting", the first job finishes
        q.update(first.id, state=DONE, message="ready", owner=None)

    r = runner(queue=q, sleep=sleep)
    r.add_listener(lambda e: waits.append(e.job.message) if e.job.id == second.id else None)
    assert r.run(second.id, wait=False).state == QUEUED
    final = r.run(second.id)
    assert final.state == DONE
    assert f"waiting for job {first.id} (tiny) to finish" in waits


def test_submit_reuses_unfinished_jobs_and_cancels_queued_ones():
    q = JobQueue()
    a = q.submit("pile-169m", "q8_0")
    assert q.submit("pile-169m", DType.Q8_0).id == a.id
    assert q.submit("pile-169m", "q5_1").id != a.id
    assert q.submit("pile-169m", "q8_0", delete_source=True).delete_source
    gone = q.request_cancel(a.id)
    assert (gone.state, gone.message) == (CANCELLED, "cancelled before it started")
    assert q.submit("pile-169m", "q8_0").id != a.id
    with pytest.raises(ValueError, match="needs a target format"):
        q.submit("pile-169m", None)
    with pytest.raises(ValueError, match="source type only"):
        q.submit("pile-169m", "bf16")
    assert q.clear_finished() == 1 and all(not j.finished for j in q.list())


def test_failures_keep_their_message(tiny_pth):
    with serve({}) as srv:
        add_model(srv.url("/tiny.pth"), tiny_pth)  # the server has no such file
        r = runner()
        failed = r.run(r.submit("tiny", "q8_0").id)
    assert failed.state == FAILED and "HTTP 404" in failed.message
    v7 = r.run(r.submit("world5-0.1b", "q8_0").id)
    assert v7.state == FAILED and "RWKV-5 model" in v7.message and "--no-convert" in v7.message
    gone = r.run(r.submit("no-such-model", "q8_0").id)
    assert gone.state == FAILED and "no longer in the registry" in gone.message
    assert {j.id: j.message for j in JobQueue().list()} == {failed.id: failed.message, v7.id: v7.message,
                                                          gone.id: gone.message}


def test_ctrl_c_puts_the_job_back_in_the_queue(tiny_pth):
    with serve({"/tiny.pth": tiny_pth}) as srv:
        add_model(srv.url("/tiny.pth"), tiny_pth)
        r = runner()
        job = r.submit("tiny", "q8_0")

        def interrupt(event: JobEvent) -> None:
            if event.progress:
                raise KeyboardInterrupt

        r.add_listener(interrupt)
        with pytest.raises(KeyboardInterrupt):
            r.run(job.id)
    back = JobQueue().get(job.id)
    assert (back.state, back.owner) == (QUEUED, None) and "interrupted" in back.message


def test_url_model_learns_its_shape_and_can_drop_its_source(tiny_pth):
    with serve({"/files/My-Model.pth": tiny_pth}) as srv:
        entry = register_url(srv.url("/files/My-Model.pth"))
        assert not entry.has_shape and entry.size is None
        r = runner()
        done = r.run(r.submit(entry.id, "q5_1", delete_source=True).id)
    assert done.state == DONE
    learned = load_catalog().get(entry.id)
    assert (learned.n_layer, learned.n_embd, learned.vocab, learned.size) == (2, 64, 256, len(tiny_pth))
    st = model_status(learned)
    assert st.state == READY and st.source is None and set(st.converted) == {DType.Q5_1}


def test_download_only_and_convert_only_jobs(tiny_pth):
    with serve({"/tiny.pth": tiny_pth}) as srv:
        add_model(srv.url("/tiny.pth"), tiny_pth)
        r = runner()
        got = r.run(r.submit("tiny", None, steps=("download",)).id)
        entry = load_catalog().get("tiny")
        assert got.state == DONE and model_status(entry).state == SOURCE_ONLY
        conv = r.run(r.submit("tiny", "f16", steps=("convert",)).id)
        assert len(srv.requests) == 1
    assert conv.state == DONE and set(model_status(entry).converted) == {DType.F16}
    meta = read_gguf(converted_path(entry, DType.F16)).metadata
    assert meta["rwkv_tui.source.sha256"] == read_sidecar(entry)


def test_run_pending_works_the_queue_in_order(tiny_pth):
    with serve({"/tiny.pth": tiny_pth}, Behaviour()) as srv:
        add_model(srv.url("/tiny.pth"), tiny_pth)
        r = runner()
        a = r.submit("tiny", "q8_0")
        b = r.submit("tiny", "q4_1")
        finished = r.run_pending()
    assert [j.id for j in finished] == [a.id, b.id] and all(j.state == DONE for j in finished)


def test_a_job_whose_process_dies_while_we_wait_is_taken_over(tiny_pth):
    add_model("https://example.invalid/tiny.pth", tiny_pth)
    src = source_path(load_catalog().get("tiny"))
    src.parent.mkdir(parents=True)
    src.write_bytes(tiny_pth)
    q = JobQueue()
    job = q.submit("tiny", "q8_0")
    q.update(job.id, state=RUNNING, step="convert", owner=DEAD_OWNER)  # after this queue was opened
    assert runner(queue=q).run(job.id).state == DONE


def test_a_calibrated_convert_job_reads_its_text_and_replaces_the_plain_file(tiny_pth, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("RWKV reads one token at a time and keeps a fixed-size state. " * 8)
    with serve({"/tiny.pth": tiny_pth}) as srv:
        add_model(srv.url("/tiny.pth"), tiny_pth)
        r = runner()
        plain = r.run(r.submit("tiny", "q4_0").id)
        entry = load_catalog().get("tiny")
        out = converted_path(entry, DType.Q4_0)
        assert plain.state == DONE and "rwkv_tui.calibration.text" not in read_gguf(out).metadata
        events: list[JobEvent] = []
        r.add_listener(events.append)
        job = r.submit("tiny", "q4_0", steps=("convert",), calibrate=text)
        assert job.calibrate == str(text.resolve())
        got = r.run(job.id)
    assert got.state == DONE and got.result == str(out)
    meta = read_gguf(out).metadata
    assert meta["rwkv_tui.calibration.text"] == "calib.txt"
    assert meta["rwkv_tui.calibration.tokens"] == len(text.read_bytes())  # byte vocabulary
    assert JobQueue().get(job.id).calibrate == str(text.resolve())
    whats = {e.progress.what for e in events if e.progress}
    assert {"calibrating", "converting"} <= whats


@pytest.mark.parametrize(("content", "problem"), [(None, "not found"), (b"\xff\xfe", "not UTF-8"), (b" ", "is empty")])
def test_a_bad_calibration_text_is_refused_when_the_job_is_submitted(tmp_path, content, problem):
    from runtime.quant.calibrate import CalibrationError

    text = tmp_path / "calib.txt"
    if content is not None:
        text.write_bytes(content)
    q = JobQueue()
    with pytest.raises(CalibrationError, match=problem):
        q.submit("tiny", "q4_0", steps=("convert",), calibrate=text)
    with pytest.raises(ValueError, match="convert step"):
        q.submit("tiny", None, steps=("download",), calibrate=text)
    assert q.list() == []


def test_a_queue_made_before_calibration_gets_the_column(tmp_path):
    import sqlite3

    from runtime.registry import jobs

    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        assert ",\n    calibrate TEXT" in jobs._SCHEMA
        db.execute(jobs._SCHEMA.replace(",\n    calibrate TEXT", ""))
        db.execute("INSERT INTO jobs (model_id, dtype, steps, state, created, updated)"
                   " VALUES ('old', 'Q8_0', 'convert', 'done', 0, 0)")
    q = JobQueue(path)
    assert [(j.model_id, j.calibrate) for j in q.list()] == [("old", None)]
    text = tmp_path / "calib.txt"
    text.write_text("some text to read")
    assert q.submit("tiny", "q8_0", steps=("convert",), calibrate=text).calibrate == str(text.resolve())
