"""Our safetensors parser: round trips in every float type, open_checkpoint, and damaged headers."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from runtime.errors import ModelFileError
from runtime.formats import tensors as tensors_module
from runtime.formats.checkpoint import open_checkpoint
from runtime.formats.safetensors_file import read_safetensors
from runtime.quant.types import DType
from tests.support.safetensors_writer import header_and_data, pack, stored_values, write_safetensors
from tests.support.synthetic import v4_state_dict

TYPES = {"F32": DType.F32, "F16": DType.F16, "BF16": DType.BF16}


def _sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "a.weight": rng.standard_normal((7, 33)).astype(np.float32),
        "b.time_mix": rng.uniform(0, 1, (1, 1, 16)).astype(np.float32),
        "c.bias": rng.standard_normal(5).astype(np.float32),
        "scalar": np.array(3.25, dtype=np.float32),
    }


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_round_trip(tmp_path, type_name):
    sample = _sample()
    path = write_safetensors(tmp_path / "m.safetensors", sample, type_name, metadata={"format": "pt"})
    got = read_safetensors(path)
    assert sorted(got) == sorted(sample)  # __metadata__ is not a tensor
    for name, a in sample.items():
        t = got[name]
        assert t.name == name and t.dtype is TYPES[type_name] and t.shape == a.shape
        np.testing.assert_array_equal(t.numpy(), stored_values(a, type_name), err_msg=name)


def test_offsets_are_relative_to_the_data_region_and_reading_is_lazy(tmp_path, monkeypatch):
    sample = {"big": np.ones((256, 256), np.float32), "small": np.arange(4, dtype=np.float32)}
    path = write_safetensors(tmp_path / "m.safetensors", sample)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    seen = []
    original = tensors_module.FileHandle.pread

    def counting(self, offset, nbytes):
        seen.append(nbytes)
        return original(self, offset, nbytes)

    monkeypatch.setattr(tensors_module.FileHandle, "pread", counting)
    got = read_safetensors(path)
    assert sum(seen) == 8 + n  # the length and the header, no tensor bytes
    for name in sample:
        assert got[name].offset == 8 + n + header[name]["data_offsets"][0]
    np.testing.assert_array_equal(got["small"].numpy(), sample["small"])


def test_open_checkpoint_on_blinkdl_names(tmp_path):
    sd = v4_state_dict(n_layer=2, n_embd=32, n_vocab=40, seed=2)
    ck = open_checkpoint(write_safetensors(tmp_path / "rwkv.safetensors", sd, "BF16"))
    assert ck.source_format == "safetensors"
    assert ck.transforms == frozenset()
    assert (ck.arch.n_layer, ck.arch.n_embd, ck.arch.n_vocab) == (2, 32, 40)
    assert ck.tensors["blocks.0.att.time_mix_k"].shape == (1, 1, 32)
    np.testing.assert_array_equal(ck.tensors["head.weight"].numpy(), stored_values(sd["head.weight"], "BF16"))


# --- damaged files --------------------------------------------------------------------------------


def _error(tmp_path, data: bytes) -> str:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ModelFileError) as e:
        read_safetensors(path)
    assert e.value.path == str(path)
    return e.value.problem


def _good() -> tuple[dict, bytes]:
    return header_and_data({"w": np.ones((2, 4), np.float32)})


def test_the_good_file_reads(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(pack(*_good()))
    np.testing.assert_array_equal(read_safetensors(path)["w"].numpy(), np.ones((2, 4)))


def test_shorter_than_the_length_field(tmp_path):
    assert "truncated" in _error(tmp_path, b"\x10\0\0")


def test_header_length_past_the_end(tmp_path):
    header, data = _good()
    raw = pack(header, data)
    assert "truncated" in _error(tmp_path, struct.pack("<Q", len(raw)) + raw[8:])


def test_header_length_over_the_limit(tmp_path):
    assert "limit" in _error(tmp_path, struct.pack("<Q", 1 << 40) + b"{}")


def test_a_header_that_would_parse_into_gigabytes_is_refused_unparsed(tmp_path):
    """9 MB of "[]," would be 170 MB of Python lists; the header length alone refuses it."""
    raw = b"[" + b"[]," * (3 << 20) + b"[]]"
    assert len(raw) > 9 << 20
    problem = _error(tmp_path, struct.pack("<Q", len(raw)) + raw)
    assert problem == f"safetensors header length {len(raw)} is over the 8 MB limit"


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe{}", b'{"a": 1, "a": 2}', b"[" * 100_000])
def test_header_not_valid_json(tmp_path, raw):
    assert "not valid JSON" in _error(tmp_path, pack(raw, b""))


def test_header_not_an_object(tmp_path):
    assert "not an object" in _error(tmp_path, pack(b"[1, 2]", b""))


def test_entry_not_an_object(tmp_path):
    assert "'w'" in _error(tmp_path, pack({"w": [1]}, b""))


def test_unsupported_type_is_named(tmp_path):
    header, data = _good()
    header["w"]["dtype"] = "I64"
    problem = _error(tmp_path, pack(header, data))
    assert "'w'" in problem and "I64" in problem


@pytest.mark.parametrize("shape", [[2, -4], ["2", 4], [True, 8], "2x4", None])
def test_malformed_shape(tmp_path, shape):
    header, data = _good()
    header["w"]["shape"] = shape
    assert "malformed shape" in _error(tmp_path, pack(header, data))


@pytest.mark.parametrize("offsets", [[0], [0, 16, 32], [-8, 24], [0, 3.5], None])
def test_malformed_offsets(tmp_path, offsets):
    header, data = _good()
    header["w"]["data_offsets"] = offsets
    assert "malformed data_offsets" in _error(tmp_path, pack(header, data))


def test_offsets_running_backwards(tmp_path):
    header, data = _good()
    header["w"]["data_offsets"] = [32, 0]
    assert "backwards" in _error(tmp_path, pack(header, data))


def test_offsets_outside_the_file(tmp_path):
    header, data = _good()
    header["w"]["data_offsets"] = [8, 40]
    problem = _error(tmp_path, pack(header, data))
    assert "'w'" in problem and "outside" in problem


def test_truncated_data(tmp_path):
    header, data = _good()
    assert "outside" in _error(tmp_path, pack(header, data[:-1]))


def test_span_disagreeing_with_shape(tmp_path):
    header, data = _good()
    header["w"]["shape"] = [2, 3]
    problem = _error(tmp_path, pack(header, data))
    assert "'w'" in problem and "needs 24 bytes" in problem and "span 32" in problem
