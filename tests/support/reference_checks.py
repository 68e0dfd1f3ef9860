"""The checks every architecture's official-reference test makes on a model against its fixture:
64 decode steps, one sequence call (and forward_all), sequence mode against one token at a time."""

from __future__ import annotations

import numpy as np

from runtime.quant.types import DType

BOUND = {DType.F32: 1e-4, DType.F16: 1e-2}


def rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def state_rel(got: np.ndarray, want: np.ndarray, n_layer: int) -> float:
    """Worst relative gap over the three kinds of state (att shift, ffn shift, WKV matrix)."""
    g, w = got.reshape(n_layer, -1, got.shape[1]), want.reshape(n_layer, -1, want.shape[1])
    return max(rel(g[:, 0], w[:, 0]), rel(g[:, 1], w[:, 1]), rel(g[:, 2:], w[:, 2:]))


def check_decode(ref, dtype: DType, model) -> None:
    state = model.new_state()
    worst = 0.0
    for step, tok in enumerate(ref.tokens):
        logits, state = model.forward([int(tok)], state)
        worst = max(worst, rel(logits, ref.logits_decode[step]))
    assert worst <= BOUND[dtype]
    assert state_rel(state.data, ref.state_decode, ref.n_layer) <= BOUND[dtype]


def check_one_sequence_call(ref, dtype: DType, model) -> None:
    logits, state = model.forward(ref.tokens)
    assert rel(logits, ref.logits_seq) <= BOUND[dtype]
    assert state_rel(state.data, ref.state_seq, ref.n_layer) <= BOUND[dtype]
    every, state_all = model.forward_all(ref.tokens)
    assert max(rel(every[i], ref.logits_seq_all[i]) for i in range(len(ref.tokens))) <= BOUND[dtype]
    assert np.array_equal(state_all.data, state.data)


def check_sequence_equals_steps(ref, model) -> None:
    tokens = ref.tokens[:40]
    every, seq_state = model.forward_all(tokens)
    state = model.new_state()
    for i, tok in enumerate(tokens):
        logits, state = model.forward([int(tok)], state)
        assert rel(every[i], logits) <= 1e-5
    assert state_rel(seq_state.data, state.data, ref.n_layer) <= 1e-5
    _, mid = model.forward(tokens[:17])  # carrying the state between calls
    rest, end = model.forward(tokens[17:], mid)
    assert rel(rest, every[-1]) <= 1e-5 and state_rel(end.data, seq_state.data, ref.n_layer) <= 1e-5
