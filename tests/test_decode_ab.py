"""bench/decode_ab.py: variants parsed from the command line, switches set only while a variant is built,
every variant timed in every round (not the speed itself)."""

from __future__ import annotations

import pytest

from bench import decode_ab
from runtime.jit.kernels import matvec, matvec_int16
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import write_v4_model
from tests.support.synthetic import v4_state_dict


def test_variants_name_known_switches_only() -> None:
    assert decode_ab.parse_variant("now") == decode_ab.Variant("now", {})
    assert decode_ab.parse_variant("w:Q8_BYTES=0,FLOAT_ROWS=1") == decode_ab.Variant(
        "w", {"Q8_BYTES": 0, "FLOAT_ROWS": 1})
    for bad in ("x:NOT_A_SWITCH=1", "x:Q8_BYTES", ":Q8_BYTES=0", "x:Q8_BYTES=yes"):
        with pytest.raises(ValueError):
            decode_ab.parse_variant(bad)


def test_switches_are_restored_after_the_build() -> None:
    before = matvec.F16_BY_SHIFTS, matvec_int16.Q8_BYTES
    with decode_ab.switched({"F16_BY_SHIFTS": 1, "Q8_BYTES": 0}):
        assert (matvec.F16_BY_SHIFTS, matvec_int16.Q8_BYTES) == (1, 0)
    assert before == (matvec.F16_BY_SHIFTS, matvec_int16.Q8_BYTES)


def test_every_variant_is_timed_each_round(tmp_path, capsys) -> None:
    path = write_v4_model(tmp_path / "small-f16.bin", v4_state_dict(n_layer=2, n_embd=64, n_vocab=300, seed=3),
                          DType.F16)
    decode_ab.main([str(path), "--threads", "1", "--rounds", "2", "--steps", "2", "now", "all:F16_BY_SHIFTS=1"])
    out = capsys.readouterr().out
    assert "small-f16.bin: 1 threads, 2 rounds of 2 steps" in out
    assert "now" in out and "F16_BY_SHIFTS=1" in out and out.count("ms/token") == 2
    times = decode_ab.run(str(path), [decode_ab.Variant("a"), decode_ab.Variant("b", {"FLOAT_ROWS": 1})], 1, 3, 1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t > 0 for v in times.values() for t in v)
