"""State compression: lossless on real model states and on any bytes; damage gives StateCodecError."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from runtime.chat import state_codec
from runtime.chat.state_codec import StateCodecError, decode, encode
from runtime.model.model import load_model
from runtime.model.state import State
from runtime.quant.types import DType
from tests.support.gguf_model import write_model_gguf
from tests.support.synthetic import v4_state_dict


@pytest.fixture(scope="module")
def model_states(tmp_path_factory) -> list[bytes]:
    """States of a small random-weight model: fresh, then after a few turns of tokens."""
    # same shape and types as tests/model/test_forward.py, so the compiled kernels come from the cache
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=96, seed=5)
    path = write_model_gguf(tmp_path_factory.mktemp("codec") / "m.gguf", sd, DType.Q5_1, head=DType.Q8_0,
                            emb=DType.F16)
    rng = np.random.default_rng(3)
    with load_model(path, threads=2) as model:
        state = model.new_state()
        out = [state.to_bytes()]
        for _ in range(4):
            _, state = model.forward(rng.integers(0, model.n_vocab, 30), state, want_logits=False)
            out.append(state.to_bytes())
    return out


@pytest.mark.parametrize("codec", state_codec.CODECS)
def test_model_states_round_trip_exactly(model_states, codec):
    for raw in model_states:
        blob = encode(raw, codec)
        assert state_codec.codec_of(blob) == codec
        assert state_codec.raw_size_of(blob) == len(raw)
        back = decode(blob)
        assert back == raw
        State.from_bytes(back)  # still a valid state, checksum included


@pytest.mark.parametrize("codec", state_codec.CODECS)
@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 8, 9, 1001, 65536 + 3])
def test_any_bytes_round_trip(codec, size):
    raw = os.urandom(size)
    assert decode(encode(raw, codec)) == raw


def test_special_float_patterns_round_trip():
    values = np.array([0.0, -0.0, -1e30, 1e-45, -1e-45, np.inf, -np.inf, np.nan, 3.4e38, 1.0], dtype=np.float32)
    raw = np.tile(values, 257).tobytes() + b"\x01\x02"
    assert decode(encode(raw)) == raw


def test_default_codec_shrinks_model_states(model_states):
    fresh, *used = model_states
    assert len(encode(fresh)) < len(fresh) / 5  # zeros and -1e30 rows (the header holds a random sha256)
    for raw in used:
        # the sign/exponent bytes of trained-scale floats repeat; the mantissas do not
        assert len(encode(raw)) < len(raw)
        assert len(encode(raw)) < len(encode(raw, state_codec.ZLIB))


def test_random_bytes_cost_only_the_tables():
    raw = os.urandom(40_000)
    blob = encode(raw)
    assert len(blob) <= len(raw) + 16 + 4 * 5  # every plane falls back to stored


def test_unknown_codec_name_is_refused():
    with pytest.raises(StateCodecError, match="unknown state codec 'brotli'"):
        encode(b"abcd", "brotli")


def _blob(model_states) -> bytes:
    return encode(model_states[-1])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:10], "too short"),
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + bytes([99]) + b[5:], "unknown state codec id 99"),
        (lambda b: b[:-1], "truncated or damaged"),
        (lambda b: b + b"\0", "truncated or damaged"),
        (lambda b: b[:8] + struct.pack("<Q", 1 << 40) + b[16:], "implausible raw size"),
        (lambda b: b[:8] + struct.pack("<Q", struct.unpack_from("<Q", b, 8)[0] + 4) + b[16:], "plane"),
        (lambda b: b[:16] + bytes([7]) + b[17:], "unknown plane method 7"),
    ],
)
def test_damaged_blobs_are_refused(model_states, damage, message):
    with pytest.raises(StateCodecError, match=message) as e:
        decode(damage(_blob(model_states)), source="chat 3, turn 9")
    assert "chat 3, turn 9" in str(e.value)


@pytest.mark.parametrize("value", [12345, "RWZ1 text", None, 1.5])
def test_blob_of_another_type_is_refused(value):
    """A state column holding an INTEGER (a damaged database) gave a TypeError out of _parse_header."""
    for read in (decode, state_codec.codec_of, state_codec.raw_size_of):
        with pytest.raises(StateCodecError, match=f"chat 3: stored as {type(value).__name__}, not as bytes"):
            read(value, source="chat 3")


def _shuffle_blob(raw_size: int, planes: list[tuple[int, bytes]]) -> bytes:
    """A shuffle4-rle blob from (method, payload) per plane, with no tail (raw_size a multiple of 4)."""
    header = struct.pack("<4sBBHQ", b"RWZ1", 2, 0, 0, raw_size)
    table = b"".join(struct.pack("<BI", method, len(payload)) for method, payload in planes)
    return header + table + b"".join(payload for _, payload in planes)


def test_stored_plane_of_the_wrong_length_is_refused():
    raw = os.urandom(4000)
    planes = [(0, raw[i::4]) for i in range(4)]
    assert decode(_shuffle_blob(4000, planes)) == raw
    # the same total length, shifted between two planes
    shifted = [(0, planes[0][1] + b"abcd"), (0, planes[1][1][:-4]), planes[2], planes[3]]
    with pytest.raises(StateCodecError, match="stored plane 0 has 1004 bytes, expected 1000"):
        decode(_shuffle_blob(4000, shifted))


def test_inflating_stops_at_the_recorded_size():
    """A plane that inflates to 64 MB where the header promises 1000 bytes is refused without
    inflating it all."""
    z = zlib.compressobj(9)
    bomb = b"".join(z.compress(bytes(1 << 20)) for _ in range(64)) + z.flush()
    planes = [(1, bomb)] + [(0, bytes(1000))] * 3
    tracemalloc.start()
    try:
        with pytest.raises(StateCodecError, match=r"plane 0\): compressed data does not match its recorded size 1000"):
            decode(_shuffle_blob(4000, planes))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"decoding allocated {peak} bytes"


def test_zlib_blob_with_wrong_size_or_garbage_is_refused():
    raw = os.urandom(1000) + bytes(3000)
    good = encode(raw, state_codec.ZLIB)
    header = good[:16]
    with pytest.raises(StateCodecError, match="does not match its recorded size"):
        decode(header[:8] + struct.pack("<Q", len(raw) - 1) + good[16:])
    with pytest.raises(StateCodecError, match="does not match its recorded size"):
        decode(good + b"trailing")
    with pytest.raises(StateCodecError, match="damaged compressed data"):
        decode(header + b"\xff" * 40)
    assert decode(header + zlib.compress(raw, 1)) == raw  # any valid deflate stream of the right size


def test_random_damage_never_escapes_as_another_exception(model_states):
    """Flip, cut and splice bytes at random: decode returns bytes or raises StateCodecError, nothing else."""
    blob = _blob(model_states)
    rng = random.Random(7)
    refused = 0
    for _ in range(400):
        b = bytearray(blob)
        kind = rng.randrange(3)
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del b[rng.randrange(len(b)) :]
        else:
            i = rng.randrange(len(b))
            b[i:i] = os.urandom(rng.randint(1, 9))
        try:
            out = decode(bytes(b))
        except StateCodecError:
            refused += 1
        else:
            assert isinstance(out, bytes)
            assert len(out) == struct.unpack_from("<Q", b, 8)[0]
    assert refused > 200
