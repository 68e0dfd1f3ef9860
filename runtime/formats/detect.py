"""Tell an RWKV checkpoint's architecture and shape from its tensor names and shapes.

RWKV-4 and RWKV-7 are recognised with their dimensions (RWKV-7's tensors are checked against its
spec when the model is loaded: runtime/model/arch/rwkv7.py). RWKV-5.x and 6 are recognised and
reported by name as not yet runnable;
RWKV-4a/4b variants and unknown layouts are refused with a message saying what was found.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.errors import ModelFileError, UnsupportedModelError

# Facts of the RWKV-4 family that every part (converter, loader, kernels) shares.
LN_EPS = 1e-5
TOKENIZER_BY_VOCAB = {50277: "gpt-neox-20b", 65536: "rwkv-world"}

RUNNABLE_VERSIONS = ("4",)

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint holds: `version` is "4", "5", "5.1", "5.2", "6" or "7"."""

    version: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ffn: int

    @property
    def runnable(self) -> bool:
        return self.version in RUNNABLE_VERSIONS

    @property
    def name(self) -> str:
        return f"RWKV-{self.version}"


def v4_tensor_shapes(n_layer: int, n_embd: int, n_vocab: int, n_ffn: int | None = None) -> dict[str, tuple]:
    """Every tensor of a BlinkDL RWKV-4 checkpoint and its shape (time_* tensors squeezed to (C,))."""
    C, F = n_embd, n_ffn or 4 * n_embd
    shapes: dict[str, tuple] = {"emb.weight": (n_vocab, C)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:
            shapes[p + "ln0.weight"] = (C,)
            shapes[p + "ln0.bias"] = (C,)
        for ln in ("ln1", "ln2"):
            shapes[p + ln + ".weight"] = (C,)
            shapes[p + ln + ".bias"] = (C,)
        for t in ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r"):
            shapes[p + "att." + t] = (C,)
        for m in ("key", "value", "receptance", "output"):
            shapes[p + f"att.{m}.weight"] = (C, C)
        shapes[p + "ffn.time_mix_k"] = (C,)
        shapes[p + "ffn.time_mix_r"] = (C,)
        shapes[p + "ffn.key.weight"] = (F, C)
        shapes[p + "ffn.receptance.weight"] = (C, C)
        shapes[p + "ffn.value.weight"] = (C, F)
    shapes["ln_out.weight"] = (C,)
    shapes["ln_out.bias"] = (C,)
    shapes["head.weight"] = (n_vocab, C)
    return shapes


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1) or (1,)


def detect_architecture(
    path: str | os.PathLike[str], shapes: Mapping[str, tuple[int, ...]], *, allow_ln0_missing: bool = False
) -> Architecture:
    """Recognise the architecture from BlinkDL-style names; validate every RWKV-4 tensor's shape.

    `allow_ln0_missing` is for files whose conversion folded ln0 into the embedding.
    Raises UnsupportedModelError for recognised but unrunnable architectures and ModelFileError for
    anything malformed.
    """
    names = set(shapes)
    if "emb.weight" not in names:
        sample = ", ".join(sorted(names)[:5]) or "no tensors"
        raise ModelFileError(path, f"not an RWKV checkpoint: no 'emb.weight' tensor (found {sample})")
    emb = shapes["emb.weight"]
    if len(emb) != 2:
        raise ModelFileError(path, f"'emb.weight' should be 2-D, has shape {tuple(emb)}")
    n_vocab, n_embd = int(emb[0]), int(emb[1])
    layers = {int(m.group(1)) for n in names if (m := _BLOCK.match(n))}
    n_layer = max(layers) + 1 if layers else 0
    if layers != set(range(n_layer)):
        missing = sorted(set(range(n_layer)) - layers)
        raise ModelFileError(path, f"blocks are not numbered 0..{n_layer - 1}: missing {missing}")

    def has(fragment: str) -> bool:
        return any(fragment in n for n in names)

    variant = [f for f in ("tiny_ln", "tiny_q", "ffnPre", "pos_emb", "head_q", "head_k") if has(f)]
    if variant:
        raise UnsupportedModelError(
            path,
            f"this looks like an RWKV-4a/4b-style variant (it has '{variant[0]}' tensors), which is not "
            "compatible with RWKV-4 and is not supported",
        )
    version = None
    if has(".att.r_k") or has(".att.w0") or has(".att.a0"):
        version = "7"
    elif has(".att.time_maa_x") or has(".att.time_decay_w1"):
        version = "6"
    elif has(".att.ln_x"):
        first = shapes.get("blocks.0.att.time_faaaa")
        if first is not None and len(_squeeze(first)) == 2:
            version = "5.2"
        elif has(".att.gate"):
            version = "5.1"
        else:
            version = "5"
    ffn = shapes.get("blocks.0.ffn.key.weight")
    n_ffn = int(ffn[0]) if ffn is not None and len(ffn) == 2 else 4 * n_embd
    if version == "7":
        return Architecture("7", n_layer, n_embd, n_vocab, n_ffn)
    if version is not None:
        raise UnsupportedModelError(
            path, f"RWKV-{version} checkpoints are recognised but not runnable yet; this version runs RWKV-4"
        )
    expected = v4_tensor_shapes(n_layer, n_embd, n_vocab, n_ffn)
    if allow_ln0_missing:
        expected.pop("blocks.0.ln0.weight", None)
        expected.pop("blocks.0.ln0.bias", None)
    missing = sorted(set(expected) - names)
    if missing:
        raise ModelFileError(path, f"not a complete RWKV-4 checkpoint: missing {', '.join(missing[:4])}"
                             + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    extra = sorted(names - set(expected) - {"blocks.0.ln0.weight", "blocks.0.ln0.bias"})
    if extra:
        raise ModelFileError(path, f"unexpected tensors for RWKV-4: {', '.join(extra[:4])}")
    for name, want in expected.items():
        got = tuple(int(d) for d in shapes[name])
        ok = got == want if len(want) == 2 else _squeeze(got) == want
        if not ok:
            raise ModelFileError(path, f"tensor '{name}' has shape {got}, expected {want} for n_embd {n_embd}")
    return Architecture("4", n_layer, n_embd, n_vocab, n_ffn)
