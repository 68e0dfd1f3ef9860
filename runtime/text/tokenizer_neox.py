"""The GPT-NeoX 20B tokenizer (Pile, Raven, Novel models): 50277 ids through the `tokenizers` library.

Encoding is the library's (NFC normalisation, byte-level BPE, and added tokens for runs of 2 to 24
spaces). The library's vocabulary holds byte-level BPE strings, in which each byte is written as one
printable character; `token_bytes` maps them back to raw bytes so a character split across tokens
can be streamed. Special tokens (`<|endoftext|>` = 0, `<|padding|>` = 1) decode to nothing, as the
library's `decode` does by default.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.text.tokenizers import DATA_DIR, NEOX_NAME, Tokenizer, TokenizerError
from runtime.text.utf8_stream import replace_surrogates

NEOX_JSON = DATA_DIR / "20B_tokenizer.json"


def byte_level_alphabet() -> dict[str, int]:
    """Character -> byte of byte-level BPE: printable Latin-1 bytes stand for themselves, the other
    68 bytes (controls, space, NBSP, soft hyphen) for U+0100 onwards, in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    alphabet: dict[str, int] = {}
    shifted = 0x100
    for byte in range(256):
        if byte in printable:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(shifted)] = byte
            shifted += 1
    return alphabet


class NeoxTokenizer(Tokenizer):
    """GPT-NeoX 20B: 50277 ids, 0 = end of text."""

    def __init__(self, path: str | os.PathLike[str] = NEOX_JSON) -> None:
        path = Path(path)
        try:
            from tokenizers import Tokenizer as LibraryTokenizer

            self._lib = LibraryTokenizer.from_file(str(path))
        except Exception as exc:  # the library raises plain Exception for unreadable or malformed files
            raise TokenizerError(f"{path}: cannot load the GPT-NeoX tokenizer: {exc}") from exc
        vocab = self._lib.get_vocab(with_added_tokens=True)
        added = self._lib.get_added_tokens_decoder()
        n_vocab = len(vocab)
        if sorted(vocab.values()) != list(range(n_vocab)):
            raise TokenizerError(f"{path}: token ids are not the contiguous range 0..{n_vocab - 1}")
        alphabet = byte_level_alphabet()
        table = [b""] * n_vocab
        for piece, token_id in vocab.items():
            extra = added.get(token_id)
            if extra is not None:
                table[token_id] = b"" if extra.special else extra.content.encode("utf-8")
                continue
            try:
                table[token_id] = bytes(alphabet[ch] for ch in piece)
            except KeyError:
                raise TokenizerError(
                    f"{path}: token {token_id} ({piece!r}) is not written in the byte-level alphabet"
                ) from None
        super().__init__(NEOX_NAME, table, eot_id=0)

    def encode(self, text: str) -> list[int]:
        return self._lib.encode(replace_surrogates(text), add_special_tokens=False).ids
