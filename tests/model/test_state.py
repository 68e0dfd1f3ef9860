"""State serialisation: round trip, and every kind of damage refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.model.state import State, StateError

FP = "ab" * 32


def _state(rows: int = 10, cols: int = 8) -> State:
    data = np.random.default_rng(0).normal(size=(rows, cols)).astype(np.float32)
    data[3::5] = -1e30
    return State(data, FP)


def test_round_trip_is_exact():
    s = _state()
    back = State.from_bytes(s.to_bytes())
    assert back.fingerprint == FP
    assert np.array_equal(back.data, s.data)
    assert back.data.flags.writeable  # an owned copy, not a view of the blob


def test_copy_is_independent():
    s = _state()
    c = s.copy()
    c.data[0, 0] = 42
    assert s.data[0, 0] != 42


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:20], "too short"),
        (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
        (lambda b: b[:-4], "holds"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch"),
        (lambda b: b[:8] + (7).to_bytes(4, "little") + b[12:], "version 7"),
        (lambda b: b[:12] + (3).to_bytes(4, "little") + b[16:], "implausible state shape"),
    ],
)
def test_damaged_states_are_refused(damage, message):
    with pytest.raises(StateError, match=message) as e:
        State.from_bytes(damage(_state().to_bytes()), source="chat 7, turn 3")
    assert "chat 7, turn 3" in str(e.value)


def test_nan_state_is_refused_even_with_a_valid_checksum():
    s = _state()
    s.data[1, 1] = np.nan
    with pytest.raises(StateError, match="NaN"):
        State.from_bytes(s.to_bytes())


@pytest.mark.parametrize(("where", "value"), [("data", 3e38), ("data", -3e38), ("data", 2e37), ("logits", -3e38)])
def test_huge_finite_values_are_refused_even_with_a_valid_checksum(where, value):
    """A state of ±3e38 with valid checksums gave an empty reply: the next step's logits were NaN."""
    s = State(_state().data, FP, np.zeros(6, np.float32))
    getattr(s, where)[2] = value
    with pytest.raises(StateError, match=r"chat 1: holds values beyond ±1e\+37, which no model step makes"):
        State.from_bytes(s.to_bytes(), source="chat 1")
    getattr(s, where)[2] = 9e36 if value > 0 else -9e36  # the bound itself is not damage
    State.from_bytes(s.to_bytes())


def test_logits_travel_with_the_state():
    s = _state()
    logits = np.random.default_rng(1).normal(size=50).astype(np.float32)
    with_logits = State(s.data, FP, logits)
    back = State.from_bytes(with_logits.to_bytes())
    assert back.logits is not None and np.array_equal(back.logits, logits)
    assert np.array_equal(back.data, s.data)
    assert State.from_bytes(s.to_bytes()).logits is None


def test_a_version_1_state_still_loads():
    import hashlib
    import struct

    s = _state()
    data = s.data.astype("<f4").tobytes()
    blob = struct.pack("<8sIII64s32s", b"RWKVST01", 1, 10, 8, FP.encode(), hashlib.sha256(data).digest()) + data
    back = State.from_bytes(blob)
    assert np.array_equal(back.data, s.data) and back.logits is None


def test_truncated_logits_are_refused():
    s = State(_state().data, FP, np.ones(50, dtype=np.float32))
    with pytest.raises(StateError, match="holds"):
        State.from_bytes(s.to_bytes()[:-8])
