"""What `convert` writes for an RWKV-7 checkpoint: llama.cpp's `rwkv7` GGUF layout, plus our keys.

The same file runs in llama.cpp and here. Tensors get llama.cpp's names and ggml shapes
(runtime/formats/gguf_rwkv7.py): the six att.x_* fused into one (6, 1, 1, C) tensor in order
r,w,k,v,a,g, the LoRA matrices transposed from BlinkDL's orientation (the file carries
V7_LORA_TRANSPOSED), r_k flattened to (C,), ffn.x_k as (1, 1, C), ln0 kept (llama.cpp applies
token_embd_norm; nothing is folded), w0 raw, and in layer 0 dummy v0/v1/v2 that copy a0/a1/a2 (llama.cpp's loader
requires them; the model never reads them). The big matrices (att receptance/key/value/output,
ffn key/value) take the requested type, the embedding and head follow convert's policy, and
everything else (vectors, r_k, lerps) stays F32; LoRA factors are F16 (F32 in an F32 file) as rwkv.cpp
keeps them, or Q8_0 in a quantized file where their rows are whole blocks (mixes.lora_factor_type).

Metadata: llama.cpp's `rwkv7.*` keys (context length, widths, epsilon, head size, the four LoRA
ranks, head_count 0), the vocabulary as llama.cpp stores it (runtime/text/gguf_vocab.py), and the
`rwkv_tui.*` keys convert writes for every file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.formats.checkpoint import V7_LORA_TRANSPOSED, Checkpoint
from runtime.formats.detect import LN_EPS
from runtime.formats.gguf_file import TensorPlan
from runtime.formats.gguf_rwkv7 import ARCH, LERP_ORDER, fused_lerp_name, gguf_name
from runtime.quant.mixes import Policy, lora_factor_type
from runtime.quant.types import DType

CONTEXT_LENGTH = 1048576  # what llama.cpp's converter writes: RWKV has no trained context limit
BIG_MATRICES = ("att.receptance.weight", "att.key.weight", "att.value.weight", "att.output.weight",
                "ffn.key.weight", "ffn.value.weight")


@dataclass
class Layout:
    """The output tensors in order; streamed ones name their source tensor, the others are built whole
    (small: vectors, LoRA, lerps) by a function returning float32 values in the output's shape."""

    plan: list[TensorPlan]
    sources: dict[str, str] = field(default_factory=dict)
    built: dict[str, tuple[Callable[[], np.ndarray], int]] = field(default_factory=dict)  # (make, source bytes)


def rwkv7_layout(ckpt: Checkpoint, policy: Policy) -> Layout:
    """The llama.cpp rwkv7 layout of `ckpt`, with the types `policy` chooses."""
    a = ckpt.arch
    C = a.n_embd
    t = ckpt.tensors
    transposed = V7_LORA_TRANSPOSED in ckpt.transforms
    # LoRA factors (mixes.lora_factor_type): F32 in an F32 file, F16 in an F16 one (as rwkv.cpp's FP16
    # files hold them), Q8_0 in quantized files where their rows are whole blocks: 0.4B shape, WKV-7 +
    # LoRA + norms 15.3 % of a decode step with F32 factors, 11.8 % with F16, 8.5 % with Q8_0 (short
    # rows by matvec_q8short.py; bench/rwkv7_profile.py, see docs/ARCHITECTURE.md).
    layout = Layout([])

    def stream(src: str) -> None:
        shape = tuple(int(d) for d in t[src].shape)
        name = gguf_name(src)
        layout.plan.append(TensorPlan(name, shape, policy.matrix(name, shape)))
        layout.sources[name] = src

    def build(name: str, shape: tuple[int, ...], make: Callable[[], np.ndarray], srcs: list[str],
              dtype: DType = DType.F32) -> None:
        layout.plan.append(TensorPlan(name, shape, dtype))
        layout.built[name] = (lambda: make().reshape(shape), sum(t[s].nbytes for s in srcs))

    def vector(src: str, name: str | None = None, shape: tuple[int, ...] = (C,)) -> None:
        build(name or gguf_name(src), shape, lambda: t[src].numpy(), [src])

    def lora(src: str, name: str) -> None:
        """Stored as llama.cpp does: the transpose of BlinkDL's (C, D) / (D, C)."""
        shape = tuple(int(d) for d in t[src].shape)
        if not transposed:
            shape = shape[::-1]
        build(name, shape, lambda: t[src].numpy() if transposed else np.ascontiguousarray(t[src].numpy().T), [src],
              lora_factor_type(policy.target, shape[-1]))

    stream("emb.weight")
    vector("blocks.0.ln0.weight")
    vector("blocks.0.ln0.bias")
    for i in range(a.n_layer):
        p = f"blocks.{i}."
        for leaf in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"):
            vector(p + leaf)
        lerps = [p + f"att.x_{m}" for m in LERP_ORDER]
        build(fused_lerp_name(i), (len(LERP_ORDER), 1, 1, C),
              lambda lerps=lerps: np.stack([t[s].numpy().reshape(C) for s in lerps]), lerps)
        for kind in ("w", "a", "v", "g"):
            src_kind = "a" if kind == "v" and i == 0 else kind  # layer 0: llama.cpp's dummies
            if kind != "g":
                vector(p + f"att.{src_kind}0", gguf_name(p + f"att.{kind}0"))
            for n in ("1", "2"):
                lora(p + f"att.{src_kind}{n}", gguf_name(p + f"att.{kind}{n}"))
        for leaf in ("att.k_k", "att.k_a", "att.r_k", "att.ln_x.weight", "att.ln_x.bias"):
            vector(p + leaf)
        for leaf in BIG_MATRICES[:4]:
            stream(p + leaf)
        vector(p + "ffn.x_k", shape=(1, 1, C))
        for leaf in BIG_MATRICES[4:]:
            stream(p + leaf)
    vector("ln_out.weight")
    vector("ln_out.bias")
    stream("head.weight")
    return layout


def rwkv7_metadata(ckpt: Checkpoint) -> list[tuple[str, Any]]:
    """llama.cpp's rwkv7 hyperparameter keys for `ckpt`."""
    a = ckpt.arch
    lora = a.lora
    return [
        (f"{ARCH}.context_length", CONTEXT_LENGTH),
        (f"{ARCH}.embedding_length", a.n_embd),
        (f"{ARCH}.block_count", a.n_layer),
        (f"{ARCH}.feed_forward_length", a.n_ffn),
        (f"{ARCH}.vocab_size", a.n_vocab),
        (f"{ARCH}.attention.layer_norm_epsilon", LN_EPS),
        (f"{ARCH}.attention.head_count", 0),  # llama.cpp requires the key and ignores it
        (f"{ARCH}.wkv.head_size", a.head_size),
        (f"{ARCH}.attention.decay_lora_rank", lora.decay),
        (f"{ARCH}.attention.iclr_lora_rank", lora.iclr),
        (f"{ARCH}.attention.value_residual_mix_lora_rank", lora.value),
        (f"{ARCH}.attention.gate_lora_rank", lora.gate),
    ]
