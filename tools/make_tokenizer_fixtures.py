"""Record reference token ids for the tokenizer tests (tests/fixtures/tokenizers/reference.json).

Run by hand with the reference environment (the `rwkv` 0.8.32 package and `tokenizers`); the test
suite only reads the JSON this writes and never imports `rwkv`:

    cd /work/main && /work/refvenv/bin/python tools/make_tokenizer_fixtures.py

GPT-NeoX 20B ids come from the `tokenizers` library on runtime/text/data/20B_tokenizer.json, World
ids from `rwkv.rwkv_tokenizer.TRIE_TOKENIZER` on runtime/text/data/rwkv_vocab_v20230424.txt, for a
small corpus: English, Chinese, Japanese, Korean, code, emoji (with ZWJ sequences and flags), long
whitespace runs, mixed scripts, text that NFC changes, control characters. It also records

- World ids for byte strings that are not valid UTF-8 (the reference encodes any bytes);
- World decode cases: id lists whose bytes are invalid UTF-8 or split a character, with the bytes
  the reference's `decodeBytes` gives and their text with U+FFFD for invalid bytes (the reference's
  own `decode` gives a single U+FFFD for the whole string instead; we keep the valid parts);
- GPT-NeoX decode cases: id lists, with the text the library's `decode` gives.

This script does not import the project's runtime (the reference environment has no llvmlite).
"""

from __future__ import annotations

import hashlib
import json
import random
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "runtime" / "text" / "data"
NEOX_JSON = DATA / "20B_tokenizer.json"
WORLD_VOCAB = DATA / "rwkv_vocab_v20230424.txt"
OUT = ROOT / "tests" / "fixtures" / "tokenizers" / "reference.json"

TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 9:30 a.m.; don't panic!",
    "chat": "Bob: What is the capital of France?\n\nAlice: The capital of France is Paris.\n\nBob:",
    "newline": "\n",
    "double_newline": "\n\n",
    "chinese": "语言模型把过去的信息压缩进一个固定大小的状态里，因此对话变长时内存不会增加。",
    "japanese": "今日は雨が降っていますが、明日は晴れるでしょう。カタカナとひらがなの文章です。",
    "korean": "안녕하세요, 세계! 오늘 날씨가 좋네요.",
    "code": 'def greet(name: str) -> str:\n    """Say hello."""\n\tif not name:\n\t\treturn "?"\n'
    '    return f"Hello, {name}!"  # comment\n\nprint(greet("世界"))\n',
    "emoji": "Party 🎉🎉 thumbs 👍🏽 family 👨\u200d👩\u200d👧\u200d👦 flags 🇯🇵🇫🇷 ✨❤️",
    "whitespace": "a" + " " * 300 + "b\n\n\n\t\t\t  \r\n" + " " * 129 + "c" + "\n" * 7 + " \u3000\u00a0end",
    "mixed_scripts": "The 東京 tower is 333 m tall; Москва — Ελληνικά, العربية, हिन्दी, ไทย… (≈3.14)",
    "long_runs": "#" * 200 + "\n" + "-" * 85 + "\n" + "=" * 33 + "!!!!!!!!!!",
    "digits": "3.14159265358979 1,000,000 2024-01-01T12:00:00Z 0x7fff_ffff",
    "nfd": "Cafe\u0301 noe\u0308l A\u030a",
    "controls": "\x00\x01\x1b[31mred\x1b[0m\x7f\u200b\ufeff",
    "special_marker": "before <|endoftext|> after <|padding|>",
}

WORLD_BYTES = {
    "lone_continuation": b"\x80\x81abc\xbf",
    "invalid_lead": b"\xff\xfe hello \xc0\xaf",
    "truncated_char": "你".encode()[:2],
    "char_then_truncated": "abc你好".encode() + "世".encode()[:1],
    "encoded_surrogate": b"\xed\xa0\x80 x",
    "random": random.Random(4).randbytes(96),
}


def main() -> None:
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
    from tokenizers import Tokenizer

    neox = Tokenizer.from_file(str(NEOX_JSON))
    world = TRIE_TOKENIZER(str(WORLD_VOCAB))

    texts = [
        {"name": name, "text": text, "neox": neox.encode(text).ids, "world": world.encode(text)}
        for name, text in TEXTS.items()
    ]
    world_bytes = [
        {"name": name, "hex": data.hex(), "world": world.encodeBytes(data)} for name, data in WORLD_BYTES.items()
    ]

    def single(byte: int) -> int:
        return world.token2idx[bytes([byte])]

    partial = [i for i, t in sorted(world.idx2token.items()) if len(t) > 1 and not _valid(t)][:3]
    ni_hao = "你好".encode()
    world_decode_ids = {
        "split_char_bytewise": [single(b) for b in ni_hao],
        "split_char_then_ascii": [single(ni_hao[0]), single(ni_hao[1]), world.token2idx[b"a"]],
        "lone_continuation_bytes": [single(0x80), single(0xBF), world.token2idx[b"ok"]],
        "partial_tokens": partial,
        "partial_then_valid": [partial[0], *world.encode(" fine")],
        "valid": world.encode("Hello 世界"),
    }
    world_decode = []
    for name, ids in world_decode_ids.items():
        data = world.decodeBytes(ids)
        world_decode.append({"name": name, "ids": ids, "hex": data.hex(), "text": data.decode("utf-8", "replace")})

    emoji_ids = neox.encode(" 🎉 ok").ids
    neox_decode_ids = {
        "emoji_tokens": emoji_ids,
        **{f"emoji_prefix_{k}": emoji_ids[:k] for k in range(1, len(emoji_ids))},
        "emoji_middle_piece": emoji_ids[1:2],
        "special_tokens": [0, 1, 187, 0],
        "space_runs": [50276, 187, 50254, 66],
        "chinese": neox.encode("语言模型").ids,
        "chinese_missing_first": neox.encode("语言模型").ids[1:],
    }
    neox_decode = [{"name": name, "ids": ids, "text": neox.decode(ids)} for name, ids in neox_decode_ids.items()]

    fixture = {
        "made_by": "tools/make_tokenizer_fixtures.py",
        "versions": {"tokenizers": version("tokenizers"), "rwkv": version("rwkv")},
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (NEOX_JSON, WORLD_VOCAB)},
        "texts": texts,
        "world_bytes": world_bytes,
        "world_decode": world_decode,
        "neox_decode": neox_decode,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


def _valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


if __name__ == "__main__":
    main()
