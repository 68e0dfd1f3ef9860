"""Write genuine PyTorch-format checkpoints (torch zip + protocol-2 pickle) without torch, for tests.

The pickle is emitted opcode by opcode with the structure `torch.save` gives a state dict (checked
against torch 2.13 with pickletools):

    GLOBAL collections.OrderedDict, EMPTY_TUPLE, REDUCE, MARK, then per tensor:
      name, GLOBAL torch._utils._rebuild_tensor_v2, MARK,
        MARK 'storage' GLOBAL torch.<T>Storage key 'cpu' numel TUPLE BINPERSID,
        storage_offset, size, stride, NEWFALSE, OrderedDict(), TUPLE, REDUCE
    SETITEMS, STOP

The zip is written by hand, streaming: every member STORED with its data 64-byte aligned by an 'FB'
padding extra field (as torch does), CRCs patched in after the data, ZIP64 records when sizes or
offsets pass 4 GiB (or when asked, to test a reader cheaply). A `Zeros` tensor becomes a hole in a
sparse file, so tests can make checkpoints larger than 4 GiB in a second. Members: data.pkl,
.format_version, .storage_alignment, byteorder, data/<key>…, version, .data/serialization_id.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.quant.codec import float32_to_bf16

ALIGNMENT = 64
_CHUNK = 1 << 20  # elements converted and written at a time
_STORAGES = {"bfloat16": "BFloat16Storage", "float16": "HalfStorage", "float32": "FloatStorage"}
_ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4}
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Zeros:
    """A tensor of zeros of `shape`, written as a hole (no memory, no disk blocks)."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class Generated:
    """A tensor made chunk by chunk, never held whole: `make(start, count)` returns float32 values
    `start … start+count` of the flattened tensor (for benchmark checkpoints of many GB)."""

    shape: tuple[int, ...]
    make: Callable[[int, int], np.ndarray]

    def chunks(self, dtype: str) -> Iterator[bytes]:
        total = int(np.prod(self.shape, dtype=np.int64))
        for start in range(0, total, _CHUNK):
            yield to_storage_bytes(self.make(start, min(_CHUNK, total - start)), dtype)


# --- the pickle ----------------------------------------------------------------------------------

# (name, storage class, storage key, storage numel, storage offset, size, stride)
TensorEntry = tuple[str, str, str, int, int, tuple[int, ...], tuple[int, ...]]


class _Pickle:
    """Protocol-2 opcodes with a memo for globals and strings, as Python's pickler would use it."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.memo: dict[object, int] = {}

    def _put(self, key: object) -> None:
        i = self.memo[key] = len(self.memo)
        self.out += b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)

    def _get(self, key: object) -> bool:
        i = self.memo.get(key)
        if i is None:
            return False
        self.out += b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)
        return True

    def op(self, code: bytes) -> None:
        self.out += code

    def global_(self, module: str, name: str) -> None:
        if not self._get(("global", module, name)):
            self.out += b"c" + f"{module}\n{name}\n".encode()
            self._put(("global", module, name))

    def string(self, s: str) -> None:
        if not self._get(("str", s)):
            b = s.encode()
            self.out += b"X" + struct.pack("<I", len(b)) + b
            self._put(("str", s))

    def integer(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -(1 << 31) <= v < 1 << 31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def int_tuple(self, values: tuple[int, ...]) -> None:
        if not values:
            self.out += b")"
            return
        if len(values) > 3:
            self.out += b"("
        for v in values:
            self.integer(v)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(values), b"t")

    def ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"


def tensor_pickle(entries: Iterable[TensorEntry]) -> bytes:
    """The data.pkl torch.save writes for these tensors (see the module docstring)."""
    p = _Pickle()
    p.ordered_dict()
    p.op(b"(")
    for name, storage, key, numel, offset, size, stride in entries:
        p.string(name)
        p.global_("torch._utils", "_rebuild_tensor_v2")
        p.op(b"((")
        p.string("storage")
        p.global_("torch", storage)
        p.string(key)
        p.string("cpu")
        p.integer(numel)
        p.op(b"tQ")
        p.integer(offset)
        p.int_tuple(tuple(size))
        p.int_tuple(tuple(stride))
        p.op(b"\x89")
        p.ordered_dict()
        p.op(b"tR")
    p.op(b"u.")
    return bytes(p.out)


# --- the zip -------------------------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    nbytes: int
    chunks: Iterable[bytes] | None  # None: zeros, written as a hole
    header_offset: int = 0
    crc: int = 0


def _zip64_extra(values: list[int]) -> bytes:
    return struct.pack("<HH", 0x0001, 8 * len(values)) + b"".join(struct.pack("<Q", v) for v in values)


def _padding_extra(data_start_without: int) -> bytes:
    """An 'FB' extra field that moves the data start to a multiple of ALIGNMENT."""
    pad = -(data_start_without + 4) % ALIGNMENT
    return struct.pack("<HH", 0x4246, pad) + b"Z" * pad


def _write_member(f, m: _Member, zip64: bool) -> None:
    m.header_offset = f.tell()
    name = m.name.encode()
    big = zip64 or m.nbytes >= _U32
    extra = _zip64_extra([m.nbytes, m.nbytes]) if big else b""
    extra += _padding_extra(m.header_offset + 30 + len(name) + len(extra))
    size32 = _U32 if big else m.nbytes
    f.write(struct.pack("<4s5H3I2H", b"PK\x03\x04", 45 if big else 20, 0x0800, 0, 0, 0, 0, size32, size32,
                        len(name), len(extra)) + name + extra)
    m.crc = _write_payload(f, m)
    end = f.tell()
    f.seek(m.header_offset + 14)
    f.write(struct.pack("<I", m.crc))
    f.seek(end)


def _write_payload(f, m: _Member) -> int:
    crc, written = 0, 0
    if m.chunks is None:
        zero = bytes(min(m.nbytes, 64 << 20))
        while written < m.nbytes:
            n = min(len(zero), m.nbytes - written)
            crc = zlib.crc32(zero[:n] if n < len(zero) else zero, crc)
            written += n
        f.seek(m.nbytes, os.SEEK_CUR)
        return crc
    for chunk in m.chunks:
        crc = zlib.crc32(chunk, crc)
        f.write(chunk)
        written += len(chunk)
    if written != m.nbytes:
        raise ValueError(f"member {m.name}: wrote {written} bytes, announced {m.nbytes}")
    return crc


def _central_entry(m: _Member, zip64: bool) -> bytes:
    name = m.name.encode()
    wide = [v for v in (m.nbytes, m.nbytes, m.header_offset) if zip64 or v >= _U32]
    extra = _zip64_extra(wide) if wide else b""
    size32 = _U32 if zip64 or m.nbytes >= _U32 else m.nbytes
    offset32 = _U32 if zip64 or m.header_offset >= _U32 else m.header_offset
    version = 45 if wide else 20
    return struct.pack(
        "<4s6H3I5H2I", b"PK\x01\x02", version, version, 0x0800, 0, 0, 0, m.crc, size32, size32,
        len(name), len(extra), 0, 0, 0, 0, offset32,
    ) + name + extra


def _write_end(f, members: list[_Member], zip64: bool) -> None:
    cd_offset = f.tell()
    for m in members:
        f.write(_central_entry(m, zip64))
    cd_size = f.tell() - cd_offset
    n = len(members)
    if zip64 or n >= 0xFFFF or cd_offset >= _U32 or cd_size >= _U32:
        eocd64 = f.tell()
        f.write(struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_offset))
        f.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64, 1))
        n, cd_size, cd_offset = 0xFFFF, _U32, _U32
    f.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, n, n, cd_size, cd_offset, 0))


def _write_zip(path: Path, members: list[_Member], zip64: bool) -> None:
    with open(path, "wb") as f:
        for m in members:
            _write_member(f, m, zip64)
        _write_end(f, members, zip64)


def _small(name: str, data: bytes) -> _Member:
    return _Member(name, len(data), [data])


def _payload(name: str, value: bytes | np.ndarray | Zeros) -> _Member:
    if isinstance(value, Zeros):
        return _Member(name, int(np.prod(value.shape, dtype=np.int64)), None)
    if isinstance(value, np.ndarray):
        return _Member(name, value.nbytes, [np.ascontiguousarray(value).tobytes()])
    return _small(name, bytes(value))


def write_torch_zip(
    path: str | os.PathLike[str],
    data_pkl: bytes,
    storages: dict[str, bytes | np.ndarray | Zeros],
    *,
    archive: str = "archive",
    byteorder: str | None = "little",
    version: str | None = "3\n",
    zip64: bool = False,
) -> Path:
    """A torch zip from a ready pickle and raw storage bytes (a `Zeros` shape here counts bytes).

    For tests of malformed files: any pickle, any storages, no byteorder/version member with None.
    """
    members = _head_members(archive, data_pkl, byteorder)
    members += [_payload(f"{archive}/data/{k}", v) for k, v in storages.items()]
    members += _tail_members(archive, version)
    _write_zip(Path(path), members, zip64)
    return Path(path)


def _head_members(archive: str, data_pkl: bytes, byteorder: str | None) -> list[_Member]:
    members = [_small(f"{archive}/data.pkl", data_pkl), _small(f"{archive}/.format_version", b"1"),
               _small(f"{archive}/.storage_alignment", b"64")]
    if byteorder is not None:
        members.append(_small(f"{archive}/byteorder", byteorder.encode()))
    return members


def _tail_members(archive: str, version: str | None) -> list[_Member]:
    members = [] if version is None else [_small(f"{archive}/version", version.encode())]
    return [*members, _small(f"{archive}/.data/serialization_id", b"0" * 40)]


def to_storage_bytes(a: np.ndarray, dtype: str) -> bytes:
    """Little-endian bytes of `a` as torch stores `dtype` (bf16 rounded to nearest even, like torch)."""
    if dtype == "bfloat16":
        return float32_to_bf16(np.asarray(a, dtype=np.float32)).astype("<u2").tobytes()
    return np.asarray(a, dtype="<f2" if dtype == "float16" else "<f4").tobytes()


def _array_chunks(a: np.ndarray, dtype: str) -> Iterator[bytes]:
    flat = np.ascontiguousarray(a).reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        yield to_storage_bytes(flat[start : start + _CHUNK], dtype)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def write_pth(
    path: str | os.PathLike[str],
    state_dict: dict[str, np.ndarray | Zeros | Generated],
    dtype: str = "bfloat16",
    *,
    archive: str | None = None,
    zip64: bool = False,
) -> Path:
    """Save `state_dict` as torch.save would, every tensor stored as `dtype`; arrays are streamed.

    The archive folder defaults to the file's stem, as torch.save names it when given a path.
    """
    if dtype not in _STORAGES:
        raise ValueError(f"dtype must be one of {sorted(_STORAGES)}, got {dtype!r}")
    path = Path(path)
    archive = archive or path.stem
    item = _ITEMSIZE[dtype]
    entries: list[TensorEntry] = []
    payloads: list[_Member] = []
    for i, (name, value) in enumerate(state_dict.items()):
        shape = tuple(int(d) for d in value.shape)
        numel = int(np.prod(shape, dtype=np.int64))
        entries.append((name, _STORAGES[dtype], str(i), numel, 0, shape, contiguous_strides(shape)))
        if isinstance(value, Zeros):
            chunks = None
        elif isinstance(value, Generated):
            chunks = value.chunks(dtype)
        else:
            chunks = _array_chunks(value, dtype)
        payloads.append(_Member(f"{archive}/data/{i}", numel * item, chunks))
    head = _head_members(archive, tensor_pickle(entries), "little")
    _write_zip(path, head + payloads + _tail_members(archive, "3\n"), zip64)
    return path
