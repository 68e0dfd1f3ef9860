"""bench/decode_ab.py: variants built from their settings (files, module constants, the kernel switches by
their short names), constants restored after each build, every variant timed (not the speed itself)."""

from __future__ import annotations

import pytest

from bench import decode_ab
from runtime.jit.kernels import matvec, matvec_int16
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import write_v4_model
from tests.support.synthetic import v4_state_dict


@pytest.fixture
def small_f16(tmp_path):
    return write_v4_model(tmp_path / "small-f16.bin", v4_state_dict(n_layer=2, n_embd=64, n_vocab=300, seed=3),
                          DType.F16)


def test_switches_by_short_name_are_set_only_while_a_variant_is_built(small_f16, monkeypatch) -> None:
    seen = []
    real = decode_ab.load_weights

    def spy(path):
        seen.append((matvec.F16_BY_SHIFTS, matvec_int16.Q8_BYTES))
        return real(path)

    monkeypatch.setattr(decode_ab, "load_weights", spy)
    before = matvec.F16_BY_SHIFTS, matvec_int16.Q8_BYTES
    model = decode_ab.build_variant("F16_BY_SHIFTS=1,runtime.jit.kernels.matvec_int16.Q8_BYTES=0", small_f16, 1)
    model.close()
    assert seen == [(1, 0)]
    assert before == (matvec.F16_BY_SHIFTS, matvec_int16.Q8_BYTES)
    with pytest.raises(SystemExit, match="no constant"):
        decode_ab.build_variant("runtime.jit.kernels.matvec.NOT_A_SWITCH=1", small_f16, 1)
    with pytest.raises(SystemExit, match="no model file"):
        decode_ab.build_variant("F16_BY_SHIFTS=0", None, 1)


def test_a_set_of_weight_types_is_given_as_names_joined_by_plus(small_f16, monkeypatch) -> None:
    from runtime.jit.kernels import matvec_kquant_int

    seen = []
    real = decode_ab.load_weights

    def spy(path):
        seen.append(matvec_kquant_int.BYTE_X_TYPES)
        return real(path)

    monkeypatch.setattr(decode_ab, "load_weights", spy)
    for text in ("BYTE_X_TYPES=q2_k+q3_k", "BYTE_X_TYPES="):
        decode_ab.build_variant(text, small_f16, 1).close()
    assert seen == [frozenset({DType.Q2_K, DType.Q3_K}), frozenset()]
    assert not matvec_kquant_int.BYTE_X_TYPES
    with pytest.raises(ValueError, match="q9_k"):
        decode_ab.build_variant("BYTE_X_TYPES=q2_k+q9_k", small_f16, 1)


def test_omit_on_a_file_without_bench_only_parts_is_refused_with_a_message(small_f16) -> None:
    with pytest.raises(SystemExit, match="omit: needs an RWKV-6 or RWKV-7 file"):
        decode_ab.build_variant("omit:matrices", small_f16, 1)


def test_every_variant_is_timed_against_the_read(small_f16, capsys) -> None:
    assert decode_ab.main(["--model", str(small_f16), "--threads", "1", "--rounds", "2", "--steps", "2",
                           "now=", "shifts=F16_BY_SHIFTS=1"]) == 0
    out = capsys.readouterr().out
    assert "1 thread(s), 2 rounds x 2 steps" in out and "load " in out
    assert out.count("small-f16.bin") == 2 and out.count("% of the read") == 2


def test_drop_cache_drops_every_file_the_variants_read(small_f16, tmp_path, monkeypatch, capsys) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(small_f16.read_bytes())
    assert decode_ab.variant_files(["a=", f"b=file:{other},F16_BY_SHIFTS=1"], small_f16) == {small_f16, other}
    assert decode_ab.variant_files([f"b=file:{other}"], None) == {other}
    dropped = []
    monkeypatch.setattr(decode_ab, "drop_cached_pages", dropped.append)
    assert decode_ab.main(["--model", str(small_f16), "--threads", "1", "--rounds", "1", "--steps", "1",
                           "--drop-cache", "a=", f"b=file:{other}"]) == 0
    assert sorted(dropped) == sorted([small_f16, other])
    assert capsys.readouterr().out.count("in 2 MB pages") == 2
