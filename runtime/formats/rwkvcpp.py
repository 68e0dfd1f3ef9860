"""Read rwkv.cpp `.bin` model files (magic 'ggmf', format versions 100 and 101), lazily.

Layout: six little-endian uint32 (magic, version, n_vocab, n_embed, n_layer, data_type), then tensor
records to the end of the file: int32 dim_count, int32 key_length, int32 data_type, the dims
(innermost first), the key, the raw data, no padding. rwkv.cpp numbers types its own way (0 F32,
1 F16, 2 Q4_0, 3 Q4_1, 7 Q5_0, 8 Q5_1, 9 Q8_0); blocks are ggml's. Version 100 files used an older
quantized block layout, so quantized tensors in them are refused.

rwkv.cpp's converter squeezes every `time_*` tensor to (C,) and stores `time_decay` as
-exp(time_decay); ln0 stays a separate tensor. Those facts are recorded as the file's transforms.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ModelFileError
from runtime.formats.tensors import FileHandle, LazyTensor
from runtime.quant.types import DType

MAGIC = 0x67676D66
VERSIONS = (100, 101)
TYPE_CODES = {0: DType.F32, 1: DType.F16, 2: DType.Q4_0, 3: DType.Q4_1, 7: DType.Q5_0, 8: DType.Q5_1, 9: DType.Q8_0}
TRANSFORMS = frozenset({"time_decay=-exp(time_decay)", "time_mix_squeezed"})
MAX_KEY = 1024
MAX_DIM = 1 << 31


@dataclass
class RwkvCppFile:
    path: Path
    version: int
    n_vocab: int
    n_embd: int
    n_layer: int
    data_type: DType
    tensors: dict[str, LazyTensor] = field(default_factory=dict)
    transforms: frozenset[str] = TRANSFORMS


def _dtype(path: Path, code: int, what: str) -> DType:
    dtype = TYPE_CODES.get(code)
    if dtype is None:
        raise ModelFileError(path, f"{what} has rwkv.cpp type code {code}, which is not known")
    return dtype


def read_rwkvcpp(path: str | os.PathLike[str]) -> RwkvCppFile:
    path = Path(path)
    fh = FileHandle(path)
    if fh.size < 24:
        raise ModelFileError(path, "file is truncated: no rwkv.cpp header")
    magic, version, n_vocab, n_embd, n_layer, data_type = struct.unpack("<6I", fh.pread(0, 24))
    if magic != MAGIC:
        raise ModelFileError(path, "not an rwkv.cpp file (bad magic)")
    if version not in VERSIONS:
        raise ModelFileError(path, f"rwkv.cpp format version {version} is not supported (100 or 101)")
    out = RwkvCppFile(path, version, n_vocab, n_embd, n_layer, _dtype(path, data_type, "the file header"))
    pos = 24
    while pos < fh.size:
        if pos + 12 > fh.size:
            raise ModelFileError(path, f"file is truncated: a tensor record header at byte {pos} is cut off")
        n_dims, key_len, code = struct.unpack("<3i", fh.pread(pos, 12))
        if not 1 <= n_dims <= 4 or not 0 < key_len <= MAX_KEY:
            raise ModelFileError(path, f"damaged tensor record at byte {pos} ({n_dims} dims, key of {key_len} bytes)")
        pos += 12
        dims = struct.unpack(f"<{n_dims}i", fh.pread(pos, 4 * n_dims))
        pos += 4 * n_dims
        try:
            name = fh.pread(pos, key_len).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(path, f"tensor name at byte {pos} is not UTF-8") from None
        pos += key_len
        if any(not 0 < d < MAX_DIM for d in dims):
            raise ModelFileError(path, f"tensor '{name}' has dimensions {list(dims)}")
        dtype = _dtype(path, code, f"tensor '{name}'")
        if version == 100 and dtype.is_quantized:
            raise ModelFileError(
                path, f"tensor '{name}' uses the old (format 100) {dtype.name} block layout; re-quantize it with a "
                "current rwkv.cpp, or convert the original .pth with rwkv-tui convert"
            )
        if name in out.tensors:
            raise ModelFileError(path, f"tensor '{name}' appears twice")
        shape = tuple(reversed(dims))
        if shape[-1] % dtype.block_size:
            raise ModelFileError(path, f"tensor '{name}' has {shape[-1]} columns, not whole {dtype.name} blocks")
        t = LazyTensor(name, shape, dtype, fh, pos)  # validates that the data lies inside the file
        out.tensors[name] = t
        pos += t.nbytes
    emb = out.tensors.get("emb.weight")
    if emb is not None and emb.shape != (n_vocab, n_embd):
        raise ModelFileError(path, f"emb.weight has shape {emb.shape} but the header says {n_vocab} × {n_embd}")
    return out
