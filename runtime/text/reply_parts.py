"""A reply split into its thinking and its answer while it streams, for line mode and the app.

`Family.split_reply` splits a whole reply; `ReplyStream` feeds it the streamed chunks and hands back
only what is new in each part, with the blank start of each part left out. The conversation never
streams part of the think block's closing tag (it is held back like a stop string); the stream holds
it back too, so a part never has to be taken back whatever the chunks.
"""

from __future__ import annotations

from runtime.text.templates import G1_THINK_CLOSE, Family, split_reply

THINKING = "thinking"
ANSWER = "answer"


class ReplyStream:
    """`feed(chunk)` -> [(THINKING or ANSWER, new text), …] in order."""

    def __init__(self, family: Family | None, think: bool | None, prior: str = "") -> None:
        """`family`: the conversation's (None: G1's markup); `think`: the setting the reply's prompt
        ended with; `prior`: reply text already shown (a cut reply being continued), not repeated."""
        self.family = family
        self.think = think
        self.text = ""
        self._consumed = {THINKING: 0, ANSWER: 0}
        self._started = {THINKING: False, ANSWER: False}
        if prior:
            self.feed(prior)

    @property
    def answering(self) -> bool:
        """True once the answer has begun (or when the reply has no think block)."""
        return self._started[ANSWER] or self._split()[0] is None

    def _split(self) -> tuple[str | None, str]:
        if self.family is None:
            return split_reply(self.text, self.think)
        return self.family.split_reply(self.text, self.think)

    def feed(self, chunk: str) -> list[tuple[str, str]]:
        self.text += chunk
        thinking, answer = self._split()
        if thinking is not None and not answer:
            close = (self.family.think_close if self.family is not None else "") or G1_THINK_CLOSE
            thinking = thinking[:len(thinking) - _partial_tag(thinking, close)]
        out = []
        for kind, part in ((THINKING, thinking), (ANSWER, answer)):
            if part is None:
                continue
            new = part[self._consumed[kind]:]
            if not self._started[kind]:
                new = new.lstrip()  # the blank start of a part is not shown
            self._consumed[kind] = len(part)
            if new:
                self._started[kind] = True
                out.append((kind, new))
        return out


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of `text` that begins `tag` (a closing tag still arriving)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
