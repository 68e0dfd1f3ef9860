"""A persistent queue of model jobs (download → convert/quantize) and the runner that works it.

Jobs live in SQLite (`data_dir()/jobs.sqlite3`) rather than a JSON file: every change is a small
transaction, so a crash never leaves a half-written queue, and the CLI and the app (two processes)
can share the queue safely. A job is claimed inside a `BEGIN IMMEDIATE` transaction that also
counts the jobs running in live processes, so only `max_running` jobs (one by default) run at once
across every rwkv-tui process, and never two on the same model.

A running job records its owner (pid and process start time). When a queue is opened, jobs whose
owner has died go back to "queued": an interrupted download resumes from its `.part` file, an
interrupted conversion starts again (it never left a partial output). Finished, failed and
cancelled jobs keep their message.

The runner calls listeners with a `JobEvent` on every state change and progress step, from the
thread that runs the job (the app runs it in a worker thread). Cancelling works from any thread or
process: the flag is stored in the database and polled while the job runs.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runtime import paths
from runtime.atomic import atomic_write_bytes
from runtime.errors import CancelledError, RwkvError
from runtime.progress import CancelToken, Progress
from runtime.quant.mixes import parse_target
from runtime.quant.types import DType
from runtime.registry.catalog import (
    Catalog,
    ModelEntry,
    RegistryError,
    entry_to_raw,
    load_catalog,
    save_user_entry,
)
from runtime.registry.download import download
from runtime.registry.status import converted_path, model_status, read_sidecar, sha256_sidecar, source_path

STEPS = ("download", "convert")
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = frozenset({DONE, FAILED, CANCELLED})
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id TEXT NOT NULL,
    dtype TEXT,
    steps TEXT NOT NULL,
    step TEXT,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT,
    delete_source INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    owner TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    calibrate TEXT
)
"""
_ADDED_COLUMNS = {"calibrate": "TEXT"}  # columns newer than some existing queues' tables


@dataclass(frozen=True)
class Job:
    """A snapshot of one job's row."""

    id: int
    model_id: str
    dtype: str | None
    steps: tuple[str, ...]
    step: str | None
    state: str
    message: str
    done: int
    total: int
    sha256: str | None
    delete_source: bool
    result: str | None
    owner: str | None
    cancel_requested: bool
    created: float
    updated: float
    calibrate: str | None = None  # a convert step's calibration text (runtime.quant.calibrate)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def progress(self) -> Progress | None:
        if self.step is None or self.state != RUNNING:
            return None
        return Progress(_STEP_WORDS.get(self.step, self.step), self.done, self.total)


_STEP_WORDS = {"download": "downloading", "convert": "converting"}


@dataclass(frozen=True)
class JobEvent:
    """What listeners receive: the job as it is now and, during a step, its latest progress."""

    job: Job
    progress: Progress | None = None


JobListener = Callable[[JobEvent], None]


def _owner_token(pid: int | None = None) -> str:
    import psutil

    pid = os.getpid() if pid is None else pid
    return f"{pid}:{psutil.Process(pid).create_time():.3f}"


def _owner_alive(owner: str | None) -> bool:
    import psutil

    if not owner:
        return False
    try:
        pid_text, started = owner.split(":", 1)
        return f"{int(pid_text)}:{psutil.Process(int(pid_text)).create_time():.3f}" == f"{pid_text}:{started}"
    except (ValueError, psutil.Error):
        return False


class JobQueue:
    """The jobs table. Every method is one short transaction; safe from several threads and processes."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else paths.data_dir() / "jobs.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._me = _owner_token()
        self._lock = threading.Lock()  # one connection, shared by this queue's threads in turn
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode = WAL")  # readers never block the runner's writes
        self._db.execute("PRAGMA synchronous = NORMAL")  # with WAL: safe across crashes, fewer fsyncs
        with self._connect() as db:
            db.execute(_SCHEMA)
            have = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        self.recover()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _connect(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction (BEGIN IMMEDIATE takes the write lock at once, for read-then-write)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            row["id"], row["model_id"], row["dtype"], tuple(s for s in row["steps"].split(",") if s), row["step"],
            row["state"], row["message"], row["done"], row["total"], row["sha256"], bool(row["delete_source"]),
            row["result"], row["owner"], bool(row["cancel_requested"]), row["created"], row["updated"],
            row["calibrate"],
        )

    def submit(
        self,
        model_id: str,
        dtype: DType | str | None,
        *,
        steps: tuple[str, ...] = STEPS,
        sha256: str | None = None,
        delete_source: bool = False,
        calibrate: str | os.PathLike[str] | None = None,
    ) -> Job:
        """Queue a job, or return the unfinished one already queued for the same model and format.

        `calibrate`, a text file, makes the convert step calibrated (`convert --calibrate`); the text is
        checked now (runtime.quant.calibrate.CalibrationError names the problem)."""
        if not steps or any(s not in STEPS for s in steps):
            raise ValueError(f"steps must be taken from {STEPS}, got {steps}")
        target = parse_target(dtype).base if dtype is not None else None  # refuses bf16 and unknown names
        dtype_name = target.name if target is not None else None
        if "convert" in steps and dtype_name is None:
            raise ValueError("a convert step needs a target format")
        text = None
        if calibrate is not None:
            from runtime.quant.calibrate import read_text

            if "convert" not in steps:
                raise ValueError("a calibration text needs a convert step")
            read_text(calibrate)
            text = str(Path(calibrate).expanduser().resolve())
        now = time.time()
        with self._connect(immediate=True) as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE model_id = ? AND dtype IS ? AND steps = ? AND calibrate IS ?"
                " AND state IN (?, ?)",
                (model_id, dtype_name, ",".join(steps), text, QUEUED, RUNNING),
            ).fetchone()
            if row is not None:
                if delete_source and not row["delete_source"]:
                    db.execute("UPDATE jobs SET delete_source = 1 WHERE id = ?", (row["id"],))
                return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())
            cur = db.execute(
                "INSERT INTO jobs (model_id, dtype, steps, state, message, sha256, delete_source, created, updated,"
                " calibrate) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (model_id, dtype_name, ",".join(steps), QUEUED, sha256, int(delete_source), now, now, text),
            )
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (cur.lastrowid,)).fetchone())

    def get(self, job_id: int) -> Job:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise RegistryError(f"no job {job_id}")
        return self._job(row)

    def list(self, include_finished: bool = True) -> list[Job]:
        """Jobs oldest first."""
        query = "SELECT * FROM jobs" + ("" if include_finished else " WHERE state IN ('queued', 'running')")
        with self._connect() as db:
            return [self._job(r) for r in db.execute(query + " ORDER BY id")]

    def update(self, job_id: int, **fields: Any) -> Job:
        fields["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def recover(self) -> list[Job]:
        """Put jobs whose process died back in the queue; returns them."""
        with self._connect(immediate=True) as db:
            return self._recover(db)

    def _recover(self, db: sqlite3.Connection) -> list[Job]:
        back = []
        for row in db.execute("SELECT * FROM jobs WHERE state = ?", (RUNNING,)).fetchall():
            if not _owner_alive(row["owner"]):
                db.execute(
                    "UPDATE jobs SET state = ?, owner = NULL, message = ?, updated = ? WHERE id = ?",
                    (QUEUED, f"interrupted during {row['step'] or 'start'}; resumes on the next run", time.time(),
                     row["id"]),
                )
                back.append(row["id"])
        return [self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (i,)).fetchone()) for i in back]

    def claim(self, job_id: int, max_running: int = 1) -> Job | None:
        """Mark a queued job as running in this process, unless `max_running` jobs already run."""
        with self._connect(immediate=True) as db:
            self._recover(db)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != QUEUED:
                return None
            running = db.execute("SELECT model_id FROM jobs WHERE state = ?", (RUNNING,)).fetchall()
            if len(running) >= max_running or any(r["model_id"] == row["model_id"] for r in running):
                return None
            db.execute(
                "UPDATE jobs SET state = ?, owner = ?, message = 'starting', updated = ? WHERE id = ?",
                (RUNNING, self._me, time.time(), job_id),
            )
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def request_cancel(self, job_id: int) -> Job:
        """Flag a job for cancelling; a queued job is cancelled at once."""
        with self._connect(immediate=True) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise RegistryError(f"no job {job_id}")
            if row["state"] == QUEUED:
                db.execute(
                    "UPDATE jobs SET state = ?, message = 'cancelled before it started', updated = ? WHERE id = ?",
                    (CANCELLED, time.time(), job_id),
                )
            elif row["state"] == RUNNING:
                db.execute("UPDATE jobs SET cancel_requested = 1, updated = ? WHERE id = ?", (time.time(), job_id))
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def clear_finished(self) -> int:
        with self._connect() as db:
            return db.execute("DELETE FROM jobs WHERE state IN (?, ?, ?)", tuple(FINISHED)).rowcount


class _Step(Exception):
    """Ends a job early with a final state and message (not an error of the runner)."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state, self.message = state, message


class JobRunner:
    """Runs jobs from a `JobQueue`, one at a time, reporting to listeners.

    `download_options` are passed to `runtime.registry.download.download` (timeouts, retries, and
    `sleep` for tests).
    """

    def __init__(
        self,
        queue: JobQueue | None = None,
        *,
        max_running: int = 1,
        catalog: Callable[[], Catalog] = load_catalog,
        download_options: dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        poll: float = 1.0,
        threads: int | None = None,
    ) -> None:
        self.queue = queue or JobQueue()
        self.max_running = max_running
        self._catalog = catalog
        self._download_options = dict(download_options or {})
        self._sleep = sleep
        self._poll = poll
        self._threads = threads
        self._listeners: list[JobListener] = []
        self._tokens: dict[int, CancelToken] = {}
        self._lock = threading.Lock()

    # --- listeners and control -------------------------------------------------------------------

    def add_listener(self, listener: JobListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: JobListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _emit(self, job: Job, progress: Progress | None = None) -> None:
        for listener in list(self._listeners):
            listener(JobEvent(job, progress))

    def submit(self, model_id: str, dtype: DType | str | None, **options: Any) -> Job:
        """Queue a job (see `JobQueue.submit`) and tell the listeners."""
        job = self.queue.submit(model_id, dtype, **options)
        self._emit(job)
        return job

    def cancel(self, job_id: int) -> Job:
        """Cancel a job: at once if queued, at its next progress step if running (here or elsewhere)."""
        job = self.queue.request_cancel(job_id)
        with self._lock:
            token = self._tokens.get(job_id)
        if token is not None:
            token.cancel()
        self._emit(job)
        return job

    # --- running ---------------------------------------------------------------------------------

    def run_pending(self) -> list[Job]:
        """Run queued jobs, oldest first, until none is left; returns the jobs it finished."""
        finished = []
        while True:
            queued = [j for j in self.queue.list(include_finished=False) if j.state == QUEUED]
            ran = None
            for job in queued:
                ran = self.run(job.id, wait=False)
                if ran.finished:
                    finished.append(ran)
                    break
            if ran is None or not ran.finished:
                return finished

    def run(self, job_id: int, *, wait: bool = True) -> Job:
        """Run job `job_id` in this thread and return it finished.

        If it cannot start (another job is running, or this one runs in another process) it waits,
        reporting that job's progress from the database, unless `wait` is False.
        """
        while True:
            job = self.queue.get(job_id)
            if job.finished:
                return job
            if job.state == RUNNING and not _owner_alive(job.owner):  # its process died meanwhile
                self.queue.recover()
                job = self.queue.get(job_id)
            if job.state == QUEUED:
                claimed = self.queue.claim(job_id, self.max_running)
                if claimed is not None:
                    return self._execute(claimed)
            if not wait:
                return job
            if job.state == QUEUED:
                blocker = next((j for j in self.queue.list(False) if j.state == RUNNING), None)
                what = f"job {blocker.id} ({blocker.model_id})" if blocker else "another job"
                job = replace(job, message=f"waiting for {what} to finish")
            self._emit(job, job.progress)
            self._sleep(self._poll)

    def _execute(self, job: Job) -> Job:
        token = CancelToken()
        with self._lock:
            self._tokens[job.id] = token
        self._emit(job)
        try:
            job = self._pipeline(job, token)
        except _Step as end:
            job = self.queue.update(job.id, state=end.state, message=end.message, owner=None)
        except CancelledError:
            in_download = self.queue.get(job.id).step == "download"
            kept = "; the partial download is kept and resumes if you get this model again" if in_download else ""
            job = self.queue.update(job.id, state=CANCELLED, message=f"cancelled{kept}", owner=None)
        except (RwkvError, OSError) as e:
            job = self.queue.update(job.id, state=FAILED, message=str(e), owner=None)
        except Exception as e:
            message = f"internal error: {type(e).__name__}: {e}"
            job = self.queue.update(job.id, state=FAILED, message=message, owner=None)
            self._emit(job)
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: leave it to resume later
            job = self.queue.update(job.id, state=QUEUED, message="interrupted; resumes on the next run", owner=None)
            self._emit(job)
            raise
        finally:
            with self._lock:
                self._tokens.pop(job.id, None)
        self._emit(job)
        return job

    def _progress_hook(self, job: Job, token: CancelToken) -> Callable[[Progress], None]:
        """Forward progress to listeners; store it (and look for a cancel request) twice a second."""
        snapshot = job
        last_write = 0.0

        def hook(event: Progress) -> None:
            nonlocal snapshot, last_write
            now = time.monotonic()
            if now - last_write >= 0.5 or (event.total > 0 and event.done >= event.total):
                last_write = now
                snapshot = self.queue.update(job.id, done=event.done, total=event.total, message=event.what)
                if snapshot.cancel_requested:
                    token.cancel()
            self._emit(snapshot, event)
            token.raise_if_cancelled()

        return hook

    def _pipeline(self, job: Job, token: CancelToken) -> Job:
        catalog = self._catalog()
        entry = catalog.models.get(job.model_id)
        if entry is None:
            raise _Step(FAILED, f"model '{job.model_id}' is no longer in the registry")
        if "convert" in job.steps and not entry.runnable:
            raise _Step(
                FAILED,
                f"{entry.name} is an RWKV-{entry.arch} model; this version converts and runs RWKV-4 and RWKV-7 "
                "only (download it alone with --no-convert)",
            )
        source, sha = None, None
        result: Path | None = None
        for step in job.steps:
            job = self.queue.update(job.id, step=step, done=0, total=0, message=_STEP_WORDS[step])
            self._emit(job)
            if step == "download":
                source, sha, entry = self._download(job, entry, catalog, token)
                result = source
            else:
                if source is None:  # a convert-only job: the source was downloaded earlier (or is local)
                    source = source_path(entry)
                    sha = read_sidecar(entry) if entry.path is None else None
                result = self._convert(job, entry, source, sha, token)
        if job.delete_source and result is not None and entry.path is None:
            src = source_path(entry)
            if src.is_file() and src != result:
                src.unlink()
        return self.queue.update(job.id, state=DONE, message=f"ready: {result}", result=str(result), owner=None)

    def _download(
        self, job: Job, entry: ModelEntry, catalog: Catalog, token: CancelToken
    ) -> tuple[Path, str | None, ModelEntry]:
        dst = source_path(entry)
        if entry.path is not None:
            if not entry.path.exists():
                raise _Step(FAILED, f"{entry.path} (added with `rwkv-tui add`) no longer exists")
            return entry.path, None, entry
        if dst.is_file():
            return dst, read_sidecar(entry), entry
        if entry.url is None:
            raise _Step(FAILED, f"'{entry.id}' has no download address")
        options = {"sleep": self._sleep, **self._download_options}
        got = download(
            entry.url, dst, expected_size=entry.size, sha256=job.sha256 or entry.sha256,
            progress=self._progress_hook(job, token), cancel=token, **options,
        )
        atomic_write_bytes(sha256_sidecar(entry), f"{got.sha256}  {entry.file}\n".encode())
        if not entry.has_shape or entry.size is None:
            entry = self._learn_shape(entry, dst, got.size, catalog)
        return dst, got.sha256, entry

    def _learn_shape(self, entry: ModelEntry, path: Path, size: int, catalog: Catalog) -> ModelEntry:
        """A model registered from a bare URL: record the shape and size read from the download."""
        from runtime.formats.checkpoint import open_checkpoint

        if entry.origin == "shipped":
            return entry
        raw = entry_to_raw(entry)
        raw["size"] = size
        try:
            arch = open_checkpoint(path).arch
        except RwkvError as e:  # e.g. an RWKV-5+ file: keep what is known, report why it cannot convert
            save_user_entry(raw, catalog.user_path, catalog.shipped_path)
            raise _Step(FAILED, f"downloaded {path}, but it cannot be converted: {e}") from None
        raw.update(arch=arch.version, n_layer=arch.n_layer, n_embd=arch.n_embd, vocab=arch.n_vocab)
        return save_user_entry(raw, catalog.user_path, catalog.shipped_path)

    def _convert(self, job: Job, entry: ModelEntry, source: Path, sha: str | None, token: CancelToken) -> Path:
        from runtime.convert import convert

        dtype = DType.parse(job.dtype or "")
        done = model_status(entry).converted.get(dtype)
        if done is not None and job.calibrate is None:  # a calibrated conversion replaces the file
            return done
        dst = converted_path(entry, dtype)
        dst.parent.mkdir(parents=True, exist_ok=True)
        for stale in dst.parent.glob(f".{dst.name}.*.tmp"):  # left by a conversion that was killed
            stale.unlink(missing_ok=True)
        convert(
            source, dst, dtype, progress=self._progress_hook(job, token), cancel=token,
            threads=self._threads, source_sha256=sha, calibrate=job.calibrate,
        )
        return dst
