"""`convert` of RWKV-7: llama.cpp's rwkv7 GGUF layout, checked with the gguf package's reader and ours.

No test runs llama.cpp: what its loader expects (names, ggml shapes, keys) is checked from the file,
as the gguf package reads it.
"""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import pytest

from runtime.convert import convert
from runtime.formats.checkpoint import V7_LORA_TRANSPOSED, open_checkpoint
from runtime.formats.detect import LoraRanks
from runtime.quant.codec import quantize
from runtime.quant.types import DType
from runtime.text.gguf_vocab import tokenizer_for_metadata, unescape_token
from runtime.text.tokenizers import load_tokenizer
from tests.support.hf_v7 import fla_names
from tests.support.safetensors_writer import write_safetensors
from tests.support.synthetic import v7_state_dict
from tests.support.torch_writer import write_pth
from tui.cli import main as cli

RANKS = (8, 24, 40, 16)
LORA = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
BIG = ("att.receptance.weight", "att.key.weight", "att.value.weight", "att.output.weight",
       "ffn.key.weight", "ffn.value.weight")


def sd_of(n_vocab=96, layer0_v=False, n_layer=3):
    return v7_state_dict(n_layer=n_layer, n_embd=64, head_size=32, n_vocab=n_vocab, ranks=RANKS, layer0_v=layer0_v)


def gguf_fields(path) -> tuple[dict, dict]:
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name) for t in r.tensors}
    return fields, tensors


def expected_llamacpp_tensors(n_layer: int, C: int, F: int, V: int, matrix: str, emb: str, head: str) -> dict:
    """llama.cpp's rwkv7 tensors: name -> (ggml shape, type), from the layout table (§3.4). LoRA
    factors are F32 in an F32 file, F16 in an F16 one (as rwkv.cpp's FP16 files hold them), and in a
    quantized file Q8_0 where their rows (ggml's first dimension) are whole blocks, else F16."""
    Dw, Da, Dv, Dg = RANKS

    def lora(row: int) -> str:
        if matrix in ("F32", "F16"):
            return matrix
        return "Q8_0" if row % 32 == 0 else "F16"
    out = {"token_embd.weight": ((C, V), emb), "token_embd_norm.weight": ((C,), "F32"),
           "token_embd_norm.bias": ((C,), "F32"), "output_norm.weight": ((C,), "F32"),
           "output_norm.bias": ((C,), "F32"), "output.weight": ((C, V), head)}
    for i in range(n_layer):
        b = f"blk.{i}."
        dv = Da if i == 0 else Dv  # layer 0: llama.cpp's dummies copy a0/a1/a2
        for n in ("attn_norm", "attn_norm_2", "time_mix_ln"):
            out[b + n + ".weight"] = ((C,), "F32")
            out[b + n + ".bias"] = ((C,), "F32")
        out[b + "time_mix_lerp_fused.weight"] = ((C, 1, 1, 6), "F32")
        for k, d in (("w", Dw), ("a", Da), ("v", dv), ("g", Dg)):
            if k != "g":
                out[b + f"time_mix_{k}0.weight"] = ((C,), "F32")
            out[b + f"time_mix_{k}1.weight"] = ((C, d), lora(C))
            out[b + f"time_mix_{k}2.weight"] = ((d, C), lora(d))
        for n in ("k_k", "k_a", "r_k"):
            out[b + f"time_mix_{n}.weight"] = ((C,), "F32")
        for n in ("receptance", "key", "value", "output"):
            out[b + f"time_mix_{n}.weight"] = ((C, C), matrix)
        out[b + "channel_mix_lerp_k.weight"] = ((C, 1, 1), "F32")
        out[b + "channel_mix_key.weight"] = ((C, F), matrix)
        out[b + "channel_mix_value.weight"] = ((F, C), matrix)
    return out


@pytest.mark.parametrize("source", ["pth-f32", "pth-bf16", "pth-layer0-v", "fla-safetensors"])
def test_f32_conversion_is_llamacpp_rwkv7_with_the_source_values(tmp_path, source):
    sd = sd_of(layer0_v=source == "pth-layer0-v")
    if source == "fla-safetensors":
        src = write_safetensors(tmp_path / "model.safetensors", fla_names(sd))
    else:
        src = write_pth(tmp_path / "m.pth", sd, dtype="bfloat16" if source == "pth-bf16" else "float32")
    out = tmp_path / "m.gguf"
    convert(src, out, "f32")

    fields, tensors = gguf_fields(out)
    assert tensors == expected_llamacpp_tensors(3, 64, 256, 96, "F32", "F32", "F32")
    assert fields["general.architecture"] == "rwkv7"
    for key, want in [("context_length", 1048576), ("embedding_length", 64), ("block_count", 3),
                      ("feed_forward_length", 256), ("attention.layer_norm_epsilon", pytest.approx(1e-5)),
                      ("attention.head_count", 0), ("wkv.head_size", 32), ("attention.decay_lora_rank", 8),
                      ("attention.iclr_lora_rank", 24), ("attention.value_residual_mix_lora_rank", 40),
                      ("attention.gate_lora_rank", 16)]:
        assert fields[f"rwkv7.{key}"] == want, key
    assert fields["rwkv_tui.transforms"] == [V7_LORA_TRANSPOSED]
    assert fields["general.file_type"] == 0

    # our reader: the same values under BlinkDL names, LoRA transposed as the transform says
    ckpt = open_checkpoint(out)
    assert ckpt.arch.lora == LoraRanks(*RANKS) and ckpt.arch.head_size == 32
    assert ckpt.transforms == {V7_LORA_TRANSPOSED}
    src_ckpt = open_checkpoint(src)
    assert set(ckpt.tensors) == set(src_ckpt.tensors) - {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    for name, t in ckpt.tensors.items():
        want = src_ckpt.tensors[name].numpy()
        if name.rsplit(".", 1)[-1] in LORA and V7_LORA_TRANSPOSED not in src_ckpt.transforms:
            want = want.T
        assert np.array_equal(t.numpy().reshape(-1), want.reshape(-1)), name
    # the dummies llama.cpp needs are layer 0's a0/a1/a2
    r = gguf.GGUFReader(str(out))
    data = {t.name: np.asarray(t.data) for t in r.tensors}
    for n in "012":
        assert np.array_equal(data[f"blk.0.time_mix_v{n}.weight"], data[f"blk.0.time_mix_a{n}.weight"])
    fused = data["blk.1.time_mix_lerp_fused.weight"].reshape(6, 64)
    for i, m in enumerate("rwkvag"):
        assert np.array_equal(fused[i], src_ckpt.tensors[f"blocks.1.att.x_{m}"].numpy().reshape(-1))


def test_quantized_conversion_quantizes_only_the_big_matrices(tmp_path):
    sd = sd_of()
    src = write_pth(tmp_path / "m.pth", sd, dtype="float32")
    out = tmp_path / "q.gguf"
    result = convert(src, out, "q5_1")
    assert result.head_dtype is DType.Q8_0
    _, tensors = gguf_fields(out)
    assert tensors == expected_llamacpp_tensors(3, 64, 256, 96, "Q5_1", "F16", "Q8_0")
    ckpt = open_checkpoint(out)
    for name in BIG:
        stored = ckpt.tensors[f"blocks.2.{name}"].read_raw_rows()
        assert np.array_equal(stored, quantize(sd[f"blocks.2.{name}"], DType.Q5_1)), name
    # LoRA factors: Q8_0 where their rows are whole blocks (first factors, rows of C), else F16 (ranks 8-40)
    g1, g2 = ckpt.tensors["blocks.2.att.g1"], ckpt.tensors["blocks.2.att.g2"]
    assert np.array_equal(g1.read_raw_rows(), quantize(np.ascontiguousarray(sd["blocks.2.att.g1"].T), DType.Q8_0))
    assert np.array_equal(g2.numpy(), sd["blocks.2.att.g2"].T.astype(np.float16))


def test_world_vocabulary_is_stored_as_llamacpp_does_and_gives_the_world_tokenizer(tmp_path):
    sd = v7_state_dict(n_layer=1, n_embd=32, head_size=32, n_vocab=65536, ranks=RANKS)
    out = tmp_path / "w.gguf"
    convert(write_pth(tmp_path / "w.pth", sd, dtype="bfloat16"), out, "f16")
    fields, _ = gguf_fields(out)
    tokens = fields["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.model"] == "rwkv" and len(tokens) == 65536
    assert tokens[0] == "<s>" and tokens[261] == "\\n\\n" and tokens[65535] == "[PAD65535]"
    assert tokens[1] == "\\x00" and tokens[256] == "\\xff"
    types = fields["tokenizer.ggml.token_type"]
    assert (types[0], types[261], types[65535]) == (3, 1, 5)
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (0, 0)
    assert fields["tokenizer.ggml.eot_token_id"] == 261
    assert fields["tokenizer.chat_template"] == "rwkv-world"
    world = load_tokenizer("world")
    for i in (33, 261, 1000, 30000, 65529):  # llama.cpp's unescaping gives the vocabulary's bytes
        assert unescape_token(tokens[i]) == world.token_bytes(i)
    ckpt = open_checkpoint(out)
    assert tokenizer_for_metadata(ckpt.metadata, ckpt.arch.n_vocab) is world

    # re-quantizing our GGUF keeps its vocabulary
    again = tmp_path / "w8.gguf"
    convert(out, again, "q8_0")
    assert gguf_fields(again)[0]["tokenizer.ggml.tokens"] == tokens


def test_inspect_cuts_the_vocabulary_short(tmp_path, capsys):
    sd = v7_state_dict(n_layer=1, n_embd=32, head_size=32, n_vocab=65536, ranks=RANKS)
    out = tmp_path / "w.gguf"
    convert(write_pth(tmp_path / "w.pth", sd, dtype="float32"), out, "q8_0")
    capsys.readouterr()
    assert cli(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "65536 items" in text and "[PAD65535]" not in text and len(text) < 20_000


def test_pile_vocabulary_is_named_where_llamacpp_still_loads_the_file(tmp_path):
    # llama.cpp refuses a file whose tokenizer.ggml.model it does not know ("unknown tokenizer:
    # 'gpt-neox-20b'", llama-cpp-python 0.3.36); "none" it loads as a model without a vocabulary
    sd = v7_state_dict(n_layer=1, n_embd=32, head_size=32, n_vocab=50304, ranks=RANKS)
    out = tmp_path / "p.gguf"
    convert(write_pth(tmp_path / "p.pth", sd, dtype="float32"), out, "q8_0")
    fields, _ = gguf_fields(out)
    assert fields["tokenizer.ggml.model"] == "none" and fields["rwkv_tui.tokenizer"] == "gpt-neox-20b"
    assert "tokenizer.ggml.tokens" not in fields
    assert tokenizer_for_metadata(open_checkpoint(out).metadata, 50304) is load_tokenizer("20b")


def test_inspect_shows_version_head_size_and_lora_ranks(tmp_path, capsys):
    out = tmp_path / "i.gguf"
    convert(write_pth(tmp_path / "i.pth", sd_of(), dtype="float32"), out, "q8_0")
    capsys.readouterr()
    assert cli(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in ("RWKV-7", "3 × 64", "2 × head size 32", "decay 8, iclr 24, value 40, gate 16",
                   "blocks.0.att.w1", "rwkv7.wkv.head_size"):
        assert needle in text, needle
    # the first factors (rows of C = 64, whole blocks): w1, a1, v1, g1 in each of 3 layers
    assert re.search(r"Q8_0 +│ +12 │ RWKV-7's LoRA factors: Q8_0 in quantized files", text), text


def _bad_sources(tmp_path):
    """(file, words the error must contain) for each kind of broken RWKV-7 input."""
    def pth(name, change):
        sd = sd_of()
        change(sd)
        return write_pth(tmp_path / name, sd, dtype="float32")

    good = tmp_path / "good.gguf"
    convert(write_pth(tmp_path / "good.pth", sd_of(), dtype="float32"), good, "q8_0")
    header = good.read_bytes()
    # a tensor in a type we do not decode: one big matrix's type code changed to IQ2_XXS (16)
    name = b"blk.1.time_mix_key.weight"
    at = header.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    kquant = bytearray(header)
    assert kquant[at + 4 + 16 : at + 4 + 20] == (8).to_bytes(4, "little")  # 2 dims, then the type: Q8_0
    kquant[at + 4 + 16 : at + 4 + 20] = (16).to_bytes(4, "little")
    (tmp_path / "kquant.gguf").write_bytes(bytes(kquant))
    (tmp_path / "truncated.gguf").write_bytes(header[: len(header) - 1000])
    return [
        (pth("missing.pth", lambda sd: sd.pop("blocks.2.att.k_k")), "missing blocks.2.att.k_k"),
        (pth("ranks.pth", lambda sd: sd.update({"blocks.1.att.w2": np.zeros((9, 64), np.float32)})),
         "mismatched ranks"),
        (pth("width.pth", lambda sd: sd.update({f"blocks.{i}.att.r_k": np.zeros((2, 48), np.float32)
                                                for i in range(3)})), "not a multiple of the head size 48"),
        (tmp_path / "kquant.gguf", "'blk.1.time_mix_key.weight' has type IQ2_XXS"),
        (tmp_path / "truncated.gguf", "truncated"),
    ]


def test_bad_rwkv7_files_exit_2_naming_file_and_problem_and_write_nothing(tmp_path, capsys):
    for src, words in _bad_sources(tmp_path):
        dst = tmp_path / "out" / f"{src.stem}.gguf"
        dst.parent.mkdir(exist_ok=True)
        capsys.readouterr()
        assert cli(["convert", str(src), str(dst)]) == 2, src.name
        err = capsys.readouterr().err
        assert src.name in err and words in err, (src.name, err)
        assert list(dst.parent.iterdir()) == [], src.name
        assert cli(["inspect", str(src)]) == 2
        assert words in capsys.readouterr().err


RWKVCPP_V7 = Path(__file__).parent / "fixtures" / "rwkvcpp" / "tiny7" / "tiny-rwkv-7v0-834K-FP16.bin"


def test_rwkvcpp_v7_bin_converts_to_llamacpp_layout(tmp_path):
    out = tmp_path / "tiny.gguf"
    convert(RWKVCPP_V7, out, "f16")
    _, tensors = gguf_fields(out)
    assert tensors["blk.11.time_mix_lerp_fused.weight"] == ((64, 1, 1, 6), "F32")
    assert tensors["blk.3.time_mix_w1.weight"] == ((64, 32), "F16")  # as rwkv.cpp's FP16 file holds it
    src, ours = open_checkpoint(RWKVCPP_V7), open_checkpoint(out)
    assert V7_LORA_TRANSPOSED in src.transforms
    for name, t in src.tensors.items():  # both store LoRA transposed: equal as stored
        assert np.array_equal(ours.tensors[name].numpy().reshape(-1), t.numpy().reshape(-1)), name
