"""Read PyTorch `.pth` checkpoints (torch zip format) without torch, lazily.

The zip holds `<archive>/data.pkl` (the state dict, unpickled by safe_unpickle's allow-list) and one
member per storage, `<archive>/data/<key>`. torch writes members uncompressed, so each tensor is a
plain span of the zip file: we compute its offset from the member's local header and hand out a
`LazyTensor` on it. No tensor data is read here.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from runtime.errors import ModelFileError
from runtime.formats.safe_unpickle import TensorRef, load_tensor_dict
from runtime.formats.tensors import FileHandle, LazyTensor
from runtime.quant.types import DType

MAX_TENSORS = 100_000
_STORAGE_DTYPES = {"BFloat16Storage": DType.BF16, "HalfStorage": DType.F16, "FloatStorage": DType.F32}
_ITEMSIZE = {DType.BF16: 2, DType.F16: 2, DType.F32: 4}


def _member_data_offset(fh: FileHandle, info: zipfile.ZipInfo) -> int:
    head = fh.pread(info.header_offset, 30)
    if head[:4] != b"PK\x03\x04":
        raise ModelFileError(fh.path, f"zip member '{info.filename}' has a damaged local header")
    name_len, extra_len = struct.unpack_from("<HH", head, 26)
    return info.header_offset + 30 + name_len + extra_len


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


def _is_contiguous(t: TensorRef) -> bool:
    want = _contiguous_strides(t.shape)
    return all(d == 1 or s == w for d, s, w in zip(t.shape, t.stride, want, strict=True))


def read_pth(path: str | os.PathLike[str]) -> dict[str, LazyTensor]:
    """Open a torch zip checkpoint and return its tensors (names as stored)."""
    path = Path(path)
    fh = FileHandle(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ModelFileError(path, f"not a readable zip archive (truncated or damaged?): {e}") from None
    except OSError as e:
        raise ModelFileError(path, f"cannot read: {e}") from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkl_names = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl_names:
            raise ModelFileError(path, "zip has no <archive>/data.pkl: not a PyTorch checkpoint")
        prefix = pkl_names[0][: -len("data.pkl")]
        order = infos.get(prefix + "byteorder")
        try:
            if order is not None and zf.read(order).strip() not in (b"little", b""):
                raise ModelFileError(path, "big-endian checkpoints are not supported")
            refs = load_tensor_dict(zf.read(infos[pkl_names[0]]), path)
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise ModelFileError(path, f"damaged zip member: {e}") from None
        if len(refs) > MAX_TENSORS:
            raise ModelFileError(path, f"holds {len(refs)} tensors; refusing more than {MAX_TENSORS}")
        return {name: _lazy(path, fh, infos, prefix, name, ref) for name, ref in refs.items()}


def _lazy(
    path: Path, fh: FileHandle, infos: dict[str, zipfile.ZipInfo], prefix: str, name: str, ref: TensorRef
) -> LazyTensor:
    st = ref.storage
    dtype = _STORAGE_DTYPES.get(st.type_name)
    if dtype is None:
        raise ModelFileError(path, f"tensor '{name}' is stored as {st.type_name}; only bf16, fp16 and fp32 are read")
    member = infos.get(f"{prefix}data/{st.key}")
    if member is None:
        raise ModelFileError(path, f"tensor '{name}' refers to storage '{st.key}', which the zip does not contain")
    if member.compress_type != zipfile.ZIP_STORED:
        raise ModelFileError(path, f"storage '{st.key}' is a compressed member; torch.save never compresses")
    item = _ITEMSIZE[dtype]
    if member.file_size < st.numel * item:
        raise ModelFileError(
            path, f"storage '{st.key}' holds {member.file_size} bytes, less than its {st.numel} elements need"
        )
    if any(d < 0 for d in ref.shape) or ref.offset < 0:
        raise ModelFileError(path, f"tensor '{name}' has a negative size or offset")
    numel = 1
    for d in ref.shape:
        numel *= d
    if ref.offset + numel > st.numel:
        raise ModelFileError(path, f"tensor '{name}' runs past the end of its storage '{st.key}'")
    if not _is_contiguous(ref):
        raise ModelFileError(path, f"tensor '{name}' is not contiguous (strides {ref.stride}); save it contiguous")
    offset = _member_data_offset(fh, member) + ref.offset * item
    return LazyTensor(name, ref.shape, dtype, fh, offset)
