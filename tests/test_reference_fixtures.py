"""Consistency of the official-implementation fixtures, checked without torch and without our runtime.

The fixtures (tests/fixtures/reference, made by tools/make_reference.py) must agree with themselves
(decode mode vs sequence mode), with the checkpoint they came from (synthetic.v4_state_dict), and with
an independent numpy RWKV-4 (tests/support/numpy_rwkv.py), which then serves as the runtime's oracle.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.support import numpy_rwkv
from tests.support.reference import Reference, load_reference, read_pth_arrays, reference_names
from tests.support.synthetic import v4_state_dict

REL = 1e-4  # the runtime's bound for F32 files: max|d| <= 1e-4 * max|logit|


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


def state_rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Worst relative error over the five kinds of state rows (each kind has its own scale)."""
    return max(rel_err(got[j::5], want[j::5]) for j in range(5))


@pytest.fixture(scope="module", params=["tiny", "small"])
def ref(request: pytest.FixtureRequest) -> Reference:
    return load_reference(request.param)


@pytest.fixture(scope="module")
def weights(ref: Reference) -> dict[str, np.ndarray]:
    return read_pth_arrays(ref.pth_path)


def test_fixtures_present() -> None:
    assert {"tiny", "small"} <= set(reference_names())


def test_metadata(ref: Reference) -> None:
    assert ref.rwkv_version == "0.8.32"
    assert ref.torch_version.startswith("2.")
    assert ref.strategy == "cpu fp32"
    assert ref.emb_ln0 is not None and ref.emb_ln0.shape == (ref.n_vocab, ref.n_embd)
    assert ref.n_embd % 32 == 0
    assert ref.tokens.shape == (64,)
    assert ref.tokens.min() >= 0 and ref.tokens.max() < ref.n_vocab
    assert np.all(np.isfinite(ref.logits_decode)) and np.all(np.isfinite(ref.state_seq))
    assert ref.storage_dtype == {"tiny": "float32", "small": "bfloat16"}[ref.name]


def test_decode_and_sequence_mode_agree(ref: Reference) -> None:
    assert rel_err(ref.logits_decode[-1], ref.logits_seq) <= REL
    assert state_rel_err(ref.state_decode, ref.state_seq) <= REL
    # the logits do change from step to step (the fixture is not degenerate)
    assert np.max(np.abs(np.diff(ref.logits_decode, axis=0))) > 0.1


def test_state_layout(ref: Reference) -> None:
    """Rows per layer: att_xx, aa, bb, pp, ffn_xx; the token shifts are layernorm outputs, bb > 0."""
    s = ref.state_seq
    assert np.all(s[2::5] > 0)  # bb: sum of positive weights
    assert np.all(np.abs(s[3::5]) < 1e4)  # pp: finite, no longer the -1e30 of a fresh state
    for rows in (s[0::5], s[4::5]):  # ln(x)*w + b with w in [0.8, 1.2], b in [-0.1, 0.1]
        assert np.all(np.abs(rows.mean(axis=1)) < 0.2)
        assert np.all((rows.std(axis=1) > 0.7) & (rows.std(axis=1) < 1.3))


def test_checkpoint_is_the_synthetic_model(ref: Reference, weights: dict[str, np.ndarray]) -> None:
    sd = v4_state_dict(n_layer=ref.n_layer, n_embd=ref.n_embd, n_vocab=ref.n_vocab, seed=ref.seed)
    assert set(weights) == set(sd)
    for name, want in sd.items():
        assert weights[name].shape == want.shape, name
        if ref.storage_dtype == "bfloat16":
            want = numpy_rwkv.bf16_round(want)
        np.testing.assert_array_equal(weights[name], want, err_msg=name)


def test_official_embedding_is_ln0_of_emb(ref: Reference, weights: dict[str, np.ndarray]) -> None:
    exact = numpy_rwkv.prepare(weights).emb
    if ref.storage_dtype == "bfloat16":  # the package folds ln0 in bf16: within half a bf16 ulp
        assert np.all(np.abs(ref.emb_ln0 - exact) <= np.abs(exact) * 2.0**-8 + 1e-30)
        assert np.any(ref.emb_ln0 != exact.astype(np.float32))
    else:
        assert rel_err(ref.emb_ln0, exact) <= 1e-6


def test_numpy_oracle_matches_official(ref: Reference, weights: dict[str, np.ndarray]) -> None:
    model = numpy_rwkv.prepare(weights, emb_ln0=ref.emb_ln0)
    every, state = numpy_rwkv.forward_each(model, ref.tokens.tolist())
    assert every.shape == ref.logits_decode.shape
    assert rel_err(every, ref.logits_decode) <= REL
    assert rel_err(every[-1], ref.logits_seq) <= REL
    assert state_rel_err(state, ref.state_decode) <= REL
    assert state_rel_err(state, ref.state_seq) <= REL


def test_numpy_oracle_with_own_embedding(ref: Reference, weights: dict[str, np.ndarray]) -> None:
    """Without the recorded embedding: exact for F32; for bf16 the package's rounding costs ~1e-3."""
    every, _ = numpy_rwkv.forward_each(weights, ref.tokens.tolist())
    err = rel_err(every, ref.logits_decode)
    if ref.storage_dtype == "float32":
        assert err <= REL
    else:
        assert 1e-5 < err <= 1e-2


def test_numpy_oracle_continues_a_state(ref: Reference, weights: dict[str, np.ndarray]) -> None:
    model = numpy_rwkv.prepare(weights, emb_ln0=ref.emb_ln0)
    toks = ref.tokens.tolist()
    _, s1 = numpy_rwkv.forward(model, toks[:40])
    s1_before = s1.copy()
    logits, s2 = numpy_rwkv.forward(model, toks[40:], s1)
    np.testing.assert_array_equal(s1, s1_before)  # the caller's state is not modified
    assert rel_err(logits, ref.logits_seq) <= REL
    assert state_rel_err(s2, ref.state_seq) <= REL


def test_numpy_oracle_rejects_bad_input(ref: Reference, weights: dict[str, np.ndarray]) -> None:
    model = numpy_rwkv.prepare(weights)
    with pytest.raises(ValueError, match="vocabulary"):
        numpy_rwkv.forward(model, [ref.n_vocab])
    with pytest.raises(ValueError, match="state shape"):
        numpy_rwkv.forward(model, [1], np.zeros((5 * ref.n_layer + 1, ref.n_embd), np.float32))
    fresh = numpy_rwkv.new_state(ref.n_layer, ref.n_embd)
    assert np.all(fresh[3::5] == np.float32(-1e30)) and not np.any(fresh[np.arange(len(fresh)) % 5 != 3])


def test_wrong_model_is_detected(ref: Reference, weights: dict[str, np.ndarray]) -> None:
    """The bound has teeth: adding 0.01 to one layer's raw time_decay already exceeds it."""
    w = dict(weights)
    w["blocks.0.att.time_decay"] = w["blocks.0.att.time_decay"] + 0.01
    model = dataclasses.replace(numpy_rwkv.prepare(w), emb=ref.emb_ln0.astype(np.float64))
    every, _ = numpy_rwkv.forward_each(model, ref.tokens.tolist())
    assert rel_err(every, ref.logits_decode) > 2 * REL


def test_bf16_round() -> None:
    # bf16 keeps 7 mantissa bits: ulp(1) = 2**-7; ties go to the even mantissa
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-7 + 2**-9, 1 + 2**-8 + 2**-20, -2.5], np.float32)
    want = np.array([1.0, 1.0, 1 + 2**-6, 1 + 2**-7, 1 + 2**-7, -2.5], np.float32)
    got = numpy_rwkv.bf16_round(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
