"""Downloads against a local HTTP server: resume, verification, retries, offline errors, cancel."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from runtime.errors import CancelledError, InsufficientDiskSpaceError
from runtime.progress import CancelToken, Progress
from runtime.registry.download import ChecksumMismatchError, DownloadError, download, part_path
from tests.registry.server import Behaviour, refused_url, serve, silent_server
from tests.support.pagecache import assert_not_cached, require_droppable_page_cache

DATA = os.urandom(300_000) + b"tail"
SHA = hashlib.sha256(DATA).hexdigest()


def fetch(url, dst, **kw):
    kw.setdefault("chunk", 16_384)
    kw.setdefault("sleep", lambda s: None)
    return download(url, dst, **kw)


def test_plain_download_reports_progress_and_lands_atomically(tmp_path):
    events: list[Progress] = []
    dst = tmp_path / "model.pth"
    with serve({"/m.pth": DATA}) as srv:
        result = fetch(srv.url("/m.pth"), dst, sha256=SHA, expected_size=len(DATA), progress=events.append)
    assert dst.read_bytes() == DATA
    assert not part_path(dst).exists()
    assert (result.size, result.sha256, result.resumed_from) == (len(DATA), SHA, 0)
    done = [e.done for e in events if e.what == "downloading"]
    assert done == sorted(done) and done[-1] == len(DATA)
    assert all(e.total == len(DATA) for e in events)


def test_dropped_connection_resumes_with_range(tmp_path):
    dst = tmp_path / "model.pth"
    delays: list[float] = []
    with serve({"/m.pth": DATA}, Behaviour(drop_after=100_000, drops=2)) as srv:
        result = fetch(srv.url("/m.pth"), dst, sha256=SHA, sleep=delays.append)
        ranges = [r for _, r in srv.requests]
    assert dst.read_bytes() == DATA
    assert ranges == [None, "bytes=100000-", "bytes=200000-"]
    assert result.attempts == 3
    assert delays == [1.0, 1.0]  # each attempt made progress, so the backoff did not grow


def test_interrupted_part_file_is_resumed_by_a_later_call(tmp_path):
    dst = tmp_path / "model.pth"
    part_path(dst).write_bytes(DATA[:123_456])
    with serve({"/m.pth": DATA}) as srv:
        result = fetch(srv.url("/m.pth"), dst, sha256=SHA, expected_size=len(DATA))
        assert srv.requests == [("/m.pth", "bytes=123456-")]
    assert result.resumed_from == 123_456 and result.sha256 == SHA
    assert dst.read_bytes() == DATA


def test_part_already_complete_gets_416_and_is_finished(tmp_path):
    dst = tmp_path / "model.pth"
    part_path(dst).write_bytes(DATA)
    with serve({"/m.pth": DATA}) as srv:
        result = fetch(srv.url("/m.pth"), dst, sha256=SHA)
    assert result.sha256 == SHA and dst.read_bytes() == DATA


@pytest.mark.parametrize("extra", [1, 5000])
def test_part_longer_than_the_file_gets_416_and_starts_again(tmp_path, extra):
    dst = tmp_path / "model.pth"
    part_path(dst).write_bytes(DATA + b"x" * extra)  # no sha256 given: only the sizes can tell
    with serve({"/m.pth": DATA}) as srv:
        result = fetch(srv.url("/m.pth"), dst)
        assert srv.requests == [("/m.pth", f"bytes={len(DATA) + extra}-"), ("/m.pth", None)]
    assert dst.read_bytes() == DATA
    assert (result.size, result.sha256) == (len(DATA), SHA)


@pytest.mark.parametrize("shift", [-1000, -1, 1, 4096])
def test_resume_at_another_place_than_asked_is_refused(tmp_path, shift):
    dst = tmp_path / "model.pth"
    part_path(dst).write_bytes(DATA[:100_000])
    with serve({"/m.pth": DATA}, Behaviour(range_shift=shift)) as srv, pytest.raises(DownloadError) as err:
        fetch(srv.url("/m.pth"), dst)
    start = 100_000 + shift
    assert f"resumed at the wrong place (Content-Range: 'bytes {start}-{len(DATA) - 1}/{len(DATA)}')" in str(err.value)
    assert part_path(dst).read_bytes() == DATA[:100_000]  # nothing appended
    assert not dst.exists()


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    dst = tmp_path / "model.pth"
    part_path(dst).write_bytes(b"x" * 5000)  # stale bytes that must not survive
    with serve({"/m.pth": DATA}, Behaviour(ignore_range=True)) as srv:
        result = fetch(srv.url("/m.pth"), dst, sha256=SHA)
    assert result.sha256 == SHA and dst.read_bytes() == DATA


def test_wrong_bytes_delete_the_part_and_name_both_hashes(tmp_path):
    dst = tmp_path / "model.pth"
    with serve({"/m.pth": DATA}, Behaviour(corrupt=True)) as srv, pytest.raises(ChecksumMismatchError) as info:
        fetch(srv.url("/m.pth"), dst, sha256=SHA)
    bad = hashlib.sha256(bytes(x ^ 0x5A for x in DATA)).hexdigest()
    assert SHA in str(info.value) and bad in str(info.value) and "deleted" in str(info.value)
    assert not dst.exists() and not part_path(dst).exists()


def test_size_mismatch_with_the_registry_is_refused_before_downloading(tmp_path):
    dst = tmp_path / "model.pth"
    with serve({"/m.pth": DATA}) as srv, pytest.raises(DownloadError, match=f"expects {len(DATA) + 1}"):
        fetch(srv.url("/m.pth"), dst, expected_size=len(DATA) + 1)
    assert not dst.exists() and not part_path(dst).exists()


def test_server_errors_are_retried_with_exponential_backoff(tmp_path):
    dst = tmp_path / "model.pth"
    delays: list[float] = []
    with serve({"/m.pth": DATA}, Behaviour(status=[503, 500, 429])) as srv:
        fetch(srv.url("/m.pth"), dst, sha256=SHA, sleep=delays.append, backoff=0.5)
    assert delays == [0.5, 1.0, 2.0]
    assert dst.read_bytes() == DATA


def test_not_found_is_not_retried(tmp_path):
    delays: list[float] = []
    with serve({}) as srv, pytest.raises(DownloadError, match="HTTP 404"):
        fetch(srv.url("/missing.pth"), tmp_path / "x.pth", sleep=delays.append)
    assert delays == []


def test_refused_connection_gives_up_naming_the_host(tmp_path):
    delays: list[float] = []
    url = refused_url()
    with pytest.raises(DownloadError) as info:
        fetch(url, tmp_path / "x.pth", retries=3, sleep=delays.append)
    msg = str(info.value)
    assert "could not reach 127.0.0.1" in msg and "gave up after 4 attempts" in msg
    assert delays == [1.0, 2.0, 4.0]


def test_unresolvable_host_fails_at_once_as_offline(tmp_path):
    delays: list[float] = []
    with pytest.raises(DownloadError, match=r"could not reach no-such-host\.invalid: .*offline"):
        fetch("https://no-such-host.invalid/m.pth", tmp_path / "x.pth", sleep=delays.append)
    assert delays == []


def test_silent_server_times_out(tmp_path):
    with silent_server() as url, pytest.raises(DownloadError, match="timed out"):
        fetch(url, tmp_path / "x.pth", timeout=0.1, retries=1)


def test_redirect_keeps_the_range(tmp_path):
    dst = tmp_path / "model.pth"
    part_path(dst).write_bytes(DATA[:1000])
    with serve({"/cdn/m.pth": DATA}, Behaviour(redirect={"/m.pth": "/cdn/m.pth"})) as srv:
        fetch(srv.url("/m.pth"), dst, sha256=SHA)
        assert srv.requests == [("/m.pth", "bytes=1000-"), ("/cdn/m.pth", "bytes=1000-")]
    assert dst.read_bytes() == DATA


def test_cancel_keeps_the_part_for_a_resume(tmp_path):
    dst = tmp_path / "model.pth"
    token = CancelToken()

    def progress(event: Progress) -> None:
        if event.done >= 50_000:
            token.cancel()

    with serve({"/m.pth": DATA}) as srv:
        with pytest.raises(CancelledError):
            fetch(srv.url("/m.pth"), dst, progress=progress, cancel=token)
        held = part_path(dst).stat().st_size
        assert 50_000 <= held < len(DATA) and not dst.exists()
        result = fetch(srv.url("/m.pth"), dst, sha256=SHA)
    assert result.resumed_from == held and dst.read_bytes() == DATA


def test_free_space_is_checked_before_starting(tmp_path):
    with serve({"/m.pth": DATA}) as srv:
        with pytest.raises(InsufficientDiskSpaceError, match="GB free"):
            fetch(srv.url("/m.pth"), tmp_path / "x.pth", expected_size=1 << 60)
        assert srv.requests == []


def test_only_http_addresses(tmp_path):
    with pytest.raises(DownloadError, match="only http"):
        fetch("file:///etc/passwd", tmp_path / "x")


def test_free_space_is_checked_against_the_servers_size_when_the_registry_has_none(tmp_path, monkeypatch):
    monkeypatch.setattr("runtime.atomic.shutil.disk_usage", lambda _p: shutil._ntuple_diskusage(10**12, 0, 1000))
    dst = tmp_path / "x.pth"
    with serve({"/m.pth": DATA}) as srv, pytest.raises(InsufficientDiskSpaceError, match=r"need 0\.07 GB"):
        fetch(srv.url("/m.pth"), dst)
    assert not part_path(dst).exists()


def test_a_finished_download_leaves_the_page_cache(tmp_path):
    require_droppable_page_cache(tmp_path)
    dst = tmp_path / "model.pth"
    with serve({"/m.pth": DATA}) as srv:
        fetch(srv.url("/m.pth"), dst, sha256=SHA)
    assert_not_cached(dst)
    assert dst.read_bytes() == DATA
