"""RWKV-7 end to end on rwkv.cpp's tiny trained model (tests/fixtures/rwkvcpp/tiny7/): our reading of
its `.bin` files gives rwkv.cpp's expected logits after the bytes `"in`, one token at a time and as
one sequence call; states carry the architecture and refuse other models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.model.model import load_model
from runtime.model.state import State, StateError

TINY = Path(__file__).parent.parent / "fixtures" / "rwkvcpp" / "tiny7"
PROMPT = [34, 105, 110]  # the bytes '"in'
EXPECTED = np.fromfile(TINY / "expected-logits-7v0-834K.bin", dtype="<f4")
# FP32: the bound; FP16, Q5_1: what rwkv.cpp itself gets (README), which we must not exceed.
BOUNDS = {"FP32": 1e-4, "FP16": 2.9e-4, "Q5_1": 4.9e-3}
# sequence mode against one token at a time, relative: float rounding, or (Q5_1) decoding's int16
# activations (runtime/jit/kernels/matvec_int16.py) against prompt reading's float ones
SEQ_BOUNDS = {"FP32": 1e-5, "FP16": 1e-5, "Q5_1": 1e-3}


@pytest.fixture(scope="module", params=sorted(BOUNDS))
def tiny(request):
    with load_model(TINY / f"tiny-rwkv-7v0-834K-{request.param}.bin", threads=2) as model:
        yield request.param, model


def test_expected_logits_one_token_at_a_time(tiny):
    kind, model = tiny
    assert (model.version, model.arch_name, model.n_layer, model.n_embd) == ("7", "rwkv7", 12, 64)
    state = model.new_state()
    for tok in PROMPT:
        logits, state = model.forward([tok], state)
    assert np.abs(logits - EXPECTED).max() <= BOUNDS[kind]
    assert int(np.argmax(logits)) == int(np.argmax(EXPECTED))


def test_expected_logits_as_one_sequence(tiny):
    kind, model = tiny
    logits, state = model.forward(PROMPT)
    assert np.abs(logits - EXPECTED).max() <= BOUNDS[kind]
    one = model.new_state()
    for tok in PROMPT:
        step, one = model.forward([tok], one)
    assert np.abs(step - logits).max() <= SEQ_BOUNDS[kind] * np.abs(logits).max()
    assert np.abs(one.data - state.data).max() <= SEQ_BOUNDS[kind] * np.abs(state.data).max()


def test_state_layout_and_round_trip(tiny):
    _, model = tiny
    state = model.new_state()
    assert state.data.shape == (12 * (2 + 64), 64) and not state.data.any()
    _, state = model.forward(PROMPT, state)
    back = model.state_from_bytes(state.to_bytes())
    assert back.arch == "rwkv7" and np.array_equal(back.data, state.data)
    # the WKV matrix of the last layer is used (not left at zero), the shift rows hold LN outputs
    assert np.abs(state.data[-64:]).max() > 0


def test_a_state_of_another_architecture_is_refused(tiny):
    _, model = tiny
    data = np.zeros((5 * 12, 64), dtype=np.float32)
    foreign = State(data, model.fingerprint, None, "rwkv4")
    with pytest.raises(StateError, match="rwkv4 model"):
        model.forward([1], foreign)
    with pytest.raises(StateError, match="rwkv4 model"):
        model.state_from_bytes(foreign.to_bytes())


def test_a_state_of_another_shape_is_refused(tiny):
    _, model = tiny
    wrong = State(np.zeros((12 * 66, 32), dtype=np.float32), model.fingerprint, None, "rwkv7")
    with pytest.raises(StateError, match="shape"):
        model.forward([1], wrong)
