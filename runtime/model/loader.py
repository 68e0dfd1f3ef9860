"""Open a runnable model file (GGUF or rwkv.cpp `.bin`) and lay its weights out for native code.

Matrices and the embedding stay in the file: it is memory-mapped once, read-only, and native code
gets their addresses. The small per-channel vectors are decoded into one float32 block (layout.Vec
order) with the load-time transforms the file does not already carry (`time_decay = -exp(…)`,
squeezing `time_mix` to (C,)). ln0 is applied at run time unless the file folded it into emb.
Everything native code relies on (types, shapes, spans inside the file) has been validated by the
readers before an address is handed out.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ModelFileError, UnsupportedModelError
from runtime.formats.checkpoint import LN0_FOLDED, TIME_DECAY_NEG_EXP, Checkpoint, open_checkpoint, sniff_format
from runtime.formats.tensors import LazyTensor
from runtime.model.layout import MAT_TENSOR_NAMES, GlobalVec, Mat, ModelSpec, Vec
from runtime.pagecache import advise_huge_pages, advise_small_pages
from runtime.quant.types import DType

MATRIX_TYPES = frozenset({DType.F32, DType.F16, DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0})
EMB_TYPES = frozenset({DType.F32, DType.F16})
_VEC_TENSORS = {
    Vec.LN1_W: "ln1.weight",
    Vec.LN1_B: "ln1.bias",
    Vec.LN2_W: "ln2.weight",
    Vec.LN2_B: "ln2.bias",
    Vec.ATT_MIX_K: "att.time_mix_k",
    Vec.ATT_MIX_V: "att.time_mix_v",
    Vec.ATT_MIX_R: "att.time_mix_r",
    Vec.ATT_DECAY: "att.time_decay",
    Vec.ATT_FIRST: "att.time_first",
    Vec.FFN_MIX_K: "ffn.time_mix_k",
    Vec.FFN_MIX_R: "ffn.time_mix_r",
}


@dataclass
class LoadedWeights:
    """A model file mapped for native code. Keep it alive as long as any address is in use."""

    path: Path
    checkpoint: Checkpoint
    spec: ModelSpec
    mapping: mmap.mmap
    view: np.ndarray | None  # the mapping as uint8; its buffer export pins the mapping
    base_address: int
    weight_table: np.ndarray  # uint64 addresses, layout.Mat per layer, then emb, head
    params: np.ndarray  # float32, layout.Vec per layer, then layout.GlobalVec
    fingerprint: str
    metadata: dict[str, Any]

    def close(self) -> None:
        self.view = None
        with contextlib.suppress(BufferError):  # a view still exported: unmapped when it goes
            self.mapping.close()


def load_weights(path: str | os.PathLike[str], chunk: int = 128) -> LoadedWeights:
    path = Path(path)
    kind = sniff_format(path)
    if kind not in ("gguf", "rwkvcpp"):
        raise ModelFileError(
            path, f"this is a {kind} checkpoint; convert it first: rwkv-tui convert '{path}' model.gguf --type q5_1"
        )
    # Mapped before the header is parsed, and parsed through the mapping, so that the parse's reads
    # (spread over the whole of an rwkv.cpp file) fill the page cache in the 2 MB folios the mapping
    # asks for, not in small ones that would keep 2 MB pages from mapping the weights there.
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        advise_huge_pages(mapping)
        return _load_mapped(path, mapping, chunk)
    except BaseException:
        mapping.close()
        raise


def _load_mapped(path: Path, mapping: mmap.mmap, chunk: int) -> LoadedWeights:
    ckpt = open_checkpoint(path, mapping)
    arch = ckpt.arch
    if arch.version != "4":
        raise UnsupportedModelError(path, f"RWKV-{arch.version} models cannot run yet")
    t = ckpt.tensors
    layer_types = []
    for i in range(arch.n_layer):
        types = tuple(_matrix_type(path, t[f"blocks.{i}.{MAT_TENSOR_NAMES[m]}"]) for m in Mat)
        layer_types.append(types)
    emb, head = t["emb.weight"], t["head.weight"]
    advise_small_pages(mapping, emb.offset, emb.nbytes)
    if emb.dtype not in EMB_TYPES:
        raise UnsupportedModelError(path, f"embedding of type {emb.dtype.name} is not supported (F32 or F16)")
    spec = ModelSpec(
        n_layer=arch.n_layer, n_embd=arch.n_embd, n_vocab=arch.n_vocab, n_ffn=arch.n_ffn,
        layer_types=tuple(layer_types), emb_type=emb.dtype, head_type=_matrix_type(path, head),
        ln0_folded=LN0_FOLDED in ckpt.transforms, chunk=chunk,
    )
    params = _params(ckpt, spec)
    view = np.frombuffer(mapping, dtype=np.uint8)
    base = view.ctypes.data
    table = np.zeros(spec.weight_slots, dtype=np.uint64)
    for i in range(arch.n_layer):
        for m in Mat:
            table[i * len(Mat) + m] = base + t[f"blocks.{i}.{MAT_TENSOR_NAMES[m]}"].offset
    table[spec.emb_slot] = base + emb.offset
    table[spec.head_slot] = base + head.offset
    return LoadedWeights(
        path, ckpt, spec, mapping, view, base, table, params, _fingerprint(ckpt, view), dict(ckpt.metadata)
    )


def _matrix_type(path: Path, tensor: LazyTensor) -> DType:
    if tensor.dtype not in MATRIX_TYPES:
        raise UnsupportedModelError(
            path, f"tensor '{tensor.name}' has type {tensor.dtype.name}, which the runtime cannot use; "
            "convert the file to one of f32, f16, q8_0, q5_1, q5_0, q4_1, q4_0"
        )
    return tensor.dtype


def _vector(ckpt: Checkpoint, name: str, n: int) -> np.ndarray:
    v = ckpt.tensors[name].numpy().reshape(-1).astype(np.float32)
    if v.size != n:
        raise ModelFileError(ckpt.path, f"tensor '{name}' has {v.size} values, expected {n}")
    if not np.isfinite(v).all():
        raise ModelFileError(ckpt.path, f"tensor '{name}' contains NaN or infinite values")
    return v


def _params(ckpt: Checkpoint, spec: ModelSpec) -> np.ndarray:
    C = spec.n_embd
    params = np.zeros(spec.params_floats, dtype=np.float32)
    rows = params.reshape(-1, C)
    for i in range(spec.n_layer):
        for vec, suffix in _VEC_TENSORS.items():
            v = _vector(ckpt, f"blocks.{i}.{suffix}", C)
            if vec is Vec.ATT_DECAY and TIME_DECAY_NEG_EXP not in ckpt.transforms:
                v = -np.exp(v)
            rows[i * len(Vec) + vec] = v
    glob = len(Vec) * spec.n_layer
    rows[glob + GlobalVec.LNOUT_W] = _vector(ckpt, "ln_out.weight", C)
    rows[glob + GlobalVec.LNOUT_B] = _vector(ckpt, "ln_out.bias", C)
    if not spec.ln0_folded:
        rows[glob + GlobalVec.LN0_W] = _vector(ckpt, "blocks.0.ln0.weight", C)
        rows[glob + GlobalVec.LN0_B] = _vector(ckpt, "blocks.0.ln0.bias", C)
    return params


def _fingerprint(ckpt: Checkpoint, view: np.ndarray) -> str:
    """sha256 over the architecture, every tensor's name, type and shape, and samples of its bytes.

    Two files with the same weights in the same types get the same fingerprint; a state saved by one
    is refused by any other model.
    """
    h = hashlib.sha256()
    a = ckpt.arch
    h.update(f"rwkv{a.version} L{a.n_layer} C{a.n_embd} V{a.n_vocab} F{a.n_ffn}".encode())
    for name in sorted(ckpt.tensors):
        t = ckpt.tensors[name]
        h.update(f"|{name}:{t.dtype.name}:{t.shape}".encode())
        for start in (0, t.nbytes // 2, max(0, t.nbytes - 256)):
            lo = t.offset + start
            h.update(view[lo : lo + min(256, t.nbytes - start)].tobytes())
    return h.hexdigest()
