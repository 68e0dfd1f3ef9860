"""Write RWKV-7 GGUF files the way llama.cpp's converter lays them out, for tests.

Independent of our converter: written with the `gguf` package's GGUFWriter from a BlinkDL state
dict, following the layout facts (shared RWKV5-7.md §3.2–3.5): every tensor but the fused lerp
squeezed (so channel_mix_lerp_k is {C}, r_k is flat), the LoRA matrices transposed, layer 0's own
v0/v1/v2 dropped and dummies copied from a0/a1/a2, ln0 as token_embd_norm, and no rwkv_tui keys.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

BIG = tuple(f"{m}.weight" for m in ("time_mix_receptance", "time_mix_key", "time_mix_value", "time_mix_output",
                                     "channel_mix_key", "channel_mix_value"))
LORA = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
_LEAF = {
    "ln1.weight": "attn_norm.weight", "ln1.bias": "attn_norm.bias",
    "ln2.weight": "attn_norm_2.weight", "ln2.bias": "attn_norm_2.bias",
    "att.receptance.weight": "time_mix_receptance.weight", "att.key.weight": "time_mix_key.weight",
    "att.value.weight": "time_mix_value.weight", "att.output.weight": "time_mix_output.weight",
    "att.ln_x.weight": "time_mix_ln.weight", "att.ln_x.bias": "time_mix_ln.bias",
    "ffn.x_k": "channel_mix_lerp_k.weight", "ffn.key.weight": "channel_mix_key.weight",
    "ffn.value.weight": "channel_mix_value.weight",
}
_TOP = {"emb.weight": "token_embd.weight", "blocks.0.ln0.weight": "token_embd_norm.weight",
        "blocks.0.ln0.bias": "token_embd_norm.bias", "ln_out.weight": "output_norm.weight",
        "ln_out.bias": "output_norm.bias", "head.weight": "output.weight"}


def llamacpp_tensors(sd: dict[str, np.ndarray], n_layer: int) -> dict[str, np.ndarray]:
    """The tensors llama.cpp's converter makes of a BlinkDL RWKV-7 state dict (numpy order)."""
    out = {gg: sd[b].squeeze() for b, gg in _TOP.items()}
    for i in range(n_layer):
        p, q = f"blocks.{i}.", f"blk.{i}."
        for leaf, gg in _LEAF.items():
            out[q + gg] = sd[p + leaf].squeeze()
        out[q + "time_mix_lerp_fused.weight"] = np.stack(
            [sd[p + f"att.x_{m}"].reshape(-1) for m in "rwkvag"]).reshape(6, 1, 1, -1)
        for leaf in ("w0", "a0", "v0", "k_k", "k_a", "r_k", *LORA):
            src = p + "att." + (leaf.replace("v", "a") if i == 0 and leaf[0] == "v" else leaf)
            data = sd[src].squeeze()
            if leaf in LORA:
                data = data.T
            out[q + f"time_mix_{leaf}.weight"] = np.ascontiguousarray(data).reshape(-1) if leaf == "r_k" else data
    return out


def stored(data: np.ndarray, type_name: str) -> np.ndarray:
    """What a reader decodes for `data` written as `type_name` (ggml's reference arithmetic)."""
    if type_name == "F32":
        return data
    qtype = gguf.GGMLQuantizationType[type_name]
    return gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype).reshape(data.shape)


def write_llamacpp_rwkv7(path: str | Path, sd: dict[str, np.ndarray], n_layer: int, head_size: int,
                         ranks: tuple[int, int, int, int], tokens: list[str] | None = None,
                         matrix_type: str = "F32") -> Path:
    """A GGUF file as llama.cpp's rwkv7 converter writes it, big matrices in `matrix_type`
    (F32, F16, BF16 or a ggml block type such as Q8_0), everything else F32."""
    path = Path(path)
    C = sd["emb.weight"].shape[1]
    w = gguf.GGUFWriter(str(path), "rwkv7")
    w.add_context_length(1048576)
    w.add_embedding_length(C)
    w.add_block_count(n_layer)
    w.add_layer_norm_eps(1e-5)
    w.add_wkv_head_size(head_size)
    w.add_decay_lora_rank(ranks[0])
    w.add_iclr_lora_rank(ranks[1])
    w.add_value_residual_mix_lora_rank(ranks[2])
    w.add_gate_lora_rank(ranks[3])
    w.add_feed_forward_length(sd["blocks.0.ffn.key.weight"].shape[0])
    w.add_head_count(0)
    if tokens is not None:
        w.add_tokenizer_model("rwkv")
        w.add_token_list(tokens)
        w.add_token_types([3] + [1] * (len(tokens) - 1))
    for name, data in llamacpp_tensors(sd, n_layer).items():
        data = np.ascontiguousarray(data, dtype=np.float32)
        if name.endswith(BIG) and matrix_type != "F32":
            qtype = gguf.GGMLQuantizationType[matrix_type]
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
