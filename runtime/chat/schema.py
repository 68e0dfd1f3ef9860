"""The conversations database schema and its migrations.

The schema version lives in `PRAGMA user_version`; `MIGRATIONS[i]` takes a database from version i
to i + 1. `prepare` runs at every open: it reads the version without writing anything, refuses a
file that is not SQLite, not ours, or from a newer version of the app, then applies the missing
migrations in one write transaction (two processes opening a new file at once cannot both migrate:
the version is read again once the write lock is held).

Tables (version 1):

    conversations   id (what `--resume ID` takes), title, mode, family, model_ref, timestamps,
                    archived, sampling (JSON)
    messages        (conversation_id, seq) unique; seq 0 is the 'init' message (the family's init
                    prompt); role 'init' | 'user' | 'assistant' | 'text'
    states          content-addressed compressed states: hash = sha256 of the raw state bytes
    turn_states     (message_id, fingerprint) -> state hash: the state after that message for the
                    model with that fingerprint. Triggers delete a `states` row when its last
                    reference goes, whichever way (truncate, delete, replace, prune, cascade).
    message_fts     FTS5 (trigram tokenizer, so Chinese and Japanese text is searchable too) over
                    the content of every message but the init prompt, kept by triggers
    app_values      key -> JSON value, for the app (open tabs, …)

Version 2 adds to `messages` the model that wrote a reply: `model_ref` (what the conversation called
its model then: a registry id or a file path) and `file_type` (Q5_1, F16, …). Both are NULL for
your own messages and for replies saved before version 2 (their writer was not recorded).

Version 3 (thinking) adds `conversations.think` (the conversation's thinking switch, 0/1),
`conversations.system` (its system prompt, '' for none) and `messages.think`: for a user turn of a
thinking family, whether its prompt ended with thinking on (1) or off (0); for a reply, the same value
as its prompt; NULL for messages written without the think markup (other families, older rows).

Timestamps are UTC epoch seconds (REAL).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence

from runtime.errors import RwkvError

APPLICATION_ID = 0x52574B56  # "RWKV"


class StoreError(RwkvError):
    """Base class of the conversation store's errors."""


class DatabaseFileError(StoreError, OSError):
    """The conversations database cannot be used: not SQLite, not ours, too new, unreadable, full.

    The message names the file.
    """


_V1: tuple[str, ...] = (
    """CREATE TABLE conversations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('chat', 'novel')),
        family TEXT NOT NULL,
        model_ref TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        archived INTEGER NOT NULL DEFAULT 0 CHECK (archived IN (0, 1)),
        sampling TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(sampling))
    )""",
    "CREATE INDEX conversations_by_activity ON conversations (archived, updated_at DESC, id DESC)",
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL CHECK (seq >= 0),
        role TEXT NOT NULL CHECK (role IN ('init', 'user', 'assistant', 'text')),
        content TEXT NOT NULL,
        n_tokens INTEGER NOT NULL DEFAULT 0 CHECK (n_tokens >= 0),
        complete INTEGER NOT NULL DEFAULT 1 CHECK (complete IN (0, 1)),
        created_at REAL NOT NULL,
        UNIQUE (conversation_id, seq)
    )""",
    """CREATE TABLE states (
        hash TEXT PRIMARY KEY,
        codec TEXT NOT NULL,
        raw_size INTEGER NOT NULL,
        stored_size INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at REAL NOT NULL,
        blob BLOB NOT NULL
    )""",
    """CREATE TABLE turn_states (
        message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL,
        state_hash TEXT NOT NULL REFERENCES states (hash),
        created_at REAL NOT NULL,
        PRIMARY KEY (message_id, fingerprint)
    ) WITHOUT ROWID""",
    "CREATE INDEX turn_states_by_hash ON turn_states (state_hash)",
    """CREATE TRIGGER turn_states_release_on_delete AFTER DELETE ON turn_states
       WHEN NOT EXISTS (SELECT 1 FROM turn_states WHERE state_hash = old.state_hash)
       BEGIN DELETE FROM states WHERE hash = old.state_hash; END""",
    """CREATE TRIGGER turn_states_release_on_update AFTER UPDATE OF state_hash ON turn_states
       WHEN old.state_hash IS NOT new.state_hash
        AND NOT EXISTS (SELECT 1 FROM turn_states WHERE state_hash = old.state_hash)
       BEGIN DELETE FROM states WHERE hash = old.state_hash; END""",
    "CREATE VIRTUAL TABLE message_fts USING fts5 (content, tokenize = 'trigram')",
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.role <> 'init'
       BEGIN INSERT INTO message_fts (rowid, content) VALUES (new.id, new.content); END""",
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
       BEGIN DELETE FROM message_fts WHERE rowid = old.id; END""",
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, role ON messages
       BEGIN
         DELETE FROM message_fts WHERE rowid = old.id;
         INSERT INTO message_fts (rowid, content) SELECT new.id, new.content WHERE new.role <> 'init';
       END""",
    """CREATE TABLE app_values (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL CHECK (json_valid(value))
    )""",
)

_V2: tuple[str, ...] = (
    "ALTER TABLE messages ADD COLUMN model_ref TEXT",
    "ALTER TABLE messages ADD COLUMN file_type TEXT",
)

_THINK: tuple[str, ...] = (  # version 3
    "ALTER TABLE conversations ADD COLUMN think INTEGER NOT NULL DEFAULT 0 CHECK (think IN (0, 1))",
    "ALTER TABLE conversations ADD COLUMN system TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE messages ADD COLUMN think INTEGER CHECK (think IN (0, 1))",
)

_START_STATE: tuple[str, ...] = (  # version 4: the state-tuned state a conversation started from ('' for zeros)
    "ALTER TABLE conversations ADD COLUMN start_state_name TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE conversations ADD COLUMN start_state_path TEXT NOT NULL DEFAULT ''",
)

# MIGRATIONS[i] takes the schema from version i to i + 1: SQL statements, or functions given the
# connection for steps that move data. Append only; never edit a released entry.
Step = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[Sequence[Step], ...] = (_V1, _V2, _THINK, _START_STATE)
SCHEMA_VERSION = len(MIGRATIONS)


PREPARE_RETRY_S = 15.0  # how long a first open waits for other connections setting the file up


def prepare(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> None:
    """Check that `conn`'s file is a usable conversations database and migrate it to SCHEMA_VERSION.

    `conn` must be in autocommit mode (isolation_level=None). Nothing is written before the checks
    pass; a refused file is left exactly as it was. Switching a new file to WAL can fail with
    "database is locked" without SQLite's busy handler being called (another connection is
    switching or recovering it at the same moment), so those steps are retried for a while.
    """
    where = os.fspath(path)
    try:
        version, app_id, n_objects = _identity(conn)
    except sqlite3.DatabaseError as e:
        raise DatabaseFileError(f"{where}: not a conversations database: it is not an SQLite file ({e})") from None
    _check_identity(where, version, app_id, n_objects)
    deadline = time.monotonic() + PREPARE_RETRY_S
    pause = 0.005
    identity: tuple[int, int, int] | None = (version, app_id, n_objects)
    while True:
        try:
            _set_up(conn, where, identity)
            return
        except sqlite3.OperationalError as e:
            if not _is_busy(e) or time.monotonic() > deadline:
                raise DatabaseFileError(f"{where}: cannot prepare the conversations database ({e})") from None
        except sqlite3.Error as e:
            raise DatabaseFileError(f"{where}: cannot prepare the conversations database ({e})") from None
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
        identity = None  # another connection may have set the file up meanwhile: read it again


def _is_busy(e: sqlite3.OperationalError) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def _set_up(conn: sqlite3.Connection, where: str, identity: tuple[int, int, int] | None) -> None:
    """The connection's settings, then the migrations if the file is behind (idempotent).
    `identity`: the file's (version, app id, objects) as just checked, or None to read it again."""
    if identity is None:
        identity = _identity(conn)
        _check_identity(where, *identity)
    version, _app_id, n_objects = identity
    if n_objects == 0:
        # only possible before the first table exists; lets prune_states give pages back
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version, app_id, n_objects = _identity(conn)  # another process may have migrated meanwhile
        _check_identity(where, version, app_id, n_objects)
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                if callable(statement):
                    statement(conn)
                else:
                    conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _identity(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(schema version, application id, number of schema objects), read in one snapshot."""
    row = conn.execute(
        "SELECT (SELECT user_version FROM pragma_user_version), (SELECT application_id FROM pragma_application_id), "
        "(SELECT count(*) FROM sqlite_master)"
    ).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def _check_identity(where: str, version: int, app_id: int, n_objects: int) -> None:
    if app_id != APPLICATION_ID and (app_id != 0 or n_objects or version):
        raise DatabaseFileError(
            f"{where}: this SQLite file is not an rwkv-tui conversations database (left untouched)"
        )
    if version > SCHEMA_VERSION:
        raise DatabaseFileError(
            f"{where}: the conversations database was written by a newer rwkv-tui (schema version {version}, "
            f"this version knows up to {SCHEMA_VERSION}); update rwkv-tui to open it (the file was not modified)"
        )
    if app_id == APPLICATION_ID and version == 0:
        raise DatabaseFileError(f"{where}: the conversations database is damaged (no schema version)")
