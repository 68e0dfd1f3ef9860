"""A stand-in for `runtime.Model` whose state is the list of tokens it has read, for conversation tests.

The real model's state is opaque; this one stores the ids it was fed in its state array, so a test
can decode a state back to the exact text the model has read and check the conversation's context
after a stop string, a rewind, an interrupted reply or a model switch. Its output follows a script:
after the last `cue` in what it has read, it writes `reply` one token at a time (then end-of-text),
so replies are deterministic whatever the sampling settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.model.state import State, StateError
from runtime.text.tokenizers import load_tokenizer

ROWS, COLS = 5, 1024  # room for 5119 tokens


class TranscriptModel:
    def __init__(self, reply: str, cue: str = "Alice:", fingerprint: str = "f" * 64, path: str = "transcript.gguf",
                 tokenizer: str = "20b"):
        self.tokenizer = load_tokenizer(tokenizer)
        self.tokenizer_name = self.tokenizer.name
        self.n_vocab = self.tokenizer.n_vocab
        self.fingerprint = fingerprint
        self.path = Path(path)
        self.file_type = "F32"  # recorded with each reply, as a real model's layer type
        self.reply = reply
        self.cue = cue
        self.tokens_fed = 0

    def new_state(self) -> State:
        return State(np.zeros((ROWS, COLS), dtype=np.float32), self.fingerprint)

    def state_from_bytes(self, blob: bytes, source: str = "saved state") -> State:
        state = State.from_bytes(blob, source)
        if state.fingerprint != self.fingerprint:
            raise StateError("state made by another model")
        return state

    def tokens(self, state: State) -> list[int]:
        flat = state.data.reshape(-1)
        return [int(x) for x in flat[1 : 1 + int(flat[0])]]

    def text(self, state: State) -> str:
        return self.tokenizer.decode(self.tokens(state))

    def forward(self, ids: Sequence[int], state: State | None = None, *, want_logits: bool = True):
        state = state or self.new_state()
        data = state.data.copy()
        flat = data.reshape(-1)
        n = int(flat[0])
        flat[1 + n : 1 + n + len(ids)] = ids
        flat[0] = n + len(ids)
        self.tokens_fed += len(ids)
        new = State(data, self.fingerprint)
        logits = self._next_logits(new) if want_logits else None
        return logits, State(data, self.fingerprint, logits)

    def _next_logits(self, state: State) -> np.ndarray:
        text = self.text(state)
        at = text.rfind(self.cue)
        written = text[at + len(self.cue) :] if at >= 0 else None
        target = self.tokenizer.eot_id
        if written is not None and self.reply.startswith(written) and len(written) < len(self.reply):
            target = self.tokenizer.encode(self.reply[len(written) :])[0]
        logits = np.full(self.n_vocab, -1e9, dtype=np.float32)
        logits[target] = 0.0
        return logits

    def close(self) -> None:
        pass
