"""Every RWKV-7 file a user may have, read into a Checkpoint with BlinkDL names and the source's values.

Sources: BlinkDL .pth (fp32, bf16, with and without layer 0's v0/v1/v2), Hugging Face safetensors in
the flash-linear-attention layout (`*_lora.lora.N.*`, separate or fused x_x lerps) and in the
transformers `rwkv.` layout, and llama.cpp rwkv7 GGUF files (written by tests/support/llamacpp_writer.py
with the gguf package, not by our converter). rwkv.cpp v7 `.bin` files are read by
runtime/formats/rwkvcpp.py (another branch); the test for them is at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.errors import ModelFileError, UnsupportedModelError
from runtime.formats.checkpoint import V7_LORA_TRANSPOSED, open_checkpoint
from runtime.formats.detect import LoraRanks
from runtime.formats.gguf_rwkv7 import LORA_LEAVES
from tests.support.hf_v7 import fla_names, transformers_names
from tests.support.llamacpp_writer import stored, write_llamacpp_rwkv7
from tests.support.safetensors_writer import stored_values, write_safetensors
from tests.support.synthetic import v7_state_dict
from tests.support.torch_writer import write_pth

RANKS = (8, 24, 40, 16)
N_LAYER, N_EMBD, HEAD = 3, 64, 32


def state_dict(layer0_v: bool = False) -> dict[str, np.ndarray]:
    return v7_state_dict(n_layer=N_LAYER, n_embd=N_EMBD, head_size=HEAD, n_vocab=96, ranks=RANKS, layer0_v=layer0_v)


def check(ckpt, sd: dict[str, np.ndarray], round_to=None, *, layer0_v: bool = False) -> None:
    """The checkpoint holds the source's values under BlinkDL names (LoRA transposed if it says so)."""
    assert ckpt.arch.version == "7"
    assert (ckpt.arch.n_layer, ckpt.arch.n_embd, ckpt.arch.head_size) == (N_LAYER, N_EMBD, HEAD)
    assert ckpt.arch.lora == LoraRanks(*RANKS)
    layer0_vs = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    expected = {k: v for k, v in sd.items() if layer0_v or k not in layer0_vs}
    assert set(ckpt.tensors) == set(expected)
    transposed = V7_LORA_TRANSPOSED in ckpt.transforms
    for name, want in expected.items():
        got = ckpt.tensors[name].numpy()
        if round_to is not None:
            want = round_to(want)
        if transposed and name.rsplit(".", 1)[-1] in LORA_LEAVES:
            want = want.T
        if got.ndim != want.ndim or got.size != want.size:
            assert got.size == want.size, name
            got, want = got.reshape(-1), want.reshape(-1)
        assert np.array_equal(got, want), name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layer0_v", [False, True])
def test_blinkdl_pth(tmp_path, dtype, layer0_v):
    sd = state_dict(layer0_v)
    ckpt = open_checkpoint(write_pth(tmp_path / "m.pth", sd, dtype=dtype))
    assert ckpt.source_format == "pth" and V7_LORA_TRANSPOSED not in ckpt.transforms
    check(ckpt, sd, (lambda a: stored_values(a, "BF16")) if dtype == "bfloat16" else None, layer0_v=layer0_v)


@pytest.mark.parametrize("fused_lerp", [False, True])
@pytest.mark.parametrize("type_name", ["F32", "BF16"])
def test_fla_safetensors(tmp_path, fused_lerp, type_name):
    sd = state_dict(layer0_v=True)
    path = write_safetensors(tmp_path / "model.safetensors", fla_names(sd, fused_lerp), type_name)
    ckpt = open_checkpoint(tmp_path)  # the folder
    assert ckpt.source_format == "hf-safetensors" and V7_LORA_TRANSPOSED in ckpt.transforms
    check(ckpt, sd, lambda a: stored_values(a, type_name), layer0_v=True)
    assert open_checkpoint(path).arch == ckpt.arch


def test_transformers_layout_safetensors(tmp_path):
    sd = state_dict()
    ckpt = open_checkpoint(write_safetensors(tmp_path / "m.safetensors", transformers_names(sd)))
    assert ckpt.source_format == "hf-safetensors" and V7_LORA_TRANSPOSED not in ckpt.transforms
    check(ckpt, sd)


def test_fla_name_outside_the_layout_is_named(tmp_path):
    names = fla_names(state_dict())
    names["model.layers.1.attn.mystery.weight"] = np.zeros(4, np.float32)
    with pytest.raises(ModelFileError, match=r"'model\.layers\.1\.attn\.mystery\.weight'"):
        open_checkpoint(write_safetensors(tmp_path / "m.safetensors", names))


@pytest.mark.parametrize("matrix_type", ["F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"])
def test_llamacpp_gguf(tmp_path, matrix_type):
    sd = state_dict(layer0_v=True)  # llama.cpp drops layer 0's own v0/v1/v2 and writes dummies
    path = write_llamacpp_rwkv7(tmp_path / "l.gguf", sd, N_LAYER, HEAD, RANKS, matrix_type=matrix_type)
    ckpt = open_checkpoint(path)
    assert ckpt.source_format == "gguf" and V7_LORA_TRANSPOSED in ckpt.transforms
    assert "blocks.0.att.v1" not in ckpt.tensors
    big = ("att.receptance.weight", "att.key.weight", "att.value.weight", "att.output.weight",
           "ffn.key.weight", "ffn.value.weight")
    assert {ckpt.tensors[f"blocks.1.{n}"].dtype.name for n in big} == {matrix_type}
    check(ckpt, {k: stored(v, matrix_type) if k.endswith(big) else v for k, v in sd.items()})


def test_other_gguf_architectures_are_refused_by_name(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match=r"q\.gguf: GGUF architecture 'mamba' is not supported"):
        open_checkpoint(tmp_path / "q.gguf")


RWKVCPP_V7 = Path(__file__).parents[1] / "fixtures" / "rwkvcpp" / "tiny7" / "tiny-rwkv-7v0-834K-FP32.bin"


def test_rwkvcpp_v7_bin():
    ckpt = open_checkpoint(RWKVCPP_V7)
    assert ckpt.arch.version == "7" and V7_LORA_TRANSPOSED in ckpt.transforms
    assert (ckpt.arch.n_layer, ckpt.arch.n_embd, ckpt.arch.head_size) == (12, 64, 64)
    assert ckpt.arch.lora == LoraRanks(32, 32, 32, 32)
    assert ckpt.tensors["blocks.3.att.x_a"].numpy().size == 64
