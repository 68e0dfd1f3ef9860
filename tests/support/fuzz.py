"""Mutated model files and state blobs, and the pipeline every one of them must survive.

Used by tests/test_fuzz.py (a few hundred seeded cases per format) and tools/fuzz_campaign.py (a
longer campaign, one forked process per case). Seeds are small valid files of each format the
project reads: GGUF (from `convert`), BlinkDL `.pth` (torch zip + pickle), `.safetensors`, rwkv.cpp
`.bin`, and a compressed saved state. A mutation mostly hits the "hot" spans a reader parses
(headers, the pickle, zip directories, record headers), sometimes the tensor data (a NaN, an
infinity or a huge value where a weight was).

`run_case` takes a mutated file through what a user would do with it — `inspect` (open and
`inspect --verify`), `convert` for checkpoints, load, one forward step; a state is decoded, checked
and stepped from — and returns "ok" when everything worked and the output is finite, or the name of
the project's own error that refused it. Any other exception propagates: that is a defect.
"""

from __future__ import annotations

import random
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import DamagedModelError, RwkvError
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import write_v4_model
from tests.support.safetensors_writer import write_safetensors
from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import write_pth

if TYPE_CHECKING:
    from runtime.model.model import Model

FORMATS = ("gguf", "pth", "safetensors", "rwkvcpp", "state")
SHAPE = {"n_layer": 1, "n_embd": 32, "n_vocab": 64}
TOKENS = [1, 2]

Span = tuple[int, int]


@dataclass(frozen=True)
class Seed:
    """A valid file of one format and the spans of it a reader parses."""

    format: str
    data: bytes
    hot: list[Span]
    values: list[Span]  # spans of tensor data (float values)


# --- seeds ---------------------------------------------------------------------------------------


def make_seeds(folder: Path) -> dict[str, Seed]:
    """One small valid file per format, written under `folder` (which keeps the source files)."""
    from runtime.chat.state_codec import encode
    from runtime.convert import convert
    from runtime.formats.gguf_file import read_gguf
    from runtime.formats.rwkvcpp import read_rwkvcpp
    from runtime.model.model import load_model

    folder.mkdir(parents=True, exist_ok=True)
    sd = v4_state_dict(seed=11, **SHAPE)
    pth = write_pth(folder / "seed.pth", sd, "bfloat16")
    st = write_safetensors(folder / "seed.safetensors", sd, "F16")
    gguf = folder / "seed.gguf"
    convert(pth, gguf, "q8_0", threads=1)
    binf = write_v4_model(folder / "seed.bin", sd, DType.Q5_1)
    with load_model(gguf, threads=1) as model:
        _, state = model.forward(list(range(20)), model.new_state())
        blob = encode(state.to_bytes())

    g = read_gguf(gguf)
    gguf_values = [(t.offset, t.offset + t.nbytes) for t in g.tensors.values()]
    r = read_rwkvcpp(binf)
    bin_hot = [(0, 24)]
    for t in r.tensors.values():
        start = t.offset - 12 - 4 * len(t.shape) - len(t.name.encode())
        bin_hot.append((start, t.offset))
    (n,) = struct.unpack_from("<Q", st.read_bytes())
    return {
        "gguf": Seed("gguf", gguf.read_bytes(), [(0, g.data_offset)], gguf_values),
        "pth": Seed("pth", pth.read_bytes(), *_zip_spans(pth)),
        "safetensors": Seed("safetensors", st.read_bytes(), [(0, 8 + n)], [(8 + n, st.stat().st_size)]),
        "rwkvcpp": Seed("rwkvcpp", binf.read_bytes(), bin_hot,
                        [(t.offset, t.offset + t.nbytes) for t in r.tensors.values()]),
        "state": Seed("state", blob, [(0, min(len(blob), 64))], [(0, len(blob))]),
    }


def _zip_spans(path: Path) -> tuple[list[Span], list[Span]]:
    data = path.read_bytes()
    hot: list[Span] = []
    values: list[Span] = []
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        directory = zf.start_dir
    for info in infos:
        name_len, extra_len = struct.unpack_from("<2H", data, info.header_offset + 26)
        start = info.header_offset + 30 + name_len + extra_len
        hot.append((info.header_offset, start))
        span = (start, start + info.file_size)
        (values if "/data/" in info.filename else hot).append(span)
    hot.append((directory, len(data)))  # the central directory and the end records
    return hot, values


# --- mutations -----------------------------------------------------------------------------------

_SPECIAL_INTS = (0, 1, 2, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 28,
                 (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
_BAD_VALUES = (
    b"\x00\x7e", b"\x00\x7c", b"\x00\xfc",  # float16 NaN, +inf, -inf
    b"\xc0\x7f", b"\x7f\x7f", b"\x7f\xff",  # bfloat16 NaN, 3.4e38, -3.4e38
    b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", struct.pack("<f", 3e38), struct.pack("<f", -1e20),
    struct.pack("<f", 3e9),
)


def _position(rng: random.Random, seed: Seed, size: int, hot_share: float = 0.8) -> int:
    if seed.hot and rng.random() < hot_share:
        lo, hi = rng.choice(seed.hot)
        return min(rng.randrange(lo, max(lo + 1, hi)), max(0, size - 1))
    return rng.randrange(max(1, size))


def _truncate(rng: random.Random, seed: Seed, b: bytearray) -> str:
    at = _position(rng, seed, len(b), 0.6)
    del b[at:]
    return f"truncate at {at}"


def _flip(rng: random.Random, seed: Seed, b: bytearray) -> str:
    where = []
    for _ in range(rng.randint(1, 4)):
        at = _position(rng, seed, len(b))
        b[at] ^= 1 << rng.randrange(8)
        where.append(at)
    return f"flip bits at {where}"


def _integer(rng: random.Random, seed: Seed, b: bytearray) -> str:
    width = rng.choice((1, 2, 4, 4, 8, 8))
    at = _position(rng, seed, len(b))
    if rng.random() < 0.5:
        at -= at % width
    at = max(0, min(at, len(b) - width))
    old = int.from_bytes(b[at : at + width], "little")
    mask = (1 << (8 * width)) - 1
    new = rng.choice((*_SPECIAL_INTS, old + 1, old - 1, old * 2, old + 4096, old - 4096, old + 64,
                      rng.getrandbits(8 * width))) & mask
    b[at : at + width] = new.to_bytes(width, "little")
    return f"int{8 * width} at {at}: {old} -> {new}"


def _append(rng: random.Random, seed: Seed, b: bytearray) -> str:
    n = rng.choice((1, 7, 64, rng.randint(1, 4096)))
    b += rng.randbytes(n)
    return f"append {n} bytes"


def _splice(rng: random.Random, seed: Seed, b: bytearray) -> str:
    at = _position(rng, seed, len(b))
    n = rng.randint(1, 16)
    if rng.random() < 0.5:
        del b[at : at + n]
        return f"delete {n} bytes at {at}"
    b[at:at] = rng.randbytes(n)
    return f"insert {n} bytes at {at}"


def _zero(rng: random.Random, seed: Seed, b: bytearray) -> str:
    at = _position(rng, seed, len(b))
    n = rng.randint(1, 64)
    b[at : at + n] = bytes(len(b[at : at + n]))
    return f"zero {n} bytes at {at}"


def _value(rng: random.Random, seed: Seed, b: bytearray) -> str:
    lo, hi = rng.choice(seed.values) if seed.values else (0, len(b))
    pattern = rng.choice(_BAD_VALUES)
    at = rng.randrange(lo, max(lo + 1, hi - len(pattern)))
    at -= at % 2
    b[at : at + len(pattern)] = pattern
    return f"value {pattern.hex()} at {at}"


MUTATIONS: dict[str, Callable[[random.Random, Seed, bytearray], str]] = {
    "truncate": _truncate, "flip": _flip, "int": _integer, "append": _append, "splice": _splice,
    "zero": _zero, "value": _value,
}
_WEIGHTS = {"truncate": 2, "flip": 4, "int": 5, "append": 1, "splice": 2, "zero": 1, "value": 3}


def mutate(seed: Seed, case: int, salt: str = "") -> tuple[str, bytes]:
    """Case number `case` of `seed`'s format: (what was done, the mutated bytes); deterministic.

    Half the state cases damage the state inside a blob whose checksum and compression are then made
    valid again, so the checks after the checksum (shape, fingerprint, finiteness, range) are reached.
    """
    rng = random.Random(f"{seed.format}/{case}/{salt}")
    if seed.format == "state" and rng.random() < 0.5:
        return _resealed_state(seed, rng)
    return _mutate_bytes(seed, rng)


def _mutate_bytes(seed: Seed, rng: random.Random) -> tuple[str, bytes]:
    b = bytearray(seed.data)
    steps = []
    for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
        kind = rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()))[0]
        steps.append(MUTATIONS[kind](rng, seed, b))
    return "; ".join(steps), bytes(b)


# runtime/model/state.py: magic, version, rows, cols, n_logits, fingerprint, then the sha256 of the data
# (version 3 adds the architecture after it); the data fills the rest.
_DIGEST_AT = struct.calcsize("<8sIIII64s")


def _resealed_state(seed: Seed, rng: random.Random) -> tuple[str, bytes]:
    import hashlib

    from runtime.chat.state_codec import decode, encode

    raw = decode(seed.data)
    _, _, rows, cols, n_logits = struct.unpack_from("<8sIIII", raw)
    data_at = len(raw) - 4 * (rows * cols + n_logits)
    inner = Seed("state-raw", raw, [(0, _DIGEST_AT), (_DIGEST_AT + 32, data_at)], [(data_at, len(raw))])
    what, damaged = _mutate_bytes(inner, rng)
    b = bytearray(damaged)
    if len(b) >= data_at:
        b[_DIGEST_AT : _DIGEST_AT + 32] = hashlib.sha256(b[data_at:]).digest()
    return f"resealed state: {what}", encode(bytes(b))


# --- the pipeline --------------------------------------------------------------------------------


def run_case(fmt: str, data: bytes, folder: Path, model_path: Path, model: Model | None = None) -> str:
    """Take mutated `data` of format `fmt` through inspect, verify, convert, load and one step.

    Returns "ok" (every step worked and every output is finite) or the class name of the project's
    error that refused the file. Anything else propagates. `model_path` is the seed GGUF (the model
    a mutated state is checked against and stepped with; `model`, if given, is that file loaded);
    `folder` takes the case's files.
    """
    try:
        if fmt == "state":
            _state_case(data, model_path, model)
        else:
            _file_case(fmt, data, folder)
    except DamagedModelError as e:
        if fmt == "state":  # the seed model is sound: the state's own checks should have refused it
            raise AssertionError(f"a damaged state passed its checks and was blamed on the model: {e}") from e
        return type(e).__name__
    except RwkvError as e:
        return type(e).__name__
    return "ok"


def _file_case(fmt: str, data: bytes, folder: Path) -> None:
    from runtime.convert import convert
    from runtime.formats.checkpoint import open_checkpoint
    from runtime.verify import verify_tensors

    suffix = {"gguf": ".gguf", "pth": ".pth", "safetensors": ".safetensors", "rwkvcpp": ".bin"}[fmt]
    path = folder / f"case{suffix}"
    path.write_bytes(data)
    ckpt = open_checkpoint(path)
    verify_tensors(ckpt)
    runnable = path
    if fmt in ("pth", "safetensors"):
        runnable = folder / "converted.gguf"
        convert(path, runnable, "q8_0", threads=1)
    _step(runnable)


def _step(path: Path) -> None:
    from runtime.model.model import load_model

    with load_model(path, threads=1) as model:
        logits, state = model.forward(TOKENS, model.new_state())
        _assert_finite(logits, state.data)
        logits, state = model.forward([3], state)
        _assert_finite(logits, state.data)


def _state_case(blob: bytes, model_path: Path, model: Model | None) -> None:
    from runtime.chat.state_codec import decode
    from runtime.model.model import load_model

    if model is None:
        with load_model(model_path, threads=1) as loaded:
            _state_case(blob, model_path, loaded)
        return
    state = model.state_from_bytes(decode(blob, "fuzzed state"), "fuzzed state")
    logits, new = model.forward([3], state)
    _assert_finite(logits, new.data)


class NonFiniteOutput(AssertionError):
    """A step returned NaN or infinite values to its caller (a defect, not a refusal)."""


def _assert_finite(*arrays: np.ndarray | None) -> None:
    for a in arrays:
        if a is not None and not np.isfinite(a).all():
            raise NonFiniteOutput("a step returned non-finite values")
