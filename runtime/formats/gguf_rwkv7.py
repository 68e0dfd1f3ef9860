"""llama.cpp's `rwkv7` GGUF layout: its tensor names against BlinkDL's, and the fused token-shift lerp.

Tensor names (llama.cpp `gguf-py` constants; every tensor carries a `.weight` or `.bias` suffix):

    emb.weight                      token_embd.weight              ggml {C, V}
    blocks.0.ln0.{weight,bias}      token_embd_norm.{weight,bias}
    blocks.N.ln1 / ln2              blk.N.attn_norm / attn_norm_2
    blocks.N.att.x_r … x_g          blk.N.time_mix_lerp_fused.weight   ggml {C, 1, 1, 6}, order r,w,k,v,a,g
    blocks.N.att.w0 / w1 / w2       blk.N.time_mix_w0 / w1 / w2.weight  {C} / {C, Dw} / {Dw, C}
      (a0..a2, v0..v2, g1, g2, k_k, k_a, r_k alike; r_k flattened to {C})
    blocks.N.att.receptance …       blk.N.time_mix_receptance / key / value / output.weight
    blocks.N.att.ln_x               blk.N.time_mix_ln.{weight,bias}
    blocks.N.ffn.x_k                blk.N.channel_mix_lerp_k.weight     {C, 1, 1}
    blocks.N.ffn.key / value        blk.N.channel_mix_key / value.weight
    ln_out, head.weight             output_norm, output.weight

A ggml {ne0, ne1} matrix is a row-major (ne1, ne0) array, so llama.cpp's LoRA matrices (w1 {C, Dw})
are the transposes of BlinkDL's (w1 (C, Dw)): files in this layout carry `V7_LORA_TRANSPOSED`.
Layer 0 holds dummy `time_mix_v0/v1/v2` (copies of a0/a1/a2, which llama.cpp's loader wants); they
are dropped when reading, and written by the converter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from runtime.errors import ModelFileError
from runtime.formats.tensors import LazyTensor

ARCH = "rwkv7"
LERP_ORDER = ("r", "w", "k", "v", "a", "g")
LORA_LEAVES = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
FUSED_LERP = "time_mix_lerp_fused"

_TOP = {
    "emb.weight": "token_embd.weight",
    "blocks.0.ln0.weight": "token_embd_norm.weight",
    "blocks.0.ln0.bias": "token_embd_norm.bias",
    "ln_out.weight": "output_norm.weight",
    "ln_out.bias": "output_norm.bias",
    "head.weight": "output.weight",
}
_BLOCK_LEAVES = {
    "ln1.weight": "attn_norm.weight",
    "ln1.bias": "attn_norm.bias",
    "ln2.weight": "attn_norm_2.weight",
    "ln2.bias": "attn_norm_2.bias",
    **{f"att.{k}": f"time_mix_{k}.weight" for k in ("w0", "a0", "v0", "k_k", "k_a", "r_k", *LORA_LEAVES)},
    "att.receptance.weight": "time_mix_receptance.weight",
    "att.key.weight": "time_mix_key.weight",
    "att.value.weight": "time_mix_value.weight",
    "att.output.weight": "time_mix_output.weight",
    "att.ln_x.weight": "time_mix_ln.weight",
    "att.ln_x.bias": "time_mix_ln.bias",
    "ffn.x_k": "channel_mix_lerp_k.weight",
    "ffn.key.weight": "channel_mix_key.weight",
    "ffn.value.weight": "channel_mix_value.weight",
}
_FROM_GGUF_TOP = {v: k for k, v in _TOP.items()}
_FROM_GGUF_LEAVES = {v: k for k, v in _BLOCK_LEAVES.items()}
_BLK = re.compile(r"^blk\.(0|[1-9]\d*)\.(.+)$")
_BLOCKS = re.compile(r"^blocks\.(0|[1-9]\d*)\.(.+)$")
LAYER0_DUMMIES = ("att.v0", "att.v1", "att.v2")


def gguf_name(blinkdl: str) -> str | None:
    """llama.cpp's name for a BlinkDL RWKV-7 tensor name (None for the six att.x_*, which are fused)."""
    if blinkdl in _TOP:
        return _TOP[blinkdl]
    m = _BLOCKS.match(blinkdl)
    if m and m.group(2) in _BLOCK_LEAVES:
        return f"blk.{m.group(1)}.{_BLOCK_LEAVES[m.group(2)]}"
    return None


def fused_lerp_name(layer: int) -> str:
    return f"blk.{layer}.{FUSED_LERP}.weight"


def split_fused_lerp(fused: LazyTensor, layer: int, order: tuple[str, ...] = LERP_ORDER,
                     leaf: str = "att.x_{}") -> dict[str, LazyTensor]:
    """The vectors `blocks.N.<leaf>` (shape (C,)), one per letter of `order` (RWKV-7: the six
    `att.x_*`), as views into a fused lerp tensor of len(order)·C values."""
    numel = fused.n_rows * fused.n_cols
    if numel % len(order):
        raise ModelFileError(fused.file.path, f"tensor '{fused.name}' of shape {fused.shape} is not "
                             f"{len(order)} vectors")
    n = numel // len(order)
    if fused.dtype.is_quantized and n % fused.dtype.block_size:
        raise ModelFileError(fused.file.path, f"tensor '{fused.name}' of type {fused.dtype.name} cannot be split")
    part_bytes = fused.dtype.row_bytes(n)
    names = [f"blocks.{layer}.{leaf.format(m)}" for m in order]
    return {name: LazyTensor(name, (n,), fused.dtype, fused.file, fused.offset + i * part_bytes)
            for i, name in enumerate(names)}


LeafMapper = Callable[[int, str, LazyTensor, dict[str, LazyTensor]], dict[str, LazyTensor] | None]


def map_gguf_names(tensors: dict[str, LazyTensor], layout: str, per_leaf: LeafMapper) -> dict[str, LazyTensor]:
    """The tensors of a llama.cpp-layout RWKV GGUF under BlinkDL names: the top-level ones by the shared
    table, each `blk.N.<leaf>` by `per_leaf(N, leaf, tensor, out so far)`, which returns the BlinkDL
    tensors it stands for (none to drop it) or None for a name outside the layout. Names outside it are
    one error naming the first four and `layout`."""
    out: dict[str, LazyTensor] = {}
    unknown: list[str] = []
    for name, t in tensors.items():
        if name in _FROM_GGUF_TOP:
            out[_FROM_GGUF_TOP[name]] = replace(t, name=_FROM_GGUF_TOP[name])
            continue
        m = _BLK.match(name)
        mapped = None if m is None else per_leaf(int(m.group(1)), m.group(2), t, out)
        if mapped is None:
            unknown.append(name)
        else:
            out.update(mapped)
    if unknown:
        path = next(iter(tensors.values())).file.path
        more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
        listed = ", ".join(f"'{n}'" for n in unknown[:4])
        raise ModelFileError(path, f"tensors outside {layout}: {listed}{more}")
    return out


def _rwkv7_leaf(layer: int, leaf: str, t: LazyTensor, out: dict[str, LazyTensor]) -> dict[str, LazyTensor] | None:
    if leaf == f"{FUSED_LERP}.weight":
        return split_fused_lerp(t, layer)
    if leaf not in _FROM_GGUF_LEAVES:
        return None
    new = f"blocks.{layer}.{_FROM_GGUF_LEAVES[leaf]}"
    if layer == 0 and new.removeprefix("blocks.0.") in LAYER0_DUMMIES:
        return {}
    return {new: replace(t, name=new)}


def gguf_to_blinkdl(tensors: dict[str, LazyTensor]) -> dict[str, LazyTensor]:
    """The tensors of a llama.cpp rwkv7 GGUF under BlinkDL names, the fused lerp split, layer 0's
    dummy v0/v1/v2 dropped; any other name is an error naming it."""
    return map_gguf_names(tensors, "llama.cpp's rwkv7 layout", _rwkv7_leaf)
