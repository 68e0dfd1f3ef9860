"""The Hugging Face transformers layout of RWKV-4 (`RwkvForCausalLM`), mapped to BlinkDL's names.

transformers' `convert_rwkv_checkpoint_to_hf.py` only renames tensors; values, dtypes and shapes are
BlinkDL's (time_mix tensors stay (1, 1, C), time_decay stays raw: `modeling_rwkv.py` applies
-exp(time_decay) at run time, and ln0 ("pre_ln") stays separate). So the mapping is by name alone and
carries no transforms:

    rwkv.embeddings.weight                          emb.weight
    rwkv.blocks.0.pre_ln.{weight,bias}              blocks.0.ln0.{weight,bias}
    rwkv.blocks.N.ln1 / ln2.{weight,bias}           blocks.N.ln1 / ln2.{weight,bias}
    rwkv.blocks.N.attention.time_mix_key            blocks.N.att.time_mix_k  (value → v, receptance → r)
    rwkv.blocks.N.attention.X                       blocks.N.att.X  (time_decay, time_first, key.weight, …)
    rwkv.blocks.N.feed_forward.X                    blocks.N.ffn.X  (time_mix_key → time_mix_k, …)
    rwkv.ln_out.{weight,bias}                       ln_out.{weight,bias}
    head.weight                                     head.weight

Tensor names of later RWKV versions in the same layout (ln_x, gate, time_faaaa, time_maa_*) are
renamed too, so that architecture detection can report the version by name.

A model folder holds `model.safetensors` or `pytorch_model.bin`, or shards listed in the `weight_map`
of `model.safetensors.index.json` / `pytorch_model.bin.index.json`; safetensors are preferred.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from runtime.errors import ModelFileError
from runtime.formats.tensors import LazyTensor

SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# What a folder is read from, best first.
PREFERENCE = (SINGLE_FILES[0], INDEX_FILES[0], SINGLE_FILES[1], INDEX_FILES[1])
MAX_INDEX_BYTES = 64 << 20

_MIX = {"time_mix_key": "time_mix_k", "time_mix_value": "time_mix_v", "time_mix_receptance": "time_mix_r",
        "time_mix_gate": "time_mix_g"}
_ATT_LEAVES = frozenset({
    "time_decay", "time_first", "time_mix_key", "time_mix_value", "time_mix_receptance",
    "key.weight", "value.weight", "receptance.weight", "output.weight",
    # later versions, passed through so that detection names them
    "time_mix_gate", "time_faaaa", "gate.weight", "ln_x.weight", "ln_x.bias",
    "time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g", "time_maa_w1",
    "time_maa_w2", "time_decay_w1", "time_decay_w2",
})
_FFN_LEAVES = frozenset({
    "time_mix_key", "time_mix_receptance", "key.weight", "receptance.weight", "value.weight",
    "time_maa_k", "time_maa_r",
})
_TOP = {"rwkv.embeddings.weight": "emb.weight", "rwkv.ln_out.weight": "ln_out.weight",
        "rwkv.ln_out.bias": "ln_out.bias", "head.weight": "head.weight"}
_BLOCK = re.compile(r"^rwkv\.blocks\.(0|[1-9]\d*)\.([a-z_0-9]+)\.(.+)$")


def is_hf_layout(tensors: dict[str, LazyTensor]) -> bool:
    """True if the names are transformers' (`rwkv.embeddings.weight`, `rwkv.blocks.N.…`)."""
    return any(name.startswith("rwkv.") for name in tensors)


def hf_name_to_blinkdl(name: str) -> str | None:
    """BlinkDL's name for a transformers RWKV tensor name, or None if the name is not one."""
    if name in _TOP:
        return _TOP[name]
    m = _BLOCK.match(name)
    if not m:
        return None
    layer, part, leaf = m.groups()
    prefix = f"blocks.{layer}."
    if part == "pre_ln" and layer == "0" and leaf in ("weight", "bias"):
        return f"{prefix}ln0.{leaf}"
    if part in ("ln1", "ln2") and leaf in ("weight", "bias"):
        return f"{prefix}{part}.{leaf}"
    if part == "attention" and leaf in _ATT_LEAVES:
        return f"{prefix}att.{_MIX.get(leaf, leaf)}"
    if part == "feed_forward" and leaf in _FFN_LEAVES:
        return f"{prefix}ffn.{_MIX.get(leaf, leaf)}"
    return None


def hf_to_blinkdl(tensors: dict[str, LazyTensor]) -> dict[str, LazyTensor]:
    """The same lazy tensors under BlinkDL names; any name outside the layout is an error naming it."""
    out: dict[str, LazyTensor] = {}
    unknown: list[LazyTensor] = []
    for name, t in tensors.items():
        new = hf_name_to_blinkdl(name)
        if new is None:
            unknown.append(t)
        else:
            out[new] = replace(t, name=new)
    if unknown:
        names = ", ".join(f"'{t.name}'" for t in unknown[:4])
        more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
        raise ModelFileError(
            unknown[0].file.path,
            f"tensors outside the Hugging Face RWKV-4 layout: {names}{more}",
        )
    return out


def find_hf_shards(path: Path) -> list[Path]:
    """The weight files of a Hugging Face model folder, or of one of its `*.index.json` files."""
    path = Path(path)
    if path.is_dir():
        chosen = next((path / n for n in PREFERENCE if (path / n).is_file()), None)
        if chosen is None:
            raise ModelFileError(
                path, "no model weights in this folder: expected model.safetensors, pytorch_model.bin or a "
                "*.index.json listing their shards"
            )
        path = chosen
    elif not path.is_file():
        raise ModelFileError(path, "no such file or folder")
    if not path.name.endswith(".index.json"):
        return [path]
    return _shards_of_index(path)


def _read_index(index: Path) -> dict:
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise ModelFileError(index, f"shard index is larger than {MAX_INDEX_BYTES >> 20} MB")
        data = json.loads(index.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ModelFileError(index, f"cannot read the shard index: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelFileError(index, f"the shard index is not valid JSON: {e}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFileError(index, "the shard index has no 'weight_map' object listing tensors")
    return weight_map


def _shards_of_index(index: Path) -> list[Path]:
    shards: list[Path] = []
    for tensor, shard in _read_index(index).items():
        if not isinstance(shard, str) or not shard or shard != Path(shard).name or shard in (".", ".."):
            raise ModelFileError(index, f"tensor '{tensor}' is mapped to {shard!r}, which is not a file name")
        p = index.parent / shard
        if p not in shards:
            if not p.is_file():
                raise ModelFileError(index, f"shard '{shard}' (holding '{tensor}') is missing")
            shards.append(p)
    return sorted(shards)
