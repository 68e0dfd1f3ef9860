"""Which type each tensor of a converted file gets: the conversion targets (`convert --type`) and the
per-tensor policy, K-quant mixes following llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp).

A target is a legacy type (q5_1 …: layer matrices that type, the head by DEFAULT_HEAD_TYPE) or one of
llama.cpp's K-quant file types: q2_k, q3_k (llama.cpp's alias for Q3_K_M), q4_k (Q4_K_M), q5_k (Q5_K_M),
q6_k, q4_k_m, q4_k_s, q5_k_m, q5_k_s. For a K mix every quantizable matrix starts at the mix's base
type and llama.cpp's rules then adjust it by tensor name:

- `output.weight` (our RWKV-4 `head.weight`): Q6_K, or Q8_0 when its rows are not a multiple of 256.
- `attn_v` / `attn_qkv` / `ffn_down` / `attn_output`: more bits in some layers for Q2_K, Q3_K_M,
  Q4_K_M/S, Q5_K_M. **No RWKV tensor has these names** (RWKV's are `time_mix_key/value/receptance/
  gate/output` and `channel_mix_key/value/receptance`), so in llama.cpp, as here, every RWKV layer
  matrix keeps the base type and a _S and an _M file of the same model hold the same types; only
  `general.file_type` differs. The rules are implemented anyway (for transformer names), so the
  table test can check them against llama.cpp's.
- a matrix whose rows are not a multiple of 256 (small widths, e.g. 64 or 448) falls back as ggml
  does: Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, and F16 if not a multiple of 32.

Two deviations, both from how this runtime reads files: the token embedding stays F16 (read one row per
token; llama.cpp would store the base type in an RWKV file, whose embedding is not tied to the head),
and RWKV's small 2-D weights (LoRA factors, fused lerps), which llama.cpp leaves in the source type,
are F16 (F32 in an F32 file), as for every target.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from runtime.quant.types import DType

# GGUF general.file_type: llama.cpp's LLAMA_FTYPE numbering ("mostly X"; 0 is "all F32")
LEGACY_FILE_TYPES: dict[DType, int] = {
    DType.F32: 0, DType.F16: 1, DType.Q4_0: 2, DType.Q4_1: 3, DType.Q8_0: 7, DType.Q5_0: 8, DType.Q5_1: 9,
}
# Head type per legacy target type, from bench/quality.py on the random 169M reference (128 decode steps):
# a Q8_0 head adds ~1.5e-5 mean KL (F16 matrices: 1.8e-6 -> 1.7e-5; Q5_1: 1.19e-3 -> 1.20e-3) while
# cutting the bytes read per token by a quarter for small models; a Q5_1 head adds 7.5e-4, too much.
DEFAULT_HEAD_TYPE: dict[DType, DType] = {
    DType.F32: DType.F32, DType.F16: DType.F16, DType.Q8_0: DType.Q8_0, DType.Q5_1: DType.Q8_0,
    DType.Q5_0: DType.Q8_0, DType.Q4_1: DType.Q8_0, DType.Q4_0: DType.Q8_0,
}
QK_K = 256
# ggml's tensor_type_fallback: a K type whose rows do not split into super-blocks of 256
K_FALLBACK: dict[DType, DType] = {
    DType.Q2_K: DType.Q4_0, DType.Q3_K: DType.Q4_0, DType.Q4_K: DType.Q5_0, DType.Q5_K: DType.Q5_1,
    DType.Q6_K: DType.Q8_0,
}


@dataclass(frozen=True)
class Target:
    """What `convert --type` asks for. `mix` is llama.cpp's file type name for K-quant targets
    (q4_k → "Q4_K_M"), None for the legacy types."""

    name: str
    base: DType
    file_type: int
    mix: str | None = None

    @property
    def spelling(self) -> str:
        return self.name.lower()


_K_TARGETS = [  # (our name, base type, llama.cpp mix it follows, LLAMA_FTYPE_MOSTLY_<mix>)
    ("Q2_K", DType.Q2_K, "Q2_K", 10),
    ("Q3_K", DType.Q3_K, "Q3_K_M", 12),  # llama-quantize: "Q3_K" is an alias for Q3_K_M
    ("Q4_K_S", DType.Q4_K, "Q4_K_S", 14),
    ("Q4_K_M", DType.Q4_K, "Q4_K_M", 15),
    ("Q4_K", DType.Q4_K, "Q4_K_M", 15),
    ("Q5_K_S", DType.Q5_K, "Q5_K_S", 16),
    ("Q5_K_M", DType.Q5_K, "Q5_K_M", 17),
    ("Q5_K", DType.Q5_K, "Q5_K_M", 17),
    ("Q6_K", DType.Q6_K, "Q6_K", 18),
]
TARGETS: dict[str, Target] = {
    **{t.name: Target(t.name, t, f) for t, f in LEGACY_FILE_TYPES.items()},
    **{name: Target(name, base, ft, mix) for name, base, mix, ft in _K_TARGETS},
}
TARGET_CHOICES = "f32, f16, q8_0, q6_k, q5_k_m, q5_k_s, q5_k, q5_1, q5_0, q4_k_m, q4_k_s, q4_k, q4_1, q4_0, q3_k, q2_k"
MIX_BY_FILE_TYPE: dict[int, Target] = {t.file_type: t for t in TARGETS.values() if t.mix == t.name or not t.mix}


def parse_target(value: str | DType | Target) -> Target:
    """The target a user means: 'q4_k_m', 'Q5_1', 'fp16', a DType or a Target."""
    if isinstance(value, Target):
        return value
    key = value.name if isinstance(value, DType) else value.strip().upper().replace("FP", "F")
    if key == "BF16":
        raise ValueError(f"bf16 is a source type only; choose one of {TARGET_CHOICES}")
    try:
        return TARGETS[key]
    except KeyError:
        raise ValueError(f"unknown type '{value}'; choose one of {TARGET_CHOICES}") from None


@dataclass(frozen=True)
class Choice:
    """A tensor's stored type and the rule that chose it (what `inspect` prints)."""

    dtype: DType
    rule: str


_LAYER = re.compile(r"^(?:blk|blocks)\.(\d+)\.")
# llama.cpp's tensor categories (tensor_get_category), by substring of the GGUF name
_CATEGORIES = (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
               ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
               ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down"))


def category(name: str) -> str:
    """llama.cpp's category of a tensor name: output, token_embd, attn_v, ffn_down, … or other."""
    if name in ("output.weight", "head.weight"):
        return "output"
    if name in ("token_embd.weight", "emb.weight"):
        return "token_embd"
    return next((cat for key, cat in _CATEGORIES if key in name), "other")


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _mix_rule(mix: str, cat: str, layer: int, n_layer: int) -> Choice | None:
    """llama.cpp's per-category adjustment for a K mix (no MoE, no GQA, not Falcon), None if none applies."""
    q3, q4, q5, q6 = DType.Q3_K, DType.Q4_K, DType.Q5_K, DType.Q6_K
    if cat == "attn_v":  # llama.cpp's category_is_attn_v: attn_v, attn_qkv and attn_kv_b
        if mix == "Q2_K":
            return Choice(q3, "attn_v in a Q2_K file: Q3_K")
        if mix == "Q3_K_M":
            return Choice(q5 if layer < 2 else q4, "attn_v in a Q3_K_M file: Q5_K in the first 2 layers, else Q4_K")
        if mix in ("Q4_K_M", "Q5_K_M") and _more_bits(layer, n_layer):
            return Choice(q6, f"attn_v in a {mix} file: Q6_K in the first/last eighth and every third layer")
        if mix == "Q4_K_S" and layer < 4:
            return Choice(q5, "attn_v in a Q4_K_S file: Q5_K in the first 4 layers")
        return None
    if cat == "ffn_down":
        if mix == "Q2_K":
            return Choice(q3, "ffn_down in a Q2_K file: Q3_K")
        if mix == "Q3_K_M":
            t = DType.Q5_K if layer < n_layer // 16 else q4
            return Choice(t, "ffn_down in a Q3_K_M file: Q5_K in the first sixteenth of the layers, else Q4_K")
        if mix in ("Q4_K_M", "Q5_K_M") and _more_bits(layer, n_layer):
            return Choice(q6, f"ffn_down in a {mix} file: Q6_K in the first/last eighth and every third layer")
        if mix == "Q4_K_S" and layer < n_layer // 8:
            return Choice(q5, "ffn_down in a Q4_K_S file: Q5_K in the first eighth of the layers")
        return None
    if cat == "attn_output":
        if mix == "Q2_K":
            return Choice(q3, "attn_output in a Q2_K file: Q3_K")
        if mix == "Q3_K_M":
            return Choice(q4, "attn_output in a Q3_K_M file: Q4_K")
    return None


def _fallback(choice: Choice, n_cols: int) -> Choice:
    """ggml's tensor_type_fallback for rows that do not split into the type's blocks."""
    t = choice.dtype
    if not t.is_quantized or n_cols % t.block_size == 0:
        return choice
    if t in K_FALLBACK and n_cols % K_FALLBACK[t].block_size == 0:
        return Choice(K_FALLBACK[t], f"{choice.rule}; rows of {n_cols} → {K_FALLBACK[t].name} (ggml's fallback)")
    return Choice(DType.F16, f"{choice.rule}; rows of {n_cols} → F16 (not a multiple of {t.block_size})")


def choose(target: Target, name: str, shape: tuple[int, ...], n_layer: int, head: DType | None = None) -> Choice:
    """Stored type of the quantizable matrix `name` (GGUF name, or our RWKV-4 name) of `shape` (numpy
    order, rows last) in a file of `target`, with `head` overriding the output's type when given."""
    n_cols = shape[-1]
    cat = category(name)
    base = target.base
    if cat == "token_embd":
        t = DType.F32 if base is DType.F32 else DType.F16
        return Choice(t, f"token embedding: {t.name}, read one row per token")
    if cat == "output" and head is not None:
        return _fallback(Choice(head, f"output: {head.name} (--head-type)"), n_cols)
    if target.mix is None:
        if cat == "output":
            t = DEFAULT_HEAD_TYPE[base]
            return _fallback(Choice(t, f"output: {t.name}, the head type for {base.name} files"), n_cols)
        return _fallback(Choice(base, f"layer matrix: {base.name}"), n_cols)
    if cat == "output":
        if n_cols % QK_K:
            return _fallback(Choice(DType.Q8_0, f"output: rows of {n_cols} → Q8_0 (not a multiple of {QK_K})"),
                             n_cols)
        return Choice(DType.Q6_K, "output: Q6_K (llama.cpp's rule)")
    m = _LAYER.match(name)
    rule = _mix_rule(target.mix, cat, int(m.group(1)) if m else 0, n_layer) if cat != "other" else None
    if rule is None:
        rule = Choice(base, f"{target.mix} base type {base.name} (no llama.cpp rule for the name)")
    return _fallback(rule, n_cols)


def small_matrix_type(target: Target) -> DType:
    """Type of RWKV's small 2-D weights (LoRA factors), which no target quantizes: F32 in an F32 file, else F16."""
    return DType.F32 if target.base is DType.F32 else DType.F16


def lora_factor_type(target: Target, n_cols: int) -> DType:
    """Type of an RWKV-7 LoRA factor stored in rows of `n_cols` values: Q8_0 in a quantized file where the
    rows are whole blocks (half the bytes of F16 for a KL change within noise beside Q5_1 matrices; the
    LoRA products are 8.6 % of what a 0.4B step reads), else small_matrix_type (F16, F32 in an F32 file)."""
    if target.base in (DType.F32, DType.F16) or n_cols % DType.Q8_0.block_size:
        return small_matrix_type(target)
    return DType.Q8_0


@dataclass(frozen=True)
class TypeCount:
    dtype: DType
    count: int
    rule: str


def type_summary(tensors: Iterable[tuple[str, tuple[int, ...], DType]], target: Target | None,
                 n_layer: int) -> list[TypeCount]:
    """How many tensors hold each type, with the rule that explains them: the policy's for quantizable
    matrices that hold what `target`'s policy chooses, else what the tensor is."""
    counts: Counter[tuple[DType, str]] = Counter()
    for name, shape, dtype in tensors:
        if len(shape) < 2 or sum(d > 1 for d in shape) < 2:
            rule = "vectors (1-D)"
        elif dtype is DType.Q8_0 and is_lora_factor(name):
            rule = "RWKV-7's LoRA factors: Q8_0 in quantized files"
        elif not _quantizable(name):
            rule = "RWKV's small 2-D weights (LoRA factors, lerps), not quantized"
        elif target is None:
            rule = "matrices (no known target type recorded)"
        else:
            got = choose(target, name, shape, n_layer)
            rule = _generic(got.rule) if got.dtype is dtype else f"matrices, not what {target.name}'s policy gives"
        counts[(dtype, rule)] += 1
    return [TypeCount(t, n, r) for (t, r), n in sorted(counts.items(), key=lambda kv: (kv[0][0].name, kv[0][1]))]


def _generic(rule: str) -> str:
    """A rule without the layer-specific numbers, so a summary groups tensors of one kind."""
    return re.sub(r"rows of \d+", "short rows", rule)


# llama.cpp's tensor_allows_quantization for RWKV: these small 2-D weights stay in the source type
_NOT_QUANTIZED = ("time_mix_first", "time_mix_w0", "time_mix_w1", "time_mix_w2", "time_mix_v0", "time_mix_v1",
                  "time_mix_v2", "time_mix_a0", "time_mix_a1", "time_mix_a2", "time_mix_g1", "time_mix_g2",
                  "time_mix_decay_w1", "time_mix_decay_w2", "time_mix_lerp_fused", "_norm.weight")

_LORA_FACTOR = re.compile(r"time_mix_[wavg][12]\.weight$")


def is_lora_factor(name: str) -> bool:
    """Whether `name` is a LoRA factor's GGUF name in RWKV-7's layout (time_mix_w1/w2, a1/a2, v1/v2, g1/g2;
    RWKV-6's token-shift pair is also named time_mix_w1/w2)."""
    return _LORA_FACTOR.search(name) is not None


def _quantizable(name: str) -> bool:
    if not name.endswith("weight"):
        return False
    return not any(part in name for part in _NOT_QUANTIZED)


@dataclass(frozen=True)
class Policy:
    """The types of one conversion: `target`, a model of `n_layer` layers, `head` overriding the output's."""

    target: Target
    n_layer: int
    head: DType | None = None

    def matrix(self, name: str, shape: tuple[int, ...]) -> DType:
        """Stored type of the quantizable matrix `name` (embedding and head included)."""
        return choose(self.target, name, shape, self.n_layer, self.head).dtype

    @property
    def small_matrix(self) -> DType:
        return small_matrix_type(self.target)
