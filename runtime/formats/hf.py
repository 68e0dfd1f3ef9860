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

RWKV-5.2 and RWKV-6 (`Rwkv5ForCausalLM`, `Rwkv6ForCausalLM`) use the same layout with their own
leaves (ln_x, gate, time_mix_gate → time_mix_g, time_faaaa, time_maa_*), BlinkDL's shapes and values
(LoRA factors untransposed, time_decay raw), so they map by name alone too; RWKV-7 files in this
layout keep BlinkDL's leaves (`rwkv.blocks.N.attention.x_r`, `.w1`, `.r_k`, …) and orientation.

RWKV-7 in flash-linear-attention's layout (`Rwkv7ForCausalLM` of fla-hub) has other names, and its
LoRA factors are `nn.Linear` weights, (out, in), so they are the transposes of BlinkDL's (the
checkpoint then carries V7_LORA_TRANSPOSED):

    model.embeddings.weight                  emb.weight
    model.layers.0.pre_norm.{weight,bias}    blocks.0.ln0.{weight,bias}
    model.layers.N.attn_norm / ffn_norm      blocks.N.ln1 / ln2
    model.layers.N.attn.x_r … x_g            blocks.N.att.x_r … x_g   (or one fused attn.x_x, order r,w,k,v,a,g)
    model.layers.N.attn.k_k / k_a / r_k      blocks.N.att.k_k / k_a / r_k
    model.layers.N.attn.r_proj/k_proj/v_proj/o_proj.weight   blocks.N.att.receptance/key/value/output.weight
    model.layers.N.attn.g_norm               blocks.N.att.ln_x
    model.layers.N.attn.w_lora.lora.0.weight blocks.N.att.w1   (lora.2.weight → w2, lora.2.bias → w0;
                                             a_lora, v_lora, g_lora alike; g has no bias)
    model.layers.N.ffn.x_k / key / value     blocks.N.ffn.x_k / key.weight / value.weight
    model.norm, lm_head.weight               ln_out, head.weight

A model folder holds `model.safetensors` or `pytorch_model.bin`, or shards listed in the `weight_map`
of `model.safetensors.index.json` / `pytorch_model.bin.index.json`; safetensors are preferred.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from runtime.errors import ModelFileError
from runtime.formats.gguf_rwkv7 import split_fused_lerp
from runtime.formats.tensors import LazyTensor

SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# What a folder is read from, best first.
PREFERENCE = (SINGLE_FILES[0], INDEX_FILES[0], SINGLE_FILES[1], INDEX_FILES[1])
# Parsed whole, and JSON takes up to 20 times its size as Python objects; an index of a 70B model's
# shards is about 60 KB, so 8 MB bounds the parse at about 170 MB.
MAX_INDEX_BYTES = 8 << 20

_MIX = {"time_mix_key": "time_mix_k", "time_mix_value": "time_mix_v", "time_mix_receptance": "time_mix_r",
        "time_mix_gate": "time_mix_g"}
_ATT_LEAVES = frozenset({
    "time_decay", "time_first", "time_mix_key", "time_mix_value", "time_mix_receptance",
    "key.weight", "value.weight", "receptance.weight", "output.weight",
    # later versions, passed through so that detection names them
    "time_mix_gate", "time_faaaa", "gate.weight", "ln_x.weight", "ln_x.bias",
    "time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g", "time_maa_w1",
    "time_maa_w2", "time_decay_w1", "time_decay_w2",
    # RWKV-7
    "x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1", "w2", "a0", "a1", "a2", "v0", "v1", "v2", "g1", "g2",
    "k_k", "k_a", "r_k",
})
_FFN_LEAVES = frozenset({
    "time_mix_key", "time_mix_receptance", "key.weight", "receptance.weight", "value.weight",
    "time_maa_k", "time_maa_r", "x_k",
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


_FLA_TOP = {"model.embeddings.weight": "emb.weight", "model.norm.weight": "ln_out.weight",
             "model.norm.bias": "ln_out.bias", "lm_head.weight": "head.weight"}
_FLA_BLOCK = re.compile(r"^model\.layers\.(0|[1-9]\d*)\.(.+)$")
_FLA_LEAVES = {
    "attn_norm.weight": "ln1.weight", "attn_norm.bias": "ln1.bias",
    "ffn_norm.weight": "ln2.weight", "ffn_norm.bias": "ln2.bias",
    **{f"attn.{k}": f"att.{k}" for k in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "k_k", "k_a", "r_k")},
    "attn.r_proj.weight": "att.receptance.weight", "attn.k_proj.weight": "att.key.weight",
    "attn.v_proj.weight": "att.value.weight", "attn.o_proj.weight": "att.output.weight",
    "attn.g_norm.weight": "att.ln_x.weight", "attn.g_norm.bias": "att.ln_x.bias",
    **{f"attn.{k}_lora.lora.0.weight": f"att.{k}1" for k in "wavg"},
    **{f"attn.{k}_lora.lora.2.weight": f"att.{k}2" for k in "wavg"},
    **{f"attn.{k}_lora.lora.2.bias": f"att.{k}0" for k in "wav"},
    "ffn.x_k": "ffn.x_k", "ffn.key.weight": "ffn.key.weight", "ffn.value.weight": "ffn.value.weight",
}
FLA_FUSED_LERP = "attn.x_x"


def is_fla_layout(tensors: dict[str, LazyTensor]) -> bool:
    """True if the names are flash-linear-attention's RWKV-7 (`model.layers.N.attn.…`, `model.embeddings`)."""
    return "model.embeddings.weight" in tensors or any(_FLA_BLOCK.match(n) for n in tensors)


def fla_to_blinkdl(tensors: dict[str, LazyTensor]) -> dict[str, LazyTensor]:
    """The same lazy tensors under BlinkDL names (a fused attn.x_x split into six views); any name
    outside the layout is an error naming it."""
    out: dict[str, LazyTensor] = {}
    unknown: list[LazyTensor] = []
    for name, t in tensors.items():
        m = _FLA_BLOCK.match(name)
        if name in _FLA_TOP:
            out[_FLA_TOP[name]] = replace(t, name=_FLA_TOP[name])
        elif m and m.group(2) == "pre_norm.weight" and m.group(1) == "0":
            out["blocks.0.ln0.weight"] = replace(t, name="blocks.0.ln0.weight")
        elif m and m.group(2) == "pre_norm.bias" and m.group(1) == "0":
            out["blocks.0.ln0.bias"] = replace(t, name="blocks.0.ln0.bias")
        elif m and m.group(2) == FLA_FUSED_LERP:
            out.update(split_fused_lerp(t, int(m.group(1))))
        elif m and m.group(2) in _FLA_LEAVES:
            new = f"blocks.{m.group(1)}.{_FLA_LEAVES[m.group(2)]}"
            out[new] = replace(t, name=new)
        else:
            unknown.append(t)
    if unknown:
        names = ", ".join(f"'{t.name}'" for t in unknown[:4])
        more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
        raise ModelFileError(
            unknown[0].file.path, f"tensors outside the flash-linear-attention RWKV-7 layout: {names}{more}"
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
