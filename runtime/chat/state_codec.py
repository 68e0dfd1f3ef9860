"""Lossless compression of serialised model states for the conversation store.

A state is float32 numbers whose low mantissa bytes are close to random; only the byte holding the
sign and the high exponent bits repeats much. So the default codec ("shuffle4-rle") splits the bytes
into four planes (every first byte of a float, then every second, …), deflates each plane with
zlib's run-length strategy and keeps a plane stored when deflating does not make it smaller. On
states of a 169M model this gives ~83 % of the raw size in about a millisecond; zlib or lzma on the
raw bytes give 91–93 %, lzma on shuffled bytes 82 % at twenty times the time (`bench/state_size.py`).

Every blob starts with a small header recording its codec and raw size, so the codec can change
later and old blobs still decode. `decode` checks every length before it allocates or copies and
raises `StateCodecError` on any damage, never anything else.
"""

from __future__ import annotations

import struct
import zlib

from runtime.errors import RwkvError

MAGIC = b"RWZ1"
_HEADER = struct.Struct("<4sBBHQ")  # magic, codec id, reserved, reserved, raw size
_PLANE = struct.Struct("<BI")  # method (0 stored, 1 deflate), payload length
_STORED, _DEFLATE = 0, 1
MAX_RAW_SIZE = 1 << 30  # a 14B state is ~4 MB; anything near this is damage

RAW = "raw"
ZLIB = "zlib"
SHUFFLE4_RLE = "shuffle4-rle"
DEFAULT_CODEC = SHUFFLE4_RLE
_IDS = {RAW: 0, ZLIB: 1, SHUFFLE4_RLE: 2}
_NAMES = {v: k for k, v in _IDS.items()}
CODECS = tuple(_IDS)


class StateCodecError(RwkvError, ValueError):
    """A compressed state blob is damaged or uses a codec this version does not know."""


def encode(raw: bytes, codec: str = DEFAULT_CODEC) -> bytes:
    """Compress `raw` (any bytes, normally `State.to_bytes()`) into a self-describing blob."""
    if codec not in _IDS:
        raise StateCodecError(f"unknown state codec {codec!r} (known: {', '.join(CODECS)})")
    raw = bytes(raw)
    if len(raw) > MAX_RAW_SIZE:
        raise StateCodecError(f"a state of {len(raw)} bytes is too large to store")
    header = _HEADER.pack(MAGIC, _IDS[codec], 0, 0, len(raw))
    if codec == RAW:
        return header + raw
    if codec == ZLIB:
        return header + zlib.compress(raw, 6)
    n4 = len(raw) - len(raw) % 4
    parts = [header]
    payloads = []
    for i in range(4):
        plane = raw[i:n4:4]
        packed = _deflate_rle(plane)
        if len(packed) < len(plane):
            parts.append(_PLANE.pack(_DEFLATE, len(packed)))
            payloads.append(packed)
        else:
            parts.append(_PLANE.pack(_STORED, len(plane)))
            payloads.append(plane)
    return b"".join(parts + payloads) + raw[n4:]


def codec_of(blob: bytes, source: str = "state blob") -> str:
    """The name of the codec that made `blob`."""
    return _NAMES[_parse_header(blob, source)[0]]


def raw_size_of(blob: bytes, source: str = "state blob") -> int:
    """The size `blob` decodes to, read from its header."""
    return _parse_header(blob, source)[1]


def decode(blob: bytes, source: str = "state blob") -> bytes:
    """Decompress a blob made by `encode`; `source` names it in error messages."""
    codec_id, raw_size = _parse_header(blob, source)
    view = memoryview(blob)[_HEADER.size :]
    if codec_id == 0:
        if len(view) != raw_size:
            raise StateCodecError(f"{source}: holds {len(view)} bytes, its header says {raw_size}")
        return bytes(view)
    if codec_id == 1:
        return _inflate(view, raw_size, source)
    n4 = raw_size - raw_size % 4
    plane_size = n4 // 4
    table_size = 4 * _PLANE.size
    if len(view) < table_size:
        raise StateCodecError(f"{source}: truncated (no plane table)")
    entries = [_PLANE.unpack_from(view, i * _PLANE.size) for i in range(4)]
    expected = table_size + sum(length for _, length in entries) + (raw_size - n4)
    if len(view) != expected:
        raise StateCodecError(f"{source}: holds {len(view) + _HEADER.size} bytes, its tables say "
                              f"{expected + _HEADER.size} (truncated or damaged)")
    planes: list[memoryview | bytes] = []
    pos = table_size
    for i, (method, length) in enumerate(entries):
        payload = view[pos : pos + length]
        pos += length
        if method == _STORED:
            if length != plane_size:
                raise StateCodecError(f"{source}: stored plane {i} has {length} bytes, expected {plane_size}")
            planes.append(payload)
        elif method == _DEFLATE:
            planes.append(_inflate(payload, plane_size, f"{source} (plane {i})"))
        else:
            raise StateCodecError(f"{source}: unknown plane method {method}")
    out = bytearray(raw_size)
    for i, plane in enumerate(planes):
        out[i:n4:4] = plane
    out[n4:] = view[pos:]
    return bytes(out)


def _parse_header(blob: bytes, source: str) -> tuple[int, int]:
    if not isinstance(blob, bytes | bytearray | memoryview):  # a damaged database row can hold any type
        raise StateCodecError(f"{source}: stored as {type(blob).__name__}, not as bytes")
    if len(blob) < _HEADER.size:
        raise StateCodecError(f"{source}: too short to be a compressed state ({len(blob)} bytes)")
    magic, codec_id, _, _, raw_size = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise StateCodecError(f"{source}: not a compressed state (bad magic)")
    if codec_id not in _NAMES:
        raise StateCodecError(f"{source}: unknown state codec id {codec_id} (written by a newer version?)")
    if raw_size > MAX_RAW_SIZE:
        raise StateCodecError(f"{source}: implausible raw size {raw_size}")
    return codec_id, raw_size


def _deflate_rle(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return z.compress(data) + z.flush()


def _inflate(data: memoryview | bytes, size: int, source: str) -> bytes:
    """Inflate exactly `size` bytes from `data`, refusing more, less or trailing garbage."""
    z = zlib.decompressobj()
    try:
        out = z.decompress(data, size + 1)
    except zlib.error as e:
        raise StateCodecError(f"{source}: damaged compressed data ({e})") from None
    if len(out) != size or z.unconsumed_tail or not z.eof or z.unused_data:
        raise StateCodecError(f"{source}: compressed data does not match its recorded size {size} (damaged)")
    return out
