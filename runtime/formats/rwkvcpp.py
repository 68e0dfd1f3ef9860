"""Read rwkv.cpp `.bin` model files (magic 'ggmf', format versions 100 and 101) lazily.

Layout (rwkv.cpp's docs/FILE_FORMAT.md): six little-endian uint32 (magic, version, n_vocab, n_embed,
n_layer, data_type), then tensor records to the end of the file: int32 dim_count, int32 key_length,
int32 data_type, the dims (innermost first), the key (UTF-8), the raw data; no padding anywhere.
rwkv.cpp numbers types its own way (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 7 Q5_0, 8 Q5_1, 9 Q8_0, 11-15
Q2_K-Q6_K; 4-6 were formats it removed); the blocks are ggml's, so they map onto our `DType`s.
Version 100 quantized files use an older block layout and are refused, as rwkv.cpp itself refuses them.

What rwkv.cpp's converter (python/convert_pytorch_to_ggml.py) does to RWKV-4 data, recorded as the
file's transforms: every `.time_` tensor is squeezed ((1, 1, C) → (C,)) and `time_decay` is stored as
-exp(time_decay) (its graph adds the stored value to pp directly). ln0 stays a separate tensor (the
graph applies it after the embedding lookup), so it is not folded. The quantizer leaves the embedding,
the head and all 1-D tensors in float.

RWKV-7 files (told by `blocks.0.att.r_k`) carry other transforms: the six token-shift lerps of a layer
fused into one `att.x_rwkvag` (6, 1, C) tensor, order r, w, k, v, a, g — handed out here as six
`att.x_*` tensors viewing its bytes — and the LoRA factors w1/w2/a1/a2/v1/v2/g1/g2 stored transposed
(`V7_LORA_TRANSPOSED`). Nothing else is changed (w0 raw, r_k (H, N), ln0 separate).

RWKV-6 files (told by `att.time_maa_x`): time_maa_w1 and time_decay_w1/_w2 transposed, time_maa_w2 as
(5, C, D) (`V6_LORA_TRANSPOSED`), time_faaaa and the raw time_decay as (H, N, 1). RWKV-5.x files (told
by `att.ln_x`): time_decay stored as exp(-exp(time_decay)) (`V5_DECAY_EXP`), time_faaaa as (H, N, 1).

Scanning reads only the small record headers; each tensor's data is skipped by its byte size and
handed out as a `LazyTensor` on one shared `FileHandle`.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ModelFileError
from runtime.formats.checkpoint import (
    TIME_DECAY_NEG_EXP,
    TIME_MIX_SQUEEZED,
    V5_DECAY_EXP,
    V6_LORA_TRANSPOSED,
    V7_LORA_TRANSPOSED,
)
from runtime.formats.tensors import FileHandle, LazyTensor
from runtime.quant.types import DType

MAGIC = 0x67676D66
VERSION_OLD_QUANT = 100
VERSIONS = (100, 101)
# rwkv.cpp's type codes (its own numbering, not ggml's) → our types: `enum rwkv_type` in rwkv.cpp's
# rwkv_file_format.inc (FP32, FP16, Q4_0, Q4_1, Q4_1_O, Q4_2, Q4_3, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K,
# Q4_K, Q5_K, Q6_K, Q8_K = 0…16; its quantizer offers Q4_K and Q5_K among the K-quants).
RWKVCPP_TYPES: dict[int, DType] = {
    0: DType.F32,
    1: DType.F16,
    2: DType.Q4_0,
    3: DType.Q4_1,
    7: DType.Q5_0,
    8: DType.Q5_1,
    9: DType.Q8_0,
    11: DType.Q2_K,
    12: DType.Q3_K,
    13: DType.Q4_K,
    14: DType.Q5_K,
    15: DType.Q6_K,
}
_REMOVED_TYPES = {4: "Q4_1_O", 5: "Q4_2", 6: "Q4_3"}
TRANSFORMS = frozenset({TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED})
V7_TRANSFORMS = frozenset({V7_LORA_TRANSPOSED})
V6_TRANSFORMS = frozenset({V6_LORA_TRANSPOSED, TIME_MIX_SQUEEZED})
V5_TRANSFORMS = frozenset({V5_DECAY_EXP, TIME_MIX_SQUEEZED})
V7_FUSED_LERP = "att.x_rwkvag"
V7_LERP_ORDER = ("r", "w", "k", "v", "a", "g")

MAX_DIMS = 4
MAX_KEY = 1024
MAX_ELEMENTS = 1 << 36  # far above any real tensor (a 14B model's largest has 2.6e8)

_HEADER = struct.Struct("<6I")
_RECORD = struct.Struct("<3i")


@dataclass
class RwkvCppFile:
    """An opened rwkv.cpp file: its header fields and lazy tensors under BlinkDL names."""

    path: Path
    version: int
    n_vocab: int
    n_embd: int
    n_layer: int
    data_type: DType
    tensors: dict[str, LazyTensor] = field(default_factory=dict)
    transforms: frozenset[str] = TRANSFORMS


def read_rwkvcpp(path: str | os.PathLike[str], mapping: mmap.mmap | None = None) -> RwkvCppFile:
    """Open an rwkv.cpp `.bin` file, validating every record; no tensor data is read. Records are
    read through `mapping` where given (see FileHandle)."""
    fh = FileHandle(Path(path), mapping)
    try:
        return _scan(fh)
    except BaseException:
        fh.close()  # no tensor refers to it
        raise


def _scan(fh: FileHandle) -> RwkvCppFile:
    out = _read_header(fh)
    pos = _HEADER.size
    while pos < fh.size:
        tensor = _read_record(fh, pos, out.version)
        if tensor.name in out.tensors:
            raise ModelFileError(fh.path, f"tensor '{tensor.name}' appears twice")
        out.tensors[tensor.name] = tensor
        pos = tensor.offset + tensor.nbytes
    _check_against_header(out)
    if "blocks.0.att.r_k" in out.tensors:
        _split_v7_lerps(out)
        out.transforms = V7_TRANSFORMS
    elif "blocks.0.att.time_maa_x" in out.tensors:
        out.transforms = V6_TRANSFORMS
    elif "blocks.0.att.ln_x.weight" in out.tensors:
        out.transforms = V5_TRANSFORMS
    return out


def _split_v7_lerps(f: RwkvCppFile) -> None:
    """Replace each layer's fused `att.x_rwkvag` (6, 1, C) by six (1, 1, C) views `att.x_r` … `att.x_g`."""
    for name in [n for n in f.tensors if n.endswith("." + V7_FUSED_LERP)]:
        fused = f.tensors.pop(name)
        if fused.dtype.is_quantized or fused.shape != (len(V7_LERP_ORDER), 1, f.n_embd):
            raise ModelFileError(
                f.path, f"tensor '{name}' has shape {fused.shape} and type {fused.dtype.name}, expected "
                f"{(len(V7_LERP_ORDER), 1, f.n_embd)} floats"
            )
        prefix = name[: -len(V7_FUSED_LERP)]
        step = fused.dtype.nbytes((1, 1, f.n_embd))
        for i, m in enumerate(V7_LERP_ORDER):
            part = f"{prefix}att.x_{m}"
            if part in f.tensors:
                raise ModelFileError(f.path, f"tensor '{part}' appears both alone and in '{name}'")
            f.tensors[part] = LazyTensor(part, (1, 1, f.n_embd), fused.dtype, fused.file, fused.offset + i * step)


def _type(path: Path, code: int, what: str) -> DType:
    dtype = RWKVCPP_TYPES.get(code)
    if dtype is not None:
        return dtype
    if code in _REMOVED_TYPES:
        raise ModelFileError(
            path,
            f"{what} uses rwkv.cpp's removed {_REMOVED_TYPES[code]} format; re-quantize it with a current "
            "rwkv.cpp or convert the original .pth",
        )
    raise ModelFileError(path, f"{what} has unknown rwkv.cpp type code {code}")


def _refuse_old_quant(path: Path, dtype: DType, what: str) -> None:
    raise ModelFileError(
        path,
        f"{what} is {dtype.name} in rwkv.cpp format version 100, whose quantized block layout is obsolete; "
        "re-quantize the model with a current rwkv.cpp, or convert the original .pth instead",
    )


def _read_header(fh: FileHandle) -> RwkvCppFile:
    path = fh.path
    if fh.size < _HEADER.size:
        raise ModelFileError(path, f"file is truncated: {fh.size} bytes, shorter than the rwkv.cpp header")
    magic, version, n_vocab, n_embd, n_layer, code = _HEADER.unpack(fh.pread(0, _HEADER.size))
    if magic != MAGIC:
        raise ModelFileError(path, f"not an rwkv.cpp file: magic 0x{magic:08x}, expected 0x{MAGIC:08x}")
    if version not in VERSIONS:
        raise ModelFileError(path, f"rwkv.cpp format version {version} is not supported (only 100 and 101)")
    for what, v in (("n_vocab", n_vocab), ("n_embed", n_embd), ("n_layer", n_layer)):
        if not 0 < v < 1 << 31:
            raise ModelFileError(path, f"the header's {what} is {v}")
    dtype = _type(path, code, "the file (header data type)")
    if version == VERSION_OLD_QUANT and dtype.is_quantized:
        _refuse_old_quant(path, dtype, "the file")
    return RwkvCppFile(path, version, n_vocab, n_embd, n_layer, dtype)


def _read_record(fh: FileHandle, pos: int, version: int) -> LazyTensor:
    """The tensor whose record starts at `pos`; its data must lie inside the file."""
    path = fh.path
    if pos + _RECORD.size > fh.size:
        raise ModelFileError(path, f"file is truncated: the tensor record at byte {pos} is cut off")
    n_dims, key_len, code = _RECORD.unpack(fh.pread(pos, _RECORD.size))
    if not 1 <= n_dims <= MAX_DIMS:
        raise ModelFileError(path, f"the tensor record at byte {pos} has {n_dims} dims, not 1..{MAX_DIMS}")
    if not 0 < key_len <= MAX_KEY:
        raise ModelFileError(path, f"the tensor record at byte {pos} has a name of {key_len} bytes")
    head = pos + _RECORD.size
    if head + 4 * n_dims + key_len > fh.size:
        raise ModelFileError(path, f"file is truncated: the tensor record at byte {pos} is cut off")
    raw = fh.pread(head, 4 * n_dims + key_len)
    dims = struct.unpack_from(f"<{n_dims}i", raw)
    try:
        name = raw[4 * n_dims :].decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(path, f"the tensor name at byte {head + 4 * n_dims} is not UTF-8") from None
    shape = tuple(reversed(dims))
    dtype = _check_tensor(path, name, shape, code, version)
    offset = head + len(raw)
    return LazyTensor(name, shape, dtype, fh, offset)  # checks that the data lies inside the file


def _check_tensor(path: Path, name: str, shape: tuple[int, ...], code: int, version: int) -> DType:
    what = f"tensor '{name}'"
    if any(d <= 0 for d in shape):
        raise ModelFileError(path, f"{what} has dimensions {list(shape)}")
    n = 1
    for d in shape:
        n *= d
    if n > MAX_ELEMENTS:
        raise ModelFileError(path, f"{what} claims {n} elements, more than any real model has")
    dtype = _type(path, code, what)
    if version == VERSION_OLD_QUANT and dtype.is_quantized:
        _refuse_old_quant(path, dtype, what)
    if shape[-1] % dtype.block_size:
        raise ModelFileError(
            path,
            f"{what} has rows of {shape[-1]} values, which is not a multiple of {dtype.block_size}: "
            f"{dtype.name} stores {dtype.blocks_phrase}",
        )
    return dtype


def _check_against_header(f: RwkvCppFile) -> None:
    """The header's n_vocab, n_embed and n_layer must describe the tensors."""
    if not f.tensors:
        raise ModelFileError(f.path, "the file holds no tensors")
    want = (f.n_vocab, f.n_embd)
    for name in ("emb.weight", "head.weight"):
        t = f.tensors.get(name)
        if t is not None and t.shape != want:
            raise ModelFileError(
                f.path, f"tensor '{name}' has shape {t.shape} but the header says n_vocab {f.n_vocab}, "
                f"n_embed {f.n_embd}"
            )
    parts = [n.split(".") for n in f.tensors if n.startswith("blocks.")]
    layers = {int(p[1]) for p in parts if p[1].isdigit()}
    if layers and max(layers) + 1 != f.n_layer:
        found = max(layers) + 1
        raise ModelFileError(f.path, f"the file has {found} blocks but the header says n_layer {f.n_layer}")
