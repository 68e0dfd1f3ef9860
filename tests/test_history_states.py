"""bench/history_states.py: the three decoding loops run and each is timed (not the speed itself)."""

from __future__ import annotations

from bench import history_states
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import write_v4_model
from tests.support.synthetic import v4_state_dict


def test_every_loop_is_timed(tmp_path, capsys) -> None:
    path = write_v4_model(tmp_path / "small-f16.bin", v4_state_dict(n_layer=2, n_embd=64, n_vocab=300, seed=3),
                          DType.F16)
    assert history_states.main([str(path), "--threads", "1", "--kept", "3", "--rounds", "1", "--steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "3 states kept" in out
    for loop in ("plain", "kept, fresh memory", "kept, memory reused"):
        assert loop in out and "ms/token" in out.split(loop)[1].splitlines()[0]
