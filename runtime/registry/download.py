"""Download one file over HTTP(S) with the standard library: resumable, verified, atomic.

Bytes go to `<dst>.part`; after an interruption the next call asks for the rest with a `Range`
header and appends (a server that ignores the range restarts the part from zero). The sha256 is
computed while writing (a resumed part is hashed once first), then the size and, when known, the
sha256 are checked: a mismatch deletes the part and names both hashes. Only a verified file is
fsynced and renamed to `dst`, so `dst` never holds a partial download.

Network faults (timeouts, resets, truncated bodies, 5xx and 429 answers) are retried with
exponential backoff; an attempt that made progress resets the count. A host name that does not
resolve fails at once ("could not reach huggingface.co: …"), since that usually means offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from runtime.atomic import check_free_space, fsync_dir
from runtime.errors import RwkvError
from runtime.pagecache import drop_cached_pages
from runtime.progress import CancelToken, Progress, ProgressCallback, no_progress

USER_AGENT = "rwkv-tui/0.1 (+urllib)"
CHUNK = 1 << 20
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(RwkvError, OSError):
    """A download failed; the message says why and whether the partial file was kept."""


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes do not have the expected sha256 (the partial file was deleted)."""

    def __init__(self, url: str, expected: str, actual: str, part: Path) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(
            f"{url}: the downloaded file's sha256 is {actual}, expected {expected}; "
            f"deleted {part.name} (the file changed on the server or was corrupted on the way)"
        )


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str
    resumed_from: int  # bytes already in the .part when this call started
    attempts: int


def part_path(dst: Path) -> Path:
    return dst.with_name(dst.name + ".part")


class _Retry(Exception):
    """A fault worth another attempt."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Part:
    """What the part file holds so far: its length, the running sha256, the file's total size."""

    path: Path
    have: int
    hasher: hashlib._Hash
    total: int | None

    def restart(self) -> None:
        with open(self.path, "wb"):
            pass
        self.have, self.hasher = 0, hashlib.sha256()


def download(
    url: str,
    dst: str | os.PathLike[str],
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    timeout: float = 30.0,
    retries: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    chunk: int = CHUNK,
) -> DownloadResult:
    """Download `url` to `dst` (see the module docstring). Raises DownloadError, CancelledError."""
    dst = Path(dst)
    if urlparse(url).scheme not in ("http", "https"):
        raise DownloadError(f"{url}: only http:// and https:// addresses can be downloaded")
    cancel = cancel or CancelToken()
    expected_sha = sha256.lower() if sha256 else None
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = _Part(part_path(dst), 0, hashlib.sha256(), expected_size)
    if expected_size is not None:
        held = part.path.stat().st_size if part.path.exists() else 0
        check_free_space(dst.parent, max(0, expected_size - held))
    _hash_part(part, progress, cancel)
    resumed_from = part.have
    failures = attempts = 0
    while True:
        cancel.raise_if_cancelled()
        attempts += 1
        before = part.have
        try:
            _attempt(url, part, expected_size, timeout, chunk, progress, cancel)
            break
        except _Retry as fault:
            failures = 1 if part.have > before else failures + 1
            if failures > retries:
                kept = f"; {part.have} bytes are kept in {part.path.name}, run again to resume" if part.have else ""
                raise DownloadError(
                    f"could not download {url}: {fault.reason} (gave up after {attempts} attempts){kept}"
                ) from None
            sleep(min(max_backoff, backoff * 2 ** (failures - 1)))
    size = part.path.stat().st_size
    if part.total is not None and size != part.total:
        part.path.unlink(missing_ok=True)
        raise DownloadError(f"{url}: received {size} bytes, expected {part.total}; deleted {part.path.name}")
    digest = part.hasher.hexdigest()
    if expected_sha and digest != expected_sha:
        part.path.unlink(missing_ok=True)
        raise ChecksumMismatchError(url, expected_sha, digest, part.path)
    with open(part.path, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part.path, dst)
    fsync_dir(dst.parent)
    drop_cached_pages(dst)  # so that the first load maps it with 2 MB pages (runtime/pagecache.py)
    return DownloadResult(dst, size, digest, resumed_from, attempts)


def _hash_part(part: _Part, progress: ProgressCallback, cancel: CancelToken) -> None:
    """Hash what a previous attempt left in the part file, so the sha256 covers the whole file."""
    if not part.path.exists():
        return
    size = part.path.stat().st_size
    with open(part.path, "rb") as f:
        while block := f.read(8 << 20):
            part.hasher.update(block)
            part.have += len(block)
            progress(Progress("checking partial download", part.have, size))
            cancel.raise_if_cancelled()


def _attempt(
    url: str,
    part: _Part,
    expected_size: int | None,
    timeout: float,
    chunk: int,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> None:
    """One request: append what the server sends to the part file."""
    host = urlparse(url).hostname or url
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if part.have:
        request.add_header("Range", f"bytes={part.have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        with contextlib.closing(e):
            if e.code == 416 and part.have:
                _range_not_satisfiable(part, e, expected_size)
                return
            if e.code in RETRY_STATUS:
                raise _Retry(f"the server answered HTTP {e.code} {e.reason}") from None
            raise DownloadError(f"{url}: the server answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, socket.gaierror):
            why = e.reason.strerror or str(e.reason)
            raise DownloadError(f"could not reach {host}: {why} (are you offline?)") from None
        raise _Retry(f"could not reach {host}: {_describe(e.reason)}") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Retry(f"could not reach {host}: {_describe(e)}") from None

    with response:
        server_total = _server_total(url, response, part)
        if server_total is not None:
            if expected_size is not None and server_total != expected_size:
                part.path.unlink(missing_ok=True)
                raise DownloadError(
                    f"{url}: the server has {server_total} bytes, the registry expects {expected_size}; "
                    "not downloading (the file on the server may be another version)"
                )
            if part.total is None:
                check_free_space(part.path.parent, server_total - part.have)
            part.total = server_total
        with open(part.path, "ab" if part.have else "wb") as f:
            try:
                while True:
                    cancel.raise_if_cancelled()
                    block = response.read(chunk)
                    if not block:
                        break
                    f.write(block)
                    part.hasher.update(block)
                    part.have += len(block)
                    progress(Progress("downloading", part.have, part.total or 0))
            except (OSError, http.client.HTTPException) as e:
                f.flush()
                os.fsync(f.fileno())
                raise _Retry(f"the connection broke after {part.have} bytes: {_describe(e)}") from None
        if part.total is not None and part.have < part.total:
            raise _Retry(f"the connection closed after {part.have} of {part.total} bytes")


def _server_total(url: str, response: http.client.HTTPResponse, part: _Part) -> int | None:
    """The file's full size as the server states it; restarts the part if the range was ignored."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        m = _CONTENT_RANGE.match(content_range)
        if not m or int(m.group(1)) != part.have:
            raise DownloadError(f"{url}: the server resumed at the wrong place (Content-Range: {content_range!r})")
        return int(m.group(3)) if m.group(3) != "*" else None
    if response.status != 200:
        raise DownloadError(f"{url}: unexpected HTTP status {response.status}")
    if part.have:  # the server ignored the range: start again from zero
        part.restart()
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _range_not_satisfiable(part: _Part, error: urllib.error.HTTPError, expected_size: int | None) -> None:
    """HTTP 416 on a resume: the part is already complete, or it is longer than the file (restart)."""
    m = re.match(r"bytes\s+\*/(\d+)", error.headers.get("Content-Range", "") if error.headers else "")
    total = int(m.group(1)) if m else expected_size
    if total is not None and part.have == total:
        part.total = total
        return
    part.restart()
    raise _Retry("the partial file does not match the file on the server; starting again")


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed early"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} (errno {error.errno})"
    return str(error) or type(error).__name__


def disk_free(folder: Path) -> int:
    """Free bytes in `folder` (or its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free
