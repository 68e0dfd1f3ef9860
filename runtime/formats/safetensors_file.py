"""Read `.safetensors` files lazily: an 8-byte header length, a JSON header, then the data.

Our own small parser (the format is simple, and it lets every offset be validated against the file
before a tensor is handed out). Types BF16, F16 and F32 are read; others are refused by name.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from runtime.errors import ModelFileError
from runtime.formats.tensors import FileHandle, LazyTensor
from runtime.quant.types import DType

MAX_HEADER = 100 << 20
_TYPES = {"BF16": DType.BF16, "F16": DType.F16, "F32": DType.F32}


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, LazyTensor]:
    path = Path(path)
    fh = FileHandle(path)
    if fh.size < 8:
        raise ModelFileError(path, "file is truncated: no safetensors header")
    (n,) = struct.unpack("<Q", fh.pread(0, 8))
    if n > MAX_HEADER or 8 + n > fh.size:
        raise ModelFileError(path, f"safetensors header of {n} bytes does not fit in the file")
    try:
        header = json.loads(fh.pread(8, n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFileError(path, f"safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "safetensors header is not a JSON object")
    base = 8 + n
    tensors: dict[str, LazyTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if not all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(path, f"tensor '{name}' has a malformed header entry") from None
        dtype = _TYPES.get(dtype_name)
        if dtype is None:
            raise ModelFileError(path, f"tensor '{name}' has type {dtype_name}; only BF16, F16 and F32 are read")
        if end < begin:
            raise ModelFileError(path, f"tensor '{name}' has data offsets {begin}..{end}")
        tensors[name] = LazyTensor(name, shape, dtype, fh, base + begin, end - begin)
    return tensors
