"""The K-quant mix policy (runtime.quant.mixes) against llama.cpp's llama_tensor_get_type rules, tensor
name by tensor name, and the GGUF file types against the gguf package's LlamaFileType."""

from __future__ import annotations

import gguf
import pytest

from runtime.quant.mixes import Policy, choose, lora_factor_type, parse_target, type_summary
from runtime.quant.types import DType

Q = DType
BIG = (2048, 2048)
# (target, tensor name, shape (rows, row length), n_layer, expected type): each line one of llama.cpp's rules
TABLE = [
    # RWKV names match none of llama.cpp's per-category rules: every layer matrix keeps the base type
    ("q4_k_m", "blk.0.time_mix_key.weight", BIG, 24, Q.Q4_K),
    ("q4_k_m", "blk.0.time_mix_value.weight", BIG, 24, Q.Q4_K),
    ("q4_k_m", "blk.0.time_mix_output.weight", BIG, 24, Q.Q4_K),
    ("q4_k_m", "blk.0.channel_mix_value.weight", (2048, 8192), 24, Q.Q4_K),
    ("q5_k_m", "blk.23.channel_mix_key.weight", (8192, 2048), 24, Q.Q5_K),
    ("q4_k_s", "blk.0.time_mix_value.weight", BIG, 24, Q.Q4_K),
    ("q3_k", "blk.0.time_mix_output.weight", BIG, 24, Q.Q3_K),
    ("q2_k", "blk.3.channel_mix_value.weight", (2048, 8192), 24, Q.Q2_K),
    ("q6_k", "blk.3.time_mix_gate.weight", BIG, 24, Q.Q6_K),
    ("q4_k", "blocks.3.att.key.weight", BIG, 24, Q.Q4_K),  # our RWKV-4 names
    # output.weight: Q6_K, Q8_0 when its rows are not a multiple of 256, F16 when not of 32 either
    ("q4_k_m", "output.weight", (65536, 2048), 24, Q.Q6_K),
    ("q2_k", "output.weight", (65536, 2048), 24, Q.Q6_K),
    ("q5_k_s", "output.weight", (65536, 2048), 24, Q.Q6_K),
    ("q6_k", "output.weight", (65536, 2048), 24, Q.Q6_K),
    ("q4_k", "head.weight", (50277, 1024), 24, Q.Q6_K),
    ("q4_k_m", "output.weight", (256, 64), 12, Q.Q8_0),
    ("q4_k_m", "output.weight", (256, 48), 12, Q.F16),
    # rows that do not split into super-blocks of 256: ggml's fallback
    ("q2_k", "blk.0.time_mix_key.weight", (64, 64), 12, Q.Q4_0),
    ("q3_k", "blk.0.time_mix_key.weight", (64, 64), 12, Q.Q4_0),
    ("q4_k_m", "blk.0.time_mix_key.weight", (64, 64), 12, Q.Q5_0),
    ("q5_k_m", "blk.0.channel_mix_key.weight", (448, 128), 12, Q.Q5_1),
    ("q6_k", "blk.0.channel_mix_value.weight", (128, 448), 12, Q.Q8_0),
    ("q4_k_s", "blk.0.time_mix_key.weight", (48, 48), 12, Q.F16),
    # the embedding: F16 (F32 in an F32 file), read one row per token
    ("q4_k_m", "token_embd.weight", (65536, 2048), 24, Q.F16),
    ("q2_k", "emb.weight", (50277, 1024), 24, Q.F16),
    ("f32", "emb.weight", (50277, 1024), 24, Q.F32),
    # llama.cpp's rules for transformer names (none apply to RWKV): attn_v
    ("q4_k_m", "blk.0.attn_v.weight", (1024, 4096), 32, Q.Q6_K),  # first eighth
    ("q4_k_m", "blk.4.attn_v.weight", (1024, 4096), 32, Q.Q4_K),
    ("q4_k_m", "blk.6.attn_v.weight", (1024, 4096), 32, Q.Q6_K),  # (6 - 4) % 3 == 2
    ("q4_k_m", "blk.28.attn_v.weight", (1024, 4096), 32, Q.Q6_K),  # last eighth
    ("q5_k_m", "blk.7.attn_v.weight", (1024, 4096), 32, Q.Q5_K),
    ("q4_k_s", "blk.3.attn_v.weight", (1024, 4096), 32, Q.Q5_K),
    ("q4_k_s", "blk.4.attn_v.weight", (1024, 4096), 32, Q.Q4_K),
    ("q5_k_s", "blk.0.attn_v.weight", (1024, 4096), 32, Q.Q5_K),
    ("q3_k", "blk.1.attn_v.weight", (1024, 4096), 32, Q.Q5_K),
    ("q3_k", "blk.2.attn_v.weight", (1024, 4096), 32, Q.Q4_K),
    ("q2_k", "blk.9.attn_v.weight", (1024, 4096), 32, Q.Q3_K),
    ("q4_k_m", "blk.0.attn_qkv.weight", (12288, 4096), 32, Q.Q6_K),  # attn_qkv follows attn_v's rules
    # ffn_down
    ("q4_k_m", "blk.0.ffn_down.weight", (4096, 11008), 32, Q.Q6_K),
    ("q4_k_m", "blk.5.ffn_down.weight", (4096, 11008), 32, Q.Q4_K),
    ("q5_k_m", "blk.31.ffn_down.weight", (4096, 11008), 32, Q.Q6_K),
    ("q4_k_s", "blk.3.ffn_down.weight", (4096, 11008), 32, Q.Q5_K),
    ("q4_k_s", "blk.4.ffn_down.weight", (4096, 11008), 32, Q.Q4_K),
    ("q3_k", "blk.1.ffn_down.weight", (4096, 11008), 32, Q.Q5_K),
    ("q3_k", "blk.2.ffn_down.weight", (4096, 11008), 32, Q.Q4_K),
    ("q2_k", "blk.2.ffn_down.weight", (4096, 11008), 32, Q.Q3_K),
    # attn_output
    ("q2_k", "blk.2.attn_output.weight", (4096, 4096), 32, Q.Q3_K),
    ("q3_k", "blk.2.attn_output.weight", (4096, 4096), 32, Q.Q4_K),
    ("q4_k_m", "blk.2.attn_output.weight", (4096, 4096), 32, Q.Q4_K),
    # untouched categories
    ("q4_k_m", "blk.2.ffn_up.weight", (11008, 4096), 32, Q.Q4_K),
    ("q4_k_m", "blk.2.attn_q.weight", (4096, 4096), 32, Q.Q4_K),
    # legacy targets keep this project's policy: head by DEFAULT_HEAD_TYPE, F16 for short rows
    ("q5_1", "blk.0.time_mix_key.weight", BIG, 24, Q.Q5_1),
    ("q5_1", "output.weight", (65536, 2048), 24, Q.Q8_0),
    ("q4_0", "blk.0.time_mix_key.weight", (48, 48), 24, Q.F16),
    ("f16", "output.weight", (65536, 2048), 24, Q.F16),
]


@pytest.mark.parametrize(("target", "name", "shape", "n_layer", "want"), TABLE)
def test_policy_per_tensor_name(target, name, shape, n_layer, want):
    got = choose(parse_target(target), name, shape, n_layer)
    assert got.dtype is want, got.rule


def test_head_type_option_overrides_the_output_rule():
    assert Policy(parse_target("q4_k_m"), 24, head=Q.Q8_0).matrix("output.weight", (65536, 2048)) is Q.Q8_0
    assert Policy(parse_target("q4_k_m"), 24, head=Q.Q6_K).matrix("output.weight", (256, 64)) is Q.Q8_0


FILE_TYPES = {
    "q2_k": gguf.LlamaFileType.MOSTLY_Q2_K, "q3_k": gguf.LlamaFileType.MOSTLY_Q3_K_M,
    "q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_M, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "q4_k_s": gguf.LlamaFileType.MOSTLY_Q4_K_S, "q5_k": gguf.LlamaFileType.MOSTLY_Q5_K_M,
    "q5_k_m": gguf.LlamaFileType.MOSTLY_Q5_K_M, "q5_k_s": gguf.LlamaFileType.MOSTLY_Q5_K_S,
    "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K, "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "f32": gguf.LlamaFileType.ALL_F32,
}


@pytest.mark.parametrize("target", FILE_TYPES)
def test_file_type_is_llama_cpps(target):
    assert parse_target(target).file_type == FILE_TYPES[target].value


@pytest.mark.parametrize("bad", ["bf16", "q7_k", "q4_k_l", ""])
def test_unknown_targets_are_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match="q4_k_m"):
        parse_target(bad)


def test_type_summary_counts_types_with_their_rule():
    target = parse_target("q4_k_m")
    tensors = [
        ("token_embd.weight", (256, 64), Q.F16),
        ("blk.0.time_mix_key.weight", (64, 64), Q.Q5_0),
        ("blk.1.time_mix_key.weight", (64, 64), Q.Q5_0),
        ("blk.0.channel_mix_value.weight", (64, 256), Q.Q4_K),
        ("blk.0.time_mix_w1.weight", (32, 64), Q.F16),
        ("blk.0.attn_norm.weight", (64,), Q.F32),
        ("output.weight", (256, 64), Q.Q8_0),
        ("blk.1.channel_mix_value.weight", (64, 256), Q.Q8_0),  # not what the policy gives
    ]
    rows = {(r.dtype, r.rule): r.count for r in type_summary(tensors, target, 2)}
    assert sum(rows.values()) == len(tensors)
    q5 = [(rule, n) for (t, rule), n in rows.items() if t is Q.Q5_0]
    assert q5 and q5[0][1] == 2 and "fallback" in q5[0][0]
    assert any(t is Q.Q4_K and "base type" in rule for t, rule in rows)
    assert any(t is Q.Q8_0 and "not what Q4_K_M's policy gives" in rule for t, rule in rows)
    assert any(t is Q.F16 and "not quantized" in rule for t, rule in rows)


def test_rwkv7_lora_factors_are_q8_0_in_quantized_files_where_rows_are_whole_blocks():
    assert lora_factor_type(parse_target("f32"), 1024) is Q.F32
    assert lora_factor_type(parse_target("f16"), 1024) is Q.F16
    for name in ("q8_0", "q5_1", "q4_0", "q5_k_m", "q2_k"):
        assert lora_factor_type(parse_target(name), 1024) is Q.Q8_0, name
        assert lora_factor_type(parse_target(name), 64) is Q.Q8_0, name
        assert lora_factor_type(parse_target(name), 40) is Q.F16, name  # a rank of no whole blocks
    rows = {(r.dtype, r.rule) for r in type_summary([("blk.0.time_mix_w2.weight", (64, 1024), Q.Q8_0),
                                                     ("blk.0.time_mix_g1.weight", (1024, 128), Q.Q8_0),
                                                     ("blk.0.time_mix_lerp_fused.weight", (1024, 1, 1, 6), Q.F32)],
                                                    parse_target("q5_1"), 1)}
    assert rows == {(Q.Q8_0, "RWKV-7's LoRA factors: Q8_0 in quantized files"),
                    (Q.F32, "RWKV's small 2-D weights (LoRA factors, lerps), not quantized")}
