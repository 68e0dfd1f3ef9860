"""Read BlinkDL `.pth` checkpoints (the torch zip format) lazily and without torch.

`torch.save` writes a zip: `<archive>/data.pkl` (the state dict, a pickle) and one member per storage,
`<archive>/data/<key>`, plus small `byteorder`, `version` and bookkeeping members. Storage members are
STORED (never compressed) and 64-byte aligned, so each tensor is a plain span of the zip file: its offset
is the member's data offset (local header offset + 30 + name length + extra length, read from the local
header itself) plus storage_offset × item size. No tensor byte is read here; `LazyTensor`s share one
`FileHandle`.

The pickle is read by `safe_unpickle`'s allow-list (nothing it names is executed). The zip directory is
read with `zipfile` (which handles ZIP64, so 15 GB checkpoints work); every failure becomes a
`ModelFileError` naming the file and the problem.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ModelFileError
from runtime.formats import safe_unpickle
from runtime.formats.safe_unpickle import TensorRecord, unpickle_state_dict
from runtime.formats.tensors import FileHandle, LazyTensor
from runtime.quant.types import DType

ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # signature … name length, extra length: 30 bytes
_SMALL_MEMBER = 1 << 10  # byteorder / version are a few bytes

# torch element types read here, with their item sizes.
_DTYPES: dict[str, DType] = {"bfloat16": DType.BF16, "float16": DType.F16, "float32": DType.F32}
_ITEMSIZE: dict[str, int] = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class _Archive:
    """The zip's members by name and the folder prefix torch put them under ("<archive>/")."""

    path: Path
    members: dict[str, zipfile.ZipInfo]
    prefix: str


def read_pth(path: str | os.PathLike[str]) -> dict[str, LazyTensor]:
    """The tensors of a torch zip checkpoint, by their stored names and shapes (time_mix stays (1,1,C)).

    Reads only the zip directory, a few small members and `data.pkl`. Raises ModelFileError for a
    damaged, truncated, compressed, big-endian or unsupported file, and UnsafePickleError when the
    pickle names a global a state dict of tensors does not need.
    """
    path = Path(path)
    fh = FileHandle(path)
    _check_magic(fh)
    archive = _read_directory(path)
    _check_byteorder(fh, archive)
    _check_version(fh, archive)
    records = unpickle_state_dict(_read_small(fh, archive, "data.pkl", safe_unpickle.MAX_PICKLE_BYTES), path)
    offsets: dict[str, int] = {}
    return {name: _lazy_tensor(fh, archive, name, rec, offsets) for name, rec in records.items()}


def _check_magic(fh: FileHandle) -> None:
    head = fh.pread(0, min(4, fh.size)) if fh.size else b""
    if head == ZIP_MAGIC:
        return
    if head[:1] == b"\x80":  # a bare pickle: torch.save before 1.6
        raise ModelFileError(
            fh.path, "legacy (pre-1.6, non-zip) torch.save file; re-save it with a current torch to read it"
        )
    raise ModelFileError(
        fh.path, f"not a PyTorch zip checkpoint (starts with {head!r}, expected {ZIP_MAGIC!r})"
    )


def _read_directory(path: Path) -> _Archive:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as e:
        raise ModelFileError(path, f"damaged or truncated zip archive ({e})") from None
    except (OSError, EOFError, ValueError, struct.error, NotImplementedError) as e:
        raise ModelFileError(path, f"damaged or truncated zip archive ({type(e).__name__}: {e})") from None
    size = path.stat().st_size
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        # zipfile shifts every offset by where it found the directory against where the end record
        # says it is, so a damaged end record can put a member before the start of the file
        if not 0 <= info.header_offset < size:
            raise ModelFileError(
                path,
                f"damaged zip directory: member '{info.filename}' starts at byte {info.header_offset}, "
                f"outside the file's {size} bytes",
            )
        if info.filename in members:
            raise ModelFileError(path, f"zip member '{info.filename}' appears twice")
        members[info.filename] = info
    pickles = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        found = "no" if not pickles else f"{len(pickles)}"
        raise ModelFileError(path, f"zip has {found} <archive>/data.pkl member(s): not a PyTorch checkpoint")
    return _Archive(path, members, pickles[0][: -len("data.pkl")])


def _data_offset(fh: FileHandle, info: zipfile.ZipInfo) -> int:
    """Where a STORED member's bytes start, from its local header; checks the span fits the file."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise ModelFileError(
            fh.path,
            f"compressed member '{info.filename}' (zip method {info.compress_type}); "
            "torch.save never compresses",
        )
    if info.flag_bits & 0x1:
        raise ModelFileError(fh.path, f"zip member '{info.filename}' is encrypted")
    if info.header_offset + _LOCAL_HEADER.size > fh.size:
        raise ModelFileError(
            fh.path, f"file is truncated: the header of zip member '{info.filename}' is missing"
        )
    fields = _LOCAL_HEADER.unpack(fh.pread(info.header_offset, _LOCAL_HEADER.size))
    signature, name_len, extra_len = fields[0], fields[-2], fields[-1]
    if signature != ZIP_MAGIC:
        raise ModelFileError(fh.path, f"zip member '{info.filename}' has a damaged local header")
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if start + info.file_size > fh.size:
        raise ModelFileError(
            fh.path,
            f"file is truncated: zip member '{info.filename}' needs bytes {start}..{start + info.file_size} "
            f"but the file has {fh.size}",
        )
    return start


def _read_small(fh: FileHandle, archive: _Archive, name: str, limit: int) -> bytes:
    """A whole member (data.pkl, byteorder, version), CRC-checked."""
    info = archive.members.get(archive.prefix + name)
    if info is None:
        raise ModelFileError(fh.path, f"zip has no member '{archive.prefix}{name}'")
    if info.file_size > limit:
        raise ModelFileError(
            fh.path, f"zip member '{info.filename}' is {info.file_size} bytes, more than the limit of {limit}"
        )
    data = fh.pread(_data_offset(fh, info), info.file_size)
    if zlib.crc32(data) != info.CRC:
        raise ModelFileError(fh.path, f"zip member '{info.filename}' is corrupt (CRC mismatch)")
    return data


def _check_byteorder(fh: FileHandle, archive: _Archive) -> None:
    if archive.prefix + "byteorder" not in archive.members:
        return  # files from before torch 1.10 have none and are little-endian
    order = _read_small(fh, archive, "byteorder", _SMALL_MEMBER).strip()
    if order == b"big":
        raise ModelFileError(
            fh.path, "big-endian checkpoint (byteorder 'big'); only little-endian files are read"
        )
    if order != b"little":
        raise ModelFileError(fh.path, f"unknown byteorder {order[:20]!r} in the checkpoint")


def _check_version(fh: FileHandle, archive: _Archive) -> None:
    if archive.prefix + "version" not in archive.members:
        return
    version = _read_small(fh, archive, "version", _SMALL_MEMBER).strip()
    if not version.isdigit():
        raise ModelFileError(fh.path, f"malformed format version {version[:20]!r} in the checkpoint")


def _lazy_tensor(
    fh: FileHandle, archive: _Archive, name: str, rec: TensorRecord, offsets: dict[str, int]
) -> LazyTensor:
    dtype = _DTYPES.get(rec.dtype)
    if dtype is None:
        raise ModelFileError(
            fh.path,
            f"tensor '{name}' is stored as {rec.storage.kind} ({rec.dtype}); only bfloat16, float16 "
            "and float32 tensors are read",
        )
    item = _ITEMSIZE[rec.dtype]
    storage_elems = _storage_elements(fh, archive, name, rec, item)
    numel = 1
    for d in rec.shape:
        numel *= d
    if numel and rec.storage_offset + numel > storage_elems:
        raise ModelFileError(
            fh.path,
            f"tensor '{name}' (offset {rec.storage_offset}, {numel} elements) does not fit in its storage "
            f"'{rec.storage.key}' of {storage_elems} elements",
        )
    if not _is_contiguous(rec.shape, rec.stride):
        raise ModelFileError(
            fh.path,
            f"tensor '{name}' is a non-contiguous view (shape {rec.shape}, strides {rec.stride}); "
            "save it with .contiguous() to read it",
        )
    key = rec.storage.key
    if key not in offsets:
        offsets[key] = _data_offset(fh, archive.members[archive.prefix + "data/" + key])
    return LazyTensor(name, rec.shape, dtype, fh, offsets[key] + rec.storage_offset * item)


def _storage_elements(fh: FileHandle, archive: _Archive, name: str, rec: TensorRecord, item: int) -> int:
    """Elements of `rec`'s type in its storage, after checking the member exists and is big enough."""
    st = rec.storage
    info = archive.members.get(f"{archive.prefix}data/{st.key}")
    if info is None:
        raise ModelFileError(
            fh.path,
            f"tensor '{name}' needs storage member '{archive.prefix}data/{st.key}', which the zip lacks",
        )
    if st.element_type is None:  # untyped storage: numel counts bytes
        needed, elems = st.numel, st.numel // item
    else:
        needed, elems = st.numel * item, st.numel
    if info.file_size < needed:
        raise ModelFileError(
            fh.path,
            f"storage '{st.key}' of tensor '{name}' holds {info.file_size} bytes, less than the {needed} "
            f"its {st.numel} elements need",
        )
    return elems


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """C-order contiguity as torch defines it: strides of size-1 dimensions do not matter."""
    if any(d == 0 for d in shape):
        return True
    expected = 1
    for d, s in zip(reversed(shape), reversed(stride), strict=True):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True
