"""RWKV-7 state dicts under Hugging Face names, for tests: flash-linear-attention's Rwkv7ForCausalLM
(fla-hub) and the transformers `rwkv.` layout. Follows the name facts (shared RWKV5-7.md §3.3), not
our readers' tables."""

from __future__ import annotations

import numpy as np

LORA_LEAVES = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")


def fla_names(sd: dict[str, np.ndarray], fused_lerp: bool = False) -> dict[str, np.ndarray]:
    """A BlinkDL state dict as flash-linear-attention's Rwkv7ForCausalLM stores it (llama.cpp §3.3 in
    reverse): nn.Linear LoRA factors (out, in), lora.2.bias for w0/a0/v0, vectors flat."""
    top = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
           "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight",
           "blocks.0.ln0.weight": "model.layers.0.pre_norm.weight", "blocks.0.ln0.bias": "model.layers.0.pre_norm.bias"}
    leaves = {"ln1": "attn_norm", "ln2": "ffn_norm", "att.receptance": "attn.r_proj", "att.key": "attn.k_proj",
              "att.value": "attn.v_proj", "att.output": "attn.o_proj", "att.ln_x": "attn.g_norm",
              "ffn.key": "ffn.key", "ffn.value": "ffn.value"}
    out: dict[str, np.ndarray] = {}
    for name, value in sd.items():
        if name in top:
            out[top[name]] = value
            continue
        _, layer, rest = name.split(".", 2)
        p = f"model.layers.{layer}."
        stem, _, suffix = rest.rpartition(".")
        if stem in leaves:
            out[p + leaves[stem] + "." + suffix] = value
        elif rest[4:] in LORA_LEAVES:  # att.w1 -> attn.w_lora.lora.0.weight, stored (out, in)
            kind, n = rest[4], rest[5]
            out[p + f"attn.{kind}_lora.lora.{0 if n == '1' else 2}.weight"] = np.ascontiguousarray(value.T)
        elif rest in ("att.w0", "att.a0", "att.v0"):
            out[p + f"attn.{rest[4]}_lora.lora.2.bias"] = value.reshape(-1)
        elif rest.startswith("att.x_") and fused_lerp:
            continue
        else:  # x_*, k_k, k_a, r_k, ffn.x_k
            out[p + rest.replace("att.", "attn.")] = value.reshape(-1) if value.ndim == 3 else value
    if fused_lerp:
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        for i in range(n_layer):
            out[f"model.layers.{i}.attn.x_x"] = np.stack([sd[f"blocks.{i}.att.x_{m}"].reshape(-1) for m in "rwkvag"])
    return out


def transformers_names(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The transformers `rwkv.` layout with BlinkDL's leaves (as for RWKV-4 in runtime/formats/hf.py)."""
    out = {}
    for name, value in sd.items():
        if name == "emb.weight":
            name = "rwkv.embeddings.weight"
        elif name.startswith("ln_out"):
            name = "rwkv." + name
        elif name.startswith("blocks.0.ln0"):
            name = name.replace("blocks.0.ln0", "rwkv.blocks.0.pre_ln")
        elif name.startswith("blocks."):
            name = "rwkv." + name.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
        out[name] = value
    return out
