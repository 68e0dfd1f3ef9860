"""rwkv.cpp `.bin` reader: round trips of converted models, open_checkpoint, and damaged files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.errors import ModelFileError
from runtime.formats import tensors as tensors_module
from runtime.formats.checkpoint import LN0_FOLDED, TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED, open_checkpoint
from runtime.formats.rwkvcpp import read_rwkvcpp
from runtime.quant.types import K_QUANT_TYPES, QUANTIZED_TYPES, DType
from tests.support.reference import read_pth_arrays
from tests.support.rwkvcpp_writer import (
    CODES,
    blinkdl_to_rwkvcpp,
    decode,
    encode,
    header_bytes,
    record_bytes,
    write_rwkvcpp,
    write_v4_model,
)
from tests.support.synthetic import v4_state_dict

L, C, V = 2, 64, 96


@pytest.fixture(scope="module")
def sd() -> dict[str, np.ndarray]:
    return v4_state_dict(n_layer=L, n_embd=C, n_vocab=V, seed=3)


def _assert_matches(path, sd, data_type: DType) -> None:
    f = read_rwkvcpp(path)
    stored = blinkdl_to_rwkvcpp(sd, data_type)
    assert list(f.tensors) == list(sd)
    for name, (array, dtype) in stored.items():
        t = f.tensors[name]
        assert t.name == name
        assert t.dtype is dtype, name
        assert t.shape == array.shape, name
        np.testing.assert_array_equal(t.numpy(), decode(array, dtype), err_msg=name)


@pytest.mark.parametrize("data_type", [DType.F32, DType.F16, DType.Q5_1, DType.Q8_0, DType.Q4_0])
def test_round_trip_of_a_converted_model(tmp_path, sd, data_type):
    path = write_v4_model(tmp_path / "m.bin", sd, data_type)
    f = read_rwkvcpp(path)
    assert (f.version, f.n_vocab, f.n_embd, f.n_layer, f.data_type) == (101, V, C, L, data_type)
    assert f.transforms == {TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED}
    _assert_matches(path, sd, data_type)


def test_converter_semantics_are_visible_in_the_data(tmp_path, sd):
    f = read_rwkvcpp(write_v4_model(tmp_path / "m.bin", sd, DType.Q5_1))
    t = f.tensors["blocks.1.att.time_decay"]
    assert t.shape == (C,) and t.dtype is DType.F32
    np.testing.assert_allclose(t.numpy(), -np.exp(sd["blocks.1.att.time_decay"]), rtol=1e-6)
    assert f.tensors["blocks.0.att.time_mix_k"].shape == (C,)
    assert f.tensors["emb.weight"].dtype is DType.F16  # the quantizer keeps emb and head in float
    assert f.tensors["head.weight"].dtype is DType.F16
    assert f.tensors["blocks.0.ffn.key.weight"].dtype is DType.Q5_1
    assert f.tensors["blocks.0.ffn.key.weight"].shape == (4 * C, C)


@pytest.mark.parametrize("dtype", QUANTIZED_TYPES + K_QUANT_TYPES, ids=lambda t: t.name)
def test_each_block_type_code_maps_to_the_right_layout(tmp_path, dtype):
    rng = np.random.default_rng(0)
    cols = 2 * dtype.block_size
    w = rng.standard_normal((3, cols)).astype(np.float32)
    emb = rng.standard_normal((5, cols)).astype(np.float32)
    tensors = {"emb.weight": (emb, DType.F16), "blocks.0.att.key.weight": (w, dtype)}
    path = write_rwkvcpp(tmp_path / "q.bin", tensors, n_vocab=5, n_embd=cols, n_layer=1, data_type=dtype)
    t = read_rwkvcpp(path).tensors["blocks.0.att.key.weight"]
    assert t.dtype is dtype
    assert t.nbytes == 3 * 2 * dtype.block_bytes
    np.testing.assert_array_equal(t.numpy(), decode(w, dtype))  # decoded by gguf, independently
    np.testing.assert_allclose(t.numpy(), w, atol=1.0 if dtype is DType.Q2_K else 0.5)


def test_reading_is_lazy_and_tensors_share_one_file_handle(tmp_path, sd, monkeypatch):
    path = write_v4_model(tmp_path / "m.bin", sd, DType.F32)
    read_bytes = []
    original = tensors_module.FileHandle.pread

    def counting(self, offset, nbytes):
        read_bytes.append(nbytes)
        return original(self, offset, nbytes)

    monkeypatch.setattr(tensors_module.FileHandle, "pread", counting)
    f = read_rwkvcpp(path)
    assert sum(read_bytes) < 100 * len(f.tensors) < path.stat().st_size // 10
    assert len({id(t.file) for t in f.tensors.values()}) == 1
    assert max(read_bytes) <= 12 + 16 + 1024


@pytest.mark.parametrize("data_type", [DType.F16, DType.Q5_1])
def test_open_checkpoint_records_rwkvcpp_transforms(tmp_path, sd, data_type):
    ck = open_checkpoint(write_v4_model(tmp_path / "model.bin", sd, data_type))
    assert ck.source_format == "rwkvcpp"
    assert ck.transforms == {TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED}
    assert LN0_FOLDED not in ck.transforms
    assert "blocks.0.ln0.weight" in ck.tensors
    assert (ck.arch.version, ck.arch.n_layer, ck.arch.n_embd, ck.arch.n_vocab) == ("4", L, C, V)
    assert ck.metadata == {"rwkvcpp.version": 101, "rwkvcpp.data_type": data_type.name}


def test_open_checkpoint_accepts_a_version_100_float_file(tmp_path, sd):
    ck = open_checkpoint(write_v4_model(tmp_path / "old.bin", sd, DType.F16, version=100))
    assert ck.metadata["rwkvcpp.version"] == 100
    assert ck.transforms == {TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED}
    assert ck.arch.n_layer == L
    np.testing.assert_array_equal(ck.tensors["ln_out.weight"].numpy(), sd["ln_out.weight"])


# --- damaged and unsupported files -------------------------------------------------------------------

EMB = np.arange(4 * 32, dtype=np.float32).reshape(4, 32)


def _good_records() -> bytes:
    return record_bytes("emb.weight", (4, 32), 0, encode(EMB, DType.F32)) + record_bytes(
        "blocks.0.ln1.weight", (32,), 0, encode(np.ones(32), DType.F32)
    )


def _write(tmp_path, data: bytes):
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    return path


def _error(tmp_path, data: bytes) -> str:
    with pytest.raises(ModelFileError) as e:
        read_rwkvcpp(_write(tmp_path, data))
    assert str(tmp_path / "bad.bin") in str(e.value)
    return e.value.problem


def test_the_minimal_good_file_reads(tmp_path):
    f = read_rwkvcpp(_write(tmp_path, header_bytes(4, 32, 1, 0) + _good_records()))
    np.testing.assert_array_equal(f.tensors["emb.weight"].numpy(), EMB)


def test_wrong_magic(tmp_path):
    assert "magic" in _error(tmp_path, header_bytes(4, 32, 1, 0, magic=0x67676D6C) + _good_records())


def test_unsupported_version(tmp_path):
    assert "version 102" in _error(tmp_path, header_bytes(4, 32, 1, 0, version=102) + _good_records())


@pytest.mark.parametrize("keep", [10, 24 + 5, 24 + 14, 24 + 12 + 8 + 3, 24 + 12 + 8 + 10 + 100, -1])
def test_truncated_anywhere(tmp_path, keep):
    data = header_bytes(4, 32, 1, 0) + _good_records()
    problem = _error(tmp_path, data[:keep])
    assert "truncated" in problem
    if keep == -1:
        assert "blocks.0.ln1.weight" in problem
    if keep == 24 + 12 + 8 + 10 + 100:
        assert "emb.weight" in problem


def test_shape_disagreeing_with_the_header(tmp_path):
    problem = _error(tmp_path, header_bytes(5, 32, 1, 0) + _good_records())
    assert "emb.weight" in problem and "n_vocab 5" in problem


def test_layer_count_disagreeing_with_the_header(tmp_path):
    assert "n_layer 3" in _error(tmp_path, header_bytes(4, 32, 3, 0) + _good_records())


@pytest.mark.parametrize(("code", "words"), [(42, "unknown rwkv.cpp type code 42"), (5, "removed Q4_2")])
def test_unknown_or_removed_type_code(tmp_path, code, words):
    data = header_bytes(4, 32, 1, 0) + _good_records() + record_bytes("x.weight", (32,), code, b"\0" * 128)
    problem = _error(tmp_path, data)
    assert words in problem and "'x.weight'" in problem


def test_unknown_header_type_code(tmp_path):
    assert "type code 17" in _error(tmp_path, header_bytes(4, 32, 1, 17) + _good_records())


def _q4_record() -> bytes:
    data = encode(np.ones((2, 32)), DType.Q4_0)
    return record_bytes("blocks.0.att.key.weight", (2, 32), CODES[DType.Q4_0], data)


def test_version_100_quantized_tensor_is_refused(tmp_path):
    problem = _error(tmp_path, header_bytes(4, 32, 1, 1, version=100) + _good_records() + _q4_record())
    assert "'blocks.0.att.key.weight'" in problem
    assert "re-quantize" in problem and ".pth" in problem


def test_version_100_quantized_header_is_refused(tmp_path):
    problem = _error(tmp_path, header_bytes(4, 32, 1, CODES[DType.Q5_1], version=100) + _good_records())
    assert "re-quantize" in problem and "Q5_1" in problem


def test_version_101_quantized_tensor_is_accepted(tmp_path):
    f = read_rwkvcpp(_write(tmp_path, header_bytes(4, 32, 1, 2) + _good_records() + _q4_record()))
    np.testing.assert_allclose(f.tensors["blocks.0.att.key.weight"].numpy(), np.ones((2, 32)))


def test_duplicate_names(tmp_path):
    dup = record_bytes("blocks.0.ln1.weight", (32,), 0, encode(np.ones(32), DType.F32))
    problem = _error(tmp_path, header_bytes(4, 32, 1, 0) + _good_records() + dup)
    assert "'blocks.0.ln1.weight' appears twice" in problem


@pytest.mark.parametrize("n_dims", [0, 5, -1])
def test_bad_dimension_count(tmp_path, n_dims):
    bad = record_bytes("x", (32,), 0, b"\0" * 128, n_dims=n_dims)
    assert "dims, not 1..4" in _error(tmp_path, header_bytes(4, 32, 1, 0) + _good_records() + bad)


@pytest.mark.parametrize("shape", [(0, 32), (-3, 32), (1 << 20, 1 << 20)])
def test_bad_dims(tmp_path, shape):
    bad = record_bytes("x.weight", shape, 0, b"")
    assert "'x.weight'" in _error(tmp_path, header_bytes(4, 32, 1, 0) + _good_records() + bad)


def test_name_too_long_or_empty(tmp_path):
    long = record_bytes("n" * 2000, (32,), 0, b"\0" * 128)
    assert "name of 2000 bytes" in _error(tmp_path, header_bytes(4, 32, 1, 0) + _good_records() + long)
    empty = record_bytes("", (32,), 0, b"\0" * 128)
    assert "name of 0 bytes" in _error(tmp_path, header_bytes(4, 32, 1, 0) + _good_records() + empty)


def test_name_not_utf8(tmp_path):
    rec = bytearray(record_bytes("ab", (32,), 0, b"\0" * 128))
    rec[16:18] = b"\xff\xfe"
    assert "UTF-8" in _error(tmp_path, header_bytes(4, 32, 1, 0) + _good_records() + bytes(rec))


def test_quantized_rows_must_be_whole_blocks(tmp_path):
    bad = record_bytes("blocks.0.att.key.weight", (2, 48), CODES[DType.Q8_0], b"\0" * 200)
    problem = _error(tmp_path, header_bytes(4, 32, 1, 0) + _good_records() + bad)
    assert "'blocks.0.att.key.weight'" in problem and "Q8_0 blocks" in problem


def test_k_quant_rows_must_be_whole_super_blocks(tmp_path):
    bad = record_bytes("blocks.0.att.key.weight", (2, 384), CODES[DType.Q4_K], b"\0" * 2000)
    problem = _error(tmp_path, header_bytes(4, 32, 1, 0) + _good_records() + bad)
    assert "'blocks.0.att.key.weight'" in problem and "rows of 384 values" in problem
    assert "K-quant super-blocks of 256 values" in problem


def test_empty_file_after_header(tmp_path):
    assert "no tensors" in _error(tmp_path, header_bytes(4, 32, 1, 0))


# --- a fixture made by an independent route (tools/make_rwkvcpp_fixture.py, torch) -------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_torch_made_fixture_matches_its_source_checkpoint():
    """tiny-fp16.bin was converted from reference/tiny.pth by torch code following rwkv.cpp's converter."""
    source = read_pth_arrays(FIXTURES / "reference" / "tiny.pth")
    ck = open_checkpoint(FIXTURES / "rwkvcpp" / "tiny-fp16.bin")
    assert ck.source_format == "rwkvcpp"
    assert ck.transforms == {TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED}
    assert ck.metadata == {"rwkvcpp.version": 101, "rwkvcpp.data_type": "F16"}
    assert (ck.arch.n_layer, ck.arch.n_embd, ck.arch.n_vocab) == (2, 64, 320)
    assert list(ck.tensors) == list(source)
    for name, raw in source.items():
        t = ck.tensors[name]
        want = raw.squeeze() if ".time_" in name else raw
        if name.endswith(".time_decay"):
            want = -np.exp(want)
        if want.ndim > 1:
            assert t.dtype is DType.F16, name
            want = want.astype(np.float16).astype(np.float32)
        else:
            assert t.dtype is DType.F32, name
        assert t.shape == want.shape, name
        rtol = 1e-6 if name.endswith(".time_decay") else 0  # torch's exp vs numpy's: an ulp apart
        np.testing.assert_allclose(t.numpy(), want, rtol=rtol, atol=0, err_msg=name)


# --- RWKV-7 files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data_type", [DType.F32, DType.F16, DType.Q5_1])
def test_v7_lerps_are_split_into_views_and_lora_recorded_transposed(tmp_path, data_type):
    from runtime.formats.checkpoint import V7_LORA_TRANSPOSED
    from tests.support.rwkvcpp_writer import blinkdl_v7_to_rwkvcpp, write_v7_model
    from tests.support.synthetic import v7_state_dict

    sd7 = v7_state_dict(n_layer=2, n_embd=128, n_vocab=V, seed=5)
    ck = open_checkpoint(write_v7_model(tmp_path / "v7.bin", sd7, data_type))
    assert ck.transforms == {V7_LORA_TRANSPOSED}
    assert (ck.arch.version, ck.arch.n_layer, ck.arch.n_embd, ck.arch.n_ffn) == ("7", 2, 128, 512)
    assert not any(n.endswith("x_rwkvag") for n in ck.tensors)
    for i in range(2):
        for m in "rwkvag":
            t = ck.tensors[f"blocks.{i}.att.x_{m}"]
            assert t.shape == (1, 1, 128)
            np.testing.assert_array_equal(t.numpy(), sd7[f"blocks.{i}.att.x_{m}"])
    stored = blinkdl_v7_to_rwkvcpp(sd7, data_type)
    w1 = ck.tensors["blocks.1.att.w1"]
    assert w1.shape == (24, 128)  # (Dw, C): transposed
    np.testing.assert_array_equal(w1.numpy(), decode(*stored["blocks.1.att.w1"]))


def test_v7_fused_lerp_of_the_wrong_shape_is_refused(tmp_path):
    head = header_bytes(4, 32, 1, 0)
    records = _good_records() + record_bytes("blocks.0.att.r_k", (1, 32), 0, encode(np.ones((1, 32)), DType.F32))
    records += record_bytes("blocks.0.att.x_rwkvag", (5, 1, 32), 0, encode(np.ones((5, 1, 32)), DType.F32))
    assert "x_rwkvag" in _error(tmp_path, head + records)
