"""Write `.safetensors` files for tests, following the published format (not our reader's code).

8-byte little-endian header length, a JSON header (keys sorted, like the reference implementation),
padded with spaces to a multiple of 8, then the tensors' bytes back to back.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_NUMPY_TYPES = {"F32": "<f4", "F16": "<f2"}


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bits (uint16), rounding to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(u: np.ndarray) -> np.ndarray:
    return (u.astype(np.uint32) << 16).view(np.float32)


def tensor_bytes(a: np.ndarray, type_name: str) -> bytes:
    if type_name == "BF16":
        return to_bf16_bits(a).astype("<u2").tobytes()
    return np.ascontiguousarray(a).astype(_NUMPY_TYPES[type_name]).tobytes()


def stored_values(a: np.ndarray, type_name: str) -> np.ndarray:
    """What a reader must decode for `a` written as `type_name` (float32)."""
    if type_name == "BF16":
        return from_bf16_bits(to_bf16_bits(a)).reshape(np.shape(a))
    return np.asarray(a).astype(_NUMPY_TYPES[type_name]).astype(np.float32)


def header_and_data(
    tensors: dict[str, np.ndarray], type_name: str = "F32", metadata: dict[str, str] | None = None
) -> tuple[dict, bytes]:
    """The header object and data region for `tensors`, all stored as `type_name`."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    chunks, pos = [], 0
    for name in sorted(tensors):
        data = tensor_bytes(tensors[name], type_name)
        shape = list(np.shape(tensors[name]))
        header[name] = {"dtype": type_name, "shape": shape, "data_offsets": [pos, pos + len(data)]}
        chunks.append(data)
        pos += len(data)
    return header, b"".join(chunks)


def pack(header: dict | bytes, data: bytes) -> bytes:
    """A whole file from a header (object, or raw bytes for damaged headers) and a data region."""
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if not isinstance(header, bytes):
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def write_safetensors(
    path: str | Path,
    tensors: dict[str, np.ndarray],
    type_name: str = "F32",
    metadata: dict[str, str] | None = None,
) -> Path:
    path = Path(path)
    path.write_bytes(pack(*header_and_data(tensors, type_name, metadata)))
    return path
