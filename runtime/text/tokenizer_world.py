"""The RWKV World tokenizer: 65536 ids, greedy longest match over the UTF-8 bytes, in compiled code.

The vocabulary file (`data/rwkv_vocab_v20230424.txt`) has one token per line, `id literal byte_len`,
where the literal is a Python str (stored as its UTF-8) or bytes. Encoding starts at the first byte,
takes the longest token that matches there, and continues after it, which gives the same ids as the
official `rwkv` package's TRIE_TOKENIZER. The match runs in compiled code over a trie whose edges
are a hash table (`runtime/jit/kernels/trie.py`); every single byte is a token, so any byte string
can be encoded.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from runtime.jit.kernels.trie import TrieMatcher
from runtime.text.tokenizers import DATA_DIR, WORLD_NAME, Tokenizer, TokenizerError
from runtime.text.utf8_stream import text_to_utf8

WORLD_VOCAB = DATA_DIR / "rwkv_vocab_v20230424.txt"
WORLD_N_VOCAB = 65536


def _parse_literal(literal: str) -> object:
    """The value of a Python literal; quoted text without escapes is taken as is (most lines, and
    the same value `ast.literal_eval` gives), everything else goes through `ast.literal_eval`."""
    quote = literal[:1]
    if quote in ("'", '"') and len(literal) >= 2 and literal[-1] == quote:
        inner = literal[1:-1]
        if "\\" not in inner and quote not in inner:
            return inner
    return ast.literal_eval(literal)


def read_world_vocab(path: str | os.PathLike[str]) -> list[tuple[int, bytes]]:
    """(id, bytes) for each line of a World vocabulary file, checked; TokenizerError naming the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path}: cannot read the World vocabulary: {exc}") from exc
    entries: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    for lineno, line in enumerate(lines, 1):
        first, last = line.find(" "), line.rfind(" ")
        try:
            if first <= 0 or last <= first:
                raise ValueError("expected 'id literal byte_length'")
            token_id, length = int(line[:first]), int(line[last + 1 :])
            value = _parse_literal(line[first + 1 : last])
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, bytes):
                raise ValueError(f"the token must be a str or bytes literal, not {type(value).__name__}")
            if len(value) != length or length == 0:
                raise ValueError(f"the token has {len(value)} bytes but the line says {length}")
            if not 0 < token_id < WORLD_N_VOCAB:
                raise ValueError(f"id {token_id} is outside 1..{WORLD_N_VOCAB - 1}")
            if token_id in seen:
                raise ValueError(f"id {token_id} appears twice")
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise TokenizerError(f"{path}, line {lineno}: {exc}") from None
        seen.add(token_id)
        entries.append((token_id, value))
    return entries


class WorldTokenizer(Tokenizer):
    """RWKV World (rwkv_vocab_v20230424): 65536 ids, 0 = end of text."""

    def __init__(
        self,
        path: str | os.PathLike[str] = WORLD_VOCAB,
        *,
        entries: list[tuple[int, bytes]] | None = None,
        n_vocab: int = WORLD_N_VOCAB,
        name: str = WORLD_NAME,
    ) -> None:
        """From a vocabulary file, or from (id, bytes) `entries` (a GGUF file's own token list)."""
        if entries is None:
            entries = read_world_vocab(path)
        else:
            path = f"{name} vocabulary"
        table = [b""] * n_vocab
        for token_id, data in entries:
            table[token_id] = data
        super().__init__(name, table, eot_id=0)
        self._matcher = TrieMatcher(entries)
        if self._matcher.missing_bytes:
            missing = ", ".join(f"0x{b:02x}" for b in self._matcher.missing_bytes[:8])
            raise TokenizerError(f"{path}: some bytes are not tokens, so not every text can be encoded: {missing}")

    def encode(self, text: str) -> list[int]:
        return self._matcher.encode(text_to_utf8(text))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of any byte string (need not be valid UTF-8)."""
        return self._matcher.encode(bytes(data))
