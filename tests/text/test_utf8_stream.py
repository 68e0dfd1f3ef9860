"""The streaming UTF-8 decoder: same text as a one-shot decode for every split, split characters
wait, invalid bytes come out at once, and token streams match `decode` on every prefix."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from runtime.text.tokenizers import load_tokenizer
from runtime.text.utf8_stream import StreamDecoder, Utf8StreamDecoder, replace_surrogates, text_to_utf8

CASES = [
    b"",
    b"plain ascii",
    "你好，世界 🎉 café".encode(),
    "👨\u200d👩\u200d👧".encode(),
    b"\xff\xfe",  # never valid
    b"\x80abc\xbf",  # lone continuation bytes
    b"\xe4\xbdA",  # truncated sequence followed by ASCII
    b"\xe4\xbd",  # truncated at the end
    b"\xf0\x9f\x8e",  # 3 of 4 bytes at the end
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xc0\xaf\xe0\x80\xaf",  # overlong forms
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"ok\xf0\x9f\x8e\xc3\xa9",  # cut 4-byte sequence followed by a valid 2-byte one
]


def _stream(chunks: list[bytes]) -> str:
    dec = Utf8StreamDecoder()
    return "".join(dec.feed_bytes(c) for c in chunks) + dec.flush()


@pytest.mark.parametrize("data", CASES)
def test_every_split_gives_the_one_shot_decode(data):
    expected = data.decode("utf-8", "replace")
    assert _stream([data]) == expected
    assert _stream([data[i : i + 1] for i in range(len(data))]) == expected
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert _stream([data[:i], data[i:j], data[j:]]) == expected


def test_random_bytes_and_random_splits():
    rng = random.Random(3)
    pieces = [b"\xe4", b"\xbd", b"\xa0", b"\xf0\x9f", b"\x8e\x89", b"a", b"\xff", b"\xc3", b"\xa9", b" "]
    for _ in range(300):
        data = b"".join(rng.choices(pieces, k=rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, rng.randint(0, 6))))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert _stream(chunks) == data.decode("utf-8", "replace")


def test_a_split_character_waits_for_its_last_byte():
    dec = Utf8StreamDecoder()
    assert dec.feed_bytes(b"ab\xe4") == "ab"
    assert dec.pending == b"\xe4"
    assert dec.feed_bytes(b"\xbd") == ""
    assert dec.pending == b"\xe4\xbd"
    assert dec.feed_bytes(b"\xa0!") == "你!"
    assert dec.pending == b""


def test_invalid_bytes_come_out_at_once():
    dec = Utf8StreamDecoder()
    assert dec.feed_bytes(b"\xff") == "\ufffd"
    assert dec.feed_bytes(b"\x80") == "\ufffd"
    assert dec.feed_bytes(b"\xe4") == ""
    assert dec.feed_bytes(b"x") == "\ufffdx"  # the held lead byte cannot be completed any more
    assert dec.feed_bytes(b"\xf0\x9f\x8e") == ""
    assert dec.feed_bytes(b"\xf0") == "\ufffd"  # a new lead byte ends the unfinished sequence
    assert dec.pending == b"\xf0"


def test_flush_ends_an_unfinished_sequence_and_resets():
    dec = Utf8StreamDecoder()
    assert dec.feed_bytes(b"a\xf0\x9f") == "a"
    assert dec.flush() == "\ufffd"
    assert dec.flush() == ""
    assert dec.feed_bytes(b"\x8e") == "\ufffd"  # after a flush, a continuation byte starts nothing
    assert dec.feed_bytes("é".encode()) == "é"


def test_stream_decoder_uses_token_bytes():
    table = {1: b"\xe4", 2: b"\xbd\xa0", 3: b"!"}
    dec = StreamDecoder(table.__getitem__)
    assert [dec.feed(i) for i in (1, 2, 3)] == ["", "你", "!"]
    assert dec.flush() == ""


TEXTS = [case["text"] for case in json.loads(
    (Path(__file__).parents[1] / "fixtures" / "tokenizers" / "reference.json").read_text(encoding="utf-8")
)["texts"]]


@pytest.mark.parametrize("name", ["20b", "world"])
def test_token_streams_match_decode_on_every_prefix(name):
    tok = load_tokenizer(name)
    text = "".join(TEXTS) + "語🎉\u00e9"
    ids = tok.encode(text)
    full = tok.decode(ids)
    dec = tok.stream_decoder()
    shown = ""
    for k, token_id in enumerate(ids, 1):
        shown += dec.feed(token_id)
        assert full.startswith(shown)
        assert "\ufffd" not in shown  # the text is valid UTF-8: no broken character is ever shown
        # what is held back is exactly the unfinished end of this prefix
        assert shown + dec.pending.decode("utf-8", "replace") == tok.decode(ids[:k])
    assert shown + dec.flush() == full


@pytest.mark.parametrize("name", ["20b", "world"])
def test_token_streams_of_invalid_bytes(name):
    tok = load_tokenizer(name)
    rng = random.Random(5)
    for _ in range(50):
        ids = [rng.randrange(tok.n_vocab) for _ in range(rng.randint(1, 12))]
        dec = tok.stream_decoder()
        assert "".join(dec.feed(i) for i in ids) + dec.flush() == tok.decode(ids)


def test_text_to_utf8_never_fails():
    assert text_to_utf8("héllo") == "héllo".encode()
    assert text_to_utf8("a\udcff\udc80b") == b"a\xff\x80b"  # surrogateescape round trip
    raw = b"caf\xe9 \xff"
    assert text_to_utf8(raw.decode("utf-8", "surrogateescape")) == raw
    assert text_to_utf8("x\ud800y") == "x\ufffdy".encode()


def test_replace_surrogates():
    assert replace_surrogates("ok 🎉") == "ok 🎉"
    assert replace_surrogates("a\ud83cb\udcff") == "a\ufffdb\ufffd"
