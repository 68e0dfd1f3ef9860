"""Tokenizers against reference ids (tests/fixtures/tokenizers/reference.json, made by
tools/make_tokenizer_fixtures.py with the `tokenizers` library and the `rwkv` package), plus round
trips, the whole World vocabulary, random bytes against a plain greedy matcher, and error cases."""

from __future__ import annotations

import hashlib
import json
import random
import unicodedata
from pathlib import Path

import pytest

import runtime
from runtime.errors import RwkvError, UnsupportedModelError
from runtime.model.model import load_model
from runtime.quant.types import DType
from runtime.text.tokenizer_neox import NEOX_JSON, NeoxTokenizer, byte_level_alphabet
from runtime.text.tokenizer_world import WORLD_VOCAB, WorldTokenizer, read_world_vocab
from runtime.text.tokenizers import TokenizerError, load_tokenizer
from tests.support.gguf_model import write_model_gguf
from tests.support.synthetic import v4_state_dict

FIXTURE = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "tokenizers" / "reference.json").read_text(encoding="utf-8")
)
TEXTS = {case["name"]: case for case in FIXTURE["texts"]}


@pytest.fixture(scope="module")
def neox():
    return load_tokenizer("20b")


@pytest.fixture(scope="module")
def world():
    return load_tokenizer("world")


def test_package_data_is_the_recorded_files():
    for path in (NEOX_JSON, WORLD_VOCAB):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == FIXTURE["sha256"][path.name]
    assert (NEOX_JSON.parent / "LICENSES.md").is_file()


def test_names_and_sizes(neox, world):
    assert (neox.name, neox.n_vocab, neox.eot_id) == ("gpt-neox-20b", 50277, 0)
    assert (world.name, world.n_vocab, world.eot_id) == ("rwkv-world", 65536, 0)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_neox_ids_match_the_tokenizers_library(neox, name):
    assert neox.encode(TEXTS[name]["text"]) == TEXTS[name]["neox"]


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_world_ids_match_the_rwkv_package(world, name):
    assert world.encode(TEXTS[name]["text"]) == TEXTS[name]["world"]


@pytest.mark.parametrize("case", FIXTURE["world_bytes"], ids=lambda c: c["name"])
def test_world_encodes_invalid_utf8_like_the_rwkv_package(world, case):
    data = bytes.fromhex(case["hex"])
    ids = world.encode_bytes(data)
    assert ids == case["world"]
    assert world.decode_bytes(ids) == data


@pytest.mark.parametrize("case", FIXTURE["world_decode"], ids=lambda c: c["name"])
def test_world_decode(world, case):
    assert world.decode_bytes(case["ids"]).hex() == case["hex"]
    assert world.decode(case["ids"]) == case["text"]


@pytest.mark.parametrize("case", FIXTURE["neox_decode"], ids=lambda c: c["name"])
def test_neox_decode_matches_the_tokenizers_library(neox, case):
    assert neox.decode(case["ids"]) == case["text"]


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_round_trip(neox, world, name):
    text = TEXTS[name]["text"]
    assert world.decode(world.encode(text)) == text
    if "<|" not in text:  # NeoX turns its special-token strings into special tokens, which decode to ""
        assert neox.decode(neox.encode(text)) == unicodedata.normalize("NFC", text)


def test_neox_normalises_to_nfc_and_matches_special_token_strings(neox):
    assert neox.decode(neox.encode("Cafe\u0301")) == "Caf\u00e9"
    assert neox.encode("x<|endoftext|>") == [*neox.encode("x"), neox.eot_id]


def test_newline_ids_come_from_encode(neox, world):
    for tok, name in ((neox, "neox"), (world, "world")):
        (nl,) = tok.encode("\n")
        (nlnl,) = tok.encode("\n\n")
        assert [nl] == TEXTS["newline"][name] and [nlnl] == TEXTS["double_newline"][name]
        assert tok.token_bytes(nl) == b"\n" and tok.token_bytes(nlnl) == b"\n\n"


def test_every_world_token_encodes_to_itself(world):
    entries = read_world_vocab(WORLD_VOCAB)
    assert len(entries) == 65529
    for token_id, data in entries:
        assert world.token_bytes(token_id) == data
        assert world.encode_bytes(data) == [token_id]


def _greedy(vocab: dict[bytes, int], data: bytes) -> list[int]:
    """Plain greedy longest match: at each position try every length, longest first."""
    longest = max(map(len, vocab))
    out, pos = [], 0
    while pos < len(data):
        for length in range(min(longest, len(data) - pos), 0, -1):
            token = vocab.get(data[pos : pos + length])
            if token is not None:
                out.append(token)
                pos += length
                break
    return out


def test_world_random_input_matches_plain_greedy_matching(world):
    vocab = {data: token_id for token_id, data in read_world_vocab(WORLD_VOCAB)}
    rng = random.Random(7)
    alphabet = "".join(case["text"] for case in FIXTURE["texts"]) + "   \n\n"
    samples = [rng.randbytes(rng.randint(1, 300)) for _ in range(20)]
    samples += ["".join(rng.choices(alphabet, k=rng.randint(1, 400))).encode() for _ in range(20)]
    samples += [bytes([b]) * rng.randint(1, 400) for b in b" \n=-#\x00\xe4"]
    for data in samples:
        assert world.encode_bytes(data) == _greedy(vocab, data)


def test_neox_token_bytes_agree_with_the_library_decoder(neox):
    from tokenizers import Tokenizer

    lib = Tokenizer.from_file(str(NEOX_JSON))
    ids = list(range(neox.n_vocab))
    expected = lib.decode_batch([[i] for i in ids])
    got = [neox.token_bytes(i).decode("utf-8", "replace") for i in ids]
    assert got == expected
    assert neox.token_bytes(0) == b"" and neox.token_bytes(1) == b""


def test_byte_level_alphabet_is_a_bijection():
    alphabet = byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == 0x20 and alphabet["Ċ"] == 0x0A and alphabet["A"] == 0x41


def test_empty_and_special_tokens(neox, world):
    for tok in (neox, world):
        assert tok.encode("") == []
        assert tok.decode([]) == "" and tok.decode_bytes([]) == b""
        assert tok.decode([tok.eot_id]) == ""
    assert world.encode_bytes(b"") == []
    assert world.token_bytes(65535) == b""  # ids past the vocabulary file have no text


def test_ids_out_of_range_are_refused(neox, world):
    for tok in (neox, world):
        for bad in (-1, tok.n_vocab, 10**9):
            with pytest.raises(ValueError, match="outside the"):
                tok.decode([1, bad])
            with pytest.raises(TokenizerError):
                tok.token_bytes(bad)
            with pytest.raises(ValueError):
                tok.stream_decoder().feed(bad)


def test_lone_surrogates_never_raise(neox, world):
    assert world.encode("a\udcffb") == world.encode_bytes(b"a\xffb")  # surrogateescape -> raw byte
    assert world.encode("a\ud800b") == world.encode("a\ufffdb")
    assert neox.encode("a\udcffb\ud800") == neox.encode("a\ufffdb\ufffd")


def test_load_tokenizer_names_and_cache(neox, world):
    assert load_tokenizer("gpt-neox-20b") is neox and load_tokenizer("20B") is neox
    assert load_tokenizer("rwkv-world") is world and load_tokenizer(" World ") is world
    assert runtime.load_tokenizer is load_tokenizer
    with pytest.raises(ValueError, match="valid names: 20b, gpt-neox-20b, world, rwkv-world") as info:
        load_tokenizer("llama")
    assert isinstance(info.value, RwkvError)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("1 'ab' 3", "has 2 bytes but the line says 3"),
        ("1 __import__('os') 1", "malformed node"),
        ("1 123 3", "must be a str or bytes literal, not int"),
        ("65536 'a' 1", "outside 1..65535"),
        ("1'a'1", "expected 'id literal byte_length'"),
    ],
)
def test_bad_world_vocabulary_lines_are_reported(tmp_path, line, problem):
    path = tmp_path / "vocab.txt"
    path.write_text(f"{line}\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="line 1") as info:
        read_world_vocab(path)
    assert problem in str(info.value) and str(path) in str(info.value)


def test_world_vocabulary_checks(tmp_path):
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]
    dup = tmp_path / "dup.txt"
    dup.write_text("\n".join([*lines, "1 'x' 1"]) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="line 257: id 1 appears twice"):
        WorldTokenizer(dup)
    missing = tmp_path / "missing.txt"
    missing.write_text("\n".join(lines[:65] + lines[66:]) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"not tokens.*: 0x41"):
        WorldTokenizer(missing)
    small = tmp_path / "small.txt"
    small.write_text("\n".join([*lines, "300 'ab' 2", "301 'abc' 3", "302 b'\\xe4\\xbd' 2"]) + "\n", encoding="utf-8")
    tok = WorldTokenizer(small)
    assert tok.encode_bytes(b"abcab\xe4\xbd\xa0ac") == [301, 300, 302, 0xA0 + 1, 0x61 + 1, 0x63 + 1]
    with pytest.raises(TokenizerError, match="cannot read"):
        WorldTokenizer(tmp_path / "absent.txt")


def test_bad_neox_file_is_reported(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"model": ', encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"broken\.json"):
        NeoxTokenizer(path)


def test_model_tokenizer(tmp_path, world):
    # Same shapes and types as tests/model/test_forward.py's model, so the compiled code is shared.
    path = write_model_gguf(tmp_path / "m.gguf", v4_state_dict(2, 64, 96, seed=5), DType.Q5_1, head=DType.Q8_0,
                            emb=DType.F16)
    with load_model(path, threads=1) as model:
        assert model.tokenizer_name == "none"  # 96 ids: no known vocabulary
        with pytest.raises(UnsupportedModelError, match=r"no known tokenizer.*vocabulary of 96"):
            model.tokenizer  # noqa: B018
        model.metadata["tokenizer.ggml.model"] = "rwkv-world"  # as a converted file declares it
        assert model.tokenizer is world
