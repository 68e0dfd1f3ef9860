"""A streamed G1 reply handed out as thinking and answer, whatever the chunk boundaries."""

from __future__ import annotations

import random

from runtime.text.reply_parts import ANSWER, THINKING, ReplyStream
from runtime.text.templates import get_family

G1 = get_family("g1")


def _joined(parts: list[tuple[str, str]]) -> dict[str, str]:
    out = {THINKING: "", ANSWER: ""}
    for kind, text in parts:
        out[kind] += text
    return out


def test_any_chunking_gives_the_same_parts_as_splitting_the_whole_reply():
    reply = ">\n  Step one.\n\nStep two.\n</think>\n\nThe answer\n is 4."
    rng = random.Random(5)
    for _ in range(50):
        stream, parts, at = ReplyStream(G1, True), [], 0
        while at < len(reply):
            n = rng.randint(1, 6)
            parts += stream.feed(reply[at:at + n])
            at += n
        assert _joined(parts) == {THINKING: "Step one.\n\nStep two.\n", ANSWER: "The answer\n is 4."}
        kinds = [k for k, _ in parts]
        assert kinds == sorted(kinds, key=[THINKING, ANSWER].index)  # all thinking first, then the answer
        assert stream.answering


def test_answering_switches_when_the_block_closes():
    stream = ReplyStream(G1, True)
    assert stream.feed(">\nhm") == [(THINKING, "hm")] and not stream.answering
    assert stream.feed("</think>") == [] and not stream.answering  # nothing of the answer yet
    assert stream.feed("\nYes") == [(ANSWER, "Yes")] and stream.answering


def test_fast_and_plain_replies_are_all_answer():
    fast = ReplyStream(G1, False)
    assert fast.answering
    assert fast.feed(">") == [] and fast.feed("\n\nHi") == [(ANSWER, "Hi")]
    plain = ReplyStream(get_family("world"), None)
    assert plain.feed(" Hello") == [(ANSWER, "Hello")] and plain.feed(" there") == [(ANSWER, " there")]


def test_a_continued_reply_does_not_repeat_what_was_shown():
    stream = ReplyStream(G1, True, prior=">\nStep one")
    assert stream.feed(".</think> Four.") == [(THINKING, "."), (ANSWER, "Four.")]
