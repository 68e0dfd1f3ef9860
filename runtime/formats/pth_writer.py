"""Write a small float32 state dict as a PyTorch `.pth` (what `torch.save` writes), without torch.

Used to export state-tuned starting states. The layout, as `runtime/formats/pth.py` reads it: a zip
whose members are `<archive>/data.pkl` (a protocol-2 pickle of an OrderedDict name → tensor, each
tensor `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())` with its
storage a persistent id `('storage', torch.FloatStorage, key, 'cpu', numel)`), `<archive>/byteorder`,
`<archive>/version`, then one STORED member per storage, `<archive>/data/<key>`, its data 64-byte
aligned by a padding extra field. The pickle is emitted opcode by opcode (no memo: valid, only larger),
since the names it refers to (torch.*) need not be importable here. The whole file is built in memory
(states are a few MB) and written atomically.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from runtime.atomic import atomic_write_bytes

ALIGNMENT = 64
_PAD_TAG = 0x4246  # the extra-field id torch uses for its alignment padding


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(v: int) -> bytes:
    if not 0 <= v < 1 << 31:
        raise ValueError(f"{v} is out of range for a tensor's size")
    return b"J" + struct.pack("<i", v)


def _int_tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + b")R"


def state_dict_pickle(shapes: dict[str, tuple[int, ...]]) -> bytes:
    """The data.pkl for float32 tensors of `shapes`, tensor i in storage key str(i)."""
    out = bytearray(b"\x80\x02" + _ordered_dict() + b"(")
    for i, (name, shape) in enumerate(shapes.items()):
        numel = int(np.prod(shape, dtype=np.int64))
        strides = tuple(int(np.prod(shape[d + 1:], dtype=np.int64)) for d in range(len(shape)))
        out += _text(name) + _global("torch._utils", "_rebuild_tensor_v2") + b"("
        out += b"(" + _text("storage") + _global("torch", "FloatStorage") + _text(str(i)) + _text("cpu")
        out += _int(numel) + b"tQ"
        out += _int(0) + _int_tuple(shape) + _int_tuple(strides) + b"\x89" + _ordered_dict() + b"tR"
    out += b"u."
    return bytes(out)


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = zf.fp.tell() + 30 + len(name.encode()) + 4
    pad = -start % ALIGNMENT
    info.extra = struct.pack("<HH", _PAD_TAG, pad) + b"Z" * pad
    zf.writestr(info, data)


def pth_bytes(tensors: dict[str, np.ndarray], archive: str = "archive") -> bytes:
    """The bytes of a `.pth` holding `tensors` as float32."""
    arrays = {k: np.ascontiguousarray(v, dtype="<f4") for k, v in tensors.items()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        _add(zf, f"{archive}/data.pkl", state_dict_pickle({k: tuple(a.shape) for k, a in arrays.items()}))
        _add(zf, f"{archive}/byteorder", b"little")
        for i, a in enumerate(arrays.values()):
            _add(zf, f"{archive}/data/{i}", a.tobytes())
        _add(zf, f"{archive}/version", b"3\n")
    return buf.getvalue()


def write_pth(path: str | os.PathLike[str], tensors: dict[str, np.ndarray]) -> Path:
    """Save `tensors` (float32) to `path` as torch.save would, atomically; the archive is named after
    the file's stem, as torch.save names it."""
    path = Path(path)
    atomic_write_bytes(path, pth_bytes(tensors, archive=path.stem))
    return path
