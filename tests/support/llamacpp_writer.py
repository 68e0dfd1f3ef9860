"""Write RWKV-7 and RWKV-6 GGUF files the way llama.cpp's converter lays them out, for tests.

Independent of our converter: written with the `gguf` package's GGUFWriter from a BlinkDL state
dict, following the layout facts (shared RWKV5-7.md §3.2–3.5): every tensor but the fused lerp
squeezed (so channel_mix_lerp_k is {C}, r_k is flat), the LoRA matrices transposed, layer 0's own
v0/v1/v2 dropped and dummies copied from a0/a1/a2, ln0 as token_embd_norm, and no rwkv_tui keys.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from runtime.quant.kquants import quantize_k
from runtime.quant.types import DType

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


def encoded(data: np.ndarray, type_name: str) -> np.ndarray:
    """`data` encoded as ggml type `type_name` by the gguf package, or, for the K-quants it cannot
    encode, by runtime.quant.kquants (whose bytes its own tests hold to ggml's reference)."""
    qtype = gguf.GGMLQuantizationType[type_name]
    if type_name.endswith("_K"):
        return quantize_k(np.ascontiguousarray(data, np.float32), DType[type_name])
    return gguf.quants.quantize(data, qtype)


def stored(data: np.ndarray, type_name: str) -> np.ndarray:
    """What a reader decodes for `data` written as `type_name` (decoded by the gguf package)."""
    if type_name == "F32":
        return data
    qtype = gguf.GGMLQuantizationType[type_name]
    return gguf.quants.dequantize(encoded(data, type_name), qtype).reshape(data.shape)


def write_llamacpp_rwkv7(path: str | Path, sd: dict[str, np.ndarray], n_layer: int, head_size: int,
                         ranks: tuple[int, int, int, int], tokens: list[str] | None = None,
                         matrix_type: str | tuple[str, ...] = "F32") -> Path:
    """A GGUF file as llama.cpp's rwkv7 converter writes it, big matrices in `matrix_type`
    (F32, F16, BF16 or a ggml block type such as Q8_0 or Q4_K; a tuple of types is used in turn, big
    matrix after big matrix, as llama.cpp's mixed K-quant files do), everything else F32."""
    types = (matrix_type,) if isinstance(matrix_type, str) else matrix_type
    n_big = 0
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
        type_name = types[n_big % len(types)] if name.endswith(BIG) else "F32"
        n_big += name.endswith(BIG)
        if type_name != "F32":
            w.add_tensor(name, encoded(data, type_name), raw_dtype=gguf.GGMLQuantizationType[type_name])
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


_LEAF6 = {
    "ln1.weight": "attn_norm.weight", "ln1.bias": "attn_norm.bias",
    "ln2.weight": "attn_norm_2.weight", "ln2.bias": "attn_norm_2.bias",
    "att.time_maa_x": "time_mix_lerp_x.weight", "att.time_decay": "time_mix_decay.weight",
    "att.time_faaaa": "time_mix_first.weight",
    **{f"att.{m}.weight": f"time_mix_{m}.weight" for m in ("receptance", "key", "value", "gate", "output")},
    "att.ln_x.weight": "time_mix_ln.weight", "att.ln_x.bias": "time_mix_ln.bias",
    "ffn.time_maa_k": "channel_mix_lerp_k.weight", "ffn.time_maa_r": "channel_mix_lerp_r.weight",
    **{f"ffn.{m}.weight": f"channel_mix_{m}.weight" for m in ("key", "receptance", "value")},
}


def llamacpp_rwkv6_tensors(sd: dict[str, np.ndarray], n_layer: int, rescale_every: int = 0) -> dict[str, np.ndarray]:
    """The tensors llama.cpp's rwkv6 converter makes of a BlinkDL RWKV-6 state dict (numpy order): lerps
    and time_decay squeezed, the five lerps fused (order w,k,v,r,g), time_maa_w1 / time_decay_w1/_w2
    transposed, time_maa_w2 as (5, C, D); with `rescale_every` n > 0, att.output and ffn.value of layer
    i divided by 2^(i // n)."""
    out = {gg: sd[b].squeeze() for b, gg in _TOP.items()}
    for i in range(n_layer):
        p, q = f"blocks.{i}.", f"blk.{i}."
        scale = 2.0 ** (i // rescale_every) if rescale_every else 1.0
        for leaf, gg in _LEAF6.items():
            data = sd[p + leaf]
            data = data if leaf == "att.time_faaaa" else data.squeeze()
            if leaf in ("att.output.weight", "ffn.value.weight"):
                data = data / scale
            out[q + gg] = data
        out[q + "time_mix_lerp_fused.weight"] = np.stack(
            [sd[p + f"att.time_maa_{m}"].reshape(-1) for m in "wkvrg"]).reshape(5, 1, 1, -1)
        out[q + "time_mix_w1.weight"] = sd[p + "att.time_maa_w1"].T
        out[q + "time_mix_w2.weight"] = sd[p + "att.time_maa_w2"].transpose(0, 2, 1)
        out[q + "time_mix_decay_w1.weight"] = sd[p + "att.time_decay_w1"].T
        out[q + "time_mix_decay_w2.weight"] = sd[p + "att.time_decay_w2"].T
    return out


def write_llamacpp_rwkv6(path: str | Path, sd: dict[str, np.ndarray], n_layer: int, head_size: int,
                         rescale_every: int = 0, rescale_key: int | None = None) -> Path:
    """A float32 GGUF file as llama.cpp's rwkv6 converter writes it, with the weights rescaled for
    `rescale_every` and `rwkv6.rescale_every_n_layers` = `rescale_key` (by default `rescale_every`)."""
    path = Path(path)
    C = sd["emb.weight"].shape[1]
    w = gguf.GGUFWriter(str(path), "rwkv6")
    w.add_context_length(1048576)
    w.add_embedding_length(C)
    w.add_block_count(n_layer)
    w.add_layer_norm_eps(1e-5)
    w.add_rescale_every_n_layers(rescale_every if rescale_key is None else rescale_key)
    w.add_wkv_head_size(head_size)
    w.add_time_mix_extra_dim(sd["blocks.0.att.time_maa_w1"].shape[1] // 5)
    w.add_time_decay_extra_dim(sd["blocks.0.att.time_decay_w1"].shape[1])
    w.add_feed_forward_length(sd["blocks.0.ffn.key.weight"].shape[0])
    w.add_head_count(0)
    for name, data in llamacpp_rwkv6_tensors(sd, n_layer, rescale_every).items():
        w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
