"""Read `.safetensors` files lazily with our own small parser.

Layout: an 8-byte little-endian header length N, N bytes of JSON (an object mapping each tensor name
to {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional "__metadata__" entry), then the
data region; offsets are relative to the start of the data region. Parsing it ourselves lets every
offset be validated against the file before a tensor is handed out, and keeps the runtime free of
extra dependencies. Types BF16, F16 and F32 are read; any other type is refused by name.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from runtime.errors import ModelFileError
from runtime.formats.tensors import FileHandle, LazyTensor
from runtime.quant.types import DType

# The JSON header is parsed whole, and JSON can take 20 times its size as Python objects ("[]," is
# a 56-byte list); a header lists a few hundred tensors in well under 1 MB, so 8 MB bounds the parse
# at about 170 MB (safetensors itself allows 100 MB, which could take 2 GB).
MAX_HEADER = 8 << 20
METADATA_KEY = "__metadata__"
SAFETENSORS_TYPES: dict[str, DType] = {"BF16": DType.BF16, "F16": DType.F16, "F32": DType.F32}


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, LazyTensor]:
    """Every tensor of a `.safetensors` file as a `LazyTensor` (no tensor data is read)."""
    fh = FileHandle(Path(path))
    try:
        header, data_start = _read_header(fh)
        entries = ((name, info) for name, info in header.items() if name != METADATA_KEY)
        return {name: _tensor(fh, data_start, name, info) for name, info in entries}
    except BaseException:
        fh.close()  # no tensor refers to it
        raise


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key '{key}' appears twice")
        out[key] = value
    return out


def _read_header(fh: FileHandle) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and the offset where the data region starts."""
    path = fh.path
    if fh.size < 8:
        raise ModelFileError(path, f"file is truncated: {fh.size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", fh.pread(0, 8))
    if n > MAX_HEADER:
        raise ModelFileError(path, f"safetensors header length {n} is over the {MAX_HEADER >> 20} MB limit")
    if 8 + n > fh.size:
        raise ModelFileError(
            path,
            f"file is truncated: the safetensors header needs {n} bytes, only {fh.size - 8} follow",
        )
    try:
        header = json.loads(fh.pread(8, n).decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelFileError(path, f"the safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, f"the safetensors header is a JSON {type(header).__name__}, not an object")
    return header, 8 + n


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _tensor(fh: FileHandle, data_start: int, name: str, info: object) -> LazyTensor:
    path = fh.path
    what = f"tensor '{name}'"
    if not isinstance(info, dict):
        raise ModelFileError(path, f"{what} has a malformed header entry (not an object)")
    type_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ModelFileError(path, f"{what} has a malformed shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(v) for v in offsets):
        raise ModelFileError(path, f"{what} has malformed data_offsets {offsets!r}")
    dtype = SAFETENSORS_TYPES.get(type_name) if isinstance(type_name, str) else None
    if dtype is None:
        raise ModelFileError(path, f"{what} has type {type_name!r}; only BF16, F16 and F32 are supported")
    begin, end = offsets
    if begin > end:
        raise ModelFileError(path, f"{what} has data offsets {begin}..{end}, which run backwards")
    if data_start + end > fh.size:
        raise ModelFileError(
            path, f"file is truncated: {what} lies at data bytes {begin}..{end}, outside the file's "
            f"{fh.size - data_start} data bytes"
        )
    numel = 1
    for d in shape:
        numel *= d
    if end - begin != numel * dtype.block_bytes:
        raise ModelFileError(
            path,
            f"{what} of shape {tuple(shape)} and type {type_name} needs {numel * dtype.block_bytes} bytes "
            f"but its data offsets span {end - begin}",
        )
    return LazyTensor(name, tuple(shape), dtype, fh, data_start + begin, end - begin)
