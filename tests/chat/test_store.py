"""The SQLite conversation store: records, per-turn states, forks, search, pruning, schema, threads."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime import paths
from runtime.chat import schema, state_codec
from runtime.chat.store import (
    ConversationNotFoundError,
    ConversationStore,
    DatabaseFileError,
    MessageNotFoundError,
    StateCorruptError,
    StoreArgumentError,
    StoreError,
    default_path,
)
from runtime.errors import RwkvError
from runtime.model.state import State

FP = "a1" * 32  # two "models"
FP2 = "b2" * 32


def state_bytes(seed: int, fingerprint: str = FP, shape: tuple[int, int] = (10, 64)) -> bytes:
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    data[3::5] = seed - 40.0
    return State(data, fingerprint).to_bytes()


@pytest.fixture
def store(tmp_path):
    with ConversationStore.open(tmp_path / "c.sqlite3") as s:
        yield s


def new_conv(store: ConversationStore, title: str = "chat", **kw):
    args = {"mode": "chat", "family": "raven", "model_ref": "raven-7b-q5_1.gguf", "sampling": {"temperature": 1.0}}
    args.update(kw)
    return store.create_conversation(title=title, **args)


def n_state_rows(store: ConversationStore) -> int:
    with sqlite3.connect(store.path) as c:
        return c.execute("SELECT count(*) FROM states").fetchone()[0]


# ---- opening -----------------------------------------------------------------------------------


def test_default_location_and_connection_settings():
    with ConversationStore.open() as s:
        assert s.path == paths.data_dir() / "conversations.sqlite3" == default_path()
        c = s._conn
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        assert c.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental


def test_data_survives_reopening(tmp_path):
    path = tmp_path / "c.sqlite3"
    with ConversationStore.open(path) as s:
        conv = new_conv(s, "kept", init_text="init prompt")
        m = s.add_message(conv.id, role="user", content="hello", n_tokens=2, state=(FP, state_bytes(1)))
        s.set_app_value("tabs", [conv.id])
    with ConversationStore.open(path) as s:
        assert s.get_conversation(conv.id).title == "kept"
        assert [x.content for x in s.messages(conv.id)] == ["init prompt", "hello"]
        assert s.load_state(m.id, FP) == state_bytes(1)
        assert s.get_app_value("tabs") == [conv.id]


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.sqlite3"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(DatabaseFileError, match="not an SQLite file") as e:
        ConversationStore.open(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, RwkvError) and isinstance(e.value, OSError)
    assert path.read_bytes() == content


def test_another_programs_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE contacts (name TEXT)")
        c.execute("INSERT INTO contacts VALUES ('ada')")
    c.close()
    before = path.read_bytes()
    with pytest.raises(DatabaseFileError, match="not an rwkv-tui conversations database") as e:
        ConversationStore.open(path)
    assert str(path) in str(e.value)
    assert path.read_bytes() == before


def test_a_newer_schema_is_refused_and_not_modified(tmp_path):
    path = tmp_path / "c.sqlite3"
    with ConversationStore.open(path) as s:
        new_conv(s)
    with sqlite3.connect(path) as c:
        c.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    c.close()
    before = path.read_bytes()
    with pytest.raises(DatabaseFileError, match=f"schema version {schema.SCHEMA_VERSION + 1}") as e:
        ConversationStore.open(path)
    assert "newer rwkv-tui" in str(e.value) and str(path) in str(e.value)
    assert path.read_bytes() == before


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(DatabaseFileError, match="is a folder"):
        ConversationStore.open(tmp_path)


def test_migrations_run_in_order_in_one_transaction(tmp_path, monkeypatch):
    path = tmp_path / "c.sqlite3"
    with ConversationStore.open(path) as s:
        conv = new_conv(s, "before")
    v1 = schema.SCHEMA_VERSION

    def add_column_default(conn):
        conn.execute("UPDATE conversations SET title = title || ' (migrated)'")

    broken = (*schema.MIGRATIONS, ("ALTER TABLE conversations ADD COLUMN color TEXT", "THIS IS NOT SQL"))
    monkeypatch.setattr(schema, "MIGRATIONS", broken)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", v1 + 1)
    with pytest.raises(DatabaseFileError, match="cannot prepare"):
        ConversationStore.open(path)
    with sqlite3.connect(path) as c:  # rolled back: version and columns as before
        assert c.execute("PRAGMA user_version").fetchone()[0] == v1
        assert "color" not in [r[1] for r in c.execute("PRAGMA table_info(conversations)")]
    c.close()

    good = (*schema.MIGRATIONS[:v1], ("ALTER TABLE conversations ADD COLUMN color TEXT", add_column_default))
    monkeypatch.setattr(schema, "MIGRATIONS", good)
    with ConversationStore.open(path) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == v1 + 1
        assert s.get_conversation(conv.id).title == "before (migrated)"
    with ConversationStore.open(path) as s:  # not applied twice
        assert s.get_conversation(conv.id).title == "before (migrated)"


def test_closed_store_refuses_calls(tmp_path):
    s = ConversationStore.open(tmp_path / "c.sqlite3")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.list_conversations()


# ---- conversations -----------------------------------------------------------------------------


def test_create_makes_the_init_message(store):
    conv = new_conv(store, "Recipes", mode="novel", family="novel", sampling={"top_p": 0.5, "stop": ["\n\n"]},
                    init_text="Once upon a time", init_tokens=4, init_state=(FP, state_bytes(0)))
    assert (conv.title, conv.mode, conv.family, conv.model_ref) == ("Recipes", "novel", "novel", "raven-7b-q5_1.gguf")
    assert conv.sampling == {"top_p": 0.5, "stop": ["\n\n"]}
    assert conv.archived is False and conv.message_count == 0
    assert abs(conv.created_at - time.time()) < 60 and conv.updated_at == conv.created_at
    (init,) = store.messages(conv.id)
    assert (init.seq, init.role, init.content, init.n_tokens, init.complete) == (0, "init", "Once upon a time", 4, True)
    assert store.load_state(init.id, FP) == state_bytes(0)
    assert store.latest_state(conv.id, FP) == (0, state_bytes(0))
    assert store.get_conversation(conv.id) == conv


def test_unknown_conversation_is_a_key_error_with_a_plain_message(store):
    with pytest.raises(ConversationNotFoundError) as e:
        store.get_conversation(12)
    assert isinstance(e.value, KeyError) and isinstance(e.value, RwkvError)
    assert str(e.value) == "no conversation 12"
    for call in (lambda: store.messages(12), lambda: store.rename(12, "x"), lambda: store.delete_conversation(12),
                 lambda: store.add_message(12, role="user", content="x", n_tokens=1),
                 lambda: store.truncate(12, 0), lambda: store.fork(12), lambda: store.latest_state(12, FP),
                 lambda: store.set_archived(12, True), lambda: store.update_conversation(12, mode="chat")):
        with pytest.raises(ConversationNotFoundError, match="no conversation 12"):
            call()


def test_list_orders_by_activity_and_hides_archived(store):
    a, b, c = (new_conv(store, t) for t in "abc")
    assert [x.id for x in store.list_conversations()] == [c.id, b.id, a.id]
    store.add_message(a.id, role="user", content="bump", n_tokens=1)
    assert [x.id for x in store.list_conversations()] == [a.id, c.id, b.id]
    assert store.last_conversation_id() == a.id
    store.rename(b.id, "renamed b")  # not activity
    assert [x.id for x in store.list_conversations()] == [a.id, c.id, b.id]
    store.update_conversation(b.id, sampling={"temperature": 0.5})  # settings are activity
    assert [x.id for x in store.list_conversations(limit=2)] == [b.id, a.id]
    store.set_archived(b.id, True)
    assert [x.id for x in store.list_conversations()] == [a.id, c.id]
    assert [x.id for x in store.list_conversations(include_archived=True)] == [b.id, a.id, c.id]
    assert store.last_conversation_id() == a.id
    assert store.get_conversation(b.id).archived is True
    store.set_archived(b.id, False)
    assert store.last_conversation_id() == b.id
    listed = store.list_conversations()[1]
    assert (listed.title, listed.message_count, listed.last_snippet) == ("a", 1, "bump")


def test_empty_store(store):
    assert store.list_conversations() == []
    assert store.last_conversation_id() is None
    assert store.states_disk_bytes() == 0


def test_update_and_rename(store):
    conv = new_conv(store)
    store.update_conversation(conv.id, model_ref="/models/novel-3b.gguf", family="novel", mode="novel",
                              sampling={"temperature": 1.2})
    store.rename(conv.id, "Dragons 🐉")
    got = store.get_conversation(conv.id)
    assert (got.title, got.mode, got.family, got.model_ref) == ("Dragons 🐉", "novel", "novel", "/models/novel-3b.gguf")
    assert got.sampling == {"temperature": 1.2}
    store.update_conversation(conv.id, family="world")
    assert store.get_conversation(conv.id).mode == "novel"  # only what was given changes


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, c: s.add_message(c, role="init", content="x", n_tokens=1), "role must be one of"),
        (lambda s, c: s.add_message(c, role="system", content="x", n_tokens=1), "role must be one of"),
        (lambda s, c: s.add_message(c, role="user", content="x", n_tokens=-1), "n_tokens"),
        (lambda s, c: s.add_message(c, role="user", content=b"x", n_tokens=1), "must be text"),
        (lambda s, c: s.add_message(c, role="user", content="bad \udc80", n_tokens=1), "lone surrogate"),
        (lambda s, c: s.update_conversation(c, mode="poem"), "mode must be one of"),
        (lambda s, c: s.update_conversation(c, sampling=[1]), "must be a dict"),
        (lambda s, c: s.update_conversation(c, sampling={"t": float("nan")}), "cannot be saved as JSON"),
        (lambda s, c: s.set_app_value("k", object()), "cannot be saved as JSON"),
        (lambda s, c: s.truncate(c, -1), "keep_through_seq"),
        (lambda s, c: s.fork(c, through_seq=5), "no message 5"),
        (lambda s, c: s.search("x", limit=-1), "limit"),
        (lambda s, c: s.prune_states(10, keep_last=0), "keep at least the latest"),
    ],
)
def test_bad_arguments_are_refused_and_nothing_changes(store, call, message):
    conv = new_conv(store)
    with pytest.raises(StoreError, match=message):
        call(store, conv.id)
    assert len(store.messages(conv.id)) == 1
    assert store.get_conversation(conv.id).mode == "chat"


# ---- messages and states -----------------------------------------------------------------------


def test_messages_get_consecutive_seqs_and_keep_their_fields(store):
    conv = new_conv(store)
    m1 = store.add_message(conv.id, role="user", content="hi", n_tokens=3)
    m2 = store.add_message(conv.id, role="assistant", content="hello the", n_tokens=7, complete=False)
    m3 = store.add_message(conv.id, role="text", content="more", n_tokens=1)
    assert [m.seq for m in (m1, m2, m3)] == [1, 2, 3]
    got = store.messages(conv.id)
    assert got[1:] == [m1, m2, m3]
    assert got[2].complete is False and got[2].n_tokens == 7
    assert store.get_message(m2.id) == m2
    with pytest.raises(MessageNotFoundError, match="no message 999"):
        store.get_message(999)
    assert store.get_conversation(conv.id).message_count == 3


def test_states_per_turn_and_per_model(store):
    conv = new_conv(store, init_state=(FP, state_bytes(0)))
    m1 = store.add_message(conv.id, role="user", content="q", n_tokens=1, state=(FP, state_bytes(1)))
    m2 = store.add_message(conv.id, role="assistant", content="a", n_tokens=1, state=(FP, state_bytes(2)))
    m3 = store.add_message(conv.id, role="user", content="q2", n_tokens=1)  # no state
    assert store.load_state(m1.id, FP) == state_bytes(1)
    assert store.load_state(m3.id, FP) is None
    assert store.load_state(m1.id, FP2) is None
    assert store.latest_state(conv.id, FP) == (2, state_bytes(2))
    assert store.latest_state(conv.id, FP2) is None
    # switching the conversation to another model: it gets its own states, the first model's stay
    store.save_state(m1.id, FP2, state_bytes(11, FP2))
    assert store.latest_state(conv.id, FP2) == (1, state_bytes(11, FP2))
    assert store.latest_state(conv.id, FP) == (2, state_bytes(2))
    assert store.state_seqs(conv.id, FP) == [0, 1, 2]
    assert store.state_seqs(conv.id, FP2) == [1]
    # a qualified key ("fingerprint/family") keeps a separate state for the same model
    store.save_state(m2.id, FP + "/novel", state_bytes(12))
    assert store.load_state(m2.id, FP + "/novel") == state_bytes(12)
    assert store.load_state(m2.id, FP) == state_bytes(2)
    with pytest.raises(MessageNotFoundError):
        store.load_state(999, FP)
    with pytest.raises(MessageNotFoundError):
        store.save_state(999, FP, state_bytes(1))


def test_replacing_a_state_frees_the_old_blob(store):
    conv = new_conv(store)
    m = store.add_message(conv.id, role="user", content="q", n_tokens=1, state=(FP, state_bytes(1)))
    assert n_state_rows(store) == 1
    store.save_state(m.id, FP, state_bytes(2))
    assert store.load_state(m.id, FP) == state_bytes(2)
    assert n_state_rows(store) == 1


def test_identical_states_are_stored_once(store):
    conv = new_conv(store)
    for _ in range(3):
        store.add_message(conv.id, role="user", content="same", n_tokens=1, state=(FP, state_bytes(5)))
    assert n_state_rows(store) == 1
    assert store.state_seqs(conv.id, FP) == [1, 2, 3]


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ((FP2, state_bytes(1, FP)), "made by model a1a1"),
        (("", state_bytes(1)), "needs the fingerprint"),
        ((FP + "x", state_bytes(1)), "not that model's fingerprint"),
        ((FP, state_bytes(1)[:-4]), "invalid state"),
        ((FP, b"not a state"), "invalid state"),
        ((FP, "text"), "must be bytes"),
        (FP, "is given as"),
    ],
)
def test_invalid_or_foreign_states_are_refused(store, state, message):
    conv = new_conv(store)
    with pytest.raises(StoreArgumentError, match=message):
        store.add_message(conv.id, role="user", content="q", n_tokens=1, state=state)
    assert len(store.messages(conv.id)) == 1  # the message was not saved either


def test_truncate_drops_later_messages_and_their_states(store):
    conv = new_conv(store, init_state=(FP, state_bytes(0)))
    ms = [store.add_message(conv.id, role="user", content=f"m{i}", n_tokens=1, state=(FP, state_bytes(i + 1)))
          for i in range(4)]
    store.save_state(ms[3].id, FP2, state_bytes(40, FP2))
    assert n_state_rows(store) == 6
    store.truncate(conv.id, 2)
    assert [m.seq for m in store.messages(conv.id)] == [0, 1, 2]
    assert store.latest_state(conv.id, FP) == (2, state_bytes(2))
    assert store.latest_state(conv.id, FP2) is None
    assert n_state_rows(store) == 3
    assert store.add_message(conv.id, role="user", content="again", n_tokens=1).seq == 3
    store.truncate(conv.id, 10)  # nothing after: no change
    assert len(store.messages(conv.id)) == 4
    store.truncate(conv.id, 0)
    assert [m.role for m in store.messages(conv.id)] == ["init"]
    assert store.search("again") == []


def test_fork_shares_states_and_survives_the_original(store):
    conv = new_conv(store, "story", init_state=(FP, state_bytes(0)))
    for i in range(4):
        store.add_message(conv.id, role="user", content=f"m{i}", n_tokens=1, state=(FP, state_bytes(i + 1)))
    disk = store.states_disk_bytes()
    fork = store.fork(conv.id, through_seq=2)
    assert fork.id != conv.id and fork.title == "story (fork)" and fork.sampling == {"temperature": 1.0}
    assert [(m.seq, m.content) for m in store.messages(fork.id)] == [(0, ""), (1, "m0"), (2, "m1")]
    assert store.latest_state(fork.id, FP) == (2, state_bytes(2))
    assert store.states_disk_bytes() == disk  # blobs shared, not copied
    store.add_message(fork.id, role="user", content="branch", n_tokens=1, state=(FP, state_bytes(99)))
    assert [m.content for m in store.messages(conv.id)][-1] == "m3"  # original untouched
    whole = store.fork(conv.id, title="copy")
    assert whole.title == "copy" and whole.message_count == 4
    store.delete_conversation(conv.id)
    with pytest.raises(ConversationNotFoundError):
        store.get_conversation(conv.id)
    assert store.latest_state(fork.id, FP) == (3, state_bytes(99))
    assert store.load_state(store.messages(fork.id)[1].id, FP) == state_bytes(1)
    assert store.latest_state(whole.id, FP) == (4, state_bytes(4))
    store.delete_conversation(whole.id)
    assert n_state_rows(store) == 4  # seqs 0-2 shared by the fork, plus its own
    store.delete_conversation(fork.id)
    assert n_state_rows(store) == 0 and store.states_disk_bytes() == 0
    assert store.search("m0") == []


def test_corrupt_state_blobs_raise_a_clear_error(store):
    conv = new_conv(store)
    m = store.add_message(conv.id, role="user", content="q", n_tokens=1, state=(FP, state_bytes(1)))
    with sqlite3.connect(store.path) as c:
        blob = c.execute("SELECT blob FROM states").fetchone()[0]
        c.execute("UPDATE states SET blob = ?", (blob[:-30],))
    c.close()
    with pytest.raises(StateCorruptError, match="truncated or damaged") as e:
        store.load_state(m.id, FP)
    assert str(store.path) in str(e.value) and f"conversation {conv.id}" in str(e.value)
    # a blob that decodes, but not to the bytes that were saved, is caught by the content hash
    with sqlite3.connect(store.path) as c:
        c.execute("UPDATE states SET blob = ?", (state_codec.encode(state_bytes(2)),))
    c.close()
    with pytest.raises(StateCorruptError, match="checksum mismatch"):
        store.latest_state(conv.id, FP)


# ---- search ------------------------------------------------------------------------------------


def fill_for_search(store: ConversationStore):
    a = new_conv(store, "Cooking", init_text="You are a helpful cook")
    store.add_message(a.id, role="user", content="How long do I boil an egg?", n_tokens=8)
    store.add_message(a.id, role="assistant", content="Boil the EGG for seven minutes.\nThen cool it.", n_tokens=9)
    b = new_conv(store, "Travel")
    store.add_message(b.id, role="user", content="我想去北京看看天安门", n_tokens=9)
    store.add_message(b.id, role="assistant", content='Use "quotes" AND (parens) * near: -minus c++ 100%_done',
                      n_tokens=9)
    return store, a, b


@pytest.fixture(scope="module")
def searchable(tmp_path_factory):
    """One store for the read-only search tests."""
    with ConversationStore.open(tmp_path_factory.mktemp("search") / "c.sqlite3") as store:
        yield fill_for_search(store)


def test_search_finds_words_case_insensitively_with_marked_snippets(searchable):
    store, a, _ = searchable
    hits = store.search("egg BOIL")
    assert {(h.conversation_id, h.seq) for h in hits} == {(a.id, 1), (a.id, 2)}
    hit = next(h for h in hits if h.seq == 2)
    assert hit.title == "Cooking" and hit.role == "assistant"
    assert hit.snippet == "«Boil» the «EGG» for seven minutes. Then cool it."
    assert store.search("egg", mark=("<b>", "</b>"))[0].snippet.count("<b>") == 1
    assert store.search("helpful cook") == []  # the init prompt is not indexed
    assert store.search("boil", conversation_id=a.id + 1) == []


def test_search_phrases_short_terms_and_cjk(searchable):
    store, _, b = searchable
    assert [h.seq for h in store.search('"seven minutes"')] == [2]
    assert store.search('"minutes seven"') == []
    assert [h.seq for h in store.search("北京")] == [1]  # 2 characters: below the trigram size
    assert [h.seq for h in store.search("天安门")] == [1]
    assert [h.seq for h in store.search("do egg")] == [1]
    assert {h.seq for h in store.search("it")} == {2}  # substring of "it." only
    hit = store.search("北京")[0]
    assert hit.conversation_id == b.id and "«北京»" in hit.snippet


# Every query matched literally (each space-separated term a case-insensitive substring, "quotes" keep a
# phrase), with the messages it must find: a1 "How long do I boil an egg?", a2 "Boil the EGG for seven
# minutes.\nThen cool it.", b1 "我想去北京看看天安门", b2 'Use "quotes" AND (parens) * near: -minus c++ 100%_done'.
SPECIAL_QUERIES = {
    '"': [], '""': [], "   ": [], "": [],  # no term at all
    '"unbalanced': [],  # an unclosed quote: the rest is the term
    "AND": ["b2"], "OR NOT": [],  # FTS operators are words ("or" is in "for", "not" nowhere)
    "NEAR(": [], "near: x": [], "*": ["b2"], "egg*": [], "-minus": ["b2"], "(parens)": ["b2"], "c++": ["b2"],
    "100%": ["b2"], "%_": ["b2"], "%": ["b2"], "_": ["b2"],  # LIKE's wildcards, escaped
    "0%d": [], "e_g": [],  # as wildcards they would match "100%_done" and "egg"
    "x%y": [], "\\": [], "^start": [], "col:umn": [], "'single": [], "🐉🐉🐉": [],
    "a\x00b": ["a1"],  # NUL separates terms: "a" and "b" are both only in a1 ("an", "boil")
    '"quotes" AND': ["b2"], "it.": ["a2"],
}


@pytest.mark.parametrize("query", SPECIAL_QUERIES)
def test_search_matches_special_characters_literally(searchable, query):
    store, a, b = searchable
    names = {a.id: "a", b.id: "b"}
    assert sorted(f"{names[h.conversation_id]}{h.seq}" for h in store.search(query)) == SPECIAL_QUERIES[query]


def test_search_respects_archive_and_limit(store):
    _, a, _ = fill_for_search(store)
    store.set_archived(a.id, True)
    assert len(store.search("egg")) == 2
    assert store.search("egg", include_archived=False) == []
    assert len(store.search("egg", limit=1)) == 1


def test_search_long_message_snippet_is_centred_on_the_match(store):
    conv = new_conv(store)
    text = "filler " * 100 + "needle in the haystack " + "tail " * 100
    store.add_message(conv.id, role="text", content=text, n_tokens=1)
    (hit,) = store.search("needle")
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")
    assert "«needle» in the haystack" in hit.snippet and len(hit.snippet) < 140


# ---- housekeeping ------------------------------------------------------------------------------


def _stored_size(store: ConversationStore, raw: bytes) -> int:
    with sqlite3.connect(store.path) as c:
        row = c.execute("SELECT stored_size FROM states WHERE hash = ?", (hashlib.sha256(raw).hexdigest(),)).fetchone()
    c.close()
    return row[0]


def test_prune_keeps_init_and_latest_states(store):
    convs = []
    for k in range(2):
        conv = new_conv(store, f"c{k}", init_state=(FP, state_bytes(100 + k)))
        for i in range(6):
            store.add_message(conv.id, role="user", content="x", n_tokens=1,
                              state=(FP, state_bytes(10 * k + i, shape=(10, 256))))
        convs.append(conv)
    store.save_state(store.messages(convs[0].id)[3].id, FP2, state_bytes(77, FP2))
    total = store.states_disk_bytes()
    assert store.prune_states(total) == 0
    one = _stored_size(store, state_bytes(0, shape=(10, 256)))

    freed = store.prune_states(total - one)  # just over the cap: the single oldest turn state goes
    assert freed == one
    assert store.states_disk_bytes() == total - one
    assert store.state_seqs(convs[0].id, FP) == [0, 2, 3, 4, 5, 6]

    freed += store.prune_states(0)  # as far as possible
    assert store.states_disk_bytes() == total - freed
    for conv in convs:
        assert store.state_seqs(conv.id, FP) == [0, 5, 6]  # init + the two latest (regenerate stays free)
        assert store.latest_state(conv.id, FP)[0] == 6
    assert store.state_seqs(convs[0].id, FP2) == [3]  # the latest (only) state of the other model
    store.prune_states(0, keep_last=1)
    assert store.state_seqs(convs[1].id, FP) == [0, 6]


def test_prune_counts_shared_blobs_once(store):
    conv = new_conv(store)
    for i in range(4):
        store.add_message(conv.id, role="user", content="x", n_tokens=1, state=(FP, state_bytes(i, shape=(10, 256))))
    store.fork(conv.id, through_seq=2)
    before = store.states_disk_bytes()
    freed = store.prune_states(0, keep_last=1)
    # conv keeps seq 4; fork keeps seq 2 (shared); seq 1 and 3 go, seq 1's blob only once both forks drop it
    assert freed == before - store.states_disk_bytes()
    assert store.state_seqs(conv.id, FP) == [4]
    assert store.load_state(store.messages(conv.id)[2].id, FP) is None
    assert store.latest_state(store.last_conversation_id(), FP) == (2, state_bytes(1, shape=(10, 256)))


def test_app_values(store):
    assert store.get_app_value("tabs") is None
    assert store.get_app_value("tabs", []) == []
    store.set_app_value("tabs", {"open": [3, 1], "active": 1, "name": "é🐉"})
    assert store.get_app_value("tabs") == {"open": [3, 1], "active": 1, "name": "é🐉"}
    store.set_app_value("tabs", [])
    assert store.get_app_value("tabs", "dflt") == []
    store.delete_app_value("tabs")
    assert store.get_app_value("tabs", "dflt") == "dflt"


def test_integrity_check_of_a_used_store(store):
    conv = new_conv(store, init_state=(FP, state_bytes(0)))
    store.add_message(conv.id, role="user", content="x", n_tokens=1, state=(FP, state_bytes(1)))
    store.fork(conv.id)
    store.delete_conversation(conv.id)
    assert store.integrity_check() == []


# ---- concurrency -------------------------------------------------------------------------------


def test_threads_share_one_store(store):
    convs = [new_conv(store, f"t{i}") for i in range(4)]
    errors: list[BaseException] = []

    def work(conv_id: int, seed: int) -> None:
        try:
            for i in range(15):
                m = store.add_message(conv_id, role="user", content=f"{seed}-{i}", n_tokens=1,
                                      state=(FP, state_bytes(seed * 100 + i)))
                assert store.load_state(m.id, FP) == state_bytes(seed * 100 + i)
                store.list_conversations()
                store.search(f"{seed}-{i}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c.id, k)) for k, c in enumerate(convs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k, conv in enumerate(convs):
        assert [m.content for m in store.messages(conv.id)[1:]] == [f"{k}-{i}" for i in range(15)]


def test_two_connections_write_the_same_conversation(tmp_path):
    """Like the CLI and the app at once: two stores on one file, both appending; seqs stay unique."""
    path = tmp_path / "c.sqlite3"
    with ConversationStore.open(path) as s1, ConversationStore.open(path) as s2:
        conv = new_conv(s1)
        errors: list[BaseException] = []

        def work(s: ConversationStore, tag: str) -> None:
            try:
                for i in range(20):
                    s.add_message(conv.id, role="user", content=f"{tag}{i}", n_tokens=1, state=(FP, state_bytes(i)))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(s, tag)) for s, tag in ((s1, "a"), (s2, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        msgs = s2.messages(conv.id)
        assert [m.seq for m in msgs] == list(range(41))
        want = [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)]
        assert sorted(m.content for m in msgs[1:]) == sorted(want)
        assert s1.get_conversation(conv.id).message_count == 40


def test_simultaneous_first_opens_of_a_new_file(tmp_path):
    """Several connections creating the same new database at once: one migrates, all open it."""
    for trial in range(8):
        path = tmp_path / f"new{trial}.sqlite3"
        barrier = threading.Barrier(4)
        opened: list[ConversationStore] = []
        errors: list[BaseException] = []

        def go(path=path, barrier=barrier, opened=opened, errors=errors) -> None:
            barrier.wait()
            try:
                opened.append(ConversationStore.open(path))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=go) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert errors == []
            conv = new_conv(opened[0])
            assert all(s.get_conversation(conv.id).title == "chat" for s in opened)
        finally:
            for s in opened:
                s.close()


_OTHER_PROCESS = """
import sys
import numpy as np
from runtime.chat.store import ConversationStore
from runtime.model.state import State
FP = "a1" * 32
def state_bytes(seed):  # as in test_store.py
    data = np.random.default_rng(seed).normal(size=(10, 64)).astype(np.float32)
    data[3::5] = seed - 40.0
    return State(data, FP).to_bytes()
with ConversationStore.open(sys.argv[1]) as s:
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(25):
        s.add_message(int(sys.argv[2]), role="assistant", content=f"p{i}", n_tokens=1, state=(FP, state_bytes(i)))
"""


def test_two_processes_write_at_once(tmp_path):
    """The line-mode chat and the app on one file: a second process appends while this one does."""
    path = tmp_path / "c.sqlite3"
    with ConversationStore.open(path) as s:
        conv = new_conv(s)
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        p = subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS, str(path), str(conv.id)], cwd=root, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert p.stdout.readline() == b"ready\n"
            p.stdin.write(b"go\n")
            p.stdin.flush()
            for i in range(25):
                s.add_message(conv.id, role="user", content=f"t{i}", n_tokens=1, state=(FP, state_bytes(100 + i)))
            _, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err.decode()[-2000:]
        msgs = s.messages(conv.id)
        assert [m.seq for m in msgs] == list(range(51))
        want = [f"p{i}" for i in range(25)] + [f"t{i}" for i in range(25)]
        assert sorted(m.content for m in msgs[1:]) == sorted(want)
        for m in msgs[1:]:
            i = int(m.content[1:])
            assert s.load_state(m.id, FP) == state_bytes(i if m.content[0] == "p" else 100 + i)
        assert s.integrity_check() == []


def test_a_damaged_database_gives_store_errors_not_sqlite_errors(tmp_path):
    path = tmp_path / "c.sqlite3"
    with ConversationStore.open(path) as s:
        conv = new_conv(s)
        for i in range(30):
            s.add_message(conv.id, role="user", content=f"message {i} " * 50, n_tokens=1, state=(FP, state_bytes(i)))
    size = path.stat().st_size
    with open(path, "r+b") as f:  # garbage over pages in the middle of the file
        f.seek(size // 3)
        f.write(random.Random(0).randbytes(size // 3))
    calls = [
        lambda s: s.list_conversations(), lambda s: s.messages(conv.id), lambda s: s.search("message 7"),
        lambda s: s.latest_state(conv.id, FP), lambda s: s.integrity_check(),
        lambda s: s.add_message(conv.id, role="user", content="x", n_tokens=1, state=(FP, state_bytes(99))),
        lambda s: s.delete_conversation(conv.id), lambda s: s.prune_states(0),
    ]
    failures = 0
    try:
        s = ConversationStore.open(path)
    except StoreError as e:
        assert str(path) in str(e)
        return
    with s:
        for call in calls:
            try:
                result = call(s)
            except StoreError as e:  # DatabaseFileError naming the file, or StateCorruptError
                assert str(path) in str(e)
                failures += 1
            else:
                if isinstance(result, list) and result and isinstance(result[0], str):
                    failures += 1  # integrity_check reported the damage
    assert failures > 0


def test_update_message_replaces_a_draft_reply_with_its_final_text_and_state(store):
    conv = new_conv(store)
    store.add_message(conv.id, role="user", content="tell me", n_tokens=2, state=(FP, state_bytes(1)))
    draft = store.add_message(conv.id, role="assistant", content="Once upon", n_tokens=2, complete=False)
    assert store.load_state(draft.id, FP) is None
    final = store.update_message(draft.id, content="Once upon a time.", n_tokens=5, complete=True,
                                 state=(FP, state_bytes(2)))
    assert (final.id, final.seq, final.role) == (draft.id, draft.seq, "assistant")
    assert store.messages(conv.id)[-1] == final and final.complete and final.n_tokens == 5
    assert store.load_state(draft.id, FP) == state_bytes(2)
    assert [h.message_id for h in store.search("upon a time")] == [draft.id]  # the search index follows
    with pytest.raises(MessageNotFoundError):
        store.update_message(draft.id + 100, content="x", n_tokens=1, complete=False)


def test_a_version_1_database_gains_the_writer_of_each_reply(tmp_path):
    path = tmp_path / "c.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in schema.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO conversations (id, title, mode, family, model_ref, created_at, updated_at) "
                 "VALUES (1, 'old', 'chat', 'raven', 'raven-1b5', 1.0, 1.0)")
    for seq, role in ((0, "init"), (1, "user"), (2, "assistant")):
        conn.execute("INSERT INTO messages (conversation_id, seq, role, content, n_tokens, complete, created_at) "
                     "VALUES (1, ?, ?, 'text', 1, 1, 1.0)", (seq, role))
    conn.close()
    with ConversationStore.open(path) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION >= 2
        old = s.messages(1)
        assert [(m.role, m.model_ref, m.file_type) for m in old] == [
            ("init", None, None), ("user", None, None), ("assistant", None, None)]
        s.add_message(1, role="user", content="new", n_tokens=1)
        reply = s.add_message(1, role="assistant", content="by 7B", n_tokens=2, model_ref="raven-7b",
                              file_type="Q5_1")
        assert (reply.model_ref, reply.file_type) == ("raven-7b", "Q5_1")
        assert s.messages(1)[-1] == reply
        forked = s.fork(1)
        assert [(m.model_ref, m.file_type) for m in s.messages(forked.id)][2:] == [
            (None, None), (None, None), ("raven-7b", "Q5_1")]
        with pytest.raises(StoreArgumentError):
            s.add_message(1, role="assistant", content="x", n_tokens=1, model_ref=3)


def test_forks_of_one_conversation_get_distinct_titles(store):
    conv = new_conv(store, "story")
    store.add_message(conv.id, role="user", content="once", n_tokens=1)
    first, second = store.fork(conv.id), store.fork(conv.id)
    of_fork = store.fork(first.id)
    named = store.fork(conv.id, title="story (fork)")  # a title asked for is kept as it is
    assert [first.title, second.title, of_fork.title, named.title] == [
        "story (fork)", "story (fork 2)", "story (fork 3)", "story (fork)"]
    assert store.fork(conv.id).title == "story (fork 4)"


def _schema_before_thinking(conn: sqlite3.Connection) -> None:
    """A database as the version before thinking wrote it (the migrations up to it)."""
    before = schema.MIGRATIONS.index(schema._THINK)
    for step in schema.MIGRATIONS[:before]:
        for statement in step:
            statement(conn) if callable(statement) else conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {before}")


def test_thinking_columns_migrate_older_rows_to_no_markup_and_are_kept_by_forks(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    _schema_before_thinking(conn)
    conn.execute("INSERT INTO conversations (title, mode, family, model_ref, created_at, updated_at) "
                 "VALUES ('old', 'chat', 'world', 'm', 0, 0)")
    for seq, role, content in ((0, "init", ""), (1, "user", "hi")):
        conn.execute("INSERT INTO messages (conversation_id, seq, role, content, created_at) VALUES (1, ?, ?, ?, 0)",
                     (seq, role, content))
    conn.close()
    with ConversationStore.open(path) as s:
        old = s.get_conversation(1)
        assert (old.think, old.system) == (False, "")
        assert [m.think for m in s.messages(1)] == [None, None]  # written without the think markup
        s.update_conversation(1, think=True)
        s.add_message(1, role="user", content="think", n_tokens=3, think=True)
        s.add_message(1, role="assistant", content=">…</think> ok", n_tokens=5, think=True)
        s.add_message(1, role="user", content="fast", n_tokens=3, think=False)
        fork = s.fork(1)
        assert s.get_conversation(fork.id).think is True
        assert [m.think for m in s.messages(fork.id)] == [None, None, True, True, False]
        new = s.create_conversation(title="t", mode="chat", family="g1", model_ref="m", sampling={},
                                    system="Be brief.")
        assert s.fork(new.id).system == "Be brief."
