"""Conversations started from a registered state-tuned state (`rwkv-tui chat MODEL --state NAME`): the
first reply reads from that state, the conversation records it, resuming reads nothing, re-reading the
transcript starts from it again (or refuses when its file is gone), and a state registered for another
model is refused (exit 2). Old databases gain the field."""

from __future__ import annotations

import io
import sqlite3

import numpy as np
import pytest

import runtime
from runtime.chat import schema
from runtime.chat.conversation import Conversation, ConversationError, state_key
from runtime.chat.store import ConversationStore
from runtime.convert import convert
from runtime.model.state import State
from runtime.model.state_file import model_architecture, time_states_of
from runtime.registry.states import load_states
from tests.support.synthetic import v7_state_dict
from tests.support.torch_writer import write_pth
from tui.cli import main as cli

WORLD = 65536


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("startstate")
    out = []
    for name, n_embd in (("rwkv7-g1-a", 64), ("rwkv7-g1-b", 32)):
        sd = v7_state_dict(n_layer=2, n_embd=n_embd, head_size=32, n_vocab=WORLD, ranks=(8, 8, 8, 16), seed=3)
        out.append(folder / f"{name}.gguf")
        convert(write_pth(folder / f"{name}.pth", sd, dtype="float32"), out[-1], "f32")
    return out


@pytest.fixture(scope="module")
def model(files):
    with runtime.load_model(files[0], threads=1) as m:
        yield m


@pytest.fixture
def store(tmp_path):
    with ConversationStore.open(tmp_path / "c.sqlite3") as s:
        yield s


def _state_file(model, path):
    """A state-tuning file made from the state after some text (token-shift rows zeroed, as such files
    hold only the WKV matrices), and that state."""
    _, state = model.forward(model.tokenizer.encode("You are a pirate. Arr!"))
    rows = state.data.reshape(model.n_layer, -1, model.n_embd)
    rows[:, :2] = 0
    return write_pth(path, time_states_of(state, model_architecture(model)), dtype="float32"), state


def test_a_conversation_started_from_a_state_reads_from_it_and_resumes_reading_nothing(store, model, tmp_path):
    path, state = _state_file(model, tmp_path / "pirate.pth")
    conv = Conversation.start(store, model, family="g1", seed=1, system="Be brief.",
                              start_state=("pirate", str(path)))
    init_ids = model.tokenizer.encode(conv._fed(0))
    want, _ = model.forward(init_ids, state)
    zero, _ = model.forward(init_ids)
    assert np.array_equal(conv.state.logits, want) and not np.array_equal(want, zero)
    record = conv.record
    assert (record.start_state_name, record.start_state_path) == ("pirate", str(path))
    conv.set_sampling(conv.sampling.replace(max_tokens=4))
    conv.send("Hello")
    again = Conversation.resume(store, conv.id, model)
    assert again.tokens_read == 0 and again.start_state == ("pirate", str(path))
    assert np.array_equal(again.state.data, conv.state.data)
    assert conv.fork().start_state == ("pirate", str(path))


def test_rebuilding_reads_from_the_starting_state_again_or_refuses_when_its_file_is_gone(store, model, tmp_path):
    path, _ = _state_file(model, tmp_path / "pirate.pth")
    conv = Conversation.start(store, model, family="g1", seed=1, start_state=("pirate", str(path)))
    conv.set_sampling(conv.sampling.replace(max_tokens=4))
    conv.send("Hello")
    want = conv.state.data.copy()
    key = state_key(model, conv.family)
    for m in store.messages(conv.id):
        store.set_aside_state(m.id, key)
    rebuilt = Conversation.resume(store, conv.id, model)
    assert rebuilt.tokens_read > 0  # read in sequence mode, the reply was written token by token: rounding only
    assert np.allclose(rebuilt.state.data, want, rtol=1e-4, atol=1e-5)
    for m in store.messages(conv.id):
        store.set_aside_state(m.id, key)
    path.unlink()
    with pytest.raises(ConversationError, match=r"started from the state 'pirate', whose file .* is gone"):
        Conversation.resume(store, conv.id, model)


def test_switching_to_a_model_the_state_does_not_fit_is_refused(store, model, files, tmp_path):
    path, _ = _state_file(model, tmp_path / "pirate.pth")
    conv = Conversation.start(store, model, family="g1", seed=1, start_state=("pirate", str(path)))
    refused = pytest.raises(ConversationError, match=r"'pirate', which does not fit rwkv7-g1-b\.gguf")
    with runtime.load_model(files[1], threads=1) as other, refused:
        conv.switch_model(other, model_ref=str(files[1]))
    assert conv.model is model


def test_chat_state_option_starts_from_a_registered_state_and_refuses_another_models(
        model, files, tmp_path, monkeypatch, capsys):
    path, _ = _state_file(model, tmp_path / "pirate.pth")
    assert cli(["add-state", str(path), "--model", str(files[0]), "--name", "pirate-cli"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n"))
    assert cli(["chat", str(files[0]), "--state", "pirate-cli", "--max-tokens", "3", "--seed", "1"]) == 0
    with ConversationStore.open() as s:
        record = s.get_conversation(s.last_conversation_id())
    assert (record.start_state_name, record.start_state_path) == ("pirate-cli", str(path.resolve()))
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n"))
    assert cli(["chat", str(files[1]), "--state", "pirate-cli"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "that state is registered for" in err and "not for rwkv7-g1-b.gguf" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n"))
    assert cli(["chat", str(files[0]), "--state", "nobody"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no state of that name for rwkv7-g1-a.gguf (its states: pirate-cli)" in err


def test_a_version_3_database_opens_with_conversations_started_from_zeros(tmp_path):
    path = tmp_path / "c.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for step in schema.MIGRATIONS[:3]:
        for statement in step:
            conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 3")
    conn.execute("INSERT INTO conversations (id, title, mode, family, model_ref, created_at, updated_at) "
                 "VALUES (1, 'old', 'chat', 'raven', 'raven-1b5', 1.0, 1.0)")
    conn.close()
    with ConversationStore.open(path) as s:
        record = s.get_conversation(1)
        assert (record.title, record.start_state_name, record.start_state_path) == ("old", "", "")
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 4


def test_save_state_exports_a_state_file_that_starts_a_conversation_from_that_state_exactly(
        files, model, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n/save-state harbour\n/save-state bad/name\n"))
    assert cli(["chat", str(files[0]), "--lines", "--max-tokens", "3", "--seed", "2"]) == 0
    out = capsys.readouterr()
    assert "saved the conversation's state as 'harbour'" in out.out
    assert "'bad/name' cannot name a state" in " ".join(out.err.split())
    with ConversationStore.open() as s:
        first = Conversation.resume(s, s.last_conversation_id(), model)
        exported = first.state.data.copy()
    exported.reshape(model.n_layer, -1, model.n_embd)[:, :2] = 0  # state files hold the WKV matrices only
    entry = next(e for e in load_states() if e.name == "harbour")
    assert entry.model == str(files[0].resolve())
    # the file reads back through add-state's checks, and --state starts from exactly that state
    assert cli(["add-state", entry.path, "--model", str(files[0]), "--name", "harbour-again"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli(["chat", str(files[0]), "--state", "harbour"]) == 0
    with ConversationStore.open() as s:
        second = Conversation.resume(s, s.last_conversation_id(), model)
    assert second.start_state[0] == "harbour" and second.tokens_read == 0
    assert np.array_equal(second.state.data, exported)
    ids = model.tokenizer.encode("Ahoy")
    want, _ = model.forward(ids, State(exported.copy(), model.fingerprint, arch=model.arch_name))
    got, _ = model.forward(ids, second.state)
    assert np.array_equal(got, want)
