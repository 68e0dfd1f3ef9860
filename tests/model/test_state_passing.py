"""How a forward call takes its state: it reads the state it is given (Arg.STATE_IN) and writes a new
one, copying each recurrent block on the thread that updates it, and flags non-finite values in the
blocks it wrote (runtime/model/arch/base.py). For every architecture: the given state is never
written, calls spanning several chunks read the later chunks from the new state, a NaN or an
overflow in a recurrent block is found by the forward pass's own flag, and a dead state given back
(`into`) holds the new one with the same values."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from runtime.convert import convert
from runtime.model.loader import load_weights
from runtime.model.model import Model
from runtime.model.state import State, StateError
from tests.support.synthetic import v4_state_dict, v7_state_dict, v56_state_dict
from tests.support.torch_writer import write_pth

CHUNK = 4
TOKENS = [5, 17, 30, 3, 3, 64, 51, 0, 42, 7, 9]  # three chunks of 4
ARCHS = {
    "4": lambda: v4_state_dict(n_layer=2, n_embd=64, n_vocab=96, seed=1),
    "5.2": lambda: v56_state_dict("5.2", n_layer=2, n_embd=64, head_size=32, n_vocab=96, seed=2),
    "6": lambda: v56_state_dict("6", n_layer=2, n_embd=64, head_size=32, n_vocab=96, seed=3),
    "7": lambda: v7_state_dict(n_layer=2, n_embd=64, head_size=32, n_vocab=96, seed=4),
}


@pytest.fixture(scope="module", params=list(ARCHS), ids=lambda v: f"v{v}")
def model(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"v{request.param}")
    write_pth(d / "m.pth", ARCHS[request.param](), dtype="float32")
    convert(d / "m.pth", d / "m.gguf", "f32")
    with Model(load_weights(d / "m.gguf", chunk=CHUNK), threads=2) as m:
        yield m


def _digest(state: State) -> str:
    return hashlib.sha256(state.data.tobytes()).hexdigest()


def test_the_given_state_is_only_read(model):
    _, start = model.forward(TOKENS[:3])
    before = _digest(start)
    logits_a, a = model.forward(TOKENS, start)  # several chunks from a given state
    logits_b, b = model.forward(TOKENS, start)  # the same again: start was not written
    assert _digest(start) == before
    assert np.array_equal(logits_a, logits_b) and np.array_equal(a.data, b.data)
    assert a.data.ctypes.data != start.data.ctypes.data


def test_a_call_over_several_chunks_equals_one_chunk_at_a_time(model):
    _, start = model.forward(TOKENS[:3])
    logits, whole = model.forward(TOKENS, start)
    state = start
    for i in range(0, len(TOKENS), CHUNK):
        step_logits, state = model.forward(TOKENS[i : i + CHUNK], state)
    scale = float(np.max(np.abs(logits)))
    assert np.max(np.abs(step_logits - logits)) <= 1e-5 * scale
    assert np.allclose(state.data, whole.data, rtol=1e-5, atol=1e-6)


def test_a_fresh_call_equals_a_call_from_the_zero_state(model):
    logits_none, none = model.forward(TOKENS[:5])
    logits_new, new = model.forward(TOKENS[:5], model.new_state())
    assert np.array_equal(logits_none, logits_new) and np.array_equal(none.data, new.data)


def _recurrent_rows(model) -> slice:
    """Rows of layer 0's state that are recurrent blocks (RWKV-4: aa, bb, pp; else the WKV matrix)."""
    first = 1 if model.arch_name == "rwkv4" else model.spec.unflagged_state_rows
    last = 4 if model.arch_name == "rwkv4" else model.spec.state_rows_per_layer
    return slice(first, last)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_non_finite_recurrent_value_is_refused_as_a_damaged_state(model, value):
    _, state = model.forward(TOKENS[:3])
    data = state.data.copy()
    data[_recurrent_rows(model).start, 5] = value
    damaged = State(data, state.fingerprint, state.logits, state.arch)  # past State.from_bytes' checks
    for want_logits in (True, False):
        with pytest.raises(StateError, match="not finite"):
            model.forward([TOKENS[3]], damaged, want_logits=want_logits)
    logits, _ = model.forward([TOKENS[3]], state)
    assert np.isfinite(logits).all()


def test_the_forward_pass_flags_its_recurrent_blocks_itself(model):
    """The flag alone (no Python pass over the WKV blocks) finds a NaN there; RWKV-4's small state is
    checked in Python instead (its flag stays clear)."""
    ids = np.asarray(TOKENS[3:5], np.int32)
    _, state = model.forward(TOKENS[:3])
    assert model._run(ids, state, None, None)[1] is False
    data = state.data.copy()
    rows = _recurrent_rows(model)  # the last row of layer 0's WKV block (RWKV-4: aa; pp goes through a max)
    data[rows.start if model.arch_name == "rwkv4" else rows.stop - 1, 2] = np.nan
    new, flagged = model._run(ids, State(data, state.fingerprint, None, state.arch), None, None)
    assert flagged is (model.arch_name != "rwkv4")
    if model.arch_name == "rwkv4":
        assert not np.isfinite(model._unflagged(new)).all()


def test_a_state_given_back_holds_the_new_state_with_the_same_values(model):
    _, start = model.forward(TOKENS[:3])
    _, spare = model.forward(TOKENS[3:5])  # any state of this model no longer needed
    spare_memory = spare.data.ctypes.data
    want_logits, want = model.forward(TOKENS, start)  # several chunks, then one token
    got_logits, got = model.forward(TOKENS, start, into=spare)
    assert got.data.ctypes.data == spare_memory
    assert np.array_equal(got.data, want.data) and np.array_equal(got_logits, want_logits)
    _, spare2 = model.forward(TOKENS[:1])
    one_logits, one = model.forward([7], got, into=spare2)  # decoding: a token at a time
    ref_logits, ref = model.forward([7], want)
    assert one.data.ctypes.data == spare2.data.ctypes.data
    assert np.array_equal(one.data, ref.data) and np.array_equal(one_logits, ref_logits)


def test_a_state_given_back_is_refused_when_it_cannot_hold_the_new_one(model):
    _, start = model.forward(TOKENS[:3])
    with pytest.raises(StateError, match="state read"):
        model.forward([1], start, into=start)  # written while it is read
    frozen = start.data.copy()
    frozen.flags.writeable = False  # e.g. a view of bytes
    with pytest.raises(StateError, match="read-only"):
        model.forward([1], start, into=State(frozen, start.fingerprint, None, start.arch))
    other = State(np.zeros((3, 8), np.float32), start.fingerprint, None, start.arch)
    with pytest.raises(StateError, match="shape"):
        model.forward([1], start, into=other)
    assert _digest(start) == _digest(model.forward(TOKENS[:3])[1])  # nothing was written into it
