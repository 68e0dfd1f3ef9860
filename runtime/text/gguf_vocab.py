"""Vocabularies in GGUF metadata, as llama.cpp stores them, and the tokenizer a GGUF file gets.

llama.cpp's rwkv7 files carry the World vocabulary as `tokenizer.ggml.model = "rwkv"` and a list of
token texts: id 0 is "<s>" (a control token), each vocabulary entry is its bytes escaped the way
Python prints bytes (`repr(data)[2:-1]`: `\\n`, `\\xff`, `\\'`, `\\\\`; always ASCII), and the ids the
vocabulary leaves free up to 65536 are "[PAD<id>]" (unused). bos and eos are 0, eot is 261 ("\\n\\n").
llama.cpp reads the tokens back by undoing that escaping (`\\t \\n \\r \\xNN`, `\\c` → c).

llama.cpp has no way to store RWKV's GPT-NeoX 20B vocabulary for an rwkv7 file (its rwkv7 converter
only writes the World one), and it refuses to load a file whose `tokenizer.ggml.model` it does not
know ("unknown tokenizer: 'gpt-neox-20b'"). So rwkv7/rwkv6 files of Pile models (and of any other
vocabulary) say "none" there, which llama.cpp loads as a model without a vocabulary (it runs on token
ids and cannot tokenize), and name their tokenizer in `rwkv_tui.tokenizer` only, which our reader
reads first. Every file we write names its tokenizer in `rwkv_tui.tokenizer`.

`tokenizer_for_metadata` picks a file's tokenizer: the bundled World tokenizer when the file's token
list is exactly the World vocabulary (compared token by token), a tokenizer built from the file's
own tokens when it is another "rwkv" list, else the one named by the file or told by the vocabulary size.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Mapping
from typing import Any

from runtime.text.tokenizers import NEOX_NAME, WORLD_NAME, Tokenizer, TokenizerError, canonical_name, load_tokenizer

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5  # llama.cpp's token types
WORLD_GGUF_VOCAB = 65536
WORLD_EOT = 261  # "\n\n": llama.cpp's RWKV World chat template ends turns with it
WORLD_CHAT_TEMPLATE = "rwkv-world"  # a template llama.cpp knows by name
LLAMACPP_NO_VOCAB = "none"  # the tokenizer model llama.cpp loads as "no vocabulary" (ids only)
TOKENIZER_KEY = "rwkv_tui.tokenizer"
GGUF_TOKENIZER_BY_VOCAB = {50277: NEOX_NAME, 50304: NEOX_NAME, 65536: WORLD_NAME}
_ESCAPES = {"t": 9, "n": 10, "r": 13}


def escape_token(data: bytes) -> str:
    """A token's bytes as llama.cpp's rwkv vocabulary text (Python's bytes literal without b'')."""
    return repr(bytes(data))[2:-1]


def unescape_token(text: str) -> bytes:
    """The bytes of a token text in llama.cpp's rwkv vocabulary; ValueError if an escape is cut short."""
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError(f"token {text!r} ends in a lone backslash")
        e = text[i + 1]
        if e == "x":
            digits = text[i + 2 : i + 4]
            if len(digits) != 2 or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"token {text!r} has a bad \\x escape")
            out.append(int(digits, 16))
            i += 4
        else:
            out += bytes([_ESCAPES[e]]) if e in _ESCAPES else e.encode("utf-8")
            i += 2
    return bytes(out)


@functools.cache
def world_gguf_tokens() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The bundled World vocabulary as llama.cpp's token texts and token types (65536 of each)."""
    from runtime.text.tokenizer_world import WORLD_VOCAB, read_world_vocab

    by_id = dict(read_world_vocab(WORLD_VOCAB))
    tokens, types = ["<s>"], [TOKEN_CONTROL]
    for i in range(1, WORLD_GGUF_VOCAB):
        data = by_id.get(i)
        tokens.append(f"[PAD{i}]" if data is None else escape_token(data))
        types.append(TOKEN_UNUSED if data is None else TOKEN_NORMAL)
    return tuple(tokens), tuple(types)


def gguf_tokenizer_metadata(n_vocab: int, source: Mapping[str, Any] | None = None) -> list[tuple[str, Any]]:
    """The tokenizer keys of an rwkv7/rwkv6 GGUF for a model of `n_vocab` ids: a GGUF source's own
    `tokenizer.*` keys, else the World vocabulary as llama.cpp stores it (65536 ids), else llama.cpp's
    "none" with our name in `rwkv_tui.tokenizer`."""
    source = source or {}
    if source.get("tokenizer.ggml.model") == "rwkv" and isinstance(source.get("tokenizer.ggml.tokens"), list):
        kept = [(k, v) for k, v in source.items() if k.startswith("tokenizer.")]
        name = tokenizer_name_for_metadata(source, n_vocab)
        return [*kept, (TOKENIZER_KEY, name)]
    name = GGUF_TOKENIZER_BY_VOCAB.get(n_vocab, "none")
    if name != WORLD_NAME:  # llama.cpp refuses a tokenizer model it does not know, so: none
        return [("tokenizer.ggml.model", LLAMACPP_NO_VOCAB), (TOKENIZER_KEY, name)]
    tokens, types = world_gguf_tokens()
    return [
        ("tokenizer.ggml.model", "rwkv"),
        ("tokenizer.ggml.tokens", list(tokens)),
        ("tokenizer.ggml.token_type", list(types)),
        ("tokenizer.ggml.bos_token_id", 0),
        ("tokenizer.ggml.eos_token_id", 0),
        ("tokenizer.ggml.eot_token_id", WORLD_EOT),
        ("tokenizer.chat_template", WORLD_CHAT_TEMPLATE),
        (TOKENIZER_KEY, WORLD_NAME),
    ]


def _is_world_list(metadata: Mapping[str, Any]) -> bool:
    tokens = metadata.get("tokenizer.ggml.tokens")
    return isinstance(tokens, list) and len(tokens) == WORLD_GGUF_VOCAB and tuple(tokens) == world_gguf_tokens()[0]


def tokenizer_name_for_metadata(metadata: Mapping[str, Any], n_vocab: int) -> str:
    """'rwkv-world', 'gpt-neox-20b', 'rwkv-gguf' (the file's own rwkv token list) or 'none'."""
    model = metadata.get("tokenizer.ggml.model")
    if model == "rwkv":
        return WORLD_NAME if _is_world_list(metadata) else "rwkv-gguf"
    for name in (metadata.get(TOKENIZER_KEY), model):
        if isinstance(name, str):
            try:
                return canonical_name(name)
            except TokenizerError:
                pass
    return GGUF_TOKENIZER_BY_VOCAB.get(n_vocab, "none")


def tokenizer_for_metadata(metadata: Mapping[str, Any], n_vocab: int) -> Tokenizer:
    """The tokenizer of a model file with this metadata; TokenizerError if it has none we know."""
    name = tokenizer_name_for_metadata(metadata, n_vocab)
    if name == "rwkv-gguf":
        return _tokenizer_from_tokens(metadata)
    if name == "none":
        raise TokenizerError(f"the file names no tokenizer and a vocabulary of {n_vocab} matches none we know")
    return load_tokenizer(name)


_built: dict[str, Tokenizer] = {}  # tokenizers made from a file's tokens, by a digest of the list
_built_lock = threading.Lock()


def _tokenizer_from_tokens(metadata: Mapping[str, Any]) -> Tokenizer:
    """A tokenizer of the file's own token list, built once per process for each distinct list."""
    tokens = metadata["tokenizer.ggml.tokens"]
    types = metadata.get("tokenizer.ggml.token_type")
    if not isinstance(types, list) or len(types) != len(tokens):
        types = [TOKEN_NORMAL] * len(tokens)
    key = hashlib.sha256(repr((tokens, types)).encode()).hexdigest()
    with _built_lock:
        tok = _built.get(key)
        if tok is None:
            tok = _built[key] = _build(tokens, types)
    return tok


def _build(tokens: list, types: list) -> Tokenizer:
    from runtime.text.tokenizer_world import WorldTokenizer

    entries = []
    for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind != TOKEN_NORMAL or not isinstance(text, str):
            continue
        try:
            data = unescape_token(text)
        except ValueError as e:
            raise TokenizerError(f"the file's token {i} is malformed: {e}") from None
        if data:
            entries.append((i, data))
    return WorldTokenizer(entries=entries, n_vocab=len(tokens), name="rwkv-gguf")
