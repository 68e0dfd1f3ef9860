"""Loading RWKV-7 files: a tensor missing or of the wrong shape stops the load with its name before any
address reaches native code (detect.py checks the names and shapes, arch/rwkv7.py each matrix against
the dimensions compiled in)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from runtime.errors import ModelFileError
from runtime.model.loader import load_weights
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import blinkdl_v7_to_rwkvcpp, write_rwkvcpp
from tests.support.synthetic import v7_state_dict


def _write(tmp_path, edit) -> object:
    sd = v7_state_dict(n_layer=2, n_embd=128, n_vocab=96, seed=7)
    stored = blinkdl_v7_to_rwkvcpp(sd, DType.F32)
    edit(stored)
    return write_rwkvcpp(tmp_path / "m.bin", stored, n_vocab=96, n_embd=128, n_layer=2, data_type=DType.F32)


def test_a_good_file_loads_with_its_ranks(tmp_path):
    w = load_weights(_write(tmp_path, lambda s: None))
    assert (w.spec.ranks, w.spec.head_size, w.spec.n_ffn) == ((24, 40, 16, 48), 64, 512)
    w.close()


def test_a_misshapen_lora_factor_is_refused(tmp_path):
    def edit(s):
        s["blocks.1.att.a2"] = (np.zeros((128, 32), np.float32), DType.F32)

    with pytest.raises(ModelFileError, match=r"'blocks\.1\.att\.a2' \(rank 32\)"):
        load_weights(_write(tmp_path, edit))


def test_an_untransposed_lora_factor_is_refused(tmp_path):
    def edit(s):
        s["blocks.0.att.g1"] = (np.ascontiguousarray(s["blocks.0.att.g1"][0].T), DType.F32)

    with pytest.raises(ModelFileError, match=r"'blocks\.0\.att\.g1' \(rank 128\)"):
        load_weights(_write(tmp_path, edit))


@pytest.mark.parametrize("name", ["blocks.1.ffn.x_k", "blocks.0.att.k_a", "blocks.1.att.v2"])
def test_a_missing_tensor_is_refused_by_name(tmp_path, name):
    with pytest.raises(ModelFileError, match=f"missing {re.escape(name)}"):
        load_weights(_write(tmp_path, lambda s: s.pop(name)))


def test_the_contracts_other_spellings_give_the_same_model(tmp_path):
    """Vectors as [C] instead of [1,1,C], r_k flat [C] (head size 64 then), and layer 0 carrying
    llama.cpp's dummy v0/v1/v2 (copies of a0/a1/a2, of rank Da): the same logits and state."""
    from runtime.model.model import Model

    def edit(s):
        for name, (a, dtype) in list(s.items()):
            if a.ndim == 3 and a.shape[:2] == (1, 1):
                s[name] = (a.reshape(-1), dtype)
        s["blocks.0.att.r_k"] = (s["blocks.0.att.r_k"][0].reshape(-1), DType.F32)
        s["blocks.0.att.v0"] = s["blocks.0.att.a0"]
        s["blocks.0.att.v1"] = s["blocks.0.att.a1"]
        s["blocks.0.att.v2"] = s["blocks.0.att.a2"]

    tokens = [5, 17, 90, 3, 3, 64]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Model(load_weights(_write(tmp_path / "a", lambda s: None)), threads=2) as plain, \
            Model(load_weights(_write(tmp_path / "b", edit)), threads=2) as other:
        want, want_state = plain.forward(tokens)
        got, got_state = other.forward(tokens)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_state.data, want_state.data)


def test_a_converted_world_model_gets_the_world_tokenizer(tmp_path):
    """llama.cpp's rwkv7 GGUF names the World vocabulary 'rwkv' and lists its tokens; the model reads
    its tokenizer from there (runtime/text/gguf_vocab.py), not from the name alone."""
    from runtime.convert import convert
    from runtime.model.model import load_model
    from runtime.text.tokenizers import load_tokenizer
    from tests.support.torch_writer import write_pth

    src = write_pth(tmp_path / "w.pth", v7_state_dict(n_layer=1, n_embd=64, n_vocab=65536, seed=2), dtype="float32")
    convert(src, tmp_path / "w.gguf", "f16")
    with load_model(tmp_path / "w.gguf", threads=1) as model:
        assert model.metadata["tokenizer.ggml.model"] == "rwkv"
        assert model.tokenizer_name == "rwkv-world"
        assert model.tokenizer is load_tokenizer("world")
        logits, _ = model.forward(model.tokenizer.encode("Hello"))
        assert np.isfinite(logits).all()
