"""Stop strings at their edges, with the tokens fed counted exactly: a reply that begins with a stop
string, a stop string that starts on a token boundary (rewinding one token too far re-reads it
without changing the context, so only the count shows it)."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.chat.conversation import Conversation
from runtime.chat.store import ConversationStore
from runtime.text.templates import get_family
from tests.support.transcript_model import TranscriptModel

RAVEN = get_family("raven")


@pytest.fixture
def store(tmp_path):
    with ConversationStore.open(tmp_path / "c.sqlite3") as s:
        yield s


def _start(store, model) -> Conversation:
    return Conversation.start(store, model, family="raven", seed=1)


def _n(model: TranscriptModel, text: str) -> int:
    return len(model.tokenizer.encode(text))


def test_a_reply_that_begins_with_the_stop_string_is_empty_and_leaves_it_out(store):
    model = TranscriptModel("\n\nBob: what next?")
    conv = _start(store, model)
    before = model.tokens_fed
    reply = conv.send("Hi")
    assert (reply.finish, reply.text) == ("stop", "")
    expected = RAVEN.init + "Bob: Hi\n\nAlice:" + RAVEN.separator
    assert model.text(conv.state) == expected
    # the prompt, the stop string's tokens as generated, then the separator from the state before them
    assert model.tokens_fed - before == _n(model, "Bob: Hi\n\nAlice:") + reply.n_tokens + _n(model, RAVEN.separator)
    assert conv.messages[-1].content == "" and conv.messages[-1].complete


def test_a_stop_string_on_a_token_boundary_rewinds_to_that_boundary_exactly(store):
    model = TranscriptModel(" Hello there.\n\nBob: and you?")
    ids = model.tokenizer.encode(" Hello there.\n\nBob: and you?")
    pieces = [model.tokenizer.decode([i]) for i in ids]
    assert "".join(pieces[:3]) == " Hello there." and pieces[3].startswith("\n")  # the stop starts a token
    conv = _start(store, model)
    before = model.tokens_fed
    reply = conv.send("Hi")
    assert reply.text == " Hello there."
    assert model.text(conv.state) == RAVEN.init + "Bob: Hi\n\nAlice: Hello there." + RAVEN.separator
    # nothing before the stop string is read twice: only the separator after the generated tokens
    assert model.tokens_fed - before == _n(model, "Bob: Hi\n\nAlice:") + reply.n_tokens + _n(model, RAVEN.separator)
    assert conv.messages[-1].n_tokens == 3 + _n(model, RAVEN.separator)


def test_a_stop_string_that_starts_inside_a_split_character_rewinds_to_a_whole_character(store):
    """' ō' is two tokens, b' \\xc5' and b'\\x8d': the boundary between them is inside the character.
    A stop string beginning at 'ō' must rewind to before b' \\xc5' and read ' ' again, never keep half
    of the character in the context."""
    model = TranscriptModel(" ōx and more")
    assert [model.tokenizer.token_bytes(t) for t in model.tokenizer.encode(" ōx")][:2] == [b" \xc5", b"\x8d"]
    conv = _start(store, model)
    conv.set_sampling(conv.sampling.replace(stop=("ōx",)))
    before = model.tokens_fed
    reply = conv.send("Hi")
    assert (reply.finish, reply.text) == ("stop", " ")
    assert model.text(conv.state) == RAVEN.init + "Bob: Hi\n\nAlice: " + RAVEN.separator
    # back to before b' \xc5': ' ' and the separator read again after the generated tokens
    reread = _n(model, " " + RAVEN.separator)
    assert model.tokens_fed - before == _n(model, "Bob: Hi\n\nAlice:") + reply.n_tokens + reread


def test_a_stop_string_right_after_a_split_character_keeps_the_whole_character(store):
    model = TranscriptModel(" ō\n\nBob: more")
    conv = _start(store, model)
    before = model.tokens_fed
    reply = conv.send("Hi")
    assert (reply.finish, reply.text) == ("stop", " ō")
    assert model.text(conv.state) == RAVEN.init + "Bob: Hi\n\nAlice: ō" + RAVEN.separator
    assert model.tokens_fed - before == _n(model, "Bob: Hi\n\nAlice:") + reply.n_tokens + _n(model, RAVEN.separator)


def test_a_long_reply_reuses_the_memory_of_states_it_no_longer_keeps_and_still_rewinds_exactly(store):
    """Past the few states kept for rewinding, each token's new state is written into the memory of the
    oldest one (Model.forward's `into`); the stop string at the end still rewinds to the state right
    before it, so the context holds the reply exactly."""
    words = " " + "word " * 40 + "end"
    model = TranscriptModel(words + "\n\nBob: more")
    conv = _start(store, model)
    reply = conv.send("Hi")
    assert (reply.finish, reply.text) == ("stop", words)
    assert model.text(conv.state) == RAVEN.init + "Bob: Hi\n\nAlice:" + words + RAVEN.separator
    assert model.reused >= reply.n_tokens - 16  # all but the kept states (the stop's bytes + 4) and the first


def test_a_stop_string_of_split_characters_after_a_long_reply_rewinds_to_a_whole_character(store):
    """A stop string whose characters each take two tokens is more tokens than characters: the states
    kept reach back to before its first byte."""
    words = " " + "word " * 30
    model = TranscriptModel(words + "ŏŏŏ and more")
    assert [model.tokenizer.token_bytes(t) for t in model.tokenizer.encode(" ŏŏŏ")][:3] == [b" \xc5", b"\x8f", b"\xc5"]
    conv = _start(store, model)
    conv.set_sampling(conv.sampling.replace(stop=("ŏŏŏ",)))
    before = model.tokens_fed
    reply = conv.send("Hi")
    assert (reply.finish, reply.text) == ("stop", words)
    assert model.text(conv.state) == RAVEN.init + "Bob: Hi\n\nAlice:" + words + RAVEN.separator
    # rewound inside the remembered states, not rebuilt from the state before the reply
    assert model.tokens_fed - before < _n(model, "Bob: Hi\n\nAlice:") + reply.n_tokens + 20


class _Scripted(TranscriptModel):
    """Writes the given token ids after the cue, whatever bytes they make (here a lone UTF-8 continuation
    byte, which no text encodes to), then the end of text."""

    def __init__(self, script: list[int]) -> None:
        super().__init__("")
        self.script = script

    def _next_logits(self, state):
        read = b"".join(self.tokenizer.token_bytes(t) for t in self.tokens(state))
        written = len(read) - read.rfind(self.cue.encode()) - len(self.cue)
        target, at = self.tokenizer.eot_id, 0
        for token in self.script:
            if at == written:
                target = token
                break
            at += len(self.tokenizer.token_bytes(token))
        logits = np.full(self.n_vocab, -1e9, dtype=np.float32)
        logits[target] = 0.0
        return logits


def test_a_stop_string_after_an_invalid_byte_still_rewinds_to_the_token_before_it(store):
    """An invalid byte shows as U+FFFD (3 bytes of text for 1 of the token's): the boundaries after it
    are still whole characters, so the rewind goes back only to the stop string, not to the reply's start."""
    enc = TranscriptModel("").tokenizer.encode
    lone = enc(" ō")[1]  # b'\x8d'
    model = _Scripted([*enc(" Hi"), lone, *enc(" there"), *enc("\n\nBob: more")])
    assert model.tokenizer.token_bytes(lone) == b"\x8d"
    conv = _start(store, model)
    before = model.tokens_fed
    reply = conv.send("Hi")
    assert (reply.finish, reply.text) == ("stop", " Hi\ufffd there")
    assert model.tokens_fed - before == _n(model, "Bob: Hi\n\nAlice:") + reply.n_tokens + _n(model, RAVEN.separator)
