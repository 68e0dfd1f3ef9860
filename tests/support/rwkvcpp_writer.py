"""Write rwkv.cpp `.bin` files for tests, following rwkv.cpp's converter and quantizer semantics.

Independent of the reader under test: rwkv.cpp's type codes are spelled out here again, and quantized
blocks come from the `gguf` package (ggml's reference arithmetic), not from our codec — except the
K-quants, which `gguf` cannot encode: those are encoded by `runtime.quant.kquants` (held to ggml's bytes
by its own tests) and still decoded by `gguf` in `decode`.
`header_bytes` / `record_bytes` let tests build damaged files piece by piece.
"""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np

from runtime.quant.kquants import quantize_k
from runtime.quant.types import K_QUANT_TYPES, DType

MAGIC = 0x67676D66
# rwkv.cpp's own numbering (docs/FILE_FORMAT.md), deliberately not imported from the reader.
CODES = {
    DType.F32: 0, DType.F16: 1, DType.Q4_0: 2, DType.Q4_1: 3, DType.Q5_0: 7, DType.Q5_1: 8, DType.Q8_0: 9,
    DType.Q2_K: 11, DType.Q3_K: 12, DType.Q4_K: 13, DType.Q5_K: 14, DType.Q6_K: 15,
}
_GGML = {
    DType.Q4_0: gguf.GGMLQuantizationType.Q4_0,
    DType.Q4_1: gguf.GGMLQuantizationType.Q4_1,
    DType.Q5_0: gguf.GGMLQuantizationType.Q5_0,
    DType.Q5_1: gguf.GGMLQuantizationType.Q5_1,
    DType.Q8_0: gguf.GGMLQuantizationType.Q8_0,
    **{t: gguf.GGMLQuantizationType(int(t)) for t in K_QUANT_TYPES},
}


def header_bytes(
    n_vocab: int, n_embd: int, n_layer: int, code: int, version: int = 101, magic: int = MAGIC
) -> bytes:
    return struct.pack("<6I", magic, version, n_vocab, n_embd, n_layer, code)


def record_bytes(
    name: str, shape: tuple[int, ...], code: int, data: bytes, n_dims: int | None = None
) -> bytes:
    """One tensor record; `shape` in numpy order (written innermost first)."""
    key = name.encode("utf-8")
    dims = tuple(reversed(shape))
    n = len(dims) if n_dims is None else n_dims
    return struct.pack(f"<3i{len(dims)}i", n, len(key), code, *dims) + key + data


def encode(array: np.ndarray, dtype: DType) -> bytes:
    """The bytes of `array` stored as `dtype` (rows along the last axis)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    if dtype is DType.F32:
        return a.astype("<f4").tobytes()
    if dtype is DType.F16:
        return a.astype("<f2").tobytes()
    rows = a.reshape(-1, a.shape[-1])
    if dtype in K_QUANT_TYPES:
        return quantize_k(rows, dtype).tobytes()
    return gguf.quants.quantize(rows, _GGML[dtype]).tobytes()


def decode(array: np.ndarray, dtype: DType) -> np.ndarray:
    """What a correct reader must give back for `array` stored as `dtype` (float32, same shape)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    if dtype is DType.F32:
        return a
    if dtype is DType.F16:
        return a.astype(np.float16).astype(np.float32)
    rows = a.reshape(-1, a.shape[-1])
    q = np.frombuffer(encode(rows, dtype), np.uint8).reshape(rows.shape[0], -1)
    return gguf.quants.dequantize(q, _GGML[dtype]).reshape(a.shape).astype(np.float32)


def write_rwkvcpp(
    path: str | Path,
    tensors: dict[str, tuple[np.ndarray, DType]],
    *,
    n_vocab: int,
    n_embd: int,
    n_layer: int,
    data_type: DType,
    version: int = 101,
) -> Path:
    """Write `tensors` (name → (float32 array in numpy order, stored type)) as an rwkv.cpp file."""
    path = Path(path)
    with open(path, "wb") as f:
        f.write(header_bytes(n_vocab, n_embd, n_layer, CODES[data_type], version))
        for name, (array, dtype) in tensors.items():
            f.write(record_bytes(name, array.shape, CODES[dtype], encode(array, dtype)))
    return path


def blinkdl_to_rwkvcpp(sd: dict[str, np.ndarray], data_type: DType) -> dict[str, tuple[np.ndarray, DType]]:
    """What rwkv.cpp's converter (and, for block types, its quantizer) stores for a BlinkDL state dict.

    `.time_` tensors squeezed and kept F32, time_decay → -exp(time_decay); other matrices F16 (or F32
    for an F32 file); then the quantizer turns 2-D tensors except emb and head into `data_type`.
    """
    float_type = DType.F32 if data_type is DType.F32 else DType.F16
    out: dict[str, tuple[np.ndarray, DType]] = {}
    for name, value in sd.items():
        a = np.asarray(value, dtype=np.float32)
        if ".time_" in name:
            a = a.squeeze()
        if name.endswith(".time_decay"):
            a = -np.exp(a)
        dtype = float_type if a.ndim > 1 and ".time_" not in name else DType.F32
        if data_type.is_quantized and a.ndim == 2 and name not in ("emb.weight", "head.weight"):
            dtype = data_type
        out[name] = (a, dtype)
    return out


def write_v4_model(path: str | Path, sd: dict[str, np.ndarray], data_type: DType, version: int = 101) -> Path:
    """A whole RWKV-4 state dict converted the way rwkv.cpp does it."""
    n_vocab, n_embd = sd["emb.weight"].shape
    n_layer = 1 + max(int(n.split(".")[1]) for n in sd if n.startswith("blocks."))
    return write_rwkvcpp(
        path, blinkdl_to_rwkvcpp(sd, data_type), n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer,
        data_type=data_type, version=version,
    )


V7_LORA = (".w1", ".w2", ".a1", ".a2", ".v1", ".v2", ".g1", ".g2")
V7_FLOAT_KEEP = (".k_k", ".k_a", ".r_k", ".x_rwkvag", ".x_k", ".w0", ".a0", ".v0")  # FP32 in FP16 files
V7_LERPS = ("r", "w", "k", "v", "a", "g")


def blinkdl_v7_to_rwkvcpp(sd: dict[str, np.ndarray], data_type: DType) -> dict[str, tuple[np.ndarray, DType]]:
    """What rwkv.cpp's converter (and quantizer) stores for a BlinkDL RWKV-7 state dict.

    The six `att.x_*` lerps of a layer fused into `att.x_rwkvag` (6, 1, C), order r, w, k, v, a, g, at
    the place of `att.x_r`; LoRA factors transposed; nothing else changed. FP16 files keep 1-D tensors
    and the small per-channel ones (V7_FLOAT_KEEP) in F32; the quantizer leaves emb, head, the LoRA
    factors and r_k in float.
    """
    float_type = DType.F32 if data_type is DType.F32 else DType.F16
    out: dict[str, tuple[np.ndarray, DType]] = {}
    for name, value in sd.items():
        a = np.asarray(value, dtype=np.float32)
        stem, _, last = name.rpartition(".att.x_")
        if last in V7_LERPS and "." not in last:
            if last != "r":
                continue
            fused = np.concatenate([np.asarray(sd[f"{stem}.att.x_{m}"], np.float32).reshape(1, 1, -1)
                                    for m in V7_LERPS])
            out[f"{stem}.att.x_rwkvag"] = (fused, DType.F32)
            continue
        lora = name.endswith(V7_LORA)
        if lora:
            a = np.ascontiguousarray(a.T)
        keep = a.ndim == 1 or name.endswith(V7_FLOAT_KEEP) or a.size == a.shape[-1]
        dtype = DType.F32 if keep else float_type
        if (data_type.is_quantized and a.ndim == 2 and not lora and not name.endswith(".r_k")
                and name not in ("emb.weight", "head.weight")):
            dtype = data_type
        out[name] = (a, dtype)
    return out


def write_v7_model(path: str | Path, sd: dict[str, np.ndarray], data_type: DType) -> Path:
    """A whole RWKV-7 state dict converted the way rwkv.cpp does it."""
    n_vocab, n_embd = sd["emb.weight"].shape
    n_layer = 1 + max(int(n.split(".")[1]) for n in sd if n.startswith("blocks."))
    return write_rwkvcpp(
        path, blinkdl_v7_to_rwkvcpp(sd, data_type), n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer,
        data_type=data_type,
    )


V6_LORA_T = (".time_maa_w1", ".time_decay_w1", ".time_decay_w2")


def blinkdl_v56_to_rwkvcpp(sd: dict[str, np.ndarray], data_type: DType) -> dict[str, tuple[np.ndarray, DType]]:
    """What rwkv.cpp's converter (and quantizer) stores for a BlinkDL RWKV-6 or RWKV-5.2 state dict.

    `.time_` tensors squeezed, then: time_faaaa as (H, N, 1); RWKV-6: time_maa_w1, time_decay_w1/_w2
    transposed, time_maa_w2 as (5, C, D), time_decay raw as (H, N, 1); RWKV-5.2: time_decay as
    exp(−exp(time_decay)), (H, N, 1). FP16 files keep 1-D and `.time_` tensors in F32; the quantizer
    turns every 2-D tensor except emb and head into `data_type` (the RWKV-6 LoRA factors too).
    """
    float_type = DType.F32 if data_type is DType.F32 else DType.F16
    v6 = any(".time_maa_x" in n for n in sd)
    out: dict[str, tuple[np.ndarray, DType]] = {}
    for name, value in sd.items():
        a = np.asarray(value, dtype=np.float32)
        if ".time_" in name:
            a = a.squeeze()
        if name.endswith(".time_faaaa"):
            a = a.reshape(*a.shape, 1) if a.ndim == 2 else a.reshape(1, -1, 1)
        elif name.endswith(".time_decay"):
            h, n = sd[name.replace("time_decay", "time_faaaa")].shape[-2:]
            a = (a if v6 else np.exp(-np.exp(a.astype(np.float64))).astype(np.float32)).reshape(h, n, 1)
        elif name.endswith(V6_LORA_T):
            a = np.ascontiguousarray(a.T)
        elif name.endswith(".time_maa_w2"):
            a = np.ascontiguousarray(a.transpose(0, 2, 1))
        dtype = float_type if a.ndim > 1 and ".time_" not in name else DType.F32
        if data_type.is_quantized and a.ndim == 2 and name not in ("emb.weight", "head.weight"):
            dtype = data_type
        out[name] = (a, dtype)
    return out


def write_v56_model(path: str | Path, sd: dict[str, np.ndarray], data_type: DType) -> Path:
    """A whole RWKV-6 or RWKV-5.2 state dict converted the way rwkv.cpp does it."""
    n_vocab, n_embd = sd["emb.weight"].shape
    n_layer = 1 + max(int(n.split(".")[1]) for n in sd if n.startswith("blocks."))
    return write_rwkvcpp(
        path, blinkdl_v56_to_rwkvcpp(sd, data_type), n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer,
        data_type=data_type,
    )
