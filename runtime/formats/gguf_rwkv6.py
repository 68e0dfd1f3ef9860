"""llama.cpp's `rwkv6` GGUF layout, and our `rwkv5` layout in the same naming style (llama.cpp has no
RWKV-5): their tensor names against BlinkDL's, and RWKV-6's fused token-shift lerp.

Tensor names (llama.cpp `gguf-py` constants; every tensor carries a `.weight` or `.bias` suffix),
numpy shapes (a ggml {ne0, ne1} tensor is a row-major (ne1, ne0) array):

    emb.weight, blocks.0.ln0, ln1, ln2, ln_out, head      as for rwkv7 (gguf_rwkv7.py)
    blocks.N.att.time_maa_x                 blk.N.time_mix_lerp_x.weight         (1, 1, C)
    blocks.N.att.time_maa_w … _g            blk.N.time_mix_lerp_fused.weight     (5, 1, 1, C), order w,k,v,r,g
    blocks.N.att.time_maa_w1 / _w2          blk.N.time_mix_w1 / w2.weight        (5·D, C) / (5, C, D)
    blocks.N.att.time_decay                 blk.N.time_mix_decay.weight          (C,), raw
    blocks.N.att.time_decay_w1 / _w2        blk.N.time_mix_decay_w1 / w2.weight  (Dd, C) / (C, Dd)
    blocks.N.att.time_faaaa                 blk.N.time_mix_first.weight          (H, N)
    blocks.N.att.receptance … gate, output  blk.N.time_mix_receptance … gate, output.weight
    blocks.N.att.ln_x                       blk.N.time_mix_ln.{weight,bias}
    blocks.N.ffn.time_maa_k / _r            blk.N.channel_mix_lerp_k / lerp_r.weight   (1, 1, C)
    blocks.N.ffn.key / receptance / value   blk.N.channel_mix_key / receptance / value.weight

RWKV-6's LoRA factors are the transposes of BlinkDL's (time_maa_w2 as (5, C, D)): files in this
layout carry `V6_LORA_TRANSPOSED`. llama.cpp's loader also takes the five lerps unfused
(`time_mix_lerp_w` …), which are read too. `rwkv6.rescale_every_n_layers` = n > 0 says the file's
att.output and ffn.value weights were divided by 2^(layer // n) (llama.cpp's converter does this
from Hugging Face configs); the runtime then halves the residual after every n-th layer. Whether
the weights really were divided cannot be checked: the key is trusted.

`rwkv5` (ours): the same names with the four fixed mixes unfused (`time_mix_lerp_k/v/r/g`,
`channel_mix_lerp_k/r`, from BlinkDL's `time_mix_*`), no LoRA, time_decay as (H, N) (raw unless the
file's `rwkv_tui.transforms` say otherwise).
"""

from __future__ import annotations

from dataclasses import replace

from runtime.errors import ModelFileError
from runtime.formats.gguf_rwkv7 import _BLOCKS, _TOP, map_gguf_names, split_fused_lerp
from runtime.formats.tensors import LazyTensor

ARCH6 = "rwkv6"
ARCH5 = "rwkv5"
ARCHES = (ARCH6, ARCH5)
LERP_ORDER = ("w", "k", "v", "r", "g")
FUSED_LERP = "time_mix_lerp_fused"
RESCALE_KEY = f"{ARCH6}.rescale_every_n_layers"

_COMMON = {
    "ln1.weight": "attn_norm.weight",
    "ln1.bias": "attn_norm.bias",
    "ln2.weight": "attn_norm_2.weight",
    "ln2.bias": "attn_norm_2.bias",
    "att.time_decay": "time_mix_decay.weight",
    "att.time_faaaa": "time_mix_first.weight",
    **{f"att.{m}.weight": f"time_mix_{m}.weight" for m in ("receptance", "key", "value", "gate", "output")},
    "att.ln_x.weight": "time_mix_ln.weight",
    "att.ln_x.bias": "time_mix_ln.bias",
    **{f"ffn.{m}.weight": f"channel_mix_{m}.weight" for m in ("key", "receptance", "value")},
}
_LEAVES = {
    ARCH6: {
        **_COMMON,
        "att.time_maa_x": "time_mix_lerp_x.weight",
        **{f"att.time_maa_{m}": f"time_mix_lerp_{m}.weight" for m in LERP_ORDER},  # read only: we fuse them
        "att.time_maa_w1": "time_mix_w1.weight",
        "att.time_maa_w2": "time_mix_w2.weight",
        "att.time_decay_w1": "time_mix_decay_w1.weight",
        "att.time_decay_w2": "time_mix_decay_w2.weight",
        "ffn.time_maa_k": "channel_mix_lerp_k.weight",
        "ffn.time_maa_r": "channel_mix_lerp_r.weight",
    },
    ARCH5: {
        **_COMMON,
        **{f"att.time_mix_{m}": f"time_mix_lerp_{m}.weight" for m in ("k", "v", "r", "g")},
        "ffn.time_mix_k": "channel_mix_lerp_k.weight",
        "ffn.time_mix_r": "channel_mix_lerp_r.weight",
    },
}
_FROM_GGUF = {arch: {v: k for k, v in leaves.items()} for arch, leaves in _LEAVES.items()}


def gguf_name(arch: str, blinkdl: str) -> str:
    """The GGUF name of a BlinkDL RWKV-6 (`arch` "rwkv6") or RWKV-5.2 ("rwkv5") tensor name."""
    if blinkdl in _TOP:
        return _TOP[blinkdl]
    m = _BLOCKS.match(blinkdl)
    if m is None or m.group(2) not in _LEAVES[arch]:
        raise KeyError(blinkdl)
    return f"blk.{m.group(1)}.{_LEAVES[arch][m.group(2)]}"


def fused_lerp_name(layer: int) -> str:
    return f"blk.{layer}.{FUSED_LERP}.weight"


def gguf_to_blinkdl(tensors: dict[str, LazyTensor], arch: str) -> dict[str, LazyTensor]:
    """The tensors of an `arch` GGUF under BlinkDL names, RWKV-6's fused lerp split into its five
    `att.time_maa_*`; any other name is an error naming it."""

    def per_leaf(layer: int, leaf: str, t: LazyTensor, out: dict[str, LazyTensor]) -> dict[str, LazyTensor] | None:
        if arch == ARCH6 and leaf == f"{FUSED_LERP}.weight":
            parts = split_fused_lerp(t, layer, LERP_ORDER, "att.time_maa_{}")
            clash = parts.keys() & out.keys()
            if clash:
                raise ModelFileError(t.file.path, f"tensor '{sorted(clash)[0]}' appears both alone and in '{t.name}'")
            return parts
        if leaf not in _FROM_GGUF[arch]:
            return None
        new = f"blocks.{layer}.{_FROM_GGUF[arch][leaf]}"
        if new in out:
            raise ModelFileError(t.file.path, f"tensor '{new}' appears both alone and in '{fused_lerp_name(layer)}'")
        return {new: replace(t, name=new)}

    return map_gguf_names(tensors, f"the {arch} layout", per_leaf)
