"""The Hugging Face transformers layout of RWKV-4 (`RwkvForCausalLM`), mapped to BlinkDL's names.

transformers' conversion only renames tensors (values and shapes, including the (1, 1, C)
time_mix tensors and the raw time_decay, are BlinkDL's), so the mapping is by name alone:

    rwkv.embeddings.weight                    emb.weight
    rwkv.blocks.0.pre_ln.*                    blocks.0.ln0.*
    rwkv.blocks.N.attention.time_mix_key      blocks.N.att.time_mix_k   (value → v, receptance → r)
    rwkv.blocks.N.attention.{key,…}.weight    blocks.N.att.{key,…}.weight
    rwkv.blocks.N.feed_forward.*              blocks.N.ffn.*
    rwkv.ln_out.*                             ln_out.*
A model folder may hold one file or shards listed by an `*.index.json` (`weight_map`).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from runtime.errors import ModelFileError
from runtime.formats.tensors import LazyTensor

_MIX = {"time_mix_key": "time_mix_k", "time_mix_value": "time_mix_v", "time_mix_receptance": "time_mix_r"}
_BLOCK = re.compile(r"^rwkv\.blocks\.(\d+)\.(.+)$")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def is_hf_layout(tensors: dict[str, LazyTensor]) -> bool:
    return any(name.startswith("rwkv.") for name in tensors)


def hf_name_to_blinkdl(name: str) -> str | None:
    if name == "rwkv.embeddings.weight":
        return "emb.weight"
    if name.startswith("rwkv.ln_out."):
        return name.removeprefix("rwkv.")
    if name == "head.weight":
        return name
    m = _BLOCK.match(name)
    if not m:
        return None
    layer, rest = m.groups()
    part, _, leaf = rest.partition(".")
    if part == "pre_ln":
        return f"blocks.{layer}.ln0.{leaf}"
    if part in ("ln1", "ln2"):
        return f"blocks.{layer}.{rest}"
    if part in ("attention", "feed_forward"):
        short = "att" if part == "attention" else "ffn"
        return f"blocks.{layer}.{short}.{_MIX.get(leaf, leaf)}"
    return None


def hf_to_blinkdl(tensors: dict[str, LazyTensor]) -> dict[str, LazyTensor]:
    """Rename every tensor; an unknown name is an error that names it."""
    out: dict[str, LazyTensor] = {}
    for name, t in tensors.items():
        new = hf_name_to_blinkdl(name)
        if new is None:
            raise ModelFileError(t.file.path, f"unexpected tensor '{name}' for the Hugging Face RWKV-4 layout")
        out[new] = replace(t, name=new)
    return out


def find_hf_shards(path: Path) -> list[Path]:
    """The weight files of a model folder (or of an index file), safetensors preferred."""
    folder = path if path.is_dir() else path.parent
    index = path if path.is_file() else None
    if index is None:
        for name in SINGLE_FILES:
            if (folder / name).is_file():
                return [folder / name]
        index = next((folder / n for n in INDEX_FILES if (folder / n).is_file()), None)
        if index is None:
            raise ModelFileError(folder, "no model.safetensors, pytorch_model.bin or shard index in this folder")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted({str(v) for v in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelFileError(index, f"not a valid shard index: {e}") from None
    paths = []
    for s in shards:
        p = folder / s
        if "/" in s or "\\" in s or not p.is_file():
            raise ModelFileError(index, f"shard '{s}' is missing")
        paths.append(p)
    if not paths:
        raise ModelFileError(index, "the shard index lists no files")
    return paths
