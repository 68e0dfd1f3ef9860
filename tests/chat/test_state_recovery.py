"""Damaged saved states recover: whatever check a state fails when it is loaded (type, size, checksum,
compression, the model's fingerprint, shape, logit count, NaN, huge values), it is set aside for good
and rebuilt by reading the transcript from the nearest sound state, with a notice giving the number of
tokens read again. Before, the same error came back on every start and the conversation was lost."""

from __future__ import annotations

import hashlib
import sqlite3

import numpy as np
import pytest

from runtime.chat import state_codec
from runtime.chat.conversation import Conversation
from runtime.chat.store import ConversationStore
from runtime.model.state import State
from runtime.text.templates import get_family
from tests.support.transcript_model import COLS, ROWS, TranscriptModel

RAVEN = get_family("raven")


def _conversation(path, model) -> tuple[int, str]:
    """A conversation of init, two turns and two replies; (its id, the text its last state holds)."""
    with ConversationStore.open(path) as store:
        conv = Conversation.start(store, model, family="raven", seed=1)
        conv.send("Hi")
        conv.send("More")
        return conv.id, model.text(conv.state)


def _state_row(db, conversation_id: int, seq: int) -> tuple[int, str, str]:
    """(message id, state key, state hash) of message `seq`'s saved state."""
    with sqlite3.connect(db) as c:
        return c.execute(
            "SELECT m.id, ts.fingerprint, ts.state_hash FROM messages m JOIN turn_states ts ON ts.message_id = m.id "
            "WHERE m.conversation_id = ? AND m.seq = ?", (conversation_id, seq)).fetchone()


def _set_blob(db, conversation_id: int, seq: int, blob) -> None:
    _, _, digest = _state_row(db, conversation_id, seq)
    with sqlite3.connect(db) as c:
        c.execute("UPDATE states SET blob = ? WHERE hash = ?", (blob, digest))


def _blob(db, conversation_id: int, seq: int) -> bytes:
    _, _, digest = _state_row(db, conversation_id, seq)
    with sqlite3.connect(db) as c:
        return c.execute("SELECT blob FROM states WHERE hash = ?", (digest,)).fetchone()[0]


def _put_state(db, conversation_id: int, seq: int, state: State) -> None:
    """Store `state` as message `seq`'s, with every checksum valid (a state that is wrong, not broken)."""
    raw = state.to_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    blob = state_codec.encode(raw)
    mid, key, _ = _state_row(db, conversation_id, seq)
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO states (hash, codec, raw_size, stored_size, fingerprint, created_at, blob) "
                  "VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT (hash) DO NOTHING",
                  (digest, state_codec.DEFAULT_CODEC, len(raw), len(blob), state.fingerprint, blob))
        c.execute("UPDATE turn_states SET state_hash = ? WHERE message_id = ? AND fingerprint = ?", (digest, mid, key))


def _saved_state(db, conversation_id: int, seq: int) -> State:
    return State.from_bytes(state_codec.decode(_blob(db, conversation_id, seq)))


def _with(state: State, data=None, logits=None, fingerprint=None) -> State:
    return State(state.data if data is None else data, fingerprint or state.fingerprint,
                 state.logits if logits is None else logits)


def _huge(state: State, value: float) -> State:
    data = state.data.copy()
    data[1, 3] = value
    return _with(state, data=data)


def _nan_logits(state: State) -> State:
    logits = state.logits.copy()
    logits[5] = np.nan
    return _with(state, logits=logits)


BLOB_DAMAGE = {  # what a damaged database row can hold in place of a state blob
    "a flipped byte": lambda b: b[:40] + bytes([b[40] ^ 0x10]) + b[41:],
    "a truncated blob": lambda b: b[: len(b) // 2],
    "an INTEGER": lambda b: 12345,
    "a text": lambda b: "RWZ1 not bytes",
    "an empty blob": lambda b: b"",
}
WRONG_STATES = {  # states with valid checksums that this model must not use
    "another model's": lambda s: _with(s, fingerprint="0" * 64),
    "a wrong shape": lambda s: _with(s, data=s.data.reshape(ROWS * 2, COLS // 2)),
    "a wrong logit count": lambda s: _with(s, logits=s.logits[:7]),
    "NaN logits": _nan_logits,
    "3e38": lambda s: _huge(s, 3e38),
    "-3e38": lambda s: _huge(s, -3e38),
}


def _damage(db, conversation_id: int, seq: int, kind: str) -> None:
    if kind in BLOB_DAMAGE:
        _set_blob(db, conversation_id, seq, BLOB_DAMAGE[kind](_blob(db, conversation_id, seq)))
    else:
        _put_state(db, conversation_id, seq, WRONG_STATES[kind](_saved_state(db, conversation_id, seq)))


@pytest.mark.parametrize("kind", [*BLOB_DAMAGE, *WRONG_STATES])
def test_a_damaged_last_state_is_set_aside_and_rebuilt_by_reading(tmp_path, kind):
    db = tmp_path / "c.sqlite3"
    model = TranscriptModel(" Sure.")
    cid, transcript = _conversation(db, model)
    _damage(db, cid, 4, kind)
    with ConversationStore.open(db) as store:
        conv = Conversation.resume(store, cid, model)
        reply_and_separator = len(model.tokenizer.encode(" Sure." + RAVEN.separator))
        assert conv.tokens_read == reply_and_separator  # from the state after message 3
        assert model.text(conv.state) == transcript
        (notice,) = conv.take_notices()
        assert notice.startswith("The saved state after message 4 was damaged (")
        assert notice.endswith("Set aside; rebuilt by reading the conversation again from the state after "
                               f"message 3 ({reply_and_separator} tokens re-read).")
        assert conv.take_notices() == []
        assert conv.send("Again").text == " Sure."  # and it goes on
    with ConversationStore.open(db) as store:  # the rebuilt state is the one used from now on
        conv = Conversation.resume(store, cid, model)
        assert conv.tokens_read == 0 and conv.take_notices() == []
        assert model.text(conv.state) == transcript + "Bob: Again\n\nAlice: Sure." + RAVEN.separator


def test_several_damaged_states_are_all_set_aside(tmp_path):
    db = tmp_path / "c.sqlite3"
    model = TranscriptModel(" Sure.")
    cid, transcript = _conversation(db, model)
    _damage(db, cid, 4, "a flipped byte")
    _damage(db, cid, 3, "3e38")
    _damage(db, cid, 2, "another model's")
    with ConversationStore.open(db) as store:
        conv = Conversation.resume(store, cid, model)
        assert model.text(conv.state) == transcript
        fed = (" Sure." + RAVEN.separator, "Bob: More\n\nAlice:", " Sure." + RAVEN.separator)  # messages 2-4
        n = sum(len(model.tokenizer.encode(text)) for text in fed)
        assert conv.tokens_read == n
        (notice,) = conv.take_notices()
        for seq in (4, 3, 2):
            assert f"The saved state after message {seq} was damaged" in notice
        assert notice.endswith(f"from the state after message 1 ({n} tokens re-read).")
        for seq in (2, 3, 4):  # each rebuilt and stored again
            assert transcript.startswith(model.text(_saved_state(db, cid, seq)))
        assert model.text(_saved_state(db, cid, 4)) == transcript


def test_a_damaged_init_state_is_rebuilt_from_the_start(tmp_path):
    db = tmp_path / "c.sqlite3"
    model = TranscriptModel(" Sure.")
    cid, transcript = _conversation(db, model)
    for seq in range(5):
        _damage(db, cid, seq, "a truncated blob")
    with ConversationStore.open(db) as store:
        conv = Conversation.resume(store, cid, model)
        assert model.text(conv.state) == transcript
        assert conv.tokens_read == len(model.tokens(conv.state))
        assert conv.take_notices()[0].endswith(f"from the start ({conv.tokens_read} tokens re-read).")


def test_bytes_shared_with_a_fork_are_never_used_again(tmp_path):
    """A fork shares its states' bytes. The rebuilt state has the same content, so the same hash: had the
    damaged bytes stayed for the fork's sake, storing the rebuilt state would have kept them."""
    db = tmp_path / "c.sqlite3"
    model = TranscriptModel(" Sure.")
    cid, transcript = _conversation(db, model)
    with ConversationStore.open(db) as store:
        fork_id = Conversation.resume(store, cid, model).fork().id
    _damage(db, cid, 4, "a flipped byte")
    for conversation_id in (cid, fork_id, cid, fork_id):
        with ConversationStore.open(db) as store:
            conv = Conversation.resume(store, conversation_id, model)
            assert model.text(conv.state) == transcript
    with ConversationStore.open(db) as store:
        for conversation_id in (cid, fork_id):
            conv = Conversation.resume(store, conversation_id, model)
            assert conv.tokens_read == 0 and conv.take_notices() == []


def test_a_state_damaged_in_the_middle_is_recovered_when_regenerating(tmp_path):
    db = tmp_path / "c.sqlite3"
    model = TranscriptModel(" Sure.")
    cid, transcript = _conversation(db, model)
    _damage(db, cid, 3, "NaN logits")
    with ConversationStore.open(db) as store:
        conv = Conversation.resume(store, cid, model)
        assert conv.tokens_read == 0  # the last state is sound
        model.reply = " Other."
        assert conv.regenerate().text == " Other."  # from the state after message 3: damaged, rebuilt
        assert "The saved state after message 3 was damaged" in conv.take_notices()[0]
        assert model.text(conv.state) == transcript[: -len(" Sure.\n\n")] + " Other.\n\n"


def test_chat_cli_resumes_a_conversation_whose_state_is_damaged_and_says_so(tmp_path, monkeypatch, capsys):
    import io

    from runtime.chat.store import default_path
    from runtime.quant.types import DType
    from tests.support.gguf_model import write_model_gguf
    from tests.support.synthetic import v4_state_dict
    from tui.cli import main as cli

    sd = v4_state_dict(n_layer=2, n_embd=32, n_vocab=50277, seed=11)  # as tests/chat/test_chat_cli.py
    path = write_model_gguf(tmp_path / "raven-tiny.gguf", sd, DType.F32)

    def chat(*args: str, lines: str) -> tuple[int, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(lines))
        rc = cli(["chat", str(path), "--seed", "1", "--max-tokens", "4", *args])
        return rc, "".join(capsys.readouterr().err.split())  # without rich's line breaks

    assert chat(lines="Hello there\n")[0] == 0
    with ConversationStore.open() as store:
        cid = store.last_conversation_id()
        last = store.messages(cid)[-1].seq
    _set_blob(default_path(), cid, last, 12345)  # an INTEGER where the blob was
    rc, err = chat("--resume", "last", lines="/history\n")
    assert rc == 0 and "Traceback" not in err
    assert f"Thesavedstateaftermessage{last}wasdamaged" in err
    assert f"rebuiltbyreadingtheconversationagainfromthestateaftermessage{last - 1}(" in err
    assert "tokensre-read)." in err


def test_a_state_that_passes_its_checks_but_makes_the_model_fail_is_rebuilt_when_used(tmp_path):
    """A saved state of -2.6e36 in an ffn_xx row is finite and within bounds, so it loads; the next step
    from it is not finite. The model blames the state (a fresh state gives finite values), and the
    conversation sets it aside, rebuilds it and goes on."""
    import runtime
    from runtime.quant.types import DType
    from tests.support.gguf_model import write_model_gguf
    from tests.support.synthetic import v4_state_dict

    sd = v4_state_dict(n_layer=2, n_embd=32, n_vocab=50277, seed=11)  # as tests/chat/test_chat_cli.py
    path = write_model_gguf(tmp_path / "raven-tiny.gguf", sd, DType.F32)
    db = tmp_path / "c.sqlite3"
    with runtime.load_model(path, threads=1) as model, ConversationStore.open(db) as store:
        conv = Conversation.start(store, model, family="raven", seed=3)
        conv.set_sampling(conv.sampling.replace(max_tokens=4))
        conv.send("Hi")
        cid, last, sound = conv.id, conv.messages[-1].seq, conv.state
    data = sound.data.copy()
    data[4, 7] = -2.6e36  # layer 0's ffn_xx: relu(k)^2 overflows
    with runtime.load_model(path, threads=1) as model:
        _put_state(db, cid, last, _with(sound, data=data, fingerprint=sound.fingerprint))
        with ConversationStore.open(db) as store:
            conv = Conversation.resume(store, cid, model)
            assert conv.tokens_read == 0 and conv.take_notices() == []  # it passed the checks
            assert np.array_equal(conv.state.data, data)
            reply = conv.send("More")
            assert reply.n_tokens > 0
            (notice,) = conv.take_notices()
            assert notice.startswith(f"The saved state after message {last} was damaged (the state given made "
                                     "raven-tiny.gguf produce")
            assert f"from the state after message {last - 1} (" in notice
            assert np.isfinite(conv.state.data).all()
        # the rebuilt state was stored in its place (read in sequence mode: equal up to rounding)
        np.testing.assert_allclose(_saved_state(db, cid, last).data, sound.data, rtol=1e-4, atol=1e-5)
