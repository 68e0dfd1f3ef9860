"""The compiled forward pass against the official implementation's outputs (reference fixtures).

F32 files must agree with BlinkDL's `rwkv` package (cpu fp32) on the logits of 64 decode steps and
of one 64-token sequence call within max|Δ| ≤ 1e-4·max|logit|, and on the final states within the
same relative bound; F16 files within 1e-2. The fixtures' `emb_ln0` (the embedding the package
used, ln0 folded in the checkpoint's dtype) is written as the embedding so that only the forward
pass is compared here; tests/test_convert.py covers the fold.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ModelFileError
from runtime.jit.kernels.matvec_int16 import int16_variant
from runtime.model.loader import load_weights
from runtime.model.model import Model, load_model
from runtime.model.state import StateError
from runtime.quant.types import DType
from tests.support.gguf_model import write_model_gguf
from tests.support.reference import load_reference, read_pth_arrays
from tests.support.synthetic import v4_state_dict

REFS = ["tiny", "small"]


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _state_rel(got: np.ndarray, want: np.ndarray) -> float:
    """Worst relative gap over the five kinds of state row (att_xx, aa, bb, pp, ffn_xx)."""
    C = got.shape[1]
    g, w = got.reshape(-1, 5, C), want.reshape(-1, 5, C)
    return max(_rel(g[:, k], w[:, k]) for k in range(5))


@pytest.fixture(scope="module", params=REFS)
def ref_model(request, tmp_path_factory):
    ref = load_reference(request.param)
    path = tmp_path_factory.mktemp("m") / f"{ref.name}-f32.gguf"
    write_model_gguf(path, read_pth_arrays(ref.pth_path), DType.F32, emb_ln0=ref.emb_ln0)
    with load_model(path, threads=2) as model:
        yield ref, model


def test_all_positions_match_official_implementation(ref_model):
    """forward_all: the logits after every token of one sequence-mode call, against the official
    decode logits of each step (64 steps, so chunks of 16 cross boundaries too)."""
    ref, model = ref_model
    logits, state = model.forward_all(ref.tokens)
    assert logits.shape == (len(ref.tokens), model.n_vocab)
    assert max(_rel(logits[i], ref.logits_decode[i]) for i in range(len(ref.tokens))) <= 1e-4
    assert _state_rel(state.data, ref.state_seq) <= 1e-4
    assert np.array_equal(state.logits, logits[-1])
    half = len(ref.tokens) // 2  # in two calls, carrying the state
    first, mid = model.forward_all(ref.tokens[:half])
    second, _ = model.forward_all(ref.tokens[half:], mid)
    assert _rel(np.concatenate([first, second]), logits) <= 1e-5


@pytest.mark.parametrize("chunk", [16, 128])
def test_all_positions_equal_the_last_token_logits_of_growing_calls(f16_model_path, chunk):
    model = Model(load_weights(f16_model_path, chunk=chunk), threads=2)
    tokens = np.random.default_rng(1).integers(0, model.n_vocab, 40)
    every, _ = model.forward_all(tokens)
    for n in (1, 15, 16, 17, 40):
        last, _ = model.forward(tokens[:n])
        assert _rel(every[n - 1], last) <= FLOAT_TOLERANCE
    model.close()


def test_decode_matches_official_implementation(ref_model):
    ref, model = ref_model
    state = model.new_state()
    worst = 0.0
    for step, tok in enumerate(ref.tokens):
        logits, state = model.forward([int(tok)], state)
        worst = max(worst, _rel(logits, ref.logits_decode[step]))
    assert worst <= 1e-4
    assert _state_rel(state.data, ref.state_decode) <= 1e-4


def test_sequence_call_matches_official_implementation(ref_model):
    ref, model = ref_model
    logits, state = model.forward(ref.tokens)
    assert _rel(logits, ref.logits_seq) <= 1e-4
    assert _state_rel(state.data, ref.state_seq) <= 1e-4


@pytest.mark.parametrize("name", REFS)
def test_f16_within_1e_2(name, tmp_path):
    ref = load_reference(name)
    path = write_model_gguf(tmp_path / "f16.gguf", read_pth_arrays(ref.pth_path), DType.F16,
                            emb=DType.F16, emb_ln0=ref.emb_ln0)
    with load_model(path, threads=2) as model:
        state = model.new_state()
        for step, tok in enumerate(ref.tokens):
            logits, state = model.forward([int(tok)], state)
            assert _rel(logits, ref.logits_decode[step]) <= 1e-2
        logits, _ = model.forward(ref.tokens)
        assert _rel(logits, ref.logits_seq) <= 1e-2


@pytest.fixture(scope="module")
def q_model_path(tmp_path_factory):
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=96, seed=5)
    return write_model_gguf(tmp_path_factory.mktemp("q") / "q5_1.gguf", sd, DType.Q5_1, head=DType.Q8_0,
                            emb=DType.F16)


@pytest.fixture(scope="module")
def f16_model_path(tmp_path_factory):
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=96, seed=5)
    return write_model_gguf(tmp_path_factory.mktemp("f16") / "f16.gguf", sd, DType.F16, emb=DType.F16)


# Decoding a Q4/Q5/Q8_0 matrix on AVX2 hosts quantizes x to int16 per block (matvec_int16.py), while
# sequence mode multiplies float activations: the two then agree to the int16 rounding (measured
# 6e-5 of max|logit| here), not to float rounding. Float weights take the same float path both ways.
INT16_TOLERANCE = 3e-4
FLOAT_TOLERANCE = 1e-5


@pytest.mark.parametrize("kind", ["q5_1", "f16"])
@pytest.mark.parametrize("chunk", [128, 16])
def test_sequence_mode_equals_one_token_at_a_time(q_model_path, f16_model_path, kind, chunk):
    path = q_model_path if kind == "q5_1" else f16_model_path
    quantized_x = kind == "q5_1" and int16_variant(DType.Q5_1) is not None
    tolerance = INT16_TOLERANCE if quantized_x else FLOAT_TOLERANCE
    model = Model(load_weights(path, chunk=chunk), threads=2)
    tokens = np.random.default_rng(0).integers(0, model.n_vocab, 40)
    state = model.new_state()
    for tok in tokens:
        step_logits, state = model.forward([int(tok)], state)
    seq_logits, seq_state = model.forward(tokens)
    assert _rel(seq_logits, step_logits) <= tolerance
    assert _state_rel(seq_state.data, state.data) <= tolerance
    model.close()


def test_thread_counts_agree(q_model_path):
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    results = []
    for threads in (1, 2, 3):
        with load_model(q_model_path, threads=threads) as model:
            a, s = model.forward(tokens)
            b, _ = model.forward([7], s)
            results.append((a, b))
    for a, b in results[1:]:
        assert np.allclose(a, results[0][0], rtol=0, atol=1e-6)
        assert np.allclose(b, results[0][1], rtol=0, atol=1e-6)


def test_given_state_stays_usable(q_model_path):
    with load_model(q_model_path, threads=2) as model:
        _, s = model.forward([1, 2, 3])
        before = s.data.copy()
        a, _ = model.forward([4], s)
        b, _ = model.forward([4], s)
        assert np.array_equal(a, b)
        assert np.array_equal(s.data, before)
        c, _ = model.forward([5], s)
        assert not np.array_equal(a, c)


def test_states_serialise_and_other_models_states_are_refused(q_model_path, tmp_path):
    other = write_model_gguf(tmp_path / "other.gguf", v4_state_dict(2, 64, 96, seed=6), DType.Q5_1)
    with load_model(q_model_path, threads=1) as model, load_model(other, threads=1) as model2:
        assert model.fingerprint != model2.fingerprint
        _, s = model.forward([1, 2, 3])
        back = model.state_from_bytes(s.to_bytes())
        assert np.array_equal(model.forward([9], back)[0], model.forward([9], s)[0])
        with pytest.raises(StateError, match="different model"):
            model2.forward([1], s)
        with pytest.raises(StateError, match="different model"):
            model2.state_from_bytes(s.to_bytes())


def test_bad_tokens_are_refused(q_model_path):
    with load_model(q_model_path, threads=1) as model:
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model.forward([1, 96])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model.forward([-1])
        with pytest.raises(ValueError, match="at least one token"):
            model.forward([])


def test_properties(q_model_path):
    with load_model(q_model_path, threads=1) as model:
        assert (model.n_layer, model.n_embd, model.n_vocab, model.version) == (2, 64, 96, "4")
        assert len(model.fingerprint) == 64
        assert model.new_state().data.shape == (10, 64)
        assert model.file_type == "Q5_1"
        head, emb = model.tensors["head.weight"], model.tensors["emb.weight"]
        assert (head.dtype, head.shape, emb.dtype) == (DType.Q8_0, (96, 64), DType.F16)
        assert model.tensors["blocks.1.att.key.weight"].dtype == DType.Q5_1
        with pytest.raises(TypeError):
            model.tensors["head.weight"] = emb  # a read-only view


def test_checkpoints_must_be_converted_first():
    ref = load_reference("tiny")
    with pytest.raises(ModelFileError, match="convert it first"):
        load_model(ref.pth_path)
