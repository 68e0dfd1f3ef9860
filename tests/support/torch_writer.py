"""Write PyTorch-format checkpoints (torch zip + pickle) without torch, for tests.

The pickle is emitted opcode by opcode with the same structure `torch.save` produces for a state
dict (protocol 2: an OrderedDict of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
False, OrderedDict())` calls, storages as BINPERSID ('storage', torch.<T>Storage, key, 'cpu', numel)).
Arrays are streamed into STORED zip members, so large test checkpoints cost no memory. The reader is
also proven on files written by real torch.save (tests/fixtures/reference/*.pth).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

from runtime.quant.codec import float32_to_bf16

_STORAGE = {"float32": ("FloatStorage", "<f4"), "float16": ("HalfStorage", "<f2"), "bfloat16": ("BFloat16Storage", None)}


def _unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(v: int) -> bytes:
    if 0 <= v < 1 << 31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _int_tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def tensor_pickle(entries: list[tuple[str, str, str, int, int, tuple[int, ...], tuple[int, ...]]]) -> bytes:
    """entries: (name, storage class, storage key, storage numel, offset, size, stride)."""
    out = [b"\x80\x02", b"ccollections\nOrderedDict\nq\x00)R", b"("]
    for name, storage, key, numel, offset, size, stride in entries:
        out.append(_unicode(name))
        out.append(b"ctorch._utils\n_rebuild_tensor_v2\n(")
        out.append(b"(" + _unicode("storage") + f"ctorch\n{storage}\n".encode() + _unicode(key) + _unicode("cpu")
                   + _int(numel) + b"tQ")
        out.append(_int(offset) + _int_tuple(size) + _int_tuple(stride))
        out.append(b"\x89ccollections\nOrderedDict\n)RtR")
    out.append(b"u.")
    return b"".join(out)


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    s, step = [], 1
    for d in reversed(shape):
        s.append(step)
        step *= d
    return tuple(reversed(s))


def write_pth(path: Path, state_dict: dict[str, np.ndarray], dtype: str = "bfloat16") -> Path:
    """Save `state_dict` like torch.save would, with every tensor stored as `dtype`."""
    storage, np_dtype = _STORAGE[dtype]
    entries = []
    for i, (name, arr) in enumerate(state_dict.items()):
        entries.append((name, storage, str(i), int(np.prod(arr.shape)), 0, tuple(arr.shape), _strides(arr.shape)))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr("archive/data.pkl", tensor_pickle(entries))
        zf.writestr("archive/byteorder", "little")
        for i, arr in enumerate(state_dict.values()):
            a = np.ascontiguousarray(arr, dtype=np.float32)
            with zf.open(f"archive/data/{i}", "w", force_zip64=a.nbytes > 1 << 30) as member:
                for rows in np.array_split(a.reshape(-1), max(1, a.size // (1 << 22))):
                    data = float32_to_bf16(rows) if np_dtype is None else rows.astype(np_dtype)
                    member.write(data.tobytes())
        zf.writestr("archive/version", "3\n")
    return path
