"""The tokenizer interface and `load_tokenizer(name)`, which loads each vocabulary once per process.

    tok = load_tokenizer("world")          # or "rwkv-world", "20b", "gpt-neox-20b"
    ids = tok.encode("Hello\n")
    text = tok.decode(ids)                 # invalid UTF-8 -> U+FFFD
    newline = tok.encode("\n")             # never hard-code newline ids

Both tokenizers keep a table of every token's bytes, so decoding, `token_bytes` and the streaming
decoder are shared here; only `encode` differs. Special tokens (end of text, NeoX's padding) and
World ids with no entry in the vocabulary decode to no bytes.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from runtime.errors import RwkvError
from runtime.text.utf8_stream import StreamDecoder

DATA_DIR = Path(__file__).resolve().with_name("data")
NEOX_NAME = "gpt-neox-20b"
WORLD_NAME = "rwkv-world"
_ALIASES = {"20b": NEOX_NAME, NEOX_NAME: NEOX_NAME, "world": WORLD_NAME, WORLD_NAME: WORLD_NAME}
TOKENIZER_NAMES = tuple(_ALIASES)


class TokenizerError(RwkvError, ValueError):
    """Unknown tokenizer name, unreadable vocabulary file, or a token id outside the vocabulary."""


class Tokenizer(ABC):
    """Common interface of the GPT-NeoX 20B and RWKV World tokenizers."""

    name: str
    n_vocab: int
    eot_id: int

    def __init__(self, name: str, token_table: list[bytes], eot_id: int = 0) -> None:
        self.name = name
        self.n_vocab = len(token_table)
        self.eot_id = eot_id
        self._table = token_table

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (any str: lone surrogates never raise)."""

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (b"" for special tokens); TokenizerError if out of range."""
        if not 0 <= token_id < self.n_vocab:
            raise self._bad_id(token_id)
        return self._table[token_id]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The concatenated bytes of `ids`."""
        table, n = self._table, self.n_vocab
        parts = []
        for i in ids:
            if not 0 <= i < n:
                raise self._bad_id(i)
            parts.append(table[i])
        return b"".join(parts)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        """A decoder fed one id at a time that only returns complete characters."""
        return StreamDecoder(self.token_bytes)

    def _bad_id(self, token_id: object) -> TokenizerError:
        return TokenizerError(
            f"token id {token_id!r} is outside the {self.name} vocabulary (valid ids: 0..{self.n_vocab - 1})"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} n_vocab={self.n_vocab}>"


_cache: dict[str, Tokenizer] = {}
_lock = threading.Lock()


def canonical_name(name: str) -> str:
    """'gpt-neox-20b' or 'rwkv-world' for any accepted spelling; TokenizerError otherwise."""
    key = _ALIASES.get(name.strip().lower()) if isinstance(name, str) else None
    if key is None:
        raise TokenizerError(f"unknown tokenizer {name!r}; valid names: {', '.join(TOKENIZER_NAMES)}")
    return key


def load_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called `name` ("20b" / "gpt-neox-20b" or "world" / "rwkv-world"), loaded once."""
    key = canonical_name(name)
    with _lock:
        tok = _cache.get(key)
        if tok is None:
            if key == NEOX_NAME:
                from runtime.text.tokenizer_neox import NeoxTokenizer

                tok = NeoxTokenizer()
            else:
                from runtime.text.tokenizer_world import WorldTokenizer

                tok = WorldTokenizer()
            _cache[key] = tok
    return tok
