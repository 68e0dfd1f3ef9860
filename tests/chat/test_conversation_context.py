"""The text a conversation feeds its model, checked exactly through a model whose state is its transcript.

Stop strings, rewinding, interrupted replies, regeneration and edits must all leave the model having
read precisely `init + turns + replies + separators`, never a stop string and never a token twice.
"""

from __future__ import annotations

import pytest

from runtime.chat.conversation import Conversation, ConversationError
from runtime.chat.store import ConversationStore
from runtime.progress import CancelToken
from runtime.text.templates import get_family
from tests.support.transcript_model import TranscriptModel

RAVEN = get_family("raven")


@pytest.fixture
def store(tmp_path):
    with ConversationStore.open(tmp_path / "c.sqlite3") as s:
        yield s


def _start(store, model, **kw) -> Conversation:
    return Conversation.start(store, model, family=kw.pop("family", "raven"), seed=1, **kw)


def test_reply_stops_before_the_next_speaker_and_the_state_holds_the_separator(store):
    model = TranscriptModel(" Hello there.\nHow can I help?\n\nBob: and you?")
    conv = _start(store, model)
    chunks: list[str] = []
    reply = conv.send("Hi\n\n\nAlice", on_text=chunks.append)
    assert reply.finish == "stop"
    assert reply.text == " Hello there.\nHow can I help?"
    assert "".join(chunks) == reply.text  # the held-back "\n\nBo…" was never shown
    expected = RAVEN.init + "Bob: Hi\nAlice\n\nAlice: Hello there.\nHow can I help?\n\n"
    assert model.text(conv.state) == expected
    assert conv.tokens_in_state == len(model.tokens(conv.state))


def test_end_of_text_completes_the_reply_and_feeds_the_separator(store):
    model = TranscriptModel(" Sure.")
    conv = _start(store, model)
    reply = conv.send("Say sure")
    assert (reply.finish, reply.text) == ("eot", " Sure.")
    assert model.text(conv.state).endswith("Bob: Say sure\n\nAlice: Sure.\n\n")
    assert conv.messages[-1].complete


def test_a_reply_cut_at_max_tokens_is_kept_and_the_next_turn_starts_with_the_separator(store):
    model = TranscriptModel(" one two three four five six seven eight")
    conv = _start(store, model)
    conv.set_sampling(conv.sampling.replace(max_tokens=3))
    reply = conv.send("Count")
    assert reply.finish == "length" and reply.n_tokens == 3
    assert not conv.messages[-1].complete
    cut = reply.text
    assert model.text(conv.state).endswith("Alice:" + cut)  # nothing after the partial reply yet
    model.reply = " ok"
    conv.send("Stop")
    assert model.text(conv.state).endswith(f"Alice:{cut}\n\nBob: Stop\n\nAlice: ok\n\n")


def test_cancel_keeps_the_partial_reply_and_its_state(store):
    model = TranscriptModel(" a b c d e f g h i j k l")
    conv = _start(store, model)
    cancel = CancelToken()
    seen: list[str] = []

    def on_text(chunk: str) -> None:
        seen.append(chunk)
        if len(seen) == 2:
            cancel.cancel()

    reply = conv.send("go", on_text=on_text, cancel=cancel)
    assert reply.finish == "cancelled"
    assert reply.text and " a b c d e f g h i j k l".startswith(reply.text)
    assert model.text(conv.state).endswith("Alice:" + reply.text)
    resumed = Conversation.resume(store, conv.id, model)
    assert resumed.messages[-1].content == reply.text and not resumed.messages[-1].complete


def test_regenerate_restores_the_state_before_the_reply_without_rereading(store):
    model = TranscriptModel(" first")
    conv = _start(store, model)
    conv.send("Q")
    before = model.tokens_fed
    reply = conv.regenerate()
    generated = reply.n_tokens
    separator_tokens = len(model.tokenizer.encode(RAVEN.separator))
    assert model.tokens_fed - before == generated + separator_tokens  # the prompt was not read again
    # (the scripted model answers the same again: its saved logits hold the same prediction)
    assert model.text(conv.state) == RAVEN.init + "Bob: Q\n\nAlice: first\n\n"
    assert [m.content for m in conv.messages] == ["Q", " first"]


def test_edit_replaces_a_message_and_drops_what_followed(store):
    model = TranscriptModel(" yes")
    conv = _start(store, model)
    conv.send("first question")
    conv.send("second question")
    first_seq = conv.messages[0].seq
    conv.edit(first_seq, "better question")
    assert [m.content for m in conv.messages] == ["better question", " yes"]
    assert model.text(conv.state) == RAVEN.init + "Bob: better question\n\nAlice: yes\n\n"


def test_undo_and_reset(store):
    model = TranscriptModel(" fine")
    conv = _start(store, model)
    conv.send("one")
    conv.send("two")
    conv.undo()
    assert [m.content for m in conv.messages] == ["one", " fine"]
    assert model.text(conv.state) == RAVEN.init + "Bob: one\n\nAlice: fine\n\n"
    conv.reset()
    assert conv.messages == [] and model.text(conv.state) == RAVEN.init
    with pytest.raises(ConversationError, match="nothing to undo"):
        conv.undo()


def test_novel_mode_continues_the_text_as_written(store):
    model = TranscriptModel(" and the sea was calm. Then it rained.", cue="The ship")
    conv = _start(store, model, family="novel")
    conv.set_sampling(conv.sampling.replace(max_tokens=4))
    reply = conv.send("The ship")
    assert reply.finish == "length"
    assert model.text(conv.state) == "The ship" + reply.text
    more = conv.continue_reply()
    assert model.text(conv.state) == "The ship" + reply.text + more.text
    assert (reply.text + more.text) == " and the sea was calm. Then it rained."[: len(reply.text + more.text)]
    assert [m.role for m in conv.messages] == ["text", "assistant", "assistant"]


def test_write_more_after_end_of_text_writes_something(store):
    model = TranscriptModel(" The end.", cue="Once")
    conv = _start(store, model, family="novel")
    assert conv.send("Once").finish == "eot"
    more = conv.continue_reply()
    assert more.n_tokens >= 1


def test_switching_models_reads_the_transcript_once_per_model(store):
    chat = TranscriptModel(" hi", fingerprint="a" * 64)
    conv = _start(store, chat)
    conv.send("hello")
    other = TranscriptModel(" there", fingerprint="b" * 64)
    conv.switch_model(other, model_ref="other.gguf")
    assert other.text(conv.state) == RAVEN.init + "Bob: hello\n\nAlice: hi\n\n"
    read_by_other = other.tokens_fed
    conv.switch_model(chat, model_ref="chat.gguf")
    conv.switch_model(other, model_ref="other.gguf")
    assert other.tokens_fed == read_by_other  # its state was kept
    assert store.get_conversation(conv.id).model_ref == "other.gguf"
