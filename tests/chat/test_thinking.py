"""G1 conversations: the think switch, prompt endings recorded per turn, and stopping around the think block.

Checked through a model whose state is its transcript (World tokenizer), so the exact text every
action leaves in the context is visible: live generation and re-reading must feed the same text.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.chat.conversation import Conversation
from runtime.chat.store import ConversationStore
from runtime.text.templates import get_family
from tests.support.transcript_model import TranscriptModel

G1 = get_family("g1")
REASONED = " <think>\nStep one.\n\nStep two.\n</think>\nThe answer is 4.\n\nUser: and more"


@pytest.fixture
def store(tmp_path):
    with ConversationStore.open(tmp_path / "c.sqlite3") as s:
        yield s


def g1_model(reply: str, fingerprint: str = "f" * 64) -> TranscriptModel:
    return TranscriptModel(reply, cue="Assistant:", fingerprint=fingerprint, tokenizer="world")


def test_thinking_on_keeps_blank_lines_inside_the_block_and_stops_after_the_answer(store):
    model = g1_model(REASONED)
    conv = Conversation.start(store, model, family="g1", seed=1, think=True)
    chunks: list[str] = []
    reply = conv.send("What is 2+2?\n\n\nQuick.", on_text=chunks.append)
    assert reply.finish == "stop"
    assert reply.text == ">\nStep one.\n\nStep two.\n</think>\nThe answer is 4."
    assert "".join(chunks) == reply.text
    assert model.text(conv.state) == f"User: What is 2+2?\nQuick.\n\nAssistant: <think{reply.text}\n\n"
    user, answer = conv.messages
    assert (user.think, answer.think) == (True, True)
    assert conv.reply_parts(answer) == ("\nStep one.\n\nStep two.\n", "\nThe answer is 4.")


def test_thinking_off_feeds_the_empty_block_and_a_blank_line_after_it_is_not_the_end(store):
    model = g1_model(" <think>\n</think>\n\nHello.\n\nUser:")
    conv = Conversation.start(store, model, family="g1", seed=1)
    assert conv.think is False  # fast by default
    reply = conv.send("hi")
    assert (reply.finish, reply.text) == ("stop", ">\n\nHello.")
    assert model.text(conv.state) == "User: hi\n\nAssistant: <think>\n</think>\n\nHello.\n\n"
    assert conv.reply_parts(conv.messages[-1]) == (None, "\n\nHello.")


def test_end_of_text_is_never_sampled_inside_the_think_block(store):
    model = g1_model(" <think>\nthinking forever")  # then the model wants end-of-text, still inside the block
    conv = Conversation.start(store, model, family="g1", seed=1, think=True)
    conv.set_sampling(conv.sampling.replace(max_tokens=12))
    reply = conv.send("q")
    assert reply.finish == "length" and reply.n_tokens == 12 and not conv.messages[-1].complete
    model.reply = " <think>\nok</think> Done."  # once the block is closed, end-of-text ends the reply
    reply = conv.regenerate()
    assert (reply.finish, reply.text) == ("eot", ">\nok</think> Done.")


def test_a_stop_string_inside_the_think_block_does_not_cut_it(store):
    model = g1_model(" <think>\nBob: hm</think>\nYes. Bob: no")
    conv = Conversation.start(store, model, family="g1", seed=1, think=True)
    conv.set_sampling(conv.sampling.replace(stop=("Bob:",)))
    reply = conv.send("q")
    assert (reply.finish, reply.text) == ("stop", ">\nBob: hm</think>\nYes. ")
    assert model.text(conv.state).endswith("Assistant: <think>\nBob: hm</think>\nYes. \n\n")  # the stop never read


def test_each_turn_keeps_its_think_setting_when_the_transcript_is_read_again(store):
    model = g1_model(REASONED)
    conv = Conversation.start(store, model, family="g1", seed=1, think=True, system="Be brief.\n\n\nAlways.")
    conv.send("first")
    conv.set_think(False)
    model.reply = " <think>\n</think> Fast."
    conv.send("second")
    live = model.text(conv.state)
    assert live.startswith("System: Be brief.\nAlways.\n\nUser: first\n\nAssistant: <think>\nStep one.")
    assert live.endswith("User: second\n\nAssistant: <think>\n</think> Fast.\n\n")
    other = g1_model(REASONED, fingerprint="e" * 64)
    resumed = Conversation.resume(store, conv.id, other)
    assert resumed.think is False and resumed.system == "Be brief.\n\n\nAlways.".strip()
    assert other.text(resumed.state) == live  # read again turn by turn: the same context
    assert other.tokens_fed == len(model.tokens(conv.state))


def test_switching_between_a_thinking_and_a_plain_family_and_back(store):
    g1 = g1_model(REASONED)
    conv = Conversation.start(store, g1, family="g1", seed=1, think=True)
    conv.send("What is 2+2?")
    on_g1 = g1.text(conv.state)
    world = TranscriptModel(" Five.", cue="Assistant:", fingerprint="d" * 64, tokenizer="world")
    conv.switch_model(world, model_ref="world-model", family="world")
    assert world.text(conv.state) == get_family("world").init + "User: What is 2+2?\n\nAssistant: The answer is 4.\n\n"
    conv.send("And 2+3?")
    assert conv.messages[-1].think is None and conv.messages[-2].think is None  # no think markup on World
    g1.tokens_fed = 0
    g1.reply = " <think>\n</think> Five."
    conv.switch_model(g1, model_ref="g1-model", family="g1")
    assert g1.text(conv.state) == on_g1 + "User: And 2+3?\n\nAssistant: Five.\n\n"  # World's turns, no markup
    assert g1.tokens_fed == len(g1.tokens(conv.state)) - len(g1.tokenizer.encode(on_g1))  # only the new turns read


def test_continuing_a_reply_cut_inside_the_think_block(store):
    model = g1_model(REASONED)
    conv = Conversation.start(store, model, family="g1", seed=1, think=True)
    conv.set_sampling(conv.sampling.replace(max_tokens=4))
    first = conv.send("q")
    assert first.finish == "length" and "</think>" not in first.text
    conv.set_sampling(conv.sampling.replace(max_tokens=200))
    more = conv.continue_reply()
    assert more.finish == "stop" and (first.text + more.text).endswith("</think>\nThe answer is 4.")
    assert conv.messages[-1].think is True  # this part still had thinking in it
    assert model.text(conv.state).endswith("Assistant: <think>\nStep one.\n\nStep two.\n</think>\nThe answer is 4.\n\n")


def test_the_reply_stream_shows_thinking_then_the_answer_as_they_are_written(store):
    model = g1_model(REASONED)
    conv = Conversation.start(store, model, family="g1", seed=1, think=True)
    parts: list[tuple[str, str]] = []
    streams = []

    def on_text(chunk: str) -> None:
        if not streams:
            streams.append(conv.reply_stream())
        parts.extend(streams[0].feed(chunk))

    conv.send("q", on_text=on_text)
    thinking = "".join(t for k, t in parts if k == "thinking")
    answer = "".join(t for k, t in parts if k == "answer")
    assert (thinking, answer) == ("Step one.\n\nStep two.\n", "The answer is 4.")
    assert len(parts) > 2  # streamed in pieces, not at the end


class PaddedModel(TranscriptModel):
    """A model with more rows than its tokenizer has tokens (RWKV-7 Pile: 50304 rows, 50277 tokens),
    whose padding rows score highest."""

    def __init__(self, reply: str, n_vocab: int) -> None:
        super().__init__(reply, cue="Once upon")
        self.n_vocab = n_vocab

    def _next_logits(self, state):
        logits = super()._next_logits(state)
        padded = np.full(self.n_vocab, 5.0, dtype=np.float32)
        padded[: len(logits)] = logits
        return padded


def test_padding_rows_past_the_tokenizer_are_never_sampled(store):
    model = PaddedModel(" a story", n_vocab=50304)
    conv = Conversation.start(store, model, family="pile", seed=1)
    reply = conv.send("Once upon")
    assert (reply.finish, reply.text) == ("eot", " a story")
