"""Whole models whose big matrices are K-quant blocks (Q2_K … Q6_K), for every architecture.

Each model is a random checkpoint converted to F32 (runtime.convert), then rewritten twice
(tests/support/kquant_blocks.k_quant_pair): once with its big matrices (layers and head; in some
cases the embedding too, as llama.cpp's K-quant files store it, or every matrix whose rows hold whole
super-blocks, LoRA factors included) as random valid K blocks, once
with those matrices as F32 holding exactly the values gguf's reference decoder gives for the blocks.
The F32 kernels are checked against the official implementations elsewhere, so the K-quant model must
give the oracle's logits and state: decoding token by token (the matvec kernels) and as one sequence
call (matmul), on 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.convert import convert
from runtime.jit.kernels.matvec_kquant import int_variant
from runtime.model.model import load_model
from runtime.quant.types import K_QUANT_TYPES, DType
from tests.model.test_forward import FLOAT_TOLERANCE, INT16_TOLERANCE
from tests.support.kquant_blocks import k_quant_pair
from tests.support.synthetic import v4_state_dict, v7_state_dict, v56_state_dict
from tests.support.torch_writer import write_pth

TOKENS = [5, 17, 300, 3, 3, 64, 511, 0, 42]
ARCHS = {
    "4": lambda: v4_state_dict(n_layer=2, n_embd=256, n_vocab=512, seed=1),
    "5.2": lambda: v56_state_dict("5.2", n_layer=2, n_embd=256, n_vocab=512, n_ffn=1024, seed=2),
    "6": lambda: v56_state_dict("6", n_layer=2, n_embd=256, n_vocab=512, n_ffn=1024, seed=3),
    "7": lambda: v7_state_dict(n_layer=2, n_embd=256, n_vocab=512, seed=4),
}


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module", params=list(ARCHS), ids=lambda v: f"v{v}")
def f32_source(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"v{request.param}")
    write_pth(d / "m.pth", ARCHS[request.param](), dtype="float32")
    convert(d / "m.pth", d / "f32.gguf", "f32")
    return d / "f32.gguf"


@pytest.mark.parametrize("dtype", K_QUANT_TYPES, ids=lambda t: t.name)
def test_k_quant_model_matches_its_f32_oracle(f32_source, dtype: DType, tmp_path) -> None:
    embedding = dtype in (DType.Q4_K, DType.Q6_K, DType.Q2_K)
    min_rows = 1 if dtype in (DType.Q5_K, DType.Q3_K) else 256  # LoRA factors too where their rows allow
    replaced = k_quant_pair(f32_source, tmp_path / "k.gguf", tmp_path / "oracle.gguf", dtype, seed=int(dtype),
                            embedding=embedding, min_rows=min_rows)
    assert len(replaced) >= 2 * 4 + 1 + embedding  # at least four matrices per layer, the head (and embedding)
    decode_bound = INT16_TOLERANCE if int_variant(dtype) is not None else FLOAT_TOLERANCE
    with load_model(tmp_path / "k.gguf", threads=2) as model, load_model(tmp_path / "oracle.gguf", threads=2) as oracle:
        assert dtype in {t for types in model.spec.layer_types for t in types}
        assert model.spec.emb_type == (dtype if embedding else DType.F32)
        state, want_state = model.new_state(), oracle.new_state()
        for tok in TOKENS:
            got, state = model.forward([tok], state)
            want, want_state = oracle.forward([tok], want_state)
            assert _rel(got, want) <= decode_bound, (tok, _rel(got, want))
        got, got_state = model.forward(TOKENS)
        want, want_seq_state = oracle.forward(TOKENS)
        assert _rel(got, want) <= decode_bound  # the head multiplies one row (matvec)
        assert _rel(got_state.data, want_seq_state.data) <= FLOAT_TOLERANCE
