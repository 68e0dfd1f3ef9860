"""Vocabularies in GGUF metadata: llama.cpp's token text escaping, and the tokenizer a file gets."""

from __future__ import annotations

import gguf
import pytest

from runtime.convert import convert
from runtime.formats.checkpoint import open_checkpoint
from runtime.text.gguf_vocab import (
    escape_token,
    tokenizer_for_metadata,
    tokenizer_name_for_metadata,
    unescape_token,
    world_gguf_tokens,
)
from runtime.text.tokenizer_world import WORLD_VOCAB, read_world_vocab
from runtime.text.tokenizers import TokenizerError
from tests.support.llamacpp_writer import write_llamacpp_rwkv7
from tests.support.synthetic import v7_state_dict


def test_every_byte_and_every_world_token_survives_escaping():
    for b in range(256):
        assert unescape_token(escape_token(bytes([b]))) == bytes([b])
    for _, data in read_world_vocab(WORLD_VOCAB):
        text = escape_token(data)
        assert text.isascii() and unescape_token(text) == data


def test_escaping_is_pythons_bytes_repr():
    assert escape_token(b"\n\n") == "\\n\\n"
    assert escape_token("é'\\".encode()) == "\\xc3\\xa9'\\\\"
    assert unescape_token("\\'\\\"é") == "'\"é".encode()


@pytest.mark.parametrize("bad", ["abc\\", "\\x4", "\\xg0"])
def test_cut_short_escapes_are_refused(bad):
    with pytest.raises(ValueError):
        unescape_token(bad)


def test_world_list_shape():
    tokens, types = world_gguf_tokens()
    assert len(tokens) == len(types) == 65536
    assert tokens[0] == "<s>" and tokens[65530] == "[PAD65530]" and types[65530] == 5


def test_names_from_metadata():
    assert tokenizer_name_for_metadata({}, 65536) == "rwkv-world"
    assert tokenizer_name_for_metadata({}, 50304) == "gpt-neox-20b"
    assert tokenizer_name_for_metadata({"tokenizer.ggml.model": "gpt-neox-20b"}, 123) == "gpt-neox-20b"
    assert tokenizer_name_for_metadata({}, 123) == "none"
    own = {"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]}
    assert tokenizer_name_for_metadata(own, 1) == "rwkv-gguf"
    with pytest.raises(TokenizerError, match="vocabulary of 123"):
        tokenizer_for_metadata({}, 123)


def custom_tokens() -> list[str]:
    """A small byte-level rwkv vocabulary of llama.cpp's kind: <s>, the 256 bytes, two longer tokens."""
    return ["<s>"] + [escape_token(bytes([b])) for b in range(256)] + ["hel", escape_token(b"lo\n")]


def test_a_gguf_with_its_own_rwkv_vocabulary_gets_a_tokenizer_built_from_it(tmp_path):
    ranks = (8, 8, 8, 8)
    sd = v7_state_dict(n_layer=2, n_embd=32, head_size=32, n_vocab=259, ranks=ranks)
    src = write_llamacpp_rwkv7(tmp_path / "own.gguf", sd, 2, 32, ranks, tokens=custom_tokens())
    ckpt = open_checkpoint(src)
    tok = tokenizer_for_metadata(ckpt.metadata, ckpt.arch.n_vocab)
    assert tok.name == "rwkv-gguf" and tok.n_vocab == 259
    ids = tok.encode("hello\n")
    assert ids == [257, 258] and tok.decode(ids) == "hello\n"
    assert tok.encode("é") == [1 + 0xC3, 1 + 0xA9]
    assert tokenizer_for_metadata(dict(ckpt.metadata), 259) is tok  # built once per token list

    # converting a llama.cpp file keeps its vocabulary
    out = tmp_path / "ours.gguf"
    convert(src, out, "q8_0")
    fields = {k: f.contents() for k, f in gguf.GGUFReader(str(out)).fields.items()}
    assert fields["tokenizer.ggml.tokens"] == custom_tokens()
    assert fields["rwkv_tui.tokenizer"] == "rwkv-gguf"
    assert tokenizer_for_metadata(open_checkpoint(out).metadata, 259).encode("hello\n") == [257, 258]


@pytest.mark.parametrize(
    ("tokens", "words"),
    [
        (custom_tokens()[:-3], "some bytes are not tokens, so not every text can be encoded: 0xff"),
        ([*custom_tokens(), "bad\\"], "token 259 is malformed"),
    ],
)
def test_unusable_token_lists_are_refused(tokens, words):
    metadata = {"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": tokens}
    with pytest.raises(TokenizerError, match=words):
        tokenizer_for_metadata(metadata, len(tokens))
