"""GGUF v3, the project's native model format: a strict reader and a streaming writer.

Writing uses the `gguf` package's GGUFWriter for the header, metadata and tensor infos, then streams
tensor data chunk by chunk into the aligned data section, so a 7B model never sits in memory.
Reading is our own: every length and count in the header is checked against the bytes that are
left before it is used (gguf's reader trusts declared array counts, so a crafted file can make it
loop for ever), and every tensor span against the file size, before anything reaches native code.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ModelFileError
from runtime.formats.tensors import FileHandle, LazyTensor
from runtime.quant.types import DType

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
ALIGNMENT = 64  # what we write: a cache line, enough for any SIMD load
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_STRING = 1 << 24
_U64_AT = struct.Struct("<Q").unpack_from
MAX_DIMS = 4
# Elements of all metadata arrays together: each becomes a Python object (an int of 1 stored byte
# takes 36), so this bounds the header's memory (a 256k vocabulary with scores, types and merges
# has about 1.3M)
MAX_ARRAY_ELEMENTS = 1 << 21

# GGUF metadata value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALARS: dict[int, str] = {
    _U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i",
    _F32: "<f", _BOOL: "<?", _U64: "<Q", _I64: "<q", _F64: "<d",
}


@dataclass
class GgufFile:
    """A parsed GGUF file: metadata values and lazily readable tensors."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, LazyTensor]
    data_offset: int
    alignment: int
    file: FileHandle = field(repr=False)


class _Cursor:
    """Bounds-checked little-endian reads from a memory map."""

    def __init__(self, path: Path, buf: mmap.mmap | bytes) -> None:
        self.path, self.buf, self.pos = path, buf, 0
        self.elements = 0  # array elements read so far

    def fail(self, problem: str) -> ModelFileError:
        return ModelFileError(self.path, f"malformed GGUF header at byte {self.pos}: {problem}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ModelFileError(
                self.path, f"file is truncated: the GGUF header needs {n} more bytes at byte {self.pos}"
            )
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def string(self, limit: int = MAX_STRING) -> str:
        n = self.unpack("<Q")
        if n > limit:
            raise self.fail(f"string of {n} bytes is longer than the limit of {limit}")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not valid UTF-8") from None

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STR:
            return self.string()
        if vtype == _ARR:
            if depth > 0:
                raise self.fail("nested arrays are not supported")
            etype = self.unpack("<I")
            count = self.unpack("<Q")
            smallest = 8 if etype == _STR else struct.calcsize(_SCALARS.get(etype, "<B"))
            if etype not in _SCALARS and etype != _STR:
                raise self.fail(f"unknown array element type {etype}")
            if count * smallest > len(self.buf) - self.pos:
                raise self.fail(f"array of {count} elements does not fit in the file")
            self.elements += count
            if self.elements > MAX_ARRAY_ELEMENTS:
                raise self.fail(f"metadata arrays hold more than {MAX_ARRAY_ELEMENTS} elements in all")
            if etype in _SCALARS and etype != _BOOL:
                fmt = _SCALARS[etype]
                size = struct.calcsize(fmt)
                raw = self.take(count * size)
                return list(struct.unpack(f"<{count}{fmt[1]}", raw))
            if etype == _STR:
                return self.strings(count)
            return [self.value(etype, depth + 1) for _ in range(count)]
        raise self.fail(f"unknown metadata value type {vtype}")

    def strings(self, count: int) -> list[str]:
        """`count` strings in a row (a vocabulary: 65536 of them in a World model's file), read in one
        tight loop; the first one that is too long, runs past the end or is not UTF-8 is read again by
        `string`, which raises the error naming it."""
        buf, pos, end, out = self.buf, self.pos, len(self.buf), []
        length_at = _U64_AT
        for _ in range(count):
            if pos + 8 > end:
                break
            (n,) = length_at(buf, pos)
            if n > MAX_STRING or pos + 8 + n > end:
                break
            try:
                out.append(str(buf[pos + 8 : pos + 8 + n], "utf-8"))
            except UnicodeDecodeError:
                break
            pos += 8 + n
        self.pos = pos
        while len(out) < count:
            out.append(self.string())
        return out


def read_gguf(path: str | os.PathLike[str], mapping: mmap.mmap | None = None) -> GgufFile:
    """Parse and validate a GGUF (v2 or v3) file; tensor data stays on disk. The header and later
    tensor reads go through `mapping` where given (see FileHandle)."""
    path = Path(path)
    fh = FileHandle(path, mapping)
    if fh.size < 24:
        raise ModelFileError(path, f"file is truncated: {fh.size} bytes is too short for a GGUF header")
    with contextlib.ExitStack() as stack:
        mm = fh.mapping
        if mm is None:
            f = stack.enter_context(open(path, "rb"))
            mm = stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        cur = _Cursor(path, mm)
        if cur.take(4) != GGUF_MAGIC:
            raise ModelFileError(path, "wrong magic: not a GGUF file")
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise ModelFileError(path, f"unsupported GGUF version {version} (this reader knows 2 and 3)")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise cur.fail(f"implausible counts: {n_tensors} tensors, {n_kv} metadata entries")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string(limit=1 << 16)
            if key in metadata:
                raise cur.fail(f"metadata key '{key}' appears twice")
            metadata[key] = cur.value(cur.unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string(limit=1 << 16)
            n_dims = cur.unpack("<I")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"tensor '{name}' has {n_dims} dimensions")
            dims = [cur.unpack("<Q") for _ in range(n_dims)]
            code = cur.unpack("<I")
            offset = cur.unpack("<Q")
            try:
                dtype = DType(code)
            except ValueError:
                problem = (
                    f"tensor '{name}' has type {ggml_type_name(code)} (ggml type {code}), which this version "
                    f"cannot read; it reads {', '.join(t.name for t in DType)} (convert the model from its "
                    ".pth, or use a GGUF in one of these types)"
                )
                raise ModelFileError(path, problem) from None
            if any(d <= 0 or d > 1 << 40 for d in dims):
                raise cur.fail(f"tensor '{name}' has dimensions {dims}")
            infos.append((name, tuple(reversed(dims)), dtype, offset))
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ModelFileError(path, f"general.alignment {alignment!r} is not a power of two")
        data_offset = -(-cur.pos // alignment) * alignment
    tensors: dict[str, LazyTensor] = {}
    for name, shape, dtype, offset in infos:
        if name in tensors:
            raise ModelFileError(path, f"tensor '{name}' appears twice")
        if offset % alignment:
            raise ModelFileError(path, f"tensor '{name}' is not aligned to {alignment} bytes")
        if shape[-1] % dtype.block_size:
            problem = (
                f"tensor '{name}' has rows of {shape[-1]} values, which is not a multiple of "
                f"{dtype.block_size}: {dtype.name} stores {dtype.blocks_phrase}"
            )
            raise ModelFileError(path, problem)
        tensors[name] = LazyTensor(name, shape, dtype, fh, data_offset + offset)
    return GgufFile(path, version, metadata, tensors, data_offset, alignment, fh)


def ggml_type_name(code: int) -> str:
    """ggml's name for a tensor type code ('Q4_K' for 12), or 'unknown'."""
    import gguf

    try:
        return gguf.GGMLQuantizationType(code).name
    except ValueError:
        return "unknown"


# --------------------------------------------------------------------------------------------- writing

@dataclass(frozen=True)
class TensorPlan:
    """One tensor to write: its name, numpy-order shape and stored type."""

    name: str
    shape: tuple[int, ...]
    dtype: DType

    @property
    def nbytes(self) -> int:
        return self.dtype.nbytes(self.shape)


def write_gguf(
    out,  # a binary file object opened for writing at position 0
    arch: str,
    metadata: Iterable[tuple[str, Any]],
    plan: list[TensorPlan],
    chunks: Callable[[TensorPlan], Iterator[bytes | memoryview]],
) -> int:
    """Write a GGUF v3 file to `out`: header and metadata via gguf.GGUFWriter, then streamed data.

    `chunks(tensor)` yields the stored bytes of one tensor in order; their total must equal
    `tensor.nbytes`. Returns the size of the header (where the tensor data section starts).
    Metadata values are typed from Python: bool, int (uint32 if it fits, else
    uint64), float (float32), str, and lists of str or int.
    """
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.data_alignment = ALIGNMENT
    writer.add_custom_alignment(ALIGNMENT)
    for key, value in metadata:
        _add_kv(writer, key, value)
    for t in plan:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes,
                               raw_dtype=gguf.GGMLQuantizationType(int(t.dtype)))
    writer.fout = [out]
    writer.state = gguf.gguf_writer.WriterState.EMPTY
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    pos = header_end = out.tell()
    for t in plan:
        pad = -pos % ALIGNMENT
        out.write(b"\0" * pad)
        pos += pad
        written = 0
        for chunk in chunks(t):
            out.write(chunk)
            written += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
        if written != t.nbytes:
            raise RuntimeError(f"internal error: tensor '{t.name}' wrote {written} bytes, expected {t.nbytes}")
        pos += written
    writer.fout = None
    return header_end


def _add_kv(writer, key: str, value: Any) -> None:
    if key == "general.architecture":
        return
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        if 0 <= value < 1 << 32:
            writer.add_uint32(key, value)
        else:
            writer.add_uint64(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, list | tuple):
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"cannot store {type(value).__name__} in GGUF metadata ({key})")
