"""Embeddings stored in a legacy quantized type (Q8_0, Q5_1, Q5_0, Q4_1, Q4_0), as llama.cpp's quantize
writes `token_embd` in the file's type: the runtime decodes the token's row from its blocks, so the
model gives exactly what the same model with those decoded values stored as F32 gives."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.model.model import load_model
from runtime.quant.codec import quantize, to_float32
from runtime.quant.types import DType
from tests.support.gguf_model import write_model_gguf
from tests.support.numpy_rwkv import _ln as layer_norm
from tests.support.synthetic import v4_state_dict

TOKENS = [3, 77, 0, 95, 41, 41, 12]


@pytest.mark.parametrize("emb", [DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0], ids=lambda t: t.name)
def test_a_quantized_embedding_decodes_as_its_values(tmp_path, emb):
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=96, seed=9)
    names = ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias")
    folded = layer_norm(*(sd[k].astype(np.float64) for k in names)).astype(np.float32)
    decoded = to_float32(quantize(folded, emb), emb).reshape(folded.shape)
    assert not np.array_equal(decoded, folded)  # the type does change the values
    q = write_model_gguf(tmp_path / "q.gguf", sd, DType.F32, emb=emb, emb_ln0=folded)
    oracle = write_model_gguf(tmp_path / "o.gguf", sd, DType.F32, emb=DType.F32, emb_ln0=decoded)
    with load_model(q, threads=2) as model, load_model(oracle, threads=2) as want:
        assert model.spec.emb_type is emb
        state, want_state = None, None
        for tok in TOKENS:  # one token at a time
            logits, state = model.forward([tok], state)
            want_logits, want_state = want.forward([tok], want_state)
            np.testing.assert_array_equal(logits, want_logits)
        all_logits, _ = model.forward_all(TOKENS)  # and as one sequence call
        np.testing.assert_array_equal(all_logits, want.forward_all(TOKENS)[0])
