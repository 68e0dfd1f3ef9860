"""Tell an RWKV checkpoint's architecture and shape from its tensor names and shapes.

RWKV-4, RWKV-5.2, RWKV-6 and RWKV-7 are read and every tensor's shape is checked. An RWKV-7 file's
head size comes from `att.r_k` (H, N) (or, where r_k is flat, from the file's metadata), and its four
LoRA ranks from the shapes of w1/w2, a1/a2, v1/v2 (layer 1 on: layer 0's are unused or dummies) and
g1/g2, never from a table of released models. RWKV-5.2 and 6 take their head size from
`att.time_faaaa` (H, N), RWKV-6 its two LoRA ranks (token-shift mix, decay) from `time_maa_w1` and
`time_decay_w1`. RWKV-5.0/5.1 (told by a decay of one value per head) are refused by name;
RWKV-4a/4b variants and unknown layouts are refused with a message saying what was found.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from runtime.errors import ModelFileError, UnsupportedModelError

# Facts of the RWKV-4 family that every part (converter, loader, kernels) shares.
LN_EPS = 1e-5
TOKENIZER_BY_VOCAB = {50277: "gpt-neox-20b", 65536: "rwkv-world"}

RUNNABLE_VERSIONS = ("4", "5.2", "6", "7")
READABLE_VERSIONS = ("4", "5.2", "6", "7")

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class LoraRanks(NamedTuple):
    """RWKV-7's LoRA ranks: decay (w1/w2), in-context learning rate (a1/a2), value residual (v1/v2), gate (g1/g2)."""

    decay: int
    iclr: int
    value: int
    gate: int


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint holds: `version` is "4", "5", "5.1", "5.2", "6" or "7".
    `head_size` is RWKV-5.2/6/7's (0 for RWKV-4), `lora` RWKV-7's LoRA ranks, `mix_ranks` RWKV-6's
    (D_mix of time_maa_w1/w2, D_decay of time_decay_w1/w2); None where the architecture has none."""

    version: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ffn: int
    head_size: int = 0
    lora: LoraRanks | None = None
    mix_ranks: tuple[int, int] | None = None

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size if self.head_size else 0

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
    path: str | os.PathLike[str],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    allow_ln0_missing: bool = False,
    lora_transposed: bool = False,
    head_size: int | None = None,
) -> Architecture:
    """Recognise the architecture from BlinkDL-style names; validate every RWKV-4 or RWKV-7 tensor's shape.

    `allow_ln0_missing` is for files whose conversion folded ln0 into the embedding.
    `lora_transposed`: RWKV-7 LoRA matrices are stored transposed (rwkv.cpp, llama.cpp, fla layouts).
    `head_size`: RWKV-7's head size from the file's metadata, needed where `att.r_k` is flat.
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
    if has(".att.r_k") or has(".att.w0") or has(".att.a0"):
        return _detect_v7(path, shapes, n_layer, n_embd, n_vocab, lora_transposed, head_size)
    if has(".att.time_maa_x") or has(".att.time_decay_w1"):
        return _detect_v56(path, shapes, "6", n_layer, n_embd, n_vocab, lora_transposed)
    if has(".att.ln_x"):
        decay = _strip_trailing_ones(shapes.get("blocks.0.att.time_decay", ()))
        if has(".att.gate.weight") and len(decay) == 2 and decay[1] > 1:  # (H, N): 5.2; 5.1 has (H,)
            return _detect_v56(path, shapes, "5.2", n_layer, n_embd, n_vocab, lora_transposed)
        version = "5.1" if has(".att.gate.weight") else "5.0"
        raise UnsupportedModelError(
            path, f"this is an RWKV-{version} checkpoint (one decay per head), an early RWKV-5 release that "
            "is not supported; RWKV-5.2 (World v2) and later files are"
        )
    ffn = shapes.get("blocks.0.ffn.key.weight")
    n_ffn = int(ffn[0]) if ffn is not None and len(ffn) == 2 else 4 * n_embd
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


V7_LORA_KINDS = ("w", "a", "v", "g")  # decay, iclr, value residual, gate: the order of LoraRanks


def v7_tensor_shapes(
    n_layer: int, n_embd: int, n_vocab: int, n_ffn: int, head_size: int, lora: LoraRanks,
    *, layer0_v: bool = False, lora_transposed: bool = False,
) -> dict[str, tuple]:
    """Every tensor of a BlinkDL RWKV-7 checkpoint and its shape (vectors as (C,), r_k as (H, N));
    with `lora_transposed` the LoRA matrices are given transposed, as rwkv.cpp and llama.cpp store them."""
    C, F = n_embd, n_ffn
    shapes: dict[str, tuple] = {"emb.weight": (n_vocab, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            shapes[p + ln + ".weight"] = (C,)
            shapes[p + ln + ".bias"] = (C,)
        for m in ("r", "w", "k", "v", "a", "g"):
            shapes[p + f"att.x_{m}"] = (C,)
        for kind, rank in zip(V7_LORA_KINDS, lora, strict=True):
            if kind == "v" and i == 0 and not layer0_v:
                continue
            if kind != "g":
                shapes[p + f"att.{kind}0"] = (C,)
            one, two = (C, rank), (rank, C)
            shapes[p + f"att.{kind}1"] = two if lora_transposed else one
            shapes[p + f"att.{kind}2"] = one if lora_transposed else two
        shapes[p + "att.k_k"] = (C,)
        shapes[p + "att.k_a"] = (C,)
        shapes[p + "att.r_k"] = (C // head_size, head_size)
        for m in ("receptance", "key", "value", "output"):
            shapes[p + f"att.{m}.weight"] = (C, C)
        shapes[p + "att.ln_x.weight"] = (C,)
        shapes[p + "att.ln_x.bias"] = (C,)
        shapes[p + "ffn.x_k"] = (C,)
        shapes[p + "ffn.key.weight"] = (F, C)
        shapes[p + "ffn.value.weight"] = (C, F)
    shapes["ln_out.weight"] = (C,)
    shapes["ln_out.bias"] = (C,)
    shapes["head.weight"] = (n_vocab, C)
    return shapes


def _v7_head_size(path, shapes: Mapping[str, tuple[int, ...]], n_embd: int, hint: int | None) -> int:
    r_k = shapes.get("blocks.0.att.r_k")
    if r_k is None:
        raise ModelFileError(path, "not a complete RWKV-7 checkpoint: missing blocks.0.att.r_k")
    r_k = tuple(int(d) for d in r_k)
    if len(r_k) > 2:
        r_k = _squeeze(r_k)
    if len(r_k) == 2:
        head_size = r_k[1]
        if hint and hint != head_size:
            raise ModelFileError(path, f"the metadata says head size {hint} but 'blocks.0.att.r_k' has shape {r_k}")
    elif hint:
        head_size = hint
    else:
        head_size = 64  # a flat r_k without metadata: every released RWKV-7 has heads of 64
    if head_size <= 0 or n_embd % head_size:
        raise ModelFileError(path, f"n_embd {n_embd} is not a multiple of the head size {head_size}")
    return head_size


def _v7_lora_ranks(
    path, shapes: Mapping[str, tuple[int, ...]], n_layer: int, n_embd: int, transposed: bool
) -> tuple[LoraRanks, bool]:
    """The LoRA ranks read from the shapes, each pair and layer checked; and whether layer 0 has v1/v2."""
    ranks = []
    layer0_v = "blocks.0.att.v1" in shapes or "blocks.0.att.v2" in shapes
    for kind in V7_LORA_KINDS:
        rank = None
        first = 1 if kind == "v" and n_layer > 1 else 0
        for i in range(n_layer):
            one, two = f"blocks.{i}.att.{kind}1", f"blocks.{i}.att.{kind}2"
            if kind == "v" and i == 0 and not layer0_v:
                continue
            for name in (one, two):
                if name not in shapes:
                    raise ModelFileError(path, f"not a complete RWKV-7 checkpoint: missing {name}")
                if len(shapes[name]) != 2 or n_embd not in tuple(shapes[name]):
                    raise ModelFileError(
                        path, f"tensor '{name}' has shape {tuple(shapes[name])}, not a LoRA matrix of n_embd {n_embd}"
                    )
            # BlinkDL: x1 is (C, D) and x2 (D, C); transposed layouts the other way round
            d1 = int(shapes[one][0 if transposed else 1])
            d2 = int(shapes[two][1 if transposed else 0])
            if d1 != d2:
                raise ModelFileError(
                    path, f"LoRA pair '{one}' (rank {d1}) and '{two}' (rank {d2}) have mismatched ranks"
                )
            if i < first:
                continue  # layer 0's v1/v2 are unused, or dummies of another rank
            if rank is None:
                rank = d1
            elif d1 != rank:
                raise ModelFileError(path, f"LoRA '{one}' has rank {d1}, but layer {first}'s has rank {rank}")
        ranks.append(rank or 0)
    return LoraRanks(*ranks), layer0_v


def _detect_v7(
    path, shapes, n_layer: int, n_embd: int, n_vocab: int, transposed: bool, hint: int | None
) -> Architecture:
    names = set(shapes)
    head_size = _v7_head_size(path, shapes, n_embd, hint)
    lora, layer0_v = _v7_lora_ranks(path, shapes, n_layer, n_embd, transposed)
    ffn = shapes.get("blocks.0.ffn.key.weight")
    n_ffn = int(ffn[0]) if ffn is not None and len(ffn) == 2 else 4 * n_embd
    expected = v7_tensor_shapes(n_layer, n_embd, n_vocab, n_ffn, head_size, lora,
                                layer0_v=layer0_v, lora_transposed=transposed)
    if layer0_v:  # unused; dummies may have another rank (checked as a pair above)
        for name in ("blocks.0.att.v1", "blocks.0.att.v2"):
            expected[name] = tuple(int(d) for d in shapes[name])
    missing = sorted(set(expected) - names)
    if missing:
        raise ModelFileError(path, f"not a complete RWKV-7 checkpoint: missing {', '.join(missing[:4])}"
                             + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    extra = sorted(names - set(expected))
    if extra:
        raise ModelFileError(path, f"unexpected tensors for RWKV-7: {', '.join(extra[:4])}")
    for name, want in expected.items():
        got = tuple(int(d) for d in shapes[name])
        if name.endswith(".att.r_k"):
            ok = got == want or _squeeze(got) in (_squeeze(want), (n_embd,))
        elif len(want) == 2:
            ok = got == want
        else:
            ok = _squeeze(got) == want
        if not ok:
            raise ModelFileError(path, f"tensor '{name}' has shape {got}, expected {want} for n_embd {n_embd}")
    return Architecture("7", n_layer, n_embd, n_vocab, n_ffn, head_size, lora)


def _strip_trailing_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """rwkv.cpp stores RWKV-5/6's per-head tensors as (H, N, 1) or (H, 1, 1)."""
    dims = tuple(int(d) for d in shape)
    while len(dims) > 1 and dims[-1] == 1:
        dims = dims[:-1]
    return dims


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


V6_MIXES = ("w", "k", "v", "r", "g")  # the order of time_maa_w2's five factors


def v56_tensor_shapes(
    version: str, n_layer: int, n_embd: int, n_vocab: int, n_ffn: int, head_size: int,
    mix_ranks: tuple[int, int] | None = None, *, lora_transposed: bool = False,
) -> dict[str, tuple]:
    """Every tensor of a BlinkDL RWKV-5.2 ("5.2") or RWKV-6 ("6") checkpoint and its shape (per-channel
    vectors as (C,), time_faaaa as (H, N)); with `lora_transposed` RWKV-6's LoRA factors are given as
    rwkv.cpp and llama.cpp store them (time_maa_w1 (5·D, C), time_maa_w2 (5, C, D), time_decay_w1
    (Dd, C), time_decay_w2 (C, Dd))."""
    C, F, N = n_embd, n_ffn, head_size
    shapes: dict[str, tuple] = {"emb.weight": (n_vocab, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,)}
    mix = "time_maa" if version == "6" else "time_mix"
    for i in range(n_layer):
        p = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            shapes[p + ln + ".weight"] = (C,)
            shapes[p + ln + ".bias"] = (C,)
        if version == "6":
            assert mix_ranks is not None
            dm, dd = mix_ranks
            for m in ("x", *V6_MIXES):
                shapes[p + f"att.time_maa_{m}"] = (C,)
            t = lora_transposed
            shapes[p + "att.time_maa_w1"] = (5 * dm, C) if t else (C, 5 * dm)
            shapes[p + "att.time_maa_w2"] = (5, C, dm) if t else (5, dm, C)
            shapes[p + "att.time_decay_w1"] = (dd, C) if t else (C, dd)
            shapes[p + "att.time_decay_w2"] = (C, dd) if t else (dd, C)
        else:
            for m in ("k", "v", "r", "g"):
                shapes[p + f"att.time_mix_{m}"] = (C,)
        shapes[p + "att.time_decay"] = (C,)
        shapes[p + "att.time_faaaa"] = (C // N, N)
        for m in ("receptance", "key", "value", "gate", "output"):
            shapes[p + f"att.{m}.weight"] = (C, C)
        shapes[p + "att.ln_x.weight"] = (C,)
        shapes[p + "att.ln_x.bias"] = (C,)
        shapes[p + f"ffn.{mix}_k"] = (C,)
        shapes[p + f"ffn.{mix}_r"] = (C,)
        shapes[p + "ffn.key.weight"] = (F, C)
        shapes[p + "ffn.receptance.weight"] = (C, C)
        shapes[p + "ffn.value.weight"] = (C, F)
    shapes["ln_out.weight"] = (C,)
    shapes["ln_out.bias"] = (C,)
    shapes["head.weight"] = (n_vocab, C)
    return shapes


def _detect_v56(
    path, shapes: Mapping[str, tuple[int, ...]], version: str, n_layer: int, n_embd: int, n_vocab: int,
    transposed: bool,
) -> Architecture:
    names = set(shapes)
    name = f"RWKV-{version}"
    first = shapes.get("blocks.0.att.time_faaaa")
    if first is None:
        raise ModelFileError(path, f"not a complete {name} checkpoint: missing blocks.0.att.time_faaaa")
    dims = _strip_trailing_ones(first)
    if len(dims) != 2 or dims[0] * dims[1] != n_embd:
        raise ModelFileError(path, f"tensor 'blocks.0.att.time_faaaa' has shape {tuple(first)}, expected (H, N) "
                             f"with H·N = n_embd {n_embd}")
    head_size = dims[1]
    mix_ranks = None
    if version == "6":
        ranks = []
        for tensor, parts in (("att.time_maa_w1", 5), ("att.time_decay_w1", 1)):
            got = shapes.get(f"blocks.0.{tensor}")
            if got is None:
                raise ModelFileError(path, f"not a complete {name} checkpoint: missing blocks.0.{tensor}")
            got = tuple(int(d) for d in got)
            if len(got) != 2 or got[1 if transposed else 0] != n_embd or got[0 if transposed else 1] % parts:
                raise ModelFileError(path, f"tensor 'blocks.0.{tensor}' has shape {got}, not a LoRA factor "
                                     f"of n_embd {n_embd}")
            ranks.append(got[0 if transposed else 1] // parts)
        mix_ranks = (ranks[0], ranks[1])
    ffn = shapes.get("blocks.0.ffn.key.weight")
    n_ffn = int(ffn[0]) if ffn is not None and len(ffn) == 2 else int(3.5 * n_embd) // 32 * 32
    expected = v56_tensor_shapes(version, n_layer, n_embd, n_vocab, n_ffn, head_size, mix_ranks,
                                 lora_transposed=transposed)
    missing = sorted(set(expected) - names)
    if missing:
        raise ModelFileError(path, f"not a complete {name} checkpoint: missing {', '.join(missing[:4])}"
                             + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    extra = sorted(names - set(expected))
    if extra:
        raise ModelFileError(path, f"unexpected tensors for {name}: {', '.join(extra[:4])}")
    for tname, want in expected.items():
        got = tuple(int(d) for d in shapes[tname])
        if len(want) == 1 or tname.endswith(".time_faaaa"):
            ok = _numel(got) == _numel(want) and (len(want) == 1 or _squeeze(got) == _squeeze(want))
        else:
            ok = got == want
        if not ok:
            raise ModelFileError(path, f"tensor '{tname}' has shape {got}, expected {want} for n_embd {n_embd}")
    return Architecture(version, n_layer, n_embd, n_vocab, n_ffn, head_size, None, mix_ranks)
