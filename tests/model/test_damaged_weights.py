"""Damaged weights never reach the user as NaN: a step that makes non-finite logits or state raises
DamagedModelError, which names the file and the command that finds the damaged tensor."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import DamagedModelError
from runtime.model.model import load_model
from runtime.quant.types import DType
from tests.support.gguf_model import write_model_gguf
from tests.support.synthetic import v4_state_dict

TOKEN = 7


def _damaged(tmp_path, name: str, index: tuple[int, ...], value: float):
    # the shape and types of tests/chat/test_state_codec.py, so the compiled kernels come from the cache
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=96, seed=5)
    sd[name][index] = value
    return write_model_gguf(tmp_path / "m.gguf", sd, DType.Q5_1, head=DType.Q8_0, emb=DType.F16)


@pytest.mark.parametrize(("name", "index", "value", "what"), [
    ("emb.weight", (TOKEN, 3), np.nan, "logits"),  # the row of the token fed
    ("head.weight", (50, 9), np.nan, "logits"),  # one logit
    ("blocks.0.ln1.weight", (4,), 3e38, "logits"),  # finite, but sums and exp overflow
    ("blocks.1.ffn.value.weight", (10, 100), np.inf, "logits"),
])
def test_non_finite_step_raises_damaged_model_error(tmp_path, name, index, value, what):
    path = _damaged(tmp_path, name, index, value)
    with load_model(path, threads=2) as model:
        with pytest.raises(DamagedModelError) as err:
            model.forward([1, TOKEN])
        assert err.value.what == what
        message = str(err.value)
        assert message.startswith(f"{path}: the model produced {what} that are not finite")
        assert f"rwkv-tui inspect --verify '{path}'" in message
        with pytest.raises(DamagedModelError):
            model.forward_all([1, TOKEN])


def test_damage_only_in_the_state_is_noticed_without_logits(tmp_path):
    path = _damaged(tmp_path, "emb.weight", (TOKEN, 3), np.nan)
    with load_model(path, threads=2) as model:
        with pytest.raises(DamagedModelError, match="the model produced a state that is"):
            model.forward([TOKEN], want_logits=False)
        logits, state = model.forward([1, 2])  # other tokens do not read the damaged row
        assert np.isfinite(logits).all() and np.isfinite(state.data).all()


def test_chat_on_a_damaged_file_names_the_file_and_the_next_command(tmp_path, monkeypatch, capsys):
    """`chat` said "refusing to save an invalid state", which did not point at the model file."""
    import io

    from tui.cli import main as cli

    sd = v4_state_dict(n_layer=2, n_embd=32, n_vocab=50277, seed=11)  # as tests/chat/test_chat_cli.py
    sd["head.weight"][1000, 5] = np.nan
    path = write_model_gguf(tmp_path / "raven-damaged.gguf", sd, DType.F32)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n"))
    assert cli(["chat", str(path), "--seed", "1", "--max-tokens", "4"]) == 2
    err = "".join(capsys.readouterr().err.split())  # without the line breaks rich put in
    assert "raven-damaged.gguf:themodelproducedlogitsthatarenotfinite" in err
    assert "rwkv-tuiinspect--verify" in err and "Traceback" not in err
    assert "invalidstate" not in err


def test_a_state_that_passed_its_checks_but_makes_nan_is_blamed_not_the_model(tmp_path):
    """A saved state of -2.6e36 (finite, within the serialisation's bound) made the next step's logits
    NaN, which was reported as a damaged model file."""
    from runtime.model.state import State, StateError

    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=96, seed=5)
    path = write_model_gguf(tmp_path / "m.gguf", sd, DType.Q5_1, head=DType.Q8_0, emb=DType.F16)
    with load_model(path, threads=2) as model:
        _, state = model.forward([1, 2, 3])
        data = state.data.copy()
        data[4, 7] = -2.6e36  # layer 0's ffn_xx: relu(k)^2 overflows
        damaged = model.state_from_bytes(State(data, state.fingerprint, state.logits).to_bytes())
        with pytest.raises(StateError, match=r"the state given made m\.gguf produce logits that are not finite"):
            model.forward([TOKEN], damaged)
        with pytest.raises(StateError, match=r"the state given made m\.gguf produce a state that is not finite"):
            model.forward([TOKEN], damaged, want_logits=False)
        logits, _ = model.forward([TOKEN], state)  # the model itself is sound
        assert np.isfinite(logits).all()
