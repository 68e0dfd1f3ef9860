"""The conversation store: conversations, messages and the model state after each turn, in SQLite.

One file (default `data_dir()/conversations.sqlite3`) in WAL mode with `synchronous=FULL`: when
`add_message` returns, the turn and its state are on disk, and a kill at any moment leaves the
database consistent. The app's threads share one connection behind a lock; other processes (the
line-mode chat while the app runs) wait on SQLite's busy timeout. Writes take the write lock at
once (`BEGIN IMMEDIATE`), so a transaction never fails half-way for lack of it.

States are content-addressed (sha256 of the raw `State.to_bytes()`), compressed by
`runtime.chat.state_codec`, shared between forks, and deleted by triggers when the last turn using
them goes. A turn can hold one state per model fingerprint, so a conversation moved between a chat
and a novel model keeps a state for each. The "fingerprint" a state is kept under is the model's
fingerprint, optionally followed by "/" and a qualifier (e.g. the family, when the same file is used
with two templates); a state is refused under a key that does not start with the fingerprint
recorded inside it, so it can never be loaded for the wrong model. Every state is validated
(`State.from_bytes`) before it is saved. Compression and hashing run outside the lock.

"Activity" (the order of `list_conversations`, and `last_conversation_id`) is a change of the
messages or of the model/sampling settings; renaming or archiving does not count. Timestamps are
UTC epoch seconds. `message_count` counts the visible messages (the init prompt is not one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import paths
from runtime.chat import state_codec
from runtime.chat.schema import DatabaseFileError, StoreError, prepare
from runtime.model.state import State, StateError

DEFAULT_FILENAME = "conversations.sqlite3"
_FORK_SUFFIX = re.compile(r" \(fork(?: \d+)?\)$")
BUSY_TIMEOUT_S = 15.0
MODES = ("chat", "novel")
TURN_ROLES = ("user", "assistant", "text")
SNIPPET_CHARS = 120
MIN_FTS_TERM = 3  # the trigram index only answers terms of 3+ characters; shorter ones use LIKE

__all__ = [
    "ConversationNotFoundError",
    "ConversationRecord",
    "ConversationStore",
    "DatabaseFileError",
    "MessageNotFoundError",
    "MessageRecord",
    "SearchHit",
    "StateCorruptError",
    "StoreArgumentError",
    "StoreError",
    "default_path",
]


class StoreArgumentError(StoreError, ValueError):
    """A call to the store was given a value it cannot keep (bad role, mode, state, JSON…)."""


class _NotFoundError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConversationNotFoundError(_NotFoundError):
    """No conversation with that id (deleted, or never existed)."""


class MessageNotFoundError(_NotFoundError):
    """No message with that id or seq."""


class StateCorruptError(StoreError, ValueError):
    """A saved state in the database no longer decodes to the bytes that were saved."""


@dataclass(frozen=True)
class ConversationRecord:
    id: int
    title: str
    mode: str
    family: str
    model_ref: str
    created_at: float
    updated_at: float
    archived: bool
    sampling: dict[str, Any] = field(hash=False)
    message_count: int
    last_snippet: str = ""
    think: bool = False  # the thinking switch (thinking families)
    system: str = ""  # the system prompt ("" for none)
    start_state_name: str = ""  # the registered state-tuned state it started from ("" for the zero state)
    start_state_path: str = ""  # that state's file


@dataclass(frozen=True)
class MessageRecord:
    id: int
    conversation_id: int
    seq: int
    role: str
    content: str
    n_tokens: int
    complete: bool
    created_at: float
    model_ref: str | None = None  # the model that wrote a reply (None: yours, or saved before it was recorded)
    file_type: str | None = None  # that model file's type (Q5_1, F16, …)
    think: bool | None = None  # thinking on/off when its prompt was fed; None: written without the markup


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    message_id: int
    seq: int
    role: str
    snippet: str
    title: str


@dataclass(frozen=True)
class _PreparedState:
    key: str
    fingerprint: str
    digest: str
    blob: bytes
    raw_size: int
    codec: str


def default_path() -> Path:
    """Where the conversations database lives unless told otherwise."""
    return paths.data_dir() / DEFAULT_FILENAME


_CONV_COLUMNS = """c.id, c.title, c.mode, c.family, c.model_ref, c.created_at, c.updated_at, c.archived, c.sampling,
    (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id AND m.seq > 0),
    (SELECT substr(m.content, 1, 400) FROM messages m WHERE m.conversation_id = c.id AND m.seq > 0
     ORDER BY m.seq DESC LIMIT 1), c.think, c.system, c.start_state_name, c.start_state_path"""
_MSG_COLUMNS = ("id, conversation_id, seq, role, content, n_tokens, complete, created_at, model_ref, file_type, "
                "think")


class ConversationStore:
    """Conversations, messages and per-turn states in one SQLite file; safe to share between threads."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Use `ConversationStore.open`; this only wraps a prepared connection."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._lock = threading.RLock()

    # ---- opening and closing -------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> ConversationStore:
        """Open (creating and migrating if needed) the database at `path`, default `default_path()`."""
        where = Path(path) if path is not None else default_path()
        if where.is_dir():
            raise DatabaseFileError(f"{where}: is a folder, not a conversations database")
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatabaseFileError(f"{where}: cannot create its folder ({e.strerror or e})") from None
        try:
            conn = sqlite3.connect(where, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise DatabaseFileError(f"{where}: cannot open the conversations database ({e})") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            prepare(conn, where)
        except sqlite3.Error as e:
            conn.close()
            raise DatabaseFileError(f"{where}: cannot open the conversations database ({e})") from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, where)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise StoreError."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                with suppress(sqlite3.Error):
                    conn.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- conversations -------------------------------------------------------------------------

    def create_conversation(
        self, *, title: str, mode: str, family: str, model_ref: str, sampling: dict[str, Any],
        init_text: str = "", init_tokens: int = 0, init_state: tuple[str, bytes] | None = None,
        think: bool = False, system: str = "", start_state: tuple[str, str] | None = None,
    ) -> ConversationRecord:
        """Create a conversation with its seq-0 'init' message (and, if given, the state after it).

        `init_text` is what was fed first (the family's init and the system turn); `system` the system
        prompt itself, kept so the init can be fed again for another family; `start_state` the (name, file)
        of the state-tuned state it started from, None for the zero state."""
        _check_text("title", title)
        _check_mode(mode)
        _check_text("family", family)
        _check_text("model_ref", model_ref)
        sampling_json = _dump_json("sampling settings", sampling, want_dict=True)
        _check_text("init text", init_text)
        _check_text("system prompt", system)
        _check_count("init_tokens", init_tokens)
        state_name, state_path = start_state or ("", "")
        _check_text("start state name", state_name)
        _check_text("start state file", state_path)
        prepared = self._prepare_state(init_state) if init_state is not None else None
        now = time.time()
        with self._write("create a conversation") as c:
            cid = c.execute(
                "INSERT INTO conversations (title, mode, family, model_ref, created_at, updated_at, sampling, think, "
                "system, start_state_name, start_state_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (title, mode, family, model_ref, now, now, sampling_json, 1 if think else 0, system, state_name,
                 state_path),
            ).lastrowid
            mid = c.execute(
                "INSERT INTO messages (conversation_id, seq, role, content, n_tokens, complete, created_at) "
                "VALUES (?, 0, 'init', ?, ?, 1, ?)",
                (cid, init_text, init_tokens, now),
            ).lastrowid
            if prepared is not None:
                self._put_state(c, mid, prepared, now)
            return self._conversation(c, cid)

    def get_conversation(self, conversation_id: int) -> ConversationRecord:
        """The conversation with that id; ConversationNotFoundError if there is none."""
        with self._read("read a conversation") as c:
            return self._conversation(c, conversation_id)

    def list_conversations(
        self, *, include_archived: bool = False, limit: int | None = None
    ) -> list[ConversationRecord]:
        """Conversations, most recent activity first."""
        n = -1 if limit is None else _check_count("limit", limit)
        with self._read("list conversations") as c:
            rows = c.execute(
                f"SELECT {_CONV_COLUMNS} FROM conversations c WHERE (? OR c.archived = 0) "
                "ORDER BY c.updated_at DESC, c.id DESC LIMIT ?",
                (bool(include_archived), n),
            ).fetchall()
        return [_conversation_record(r) for r in rows]

    def last_conversation_id(self) -> int | None:
        """The id of the unarchived conversation with the most recent activity (`--resume last`)."""
        with self._read("find the last conversation") as c:
            row = c.execute(
                "SELECT id FROM conversations WHERE archived = 0 ORDER BY updated_at DESC, id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else int(row[0])

    def rename(self, conversation_id: int, title: str) -> None:
        _check_text("title", title)
        with self._write("rename a conversation") as c:
            self._update_row(c, conversation_id, "title = ?", (title,))

    def set_archived(self, conversation_id: int, archived: bool) -> None:
        with self._write("archive a conversation") as c:
            self._update_row(c, conversation_id, "archived = ?", (1 if archived else 0,))

    def update_conversation(
        self, conversation_id: int, *, model_ref: str | None = None, family: str | None = None,
        mode: str | None = None, sampling: dict[str, Any] | None = None, think: bool | None = None,
    ) -> None:
        """Change the model, family, mode, sampling settings or thinking switch (only the ones given)."""
        sets: list[str] = []
        args: list[Any] = []
        if model_ref is not None:
            _check_text("model_ref", model_ref)
            sets.append("model_ref = ?")
            args.append(model_ref)
        if family is not None:
            _check_text("family", family)
            sets.append("family = ?")
            args.append(family)
        if mode is not None:
            _check_mode(mode)
            sets.append("mode = ?")
            args.append(mode)
        if sampling is not None:
            sets.append("sampling = ?")
            args.append(_dump_json("sampling settings", sampling, want_dict=True))
        if think is not None:
            sets.append("think = ?")
            args.append(1 if think else 0)
        sets.append("updated_at = ?")
        args.append(time.time())
        with self._write("update a conversation") as c:
            self._update_row(c, conversation_id, ", ".join(sets), tuple(args))

    def delete_conversation(self, conversation_id: int) -> None:
        """Delete a conversation, its messages, and the states no other conversation uses."""
        with self._write("delete a conversation") as c:
            if c.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount == 0:
                raise _no_conversation(conversation_id)
            _give_back_free_pages(c)

    def fork(
        self, conversation_id: int, *, through_seq: int | None = None, title: str | None = None
    ) -> ConversationRecord:
        """A new conversation with the messages up to `through_seq` (default all) and their states.

        States are shared with the original, not copied. The default title is the original's + " (fork)",
        or " (fork 2)", " (fork 3)", … when that title is taken (a fork of a fork counts on from its root).
        """
        if through_seq is not None:
            _check_count("through_seq", through_seq)
        if title is not None:
            _check_text("title", title)
        now = time.time()
        with self._write("fork a conversation") as c:
            src = self._conversation(c, conversation_id)
            last = self._last_seq(c, conversation_id)
            through = last if through_seq is None else through_seq
            if through > last:
                raise MessageNotFoundError(f"conversation {conversation_id} has no message {through} to fork at")
            new_id = c.execute(
                "INSERT INTO conversations (title, mode, family, model_ref, created_at, updated_at, sampling, think, "
                "system, start_state_name, start_state_path) SELECT ?, mode, family, model_ref, ?, ?, sampling, think, "
                "system, start_state_name, start_state_path FROM conversations "
                "WHERE id = ?",
                (title if title is not None else self._fork_title(c, src.title), now, now, conversation_id),
            ).lastrowid
            c.execute(
                "INSERT INTO messages (conversation_id, seq, role, content, n_tokens, complete, created_at, "
                "model_ref, file_type, think) "
                "SELECT ?, seq, role, content, n_tokens, complete, created_at, model_ref, file_type, think "
                "FROM messages "
                "WHERE conversation_id = ? AND seq <= ? ORDER BY seq",
                (new_id, conversation_id, through),
            )
            c.execute(
                "INSERT INTO turn_states (message_id, fingerprint, state_hash, created_at) "
                "SELECT nm.id, ts.fingerprint, ts.state_hash, ts.created_at FROM turn_states ts "
                "JOIN messages om ON om.id = ts.message_id "
                "JOIN messages nm ON nm.conversation_id = ? AND nm.seq = om.seq "
                "WHERE om.conversation_id = ? AND om.seq <= ?",
                (new_id, conversation_id, through),
            )
            return self._conversation(c, new_id)

    # ---- messages and states -------------------------------------------------------------------

    def messages(self, conversation_id: int) -> list[MessageRecord]:
        """Every message of the conversation (the init message first), ordered by seq."""
        with self._read("read messages") as c:
            self._require_conversation(c, conversation_id)
            rows = c.execute(
                f"SELECT {_MSG_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY seq", (conversation_id,)
            ).fetchall()
        return [_message_record(r) for r in rows]

    def get_message(self, message_id: int) -> MessageRecord:
        with self._read("read a message") as c:
            row = c.execute(f"SELECT {_MSG_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise MessageNotFoundError(f"no message {message_id}")
        return _message_record(row)

    def add_message(
        self, conversation_id: int, *, role: str, content: str, n_tokens: int, complete: bool = True,
        state: tuple[str, bytes] | None = None, model_ref: str | None = None, file_type: str | None = None,
        think: bool | None = None,
    ) -> MessageRecord:
        """Append a message (seq = last + 1) and, if given, the state after it, in one transaction.

        `state` is (model fingerprint, `State.to_bytes()`). When this returns the turn is durable.
        `model_ref` and `file_type` name the model that wrote a reply (left out for your own messages).
        `think`: the thinking setting its prompt was fed with (None: no think markup).
        """
        if role not in TURN_ROLES:
            raise StoreArgumentError(f"a message's role must be one of {', '.join(TURN_ROLES)}, not {role!r}")
        _check_text("message text", content)
        _check_count("n_tokens", n_tokens)
        for what, value in (("model_ref", model_ref), ("file_type", file_type)):
            if value is not None:
                _check_text(what, value)
        prepared = self._prepare_state(state) if state is not None else None
        now = time.time()
        with self._write("save a message") as c:
            self._require_conversation(c, conversation_id)
            seq = self._last_seq(c, conversation_id) + 1
            mid = c.execute(
                "INSERT INTO messages (conversation_id, seq, role, content, n_tokens, complete, created_at, "
                "model_ref, file_type, think) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, seq, role, content, n_tokens, 1 if complete else 0, now, model_ref, file_type,
                 _flag(think)),
            ).lastrowid
            if prepared is not None:
                self._put_state(c, mid, prepared, now)
            c.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
        return MessageRecord(mid, conversation_id, seq, role, content, n_tokens, bool(complete), now, model_ref,
                             file_type, None if think is None else bool(think))

    def update_message(
        self, message_id: int, *, content: str, n_tokens: int, complete: bool,
        state: tuple[str, bytes] | None = None,
    ) -> MessageRecord:
        """Replace a message's text (a reply saved while it streams), and add its state, in one transaction."""
        _check_text("message text", content)
        _check_count("n_tokens", n_tokens)
        prepared = self._prepare_state(state) if state is not None else None
        now = time.time()
        with self._write("save a message") as c:
            row = c.execute(f"SELECT {_MSG_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise MessageNotFoundError(f"no message {message_id}")
            c.execute("UPDATE messages SET content = ?, n_tokens = ?, complete = ? WHERE id = ?",
                      (content, n_tokens, 1 if complete else 0, message_id))
            if prepared is not None:
                self._put_state(c, message_id, prepared, now)
            c.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, row[1]))
        old = _message_record(row)
        return dataclasses.replace(old, content=content, n_tokens=n_tokens, complete=bool(complete))

    def save_state(self, message_id: int, fingerprint: str, state_bytes: bytes) -> None:
        """Add or replace the state after message `message_id` for the model `fingerprint`."""
        prepared = self._prepare_state((fingerprint, state_bytes))
        with self._write("save a state") as c:
            if c.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone() is None:
                raise MessageNotFoundError(f"no message {message_id}")
            self._put_state(c, message_id, prepared, time.time())

    def load_state(self, message_id: int, fingerprint: str) -> bytes | None:
        """The state after message `message_id` for that model, or None if none was kept."""
        with self._read("load a state") as c:
            row = c.execute(
                "SELECT s.blob, s.hash, m.conversation_id, m.seq FROM messages m "
                "LEFT JOIN turn_states ts ON ts.message_id = m.id AND ts.fingerprint = ? "
                "LEFT JOIN states s ON s.hash = ts.state_hash WHERE m.id = ?",
                (fingerprint, message_id),
            ).fetchone()
        if row is None:
            raise MessageNotFoundError(f"no message {message_id}")
        blob, digest, cid, seq = row
        return None if blob is None else self._decode_state(blob, digest, cid, seq)

    def set_aside_state(self, message_id: int, fingerprint: str) -> int:
        """Never use the state after `message_id` for `fingerprint` again (it failed its checks): every
        turn's link to those stored bytes goes (they share them), and with the last link the bytes, so
        a rebuilt state of the same content is stored afresh. Returns the number of links removed."""
        with self._write("set aside a damaged state") as c:
            row = c.execute(
                "SELECT state_hash FROM turn_states WHERE message_id = ? AND fingerprint = ?", (message_id, fingerprint)
            ).fetchone()
            if row is None:
                return 0
            return c.execute("DELETE FROM turn_states WHERE state_hash = ?", (row[0],)).rowcount

    def latest_state(self, conversation_id: int, fingerprint: str) -> tuple[int, bytes] | None:
        """(seq, state bytes) of the last message with a state for that model, or None."""
        with self._read("load a state") as c:
            self._require_conversation(c, conversation_id)
            row = c.execute(
                "SELECT m.seq, s.blob, s.hash FROM turn_states ts JOIN messages m ON m.id = ts.message_id "
                "JOIN states s ON s.hash = ts.state_hash WHERE m.conversation_id = ? AND ts.fingerprint = ? "
                "ORDER BY m.seq DESC LIMIT 1",
                (conversation_id, fingerprint),
            ).fetchone()
        if row is None:
            return None
        seq, blob, digest = row
        return seq, self._decode_state(blob, digest, conversation_id, seq)

    def state_seqs(self, conversation_id: int, fingerprint: str) -> list[int]:
        """The seqs of the messages that have a state for that model, ascending."""
        with self._read("list states") as c:
            self._require_conversation(c, conversation_id)
            rows = c.execute(
                "SELECT m.seq FROM turn_states ts JOIN messages m ON m.id = ts.message_id "
                "WHERE m.conversation_id = ? AND ts.fingerprint = ? ORDER BY m.seq",
                (conversation_id, fingerprint),
            ).fetchall()
        return [r[0] for r in rows]

    def truncate(self, conversation_id: int, keep_through_seq: int) -> None:
        """Delete the messages after seq `keep_through_seq` (and their states), in one transaction."""
        _check_count("keep_through_seq", keep_through_seq)
        with self._write("truncate a conversation") as c:
            self._require_conversation(c, conversation_id)
            gone = c.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND seq > ?", (conversation_id, keep_through_seq)
            ).rowcount
            if gone:
                c.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (time.time(), conversation_id))

    # ---- search --------------------------------------------------------------------------------

    def search(
        self, query: str, *, limit: int = 50, conversation_id: int | None = None, include_archived: bool = True,
        mark: tuple[str, str] = ("«", "»"),
    ) -> list[SearchHit]:
        """Messages containing every term of `query` (case-insensitive substrings), best match first.

        Terms are separated by spaces; "double quotes" keep a phrase together. Any text is safe: it
        is matched literally, never parsed as FTS syntax. Snippets mark the matches with `mark`.
        """
        _check_count("limit", limit)
        terms = _query_terms(query)
        if not terms or limit == 0:
            return []
        long_terms = [t for t in terms if len(t) >= MIN_FTS_TERM]
        short_terms = [t for t in terms if len(t) < MIN_FTS_TERM]
        where: list[str] = []
        args: list[Any] = []
        if long_terms:
            sql = ("SELECT m.id, m.conversation_id, m.seq, m.role, m.content, c.title FROM message_fts f "
                   "JOIN messages m ON m.id = f.rowid JOIN conversations c ON c.id = m.conversation_id "
                   "WHERE message_fts MATCH ?")
            args.append(" AND ".join('"' + t.replace('"', '""') + '"' for t in long_terms))
            order = "ORDER BY f.rank, m.id DESC"
        else:
            sql = ("SELECT m.id, m.conversation_id, m.seq, m.role, m.content, c.title FROM messages m "
                   "JOIN conversations c ON c.id = m.conversation_id WHERE m.role <> 'init'")
            order = "ORDER BY m.id DESC"
        for t in short_terms:
            where.append("m.content LIKE ? ESCAPE '\\'")
            args.append("%" + re.sub(r"([\\%_])", r"\\\1", t) + "%")
        if conversation_id is not None:
            where.append("m.conversation_id = ?")
            args.append(conversation_id)
        if not include_archived:
            where.append("c.archived = 0")
        sql = " AND ".join([sql, *where]) + f" {order} LIMIT ?"
        args.append(limit)
        with self._read("search messages") as c:
            rows = c.execute(sql, args).fetchall()
        return [SearchHit(cid, mid, seq, role, _snippet(content, terms, mark), title)
                for mid, cid, seq, role, content, title in rows]

    # ---- housekeeping --------------------------------------------------------------------------

    def states_disk_bytes(self) -> int:
        """Bytes the compressed states take in the database."""
        with self._read("measure states") as c:
            return int(c.execute("SELECT coalesce(sum(stored_size), 0) FROM states").fetchone()[0])

    def prune_states(self, max_bytes: int, *, keep_last: int = 2) -> int:
        """Drop the oldest per-turn states until states take at most `max_bytes`; return the bytes freed.

        Never dropped: the init state of a conversation, and the `keep_last` latest states of each
        (conversation, model) — the latest lets a conversation resume, the one before it lets the
        last reply be regenerated, both without re-reading anything. So the cap may stay exceeded.
        """
        _check_count("max_bytes", max_bytes)
        if _check_count("keep_last", keep_last) < 1:
            raise StoreArgumentError("prune_states must keep at least the latest state (keep_last >= 1)")
        with self._write("prune states") as c:
            total = int(c.execute("SELECT coalesce(sum(stored_size), 0) FROM states").fetchone()[0])
            if total <= max_bytes:
                return 0
            candidates = c.execute(
                "WITH ranked AS (SELECT ts.message_id, ts.fingerprint, ts.state_hash, ts.created_at, m.seq, "
                "  row_number() OVER (PARTITION BY m.conversation_id, ts.fingerprint ORDER BY m.seq DESC) AS rn "
                "  FROM turn_states ts JOIN messages m ON m.id = ts.message_id) "
                "SELECT message_id, fingerprint, state_hash FROM ranked WHERE seq > 0 AND rn > ? "
                "ORDER BY created_at, message_id",
                (keep_last,),
            ).fetchall()
            freed = 0
            for mid, fp, digest in candidates:
                if total - freed <= max_bytes:
                    break
                size = c.execute("SELECT stored_size FROM states WHERE hash = ?", (digest,)).fetchone()[0]
                c.execute("DELETE FROM turn_states WHERE message_id = ? AND fingerprint = ?", (mid, fp))
                if c.execute("SELECT 1 FROM states WHERE hash = ?", (digest,)).fetchone() is None:
                    freed += size
            _give_back_free_pages(c)
            return freed

    def get_app_value(self, key: str, default: Any = None) -> Any:
        """A value the app saved under `key` (JSON), or `default`."""
        with self._read("read a setting") as c:
            row = c.execute("SELECT value FROM app_values WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except ValueError:
            return default

    def set_app_value(self, key: str, value: Any) -> None:
        """Save `value` (anything JSON can hold) under `key`, replacing any earlier value."""
        _check_text("key", key)
        text = _dump_json(f"the value for {key!r}", value)
        with self._write("save a setting") as c:
            c.execute(
                "INSERT INTO app_values (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, text),
            )

    def delete_app_value(self, key: str) -> None:
        with self._write("delete a setting") as c:
            c.execute("DELETE FROM app_values WHERE key = ?", (key,))

    def integrity_check(self) -> list[str]:
        """SQLite's integrity check and foreign-key check; an empty list means the file is sound."""
        with self._read("check the database") as c:
            problems = [r[0] for r in c.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
            problems += [f"foreign key: {r}" for r in c.execute("PRAGMA foreign_key_check").fetchall()]
        return problems

    # ---- internals -----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self._path}: the conversation store is closed")
        return self._conn

    def _db_error(self, what: str, e: sqlite3.Error) -> DatabaseFileError:
        hint = ""
        if isinstance(e, sqlite3.DatabaseError) and "malformed" in str(e):
            hint = "; the file is damaged: keep a copy, and `sqlite3 FILE .recover` may save its contents"
        return DatabaseFileError(f"{self._path}: cannot {what} ({e}){hint}")

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as e:
                raise self._db_error(what, e) from None

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any exception."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._db_error(what, e) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._db_error(what, exc) from None
                raise

    def _prepare_state(self, state: tuple[str, bytes]) -> _PreparedState:
        """Check, hash and compress a state (outside the lock: this is the slow part)."""
        try:
            fingerprint, raw = state
        except (TypeError, ValueError):
            raise StoreArgumentError("a state is given as (model fingerprint, State.to_bytes())") from None
        if not isinstance(fingerprint, str) or not fingerprint:
            raise StoreArgumentError("a state needs the fingerprint of the model that made it")
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise StoreArgumentError(f"a state must be bytes (State.to_bytes()), not {type(raw).__name__}")
        raw = bytes(raw)
        try:
            parsed = State.from_bytes(raw, source="state to save")
        except StateError as e:
            raise StoreArgumentError(f"refusing to save an invalid state: {e}") from None
        made_by = parsed.fingerprint.rstrip("\0")
        if fingerprint != made_by and not fingerprint.startswith(made_by + "/"):
            raise StoreArgumentError(
                f"refusing to save a state made by model {made_by[:12]}… under the key {fingerprint[:24]!r}, "
                "which is not that model's fingerprint"
            )
        blob = state_codec.encode(raw)
        return _PreparedState(
            fingerprint, made_by, hashlib.sha256(raw).hexdigest(), blob, len(raw), state_codec.DEFAULT_CODEC
        )

    @staticmethod
    def _put_state(c: sqlite3.Connection, message_id: int, p: _PreparedState, now: float) -> None:
        c.execute(
            "INSERT INTO states (hash, codec, raw_size, stored_size, fingerprint, created_at, blob) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING",
            (p.digest, p.codec, p.raw_size, len(p.blob), p.fingerprint, now, p.blob),
        )
        c.execute(
            "INSERT INTO turn_states (message_id, fingerprint, state_hash, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (message_id, fingerprint) DO UPDATE SET state_hash = excluded.state_hash, "
            "created_at = excluded.created_at",
            (message_id, p.key, p.digest, now),
        )

    def _decode_state(self, blob: bytes, digest: str, conversation_id: int, seq: int) -> bytes:
        source = f"{self._path}: state after message {seq} of conversation {conversation_id}"
        try:
            raw = state_codec.decode(blob, source)
        except state_codec.StateCodecError as e:
            raise StateCorruptError(str(e)) from None
        if hashlib.sha256(raw).hexdigest() != digest:
            raise StateCorruptError(f"{source}: checksum mismatch (the saved state is damaged)")
        return raw

    def _conversation(self, c: sqlite3.Connection, conversation_id: int) -> ConversationRecord:
        row = c.execute(f"SELECT {_CONV_COLUMNS} FROM conversations c WHERE c.id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise _no_conversation(conversation_id)
        return _conversation_record(row)

    @staticmethod
    def _require_conversation(c: sqlite3.Connection, conversation_id: int) -> None:
        if c.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
            raise _no_conversation(conversation_id)

    @staticmethod
    def _fork_title(c: sqlite3.Connection, title: str) -> str:
        """The first of "T (fork)", "T (fork 2)", … that no conversation has, T being `title` without
        a fork suffix of its own."""
        base = _FORK_SUFFIX.sub("", title)
        taken = {r[0] for r in c.execute(
            "SELECT title FROM conversations WHERE substr(title, 1, ?) = ?", (len(base), base))}
        n = 1
        while (candidate := f"{base} (fork)" if n == 1 else f"{base} (fork {n})") in taken:
            n += 1
        return candidate

    @staticmethod
    def _last_seq(c: sqlite3.Connection, conversation_id: int) -> int:
        last = c.execute("SELECT max(seq) FROM messages WHERE conversation_id = ?", (conversation_id,)).fetchone()[0]
        return -1 if last is None else int(last)

    @staticmethod
    def _update_row(c: sqlite3.Connection, conversation_id: int, sets: str, args: tuple[Any, ...]) -> None:
        if c.execute(f"UPDATE conversations SET {sets} WHERE id = ?", (*args, conversation_id)).rowcount == 0:
            raise _no_conversation(conversation_id)


def _no_conversation(conversation_id: int) -> ConversationNotFoundError:
    return ConversationNotFoundError(f"no conversation {conversation_id}")


def _give_back_free_pages(c: sqlite3.Connection) -> None:
    c.execute("PRAGMA incremental_vacuum").fetchall()  # each row is one step: run them all


def _check_text(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise StoreArgumentError(f"the {what} must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreArgumentError(f"the {what} is not valid Unicode (it holds a lone surrogate)") from None
    return value


def _check_count(what: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StoreArgumentError(f"{what} must be a whole number >= 0, not {value!r}")
    return value


def _check_mode(mode: object) -> None:
    if mode not in MODES:
        raise StoreArgumentError(f"a conversation's mode must be one of {', '.join(MODES)}, not {mode!r}")


def _dump_json(what: str, value: Any, *, want_dict: bool = False) -> str:
    if want_dict and not isinstance(value, dict):
        raise StoreArgumentError(f"the {what} must be a dict, not {type(value).__name__}")
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise StoreArgumentError(f"the {what} cannot be saved as JSON ({e})") from None


def _load_sampling(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _conversation_record(row: tuple[Any, ...]) -> ConversationRecord:
    (cid, title, mode, family, model_ref, created, updated, archived, sampling, count, last, think, system,
     state_name, state_path) = row
    return ConversationRecord(
        id=cid, title=title, mode=mode, family=family, model_ref=model_ref, created_at=created, updated_at=updated,
        archived=bool(archived), sampling=_load_sampling(sampling), message_count=count,
        last_snippet=_one_line(last or "", 80), think=bool(think), system=system,
        start_state_name=state_name, start_state_path=state_path,
    )


def _message_record(row: tuple[Any, ...]) -> MessageRecord:
    mid, cid, seq, role, content, n_tokens, complete, created, model_ref, file_type, think = row
    return MessageRecord(mid, cid, seq, role, content, n_tokens, bool(complete), created, model_ref, file_type,
                         None if think is None else bool(think))


def _flag(value: bool | None) -> int | None:
    return None if value is None else 1 if value else 0


_TERM = re.compile(r'"([^"]*)"|(\S+)')


def _query_terms(query: str) -> list[str]:
    """Split user search text into literal terms: words, or "quoted phrases"."""
    if not isinstance(query, str):
        raise StoreArgumentError(f"a search query must be text, not {type(query).__name__}")
    terms: list[str] = []
    for phrase, word in _TERM.findall(query.replace("\0", " ")):  # FTS5 cannot take a NUL
        term = phrase.strip() if phrase else word.strip('"')
        if term and term.casefold() not in (t.casefold() for t in terms):
            terms.append(term)
    return terms


def _snippet(content: str, terms: list[str], mark: tuple[str, str]) -> str:
    """One line of `content` around the first match, every match inside it wrapped in `mark`."""
    pattern = re.compile("|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)), re.IGNORECASE)
    spans = [m.span() for m in pattern.finditer(content)]
    first = spans[0][0] if spans else 0
    start = max(0, first - SNIPPET_CHARS // 3)
    end = min(len(content), start + SNIPPET_CHARS)
    start = max(0, min(start, end - SNIPPET_CHARS))
    out = []
    pos = start
    for s, e in spans:
        if e <= start or s >= end:
            continue
        s, e = max(s, start), min(e, end)
        out += [content[pos:s], mark[0], content[s:e], mark[1]]
        pos = e
    out.append(content[pos:end])
    text = " ".join("".join(out).split())
    return ("…" if start > 0 else "") + text + ("…" if end < len(content) else "")
