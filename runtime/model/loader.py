"""Open a runnable model file (GGUF or rwkv.cpp `.bin`) and lay its weights out for native code.

Matrices and the embedding stay in the file: it is memory-mapped once, read-only, and native code
gets their addresses. The architecture's module (runtime/model/arch/) says which tensors fill the
weight table and decodes the small per-channel vectors into one float32 block, applying the
load-time transforms the file does not already carry. ln0 is applied at run time unless the file
folded it into emb.
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
from types import ModuleType
from typing import Any

import numpy as np

from runtime.errors import ModelFileError, UnsupportedModelError
from runtime.formats.checkpoint import Checkpoint, open_checkpoint, sniff_format
from runtime.model.arch import arch_module
from runtime.model.tensor_read import EMB_TYPES, matrix_type
from runtime.pagecache import advise_huge_pages, advise_small_pages


@dataclass
class LoadedWeights:
    """A model file mapped for native code. Keep it alive as long as any address is in use."""

    path: Path
    checkpoint: Checkpoint
    spec: Any  # the architecture's spec (e.g. arch.rwkv4.ModelSpec)
    arch: ModuleType  # its module in runtime/model/arch/
    mapping: mmap.mmap
    view: np.ndarray | None  # the mapping as uint8; its buffer export pins the mapping
    base_address: int
    weight_table: np.ndarray  # uint64 addresses, the architecture's matrices per layer, then emb, head
    params: np.ndarray  # float32, the architecture's vectors per layer, then layout.GlobalVec
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
    arch = arch_module(ckpt.arch.version)
    if arch is None:
        raise UnsupportedModelError(path, f"{ckpt.arch.name} models cannot run yet")
    t = ckpt.tensors
    emb, head = t["emb.weight"], t["head.weight"]
    advise_small_pages(mapping, emb.offset, emb.nbytes)
    if emb.dtype not in EMB_TYPES:
        raise UnsupportedModelError(
            path, f"embedding of type {emb.dtype.name} is not supported (F32, F16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0 or a "
            "K-quant)")
    spec = arch.spec_for(path, ckpt, emb.dtype, matrix_type(path, head), chunk)
    params = arch.params(ckpt, spec)
    view = np.frombuffer(mapping, dtype=np.uint8)
    base = view.ctypes.data
    table = np.zeros(spec.weight_slots, dtype=np.uint64)
    for i in range(spec.n_layer):
        for slot, name in enumerate(arch.layer_weights(ckpt, spec, i)):
            if name is not None:
                table[i * spec.layer_weight_slots + slot] = base + t[name].offset
    table[spec.emb_slot] = base + emb.offset
    table[spec.head_slot] = base + head.offset
    return LoadedWeights(
        path, ckpt, spec, arch, mapping, view, base, table, params, _fingerprint(ckpt, view), dict(ckpt.metadata)
    )


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
