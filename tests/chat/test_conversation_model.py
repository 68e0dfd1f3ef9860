"""Conversations on a real (small, random) model: resume, regenerate and fork read zero tokens again.

Every token goes through `Model.forward`; a counting wrapper proves which actions re-read nothing,
and states are compared bit for bit with ones computed directly.
"""

from __future__ import annotations

import numpy as np
import pytest

import runtime
from runtime.chat.conversation import INGEST_CHUNK, Conversation, InputNotReadError
from runtime.chat.store import ConversationStore
from runtime.progress import CancelToken
from runtime.quant.types import DType
from tests.support.gguf_model import write_model_gguf
from tests.support.synthetic import v4_state_dict


class Counting:
    """Wraps a Model and counts the tokens it is fed (delegating everything else)."""

    def __init__(self, model: runtime.Model) -> None:
        self._model = model
        self.fed = 0

    def forward(self, ids, state=None, *, want_logits: bool = True, into=None):
        self.fed += len(ids)
        return self._model.forward(ids, state, want_logits=want_logits, into=into)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (3, 4):
        sd = v4_state_dict(n_layer=2, n_embd=32, n_vocab=50277, seed=seed)
        paths.append(write_model_gguf(folder / f"chat-{seed}.gguf", sd, DType.F32))
    return paths


@pytest.fixture(scope="module")
def models(model_files):
    loaded = [runtime.load_model(p, threads=1) for p in model_files]
    yield loaded
    for m in loaded:
        m.close()


@pytest.fixture
def store(tmp_path):
    with ConversationStore.open(tmp_path / "c.sqlite3") as s:
        yield s


def _small(conv: Conversation, n: int = 12) -> None:
    conv.set_sampling(conv.sampling.replace(max_tokens=n))


def test_resume_reads_zero_tokens_and_continues_from_the_saved_state(store, models):
    conv = Conversation.start(store, Counting(models[0]), family="raven", seed=7)
    _small(conv)
    conv.send("Hello there")
    conv.send("And again")
    saved = conv.state
    again = Counting(models[0])
    resumed = Conversation.resume(store, conv.id, again)
    assert again.fed == 0
    assert np.array_equal(resumed.state.data, saved.data)
    assert np.array_equal(resumed.state.logits, saved.logits)
    assert [m.content for m in resumed.messages] == [m.content for m in conv.messages]
    reply = resumed.send("Third")
    assert reply.n_tokens > 0 and again.fed >= reply.n_tokens


def test_a_rebuilt_state_is_the_transcript_read_message_by_message(store, models):
    conv = Conversation.start(store, models[0], family="raven", seed=3)
    _small(conv, 8)
    conv.send("What is an RNN?")
    conv.send("Shorter, please")
    # Opening it with another family's template has no saved state: the transcript is read again.
    other = Counting(models[0])
    rebuilt = Conversation.resume(store, conv.id, other, family="world")
    fam = rebuilt.family
    ids = list(models[0].tokenizer.encode(fam.init))
    previous_complete = True
    for m in conv.messages:
        ids += models[0].tokenizer.encode(fam.fed_text(m.role, m.content, m.complete, previous_complete))
        previous_complete = m.role != "assistant" or m.complete
    logits, direct = models[0].forward(ids)
    assert other.fed == len(ids)
    np.testing.assert_allclose(rebuilt.state.data, direct.data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rebuilt.state.logits, logits, rtol=1e-4, atol=1e-4)


def test_same_seed_same_reply(store, models):
    replies = []
    for _ in range(2):
        conv = Conversation.start(store, models[0], family="raven", seed=42)
        _small(conv, 16)
        replies.append(conv.send("Tell me a story").text)
    assert replies[0] == replies[1] and replies[0]


def test_regenerate_and_fork_read_nothing_again(store, models):
    model = Counting(models[0])
    conv = Conversation.start(store, model, family="raven", seed=5)
    _small(conv, 10)
    conv.send("Hi")
    before = model.fed
    reply = conv.regenerate()
    assert reply.finish == "length"  # seeded: cut at max_tokens, so nothing is fed after it
    assert model.fed - before == reply.n_tokens == conv.messages[-1].n_tokens  # the generated tokens, once
    before = model.fed
    forked = conv.fork()
    assert model.fed == before
    assert forked.id != conv.id
    assert np.array_equal(forked.state.data, conv.state.data)
    assert [m.content for m in forked.messages] == [m.content for m in conv.messages]


def test_switching_to_another_model_builds_its_state_once(store, models):
    first, second = Counting(models[0]), Counting(models[1])
    conv = Conversation.start(store, first, family="raven", seed=9)
    _small(conv, 6)
    conv.send("Hello")
    events = []
    conv.switch_model(second, model_ref="second.gguf", progress=events.append)
    assert second.fed > 0 and events and events[-1].done == events[-1].total
    assert conv.state.fingerprint == models[1].fingerprint
    read = second.fed
    conv.switch_model(first, model_ref="first.gguf")
    conv.switch_model(second, model_ref="second.gguf")
    assert second.fed == read
    reopened = Counting(models[1])
    Conversation.resume(store, conv.id, reopened)
    assert reopened.fed == 0


def test_a_state_budget_prunes_old_turns_but_resume_and_regenerate_stay_free(store, models):
    model = Counting(models[0])
    conv = Conversation.start(store, model, family="raven", seed=2)
    conv.state_budget = 1  # as if settings.toml said max_state_mb = 0.000001
    _small(conv, 4)
    for text in ("one", "two", "three"):
        conv.send(text)
    last = conv.messages[-1].seq
    kept = store.state_seqs(conv.id, f"{models[0].fingerprint}/raven")
    assert kept == [0, last - 1, last]
    before = model.fed
    reply = conv.regenerate()
    assert reply.finish == "length"  # seeded: cut at max_tokens, so nothing is fed after it
    assert model.fed - before == reply.n_tokens  # the generated tokens, once
    again = Counting(models[0])
    Conversation.resume(store, conv.id, again)
    assert again.fed == 0


def test_reply_tokens_counts_the_reply_in_flight(store, models):
    """UIs read `reply_tokens` for a live tokens/s: it grows with the text streamed and ends at the
    reply's token count."""
    conv = Conversation.start(store, models[0], family="pile", seed=11)
    _small(conv, 24)
    seen: list[int] = []
    reply = conv.send("Once upon a time", on_text=lambda _: seen.append(conv.reply_tokens))
    assert reply.n_tokens > 0
    assert seen and seen == sorted(seen) and 0 < seen[0] <= seen[-1] <= reply.n_tokens
    assert conv.reply_tokens == reply.n_tokens


def test_a_user_stop_string_ends_the_reply_before_it(store, models):
    """The same seed gives the same tokens; with a stop string taken from the middle of the free
    reply, the reply ends just before it, and the stop string never enters the text."""
    free = Conversation.start(store, models[0], family="raven", seed=9)
    _small(free, 24)
    text = free.send("Say something long").text
    words = text.split()
    assert len(words) >= 4, text
    stop = words[len(words) // 2]
    cut = Conversation.start(store, models[0], family="raven", seed=9)
    cut.set_sampling(cut.sampling.replace(max_tokens=24, stop=(stop,)))
    reply = cut.send("Say something long")
    assert reply.text.strip() == text[: text.index(stop)].strip()
    assert reply.finish == "stop" and stop not in reply.text


def test_regenerate_and_continue_write_the_reply_a_stopped_program_never_saved(store, models):
    conv = Conversation.start(store, models[0], family="raven", seed=1)
    _small(conv)
    conv.send("Hello")
    for action in ("regenerate", "continue_reply"):
        store.truncate(conv.id, 1)  # what a kill before the reply's first text leaves: the message and its state
        again = Conversation.resume(store, conv.id, models[0], seed=2)
        assert again.tokens_read == 0
        reply = getattr(again, action)()
        assert reply.n_tokens > 0
        saved = store.messages(conv.id)
        assert [m.role for m in saved] == ["init", "user", "assistant"]
        assert saved[-1].content == reply.text


def test_a_reply_interrupted_by_an_exception_keeps_what_was_streamed(store, models):
    conv = Conversation.start(store, models[0], family="raven", seed=5)
    _small(conv, 60)
    shown: list[str] = []

    def on_text(chunk: str) -> None:
        shown.append(chunk)
        if len(shown) == 3:
            raise KeyboardInterrupt  # Ctrl-C in a program without a handler for it

    with pytest.raises(KeyboardInterrupt):
        conv.send("Hello", on_text=on_text)
    saved = store.messages(conv.id)
    assert [m.role for m in saved] == ["init", "user", "assistant"]
    assert saved[-1].content == "".join(shown) and not saved[-1].complete
    assert [m.id for m in conv.messages] == [m.id for m in saved[1:]]
    # the state is the transcript's, so the conversation goes on (and resumes) from there
    reread = Conversation.resume(store, conv.id, models[0])
    assert np.array_equal(reread.state.data, conv.state.data)
    conv.send("And then?")
    assert [m.role for m in store.messages(conv.id)] == ["init", "user", "assistant", "user", "assistant"]


class CancelsWhileReading(Counting):
    """Cancels `token` once the model has read one full chunk of a long message (as esc would)."""

    def __init__(self, model: runtime.Model, token) -> None:
        super().__init__(model)
        self.token = token

    def forward(self, ids, state=None, *, want_logits: bool = True, into=None):
        out = super().forward(ids, state, want_logits=want_logits, into=into)
        if len(ids) == INGEST_CHUNK:
            self.token.cancel()
        return out


def test_stopping_while_a_long_message_is_read_keeps_the_conversation_as_it_was(store, models):
    conv = Conversation.start(store, models[0], family="raven", seed=9)
    _small(conv, 6)
    conv.send("Hi")
    before_messages = [(m.seq, m.role, m.content) for m in store.messages(conv.id)]
    before_state = conv.state.data.copy()
    long = "A long message about recurrent networks. " * 300  # ~2,400 tokens: several chunks
    for action in ("send", "edit"):
        token = CancelToken()
        conv.model = CancelsWhileReading(models[0], token)
        with pytest.raises(InputNotReadError) as stopped:
            if action == "send":
                conv.send(long, cancel=token)
            else:
                conv.edit(1, long, cancel=token)
        assert conv.model.fed >= INGEST_CHUNK  # it had started reading
        assert stopped.value.text == long  # given back to the caller
        assert [(m.seq, m.role, m.content) for m in store.messages(conv.id)] == before_messages
        assert [(m.seq, m.role, m.content) for m in conv.messages] == before_messages[1:]
        assert np.array_equal(conv.state.data, before_state)
    # and the conversation goes on from there
    conv.model = models[0]
    conv.send(long)
    assert [m.content for m in store.messages(conv.id)][1:4] == ["Hi", before_messages[2][2], long.strip()]


def test_a_long_message_is_read_with_progress_and_the_reply_count_starts_from_zero(store, models):
    from runtime.chat.conversation import INGEST_CHUNK

    conv = Conversation.start(store, models[0], family="raven", seed=5)
    _small(conv, 6)
    conv.send("Hi")
    assert conv.reply_tokens > 0
    events, counts = [], []
    text = "word " * (2 * INGEST_CHUNK + 10)

    def progress(event) -> None:
        events.append(event)
        counts.append(conv.reply_tokens)  # read by UIs while the message is read: not the last reply's

    conv.send(text, progress=progress)
    n = conv.messages[-2].n_tokens
    assert [(e.done, e.total) for e in events] == [(0, n), (INGEST_CHUNK, n), (2 * INGEST_CHUNK, n), (n, n)]
    assert counts == [0] * len(events)
    events.clear()
    conv.edit(conv.messages[-2].seq, text, progress=events.append)
    assert events[-1].done == events[-1].total == n
