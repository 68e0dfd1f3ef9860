"""`convert` of RWKV-6 (llama.cpp's rwkv6 GGUF layout) and RWKV-5.2 (our rwkv5 layout in the same naming
style), checked with the gguf package's reader and ours. No test runs llama.cpp: what its loader expects
(names, ggml shapes, keys; shared RWKV5-7.md §3.2–3.4) is checked from the file."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from runtime.convert import convert
from runtime.formats.checkpoint import V5_DECAY_EXP, V6_LORA_TRANSPOSED, open_checkpoint
from runtime.model.loader import load_weights
from runtime.model.model import Model
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import write_v56_model
from tests.support.synthetic import v4_state_dict, v56_state_dict
from tests.support.torch_writer import write_pth
from tui.cli import main as cli

L, C, N, V, RANKS = 2, 64, 32, 96, (8, 24)
F = 224  # 3.5·C rounded down to 32
TINY = Path(__file__).parent / "fixtures" / "rwkvcpp" / "tiny56"


def sd_of(version: str = "6") -> dict[str, np.ndarray]:
    return v56_state_dict(version, n_layer=L, n_embd=C, head_size=N, n_vocab=V, ranks=RANKS, seed=3)


def gguf_fields(path) -> tuple[dict, dict, dict]:
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name) for t in r.tensors}
    data = {t.name: np.asarray(t.data) for t in r.tensors}
    return fields, tensors, data


def expected_rwkv6_tensors(matrix: str) -> dict:
    """llama.cpp's rwkv6 tensors: name -> (ggml shape, type); LoRA factors F16 unless the file is F32."""
    dm, dd = RANKS
    lora = "F32" if matrix == "F32" else "F16"
    out = {"token_embd.weight": ((C, V), "F32" if matrix == "F32" else "F16"),
           "token_embd_norm.weight": ((C,), "F32"), "token_embd_norm.bias": ((C,), "F32"),
           "output_norm.weight": ((C,), "F32"), "output_norm.bias": ((C,), "F32")}
    for i in range(L):
        b = f"blk.{i}."
        for n in ("attn_norm", "attn_norm_2", "time_mix_ln"):
            out[b + n + ".weight"] = ((C,), "F32")
            out[b + n + ".bias"] = ((C,), "F32")
        out[b + "time_mix_lerp_x.weight"] = ((C, 1, 1), "F32")
        out[b + "time_mix_lerp_fused.weight"] = ((C, 1, 1, 5), "F32")
        out[b + "time_mix_w1.weight"] = ((C, 5 * dm), lora)
        out[b + "time_mix_w2.weight"] = ((dm, C, 5), lora)
        out[b + "time_mix_decay.weight"] = ((C,), "F32")
        out[b + "time_mix_decay_w1.weight"] = ((C, dd), lora)
        out[b + "time_mix_decay_w2.weight"] = ((dd, C), lora)
        out[b + "time_mix_first.weight"] = ((N, C // N), "F32")
        for n in ("receptance", "key", "value", "gate", "output"):
            out[b + f"time_mix_{n}.weight"] = ((C, C), matrix)
        out[b + "channel_mix_lerp_k.weight"] = ((C, 1, 1), "F32")
        out[b + "channel_mix_lerp_r.weight"] = ((C, 1, 1), "F32")
        out[b + "channel_mix_key.weight"] = ((C, F), matrix)
        out[b + "channel_mix_receptance.weight"] = ((C, C), matrix)
        out[b + "channel_mix_value.weight"] = ((F, C), matrix)
    return out


def test_f32_rwkv6_conversion_is_llamacpp_rwkv6_with_the_source_values(tmp_path):
    sd = sd_of()
    src = write_pth(tmp_path / "m.pth", sd, dtype="float32")
    out = tmp_path / "m.gguf"
    convert(src, out, "f32")
    fields, tensors, data = gguf_fields(out)
    want = expected_rwkv6_tensors("F32")
    want["token_embd.weight"] = ((C, V), "F32")
    want["output.weight"] = ((C, V), tensors["output.weight"][1])
    assert tensors == want
    assert fields["general.architecture"] == "rwkv6"
    for key, value in [("context_length", 1048576), ("embedding_length", C), ("block_count", L),
                       ("feed_forward_length", F), ("attention.layer_norm_epsilon", pytest.approx(1e-5)),
                       ("attention.head_count", 0), ("wkv.head_size", N), ("rescale_every_n_layers", 0),
                       ("time_mix_extra_dim", RANKS[0]), ("time_decay_extra_dim", RANKS[1])]:
        assert fields[f"rwkv6.{key}"] == value, key
    assert fields["rwkv_tui.transforms"] == [V6_LORA_TRANSPOSED]
    # llama.cpp's orientation and lerp order, checked on the raw data
    fused = data["blk.1.time_mix_lerp_fused.weight"].reshape(5, C)
    for i, m in enumerate("wkvrg"):
        assert np.array_equal(fused[i], sd[f"blocks.1.att.time_maa_{m}"].reshape(-1))
    assert np.array_equal(data["blk.0.time_mix_w1.weight"].reshape(5 * RANKS[0], C), sd["blocks.0.att.time_maa_w1"].T)
    assert np.array_equal(data["blk.0.time_mix_w2.weight"].reshape(5, C, RANKS[0]),
                          sd["blocks.0.att.time_maa_w2"].transpose(0, 2, 1))
    assert np.array_equal(data["blk.1.time_mix_decay_w2.weight"].reshape(C, RANKS[1]),
                          sd["blocks.1.att.time_decay_w2"].T)
    assert np.array_equal(data["blk.1.time_mix_first.weight"].reshape(C // N, N), sd["blocks.1.att.time_faaaa"])
    # our reader: BlinkDL names, the ranks from the shapes, the file runs as the source does
    ckpt = open_checkpoint(out)
    assert (ckpt.arch.version, ckpt.arch.mix_ranks, ckpt.arch.head_size) == ("6", RANKS, N)
    bin_path = write_v56_model(tmp_path / "m.bin", sd, DType.F32)
    tokens = [5, 17, 80, 3, 3, 60]
    with Model(load_weights(out), threads=2) as a, Model(load_weights(bin_path), threads=2) as b:
        assert np.array_equal(a.forward(tokens)[0], b.forward(tokens)[0])


def test_quantized_rwkv6_conversion_quantizes_only_the_big_matrices(tmp_path):
    src = write_pth(tmp_path / "m.pth", sd_of(), dtype="float32")
    out = tmp_path / "m.gguf"
    convert(src, out, "q8_0")
    _, tensors, _ = gguf_fields(out)
    want = expected_rwkv6_tensors("Q8_0")
    assert {k: v for k, v in tensors.items() if k in want and k != "token_embd.weight"} == \
        {k: v for k, v in want.items() if k != "token_embd.weight"}


@pytest.mark.parametrize("source", ["pth", "rwkvcpp"])
def test_rwkv5_conversion_is_our_rwkv5_layout_and_runs_as_the_source(tmp_path, source):
    sd = sd_of("5.2")
    if source == "pth":
        src = write_pth(tmp_path / "m.pth", sd, dtype="float32")
    else:  # time_decay stored as exp(-exp()): the converted file records it
        src = write_v56_model(tmp_path / "m.bin", sd, DType.F32)
    out = tmp_path / "m.gguf"
    convert(src, out, "f32")
    fields, tensors, _ = gguf_fields(out)
    assert fields["general.architecture"] == "rwkv5" and fields["rwkv5.wkv.head_size"] == N
    assert list(fields.get("rwkv_tui.transforms") or []) == ([V5_DECAY_EXP] if source == "rwkvcpp" else [])
    assert tensors["blk.1.time_mix_lerp_g.weight"] == ((C, 1, 1), "F32")
    assert tensors["blk.1.time_mix_decay.weight"] == ((N, C // N), "F32")
    assert "blk.0.time_mix_w1.weight" not in tensors
    reference = write_v56_model(tmp_path / "ref.bin", sd, DType.F32)
    tokens = [5, 17, 80, 3]
    with Model(load_weights(out), threads=2) as a, Model(load_weights(reference), threads=2) as b:
        assert a.arch_name == "rwkv5"
        got, want = a.forward(tokens)[0], b.forward(tokens)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_rwkvcpp_v6_bin_converts_to_llamacpp_layout(tmp_path):
    out = tmp_path / "tiny.gguf"
    convert(TINY / "tiny-rwkv-6v0-3m-Q5_1.bin", out, "q8_0")
    _, tensors, _ = gguf_fields(out)
    assert tensors["blk.11.time_mix_lerp_fused.weight"] == ((128, 1, 1, 5), "F32")
    assert tensors["blk.3.time_mix_w2.weight"] == ((32, 128, 5), "F16")
    with Model(load_weights(out), threads=2) as model:
        logits, _ = model.forward([34, 105, 110])
    expected = np.fromfile(TINY / "expected-logits-6v0-3m.bin", dtype="<f4")
    assert int(np.argmax(logits)) == int(np.argmax(expected))
    assert np.abs(logits - expected).max() < 0.25  # Q5_1 weights decoded and stored again as Q8_0 / F16


def test_rwkv50_and_51_files_exit_2_and_write_nothing(tmp_path, capsys):
    sd = v4_state_dict(n_layer=1, n_embd=32, n_vocab=64)
    sd["blocks.0.att.ln_x.weight"] = np.ones(32, np.float32)
    sd["blocks.0.att.ln_x.bias"] = np.zeros(32, np.float32)
    sd["blocks.0.att.gate.weight"] = np.zeros((32, 32), np.float32)
    src = write_pth(tmp_path / "v51.pth", sd, dtype="float32")
    dst = tmp_path / "out" / "v51.gguf"
    dst.parent.mkdir()
    assert cli(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "v51.pth" in err and "RWKV-5.1" in err and "not supported" in err
    assert list(dst.parent.iterdir()) == []


def test_inspect_shows_heads_and_rwkv6_lora_ranks(capsys):
    assert cli(["inspect", str(TINY / "tiny-rwkv-6v0-3m-Q5_1.bin")]) == 0
    out = capsys.readouterr().out
    assert "RWKV-6 (runnable)" in out and "16 × head size 8" in out and "token shift 32, decay 64" in out


def _hf_name(name: str) -> str:
    """transformers' Rwkv5/Rwkv6 checkpoint names (BlinkDL's renamed; shapes and values unchanged)."""
    if name.startswith("emb."):
        name = "embeddings." + name[4:]
    name = name.replace("blocks.0.ln0", "blocks.0.pre_ln").replace(".att.", ".attention.")
    name = name.replace(".ffn.", ".feed_forward.")
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance"), ("g", "gate")):
        if name.endswith(f".time_mix_{short}"):
            name = name[: -len(short)] + long
    return name if name == "head.weight" else "rwkv." + name


@pytest.mark.parametrize("version", ["6", "5.2"])
def test_hugging_face_rwkv5_and_rwkv6_checkpoints_convert_and_run(tmp_path, version):
    from tests.support.safetensors_writer import write_safetensors

    sd = sd_of(version)
    src = write_safetensors(tmp_path / "model.safetensors", {_hf_name(k): v for k, v in sd.items()})
    ckpt = open_checkpoint(src)
    assert (ckpt.source_format, ckpt.arch.version, ckpt.arch.head_size) == ("hf-safetensors", version, N)
    out = tmp_path / "m.gguf"
    convert(src, out, "f32")
    reference = write_v56_model(tmp_path / "ref.bin", sd, DType.F32)
    tokens = [5, 17, 80, 3]
    with Model(load_weights(out), threads=2) as a, Model(load_weights(reference), threads=2) as b:
        got, want = a.forward(tokens)[0], b.forward(tokens)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
