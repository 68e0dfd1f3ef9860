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
        self.reused = 0  # states written into a state given back (`into`)

    def new_state(self) -> State:
        return State(np.zeros((ROWS, COLS), dtype=np.float32), self.fingerprint)

    def state_from_bytes(self, blob: bytes, source: str = "saved state") -> State:
        state = State.from_bytes(blob, source)
        if state.fingerprint != self.fingerprint:
            raise StateError("state made by another model")
        if state.data.shape != (ROWS, COLS):  # as Model.check_state
            raise StateError(f"state has shape {state.data.shape}, the model needs {(ROWS, COLS)}")
        if state.logits is not None and state.logits.shape != (self.n_vocab,):
            raise StateError(f"state carries {state.logits.size} logits, the model has {self.n_vocab}")
        return state

    def tokens(self, state: State) -> list[int]:
        flat = state.data.reshape(-1)
        return [int(x) for x in flat[1 : 1 + int(flat[0])]]

    def text(self, state: State) -> str:
        return self.tokenizer.decode(self.tokens(state))

    def forward(self, ids: Sequence[int], state: State | None = None, *, want_logits: bool = True,
                into: State | None = None):
        state = state or self.new_state()
        if into is None:
            data = state.data.copy()
        else:  # as Model.forward: the new state in `into`'s memory, which must not be the state read
            assert not np.may_share_memory(into.data, state.data), "a state reused while it is read"
            data = into.data
            data[...] = state.data
            self.reused += 1
        flat = data.reshape(-1)
        n = int(flat[0])
        flat[1 + n : 1 + n + len(ids)] = ids
        flat[0] = n + len(ids)
        self.tokens_fed += len(ids)
        new = State(data, self.fingerprint)
        logits = self._next_logits(new) if want_logits else None
        return logits, State(data, self.fingerprint, logits)

    def _next_logits(self, state: State) -> np.ndarray:
        # in bytes, so a reply can go on after a token that ends in the middle of a character
        read = b"".join(self.tokenizer.token_bytes(t) for t in self.tokens(state))
        cue, reply = self.cue.encode(), self.reply.encode()
        at = read.rfind(cue)
        written = read[at + len(cue) :] if at >= 0 else None
        target = self.tokenizer.eot_id
        if written is not None and reply.startswith(written) and len(written) < len(reply):
            target = self._continuation(written)
        logits = np.full(self.n_vocab, -1e9, dtype=np.float32)
        logits[target] = 0.0
        return logits

    def _continuation(self, written: bytes) -> int:
        """The next token of the reply after `written`: the reply's own tokenization where `written`
        ends on one of its token boundaries, else the tokenization of the rest."""
        pos = 0
        for token in self.tokenizer.encode(self.reply):
            if pos == len(written):
                return token
            pos += len(self.tokenizer.token_bytes(token))
        rest = self.reply.encode()[len(written) :].decode("utf-8", errors="ignore")
        ids = self.tokenizer.encode(rest)
        return ids[0] if ids else self.tokenizer.eot_id

    def close(self) -> None:
        pass
