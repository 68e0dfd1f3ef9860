"""What `convert` writes for an RWKV-6 checkpoint (llama.cpp's `rwkv6` GGUF layout, so the file runs
in llama.cpp and here) and for an RWKV-5.2 one (our `rwkv5` layout in the same naming style; llama.cpp
has no RWKV-5). Names and shapes: runtime/formats/gguf_rwkv6.py.

RWKV-6: the five lerps time_maa_w/k/v/r/g fused into one (5, 1, 1, C) tensor in order w,k,v,r,g,
time_maa_x and the FFN lerps as (1, 1, C), the LoRA factors transposed from BlinkDL's orientation
(time_maa_w1 (5·D, C), time_maa_w2 (5, C, D), time_decay_w1 (Dd, C), time_decay_w2 (C, Dd); the file
carries V6_LORA_TRANSPOSED), time_decay raw as (C,), time_faaaa as (H, N), ln0 kept. The weights are
written as the source holds them, so `rwkv6.rescale_every_n_layers` is the source's: n > 0 for a llama.cpp
GGUF whose output and FFN-value weights were divided by 2^(layer // n) (they stay divided), 0 for every
other source (we never divide). RWKV-5.2: the four fixed mixes and the
FFN's as (1, 1, C), time_decay as the source holds it (raw from a .pth; exp(−exp()) from an rwkv.cpp
file, which the file's rwkv_tui.transforms then record) and time_faaaa as (H, N).

The big matrices (att receptance/key/value/gate/output, ffn key/receptance/value) take the requested
type, the embedding and head follow convert's policy, vectors stay F32, LoRA factors F16 (F32 in an
F32 file), as for RWKV-7.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.convert_rwkv7 import CONTEXT_LENGTH, Layout
from runtime.formats.checkpoint import V5_DECAY_EXP, V6_LORA_TRANSPOSED, Checkpoint
from runtime.formats.detect import LN_EPS
from runtime.formats.gguf_file import TensorPlan
from runtime.formats.gguf_rwkv6 import ARCH5, ARCH6, LERP_ORDER, RESCALE_KEY, fused_lerp_name, gguf_name
from runtime.model.arch.rwkv6 import rescale_every
from runtime.quant.mixes import Policy
from runtime.quant.types import DType

BIG_MATRICES = ("att.receptance.weight", "att.key.weight", "att.value.weight", "att.gate.weight",
                "att.output.weight", "ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight")


def gguf_arch(ckpt: Checkpoint) -> str:
    return ARCH6 if ckpt.arch.version == "6" else ARCH5


def rwkv56_transforms(ckpt: Checkpoint) -> list[str]:
    """The rwkv_tui.transforms of the converted file."""
    if ckpt.arch.version == "6":
        return [V6_LORA_TRANSPOSED]
    return [V5_DECAY_EXP] if V5_DECAY_EXP in ckpt.transforms else []


def rwkv56_layout(ckpt: Checkpoint, policy: Policy) -> Layout:
    """The rwkv6 / rwkv5 layout of `ckpt`, with the types `policy` chooses."""
    a = ckpt.arch
    C, N = a.n_embd, a.head_size
    t = ckpt.tensors
    arch = gguf_arch(ckpt)
    transposed = V6_LORA_TRANSPOSED in ckpt.transforms
    lora_type = policy.small_matrix
    layout = Layout([])

    def stream(src: str) -> None:
        shape = tuple(int(d) for d in t[src].shape)
        name = gguf_name(arch, src)
        layout.plan.append(TensorPlan(name, shape, policy.matrix(name, shape)))
        layout.sources[name] = src

    def build(name: str, shape: tuple[int, ...], make, srcs: list[str], dtype: DType = DType.F32) -> None:
        layout.plan.append(TensorPlan(name, shape, dtype))
        layout.built[name] = (lambda: make().reshape(shape), sum(t[s].nbytes for s in srcs))

    def vector(src: str, shape: tuple[int, ...] = (C,)) -> None:
        build(gguf_name(arch, src), shape, lambda: t[src].numpy(), [src])

    def lora(src: str, shape: tuple[int, ...], flip) -> None:
        """Stored as llama.cpp does; `flip` turns BlinkDL's orientation into it."""
        build(gguf_name(arch, src), shape, lambda: t[src].numpy() if transposed else flip(t[src].numpy()), [src],
              lora_type)

    stream("emb.weight")
    vector("blocks.0.ln0.weight")
    vector("blocks.0.ln0.bias")
    row = (1, 1, C)
    for i in range(a.n_layer):
        p = f"blocks.{i}."
        for leaf in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"):
            vector(p + leaf)
        if arch == ARCH6:
            dm, dd = a.mix_ranks or (0, 0)
            vector(p + "att.time_maa_x", row)
            lerps = [p + f"att.time_maa_{m}" for m in LERP_ORDER]
            build(fused_lerp_name(i), (len(LERP_ORDER), 1, 1, C),
                  lambda lerps=lerps: np.stack([t[s].numpy().reshape(C) for s in lerps]), lerps)
            lora(p + "att.time_maa_w1", (5 * dm, C), lambda x: np.ascontiguousarray(x.T))
            lora(p + "att.time_maa_w2", (5, C, dm), lambda x: np.ascontiguousarray(x.transpose(0, 2, 1)))
            vector(p + "att.time_decay")
            lora(p + "att.time_decay_w1", (dd, C), lambda x: np.ascontiguousarray(x.T))
            lora(p + "att.time_decay_w2", (C, dd), lambda x: np.ascontiguousarray(x.T))
        else:
            for m in ("k", "v", "r", "g"):
                vector(p + f"att.time_mix_{m}", row)
            vector(p + "att.time_decay", (C // N, N))  # (H, N) tells RWKV-5.2 from 5.1 (H,)
        vector(p + "att.time_faaaa", (C // N, N))
        for leaf in BIG_MATRICES[:5]:
            stream(p + leaf)
        vector(p + "att.ln_x.weight")
        vector(p + "att.ln_x.bias")
        mix = "time_maa" if arch == ARCH6 else "time_mix"
        vector(p + f"ffn.{mix}_k", row)
        vector(p + f"ffn.{mix}_r", row)
        for leaf in BIG_MATRICES[5:]:
            stream(p + leaf)
    vector("ln_out.weight")
    vector("ln_out.bias")
    stream("head.weight")
    return layout


def rwkv56_metadata(ckpt: Checkpoint) -> list[tuple[str, Any]]:
    """llama.cpp's rwkv6 hyperparameter keys for `ckpt` (the same keys under rwkv5 for RWKV-5.2)."""
    a = ckpt.arch
    arch = gguf_arch(ckpt)
    keys: list[tuple[str, Any]] = [
        (f"{arch}.context_length", CONTEXT_LENGTH),
        (f"{arch}.embedding_length", a.n_embd),
        (f"{arch}.block_count", a.n_layer),
        (f"{arch}.feed_forward_length", a.n_ffn),
        (f"{arch}.vocab_size", a.n_vocab),
        (f"{arch}.attention.layer_norm_epsilon", LN_EPS),
        (f"{arch}.attention.head_count", 0),  # llama.cpp requires the key and ignores it
        (f"{arch}.wkv.head_size", a.head_size),
    ]
    if arch == ARCH6:
        dm, dd = a.mix_ranks or (0, 0)
        keys += [(RESCALE_KEY, rescale_every(ckpt.path, ckpt)), (f"{arch}.time_mix_extra_dim", dm),
                 (f"{arch}.time_decay_extra_dim", dd)]
    return keys
