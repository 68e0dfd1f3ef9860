"""Open any supported model file as a `Checkpoint`: BlinkDL names, lazy tensors, known transforms.

Sources: BlinkDL `.pth`, Hugging Face transformers and flash-linear-attention layouts
(`pytorch_model.bin`, `.safetensors`, a folder or an index file of shards), rwkv.cpp `.bin`, our
RWKV-4 GGUF, llama.cpp's rwkv7 and rwkv6 GGUF (which our converter writes for RWKV-7 and RWKV-6) and
our rwkv5 GGUF (gguf_rwkv6.py). The kind is told by the file's magic bytes, not its name. Each
source says which load-time transforms its data already carries
(`transforms`), so conversion applies each exactly once.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ModelFileError, UnsupportedModelError
from runtime.formats import gguf_rwkv6, gguf_rwkv7
from runtime.formats.detect import Architecture, detect_architecture
from runtime.formats.tensors import LazyTensor

# Names of the load-time transforms a file's data may already carry.
TIME_DECAY_NEG_EXP = "time_decay=-exp(time_decay)"
TIME_MIX_SQUEEZED = "time_mix_squeezed"
LN0_FOLDED = "ln0_folded_into_emb"
# RWKV-7: w1/w2/a1/a2/v1/v2/g1/g2 stored transposed relative to the .pth (rwkv.cpp, llama.cpp, fla)
V7_LORA_TRANSPOSED = "v7_lora_transposed"
# RWKV-6: time_maa_w1, time_decay_w1/_w2 transposed, time_maa_w2 as (5, C, D) (rwkv.cpp, llama.cpp)
V6_LORA_TRANSPOSED = "v6_lora_transposed"
# RWKV-5.2: time_decay stored as the decay itself, exp(-exp(time_decay)) (rwkv.cpp)
V5_DECAY_EXP = "time_decay=exp(-exp(time_decay))"
KNOWN_TRANSFORMS = frozenset({TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED, LN0_FOLDED, V7_LORA_TRANSPOSED,
                              V6_LORA_TRANSPOSED, V5_DECAY_EXP})

ZIP_MAGIC = b"PK\x03\x04"
RWKVCPP_MAGIC = (0x67676D66).to_bytes(4, "little")
GGUF_MAGIC = b"GGUF"


@dataclass
class Checkpoint:
    """A model file opened for reading."""

    path: Path
    source_format: str  # "pth", "hf-pth", "safetensors", "hf-safetensors", "rwkvcpp", "gguf"
    tensors: dict[str, LazyTensor]
    arch: Architecture
    transforms: frozenset[str] = frozenset()
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def sniff_format(path: Path) -> str:
    """'zip', 'rwkvcpp', 'gguf', 'safetensors' or 'folder', from the first bytes."""
    if path.is_dir():
        return "folder"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    except OSError as e:
        raise ModelFileError(path, f"cannot read: {e.strerror}") from e
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(RWKVCPP_MAGIC):
        return "rwkvcpp"
    if head.startswith(GGUF_MAGIC):
        return "gguf"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if not head:
        raise ModelFileError(path, "file is empty")
    raise ModelFileError(
        path, "unknown file format (expected a PyTorch .pth, .safetensors, rwkv.cpp .bin or GGUF file)"
    )


def open_checkpoint(path: str | os.PathLike[str], mapping: mmap.mmap | None = None) -> Checkpoint:
    """Open `path` (a file, or a folder of Hugging Face shards) and validate it as an RWKV model.
    `mapping`, the file mapped whole, is read instead of the file (GGUF, rwkv.cpp)."""
    path = Path(path)
    kind = "folder" if path.name.endswith(".index.json") else sniff_format(path)
    transforms: frozenset[str] = frozenset()
    metadata: dict[str, Any] = {}
    head_size: int | None = None
    if kind == "gguf":
        from runtime.formats.gguf_file import read_gguf

        g = read_gguf(path, mapping)
        tensors, metadata = g.tensors, g.metadata
        transforms = frozenset(metadata.get("rwkv_tui.transforms", []))
        arch_name = metadata.get("general.architecture")
        if arch_name == gguf_rwkv7.ARCH:
            tensors = gguf_rwkv7.gguf_to_blinkdl(tensors)
            transforms |= {V7_LORA_TRANSPOSED}
            head_size = metadata.get(f"{gguf_rwkv7.ARCH}.wkv.head_size")
            head_size = head_size if isinstance(head_size, int) else None
        elif arch_name in gguf_rwkv6.ARCHES:
            tensors = gguf_rwkv6.gguf_to_blinkdl(tensors, arch_name)
            if arch_name == gguf_rwkv6.ARCH6:
                transforms |= {V6_LORA_TRANSPOSED}
        elif arch_name != "rwkv4":
            raise UnsupportedModelError(
                path, f"GGUF architecture '{arch_name}' is not supported; this version reads rwkv4, rwkv5, "
                "rwkv6 and rwkv7"
            )
        source_format = "gguf"
    elif kind == "rwkvcpp":
        from runtime.formats.rwkvcpp import read_rwkvcpp

        r = read_rwkvcpp(path, mapping)
        tensors, transforms = r.tensors, r.transforms
        metadata = {"rwkvcpp.version": r.version, "rwkvcpp.data_type": r.data_type.name}
        source_format = "rwkvcpp"
    else:
        tensors, source_format, transforms = _read_torch_like(path, kind)
    unknown = transforms - KNOWN_TRANSFORMS
    if unknown:
        raise ModelFileError(path, f"the file records transforms this version does not know: {sorted(unknown)}")
    shapes = {n: t.shape for n, t in tensors.items()}
    arch = detect_architecture(
        path, shapes, allow_ln0_missing=LN0_FOLDED in transforms,
        lora_transposed=bool(transforms & {V7_LORA_TRANSPOSED, V6_LORA_TRANSPOSED}), head_size=head_size,
    )
    return Checkpoint(path, source_format, tensors, arch, transforms, metadata)


def _read_torch_like(path: Path, kind: str) -> tuple[dict[str, LazyTensor], str, frozenset[str]]:
    """Tensors under BlinkDL names, the format's name, and the transforms the data carries."""
    from runtime.formats import hf

    if kind == "folder" or path.name.endswith(".index.json"):
        shards = hf.find_hf_shards(path)
        tensors: dict[str, LazyTensor] = {}
        for shard in shards:
            part = _read_raw(shard, sniff_format(shard))
            repeated = part.keys() & tensors.keys()
            if repeated:
                raise ModelFileError(shard, f"tensors also found in another shard: {sorted(repeated)[:5]}")
            tensors.update(part)
        fmt = "hf-safetensors" if shards[0].suffix == ".safetensors" else "hf-pth"
    else:
        tensors, fmt = _read_raw(path, kind), "pth" if kind == "zip" else "safetensors"
    transforms: frozenset[str] = frozenset()
    if hf.is_fla_layout(tensors):
        tensors = hf.fla_to_blinkdl(tensors)
        transforms = frozenset({V7_LORA_TRANSPOSED})
        fmt = fmt if fmt.startswith("hf-") else "hf-" + fmt
    elif hf.is_hf_layout(tensors):
        tensors = hf.hf_to_blinkdl(tensors)
        fmt = fmt if fmt.startswith("hf-") else "hf-" + fmt
    return tensors, fmt, transforms


def _read_raw(path: Path, kind: str) -> dict[str, LazyTensor]:
    """The tensors of one .pth / pytorch_model.bin or .safetensors file under the names it stores."""
    if kind == "zip":
        from runtime.formats.pth import read_pth

        return read_pth(path)
    from runtime.formats.safetensors_file import read_safetensors

    return read_safetensors(path)
