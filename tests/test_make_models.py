"""bench/make_models.py: the random RWKV-5.2 and RWKV-6 benchmark models are what they claim (the
architecture, the released LoRA ranks and FFN width, and logits of a trained model's spread), and
converting one gives our default layout."""

from __future__ import annotations

import numpy as np
import pytest

from bench.make_models import v6_ranks, write_models
from runtime.convert import convert
from runtime.formats.checkpoint import open_checkpoint
from runtime.model.model import load_model
from runtime.quant.types import DType


@pytest.mark.parametrize(("arch", "version"), [("6", "6"), ("5", "5.2")])
def test_v56_models_have_the_released_shapes_and_flat_logits(arch, version, tmp_path):
    f16, q5 = write_models(arch, 2, 256, [DType.F16, DType.Q5_1], tmp_path, vocab=1000)
    a = open_checkpoint(f16).arch
    assert (a.version, a.n_layer, a.n_embd, a.n_vocab, a.n_ffn, a.head_size) == (version, 2, 256, 1000, 896, 64)
    assert a.mix_ranks == (v6_ranks(256) if version == "6" else None)
    assert open_checkpoint(q5).tensors["blocks.1.att.key.weight"].dtype is DType.Q5_1
    gguf = tmp_path / "m-q8_0.gguf"
    convert(f16, gguf, DType.Q8_0)
    for path in (f16, q5, gguf):
        with load_model(path, threads=1) as model:
            logits, _ = model.forward([1, 2, 3])
        assert 0.5 < float(np.std(logits)) < 2.0, path.name  # nearly flat, as the RWKV-4 and -7 benchmark models
    assert v6_ranks(4096) == (64, 128)
