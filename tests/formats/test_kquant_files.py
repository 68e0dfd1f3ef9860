"""Model files with K-quant tensors (Q2_K…Q6_K): llama.cpp GGUFs mixing the types tensor by tensor
and rwkv.cpp `.bin` files open, decode as the gguf package decodes them, pass `inspect --verify` and
convert to other types; rows that are not whole super-blocks and NaN/Inf super-block scales are named
by file, tensor, row and problem, with nothing written and exit code 2 from the CLI."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from runtime.convert import convert
from runtime.errors import ModelFileError
from runtime.formats.checkpoint import open_checkpoint
from runtime.formats.gguf_file import read_gguf
from runtime.quant.codec import quantize, to_float32
from runtime.quant.types import K_QUANT_TYPES, DType
from runtime.verify import verify_tensors
from tests.support.llamacpp_writer import stored, write_llamacpp_rwkv7
from tests.support.rwkvcpp_writer import decode, write_v4_model
from tests.support.synthetic import v4_state_dict, v7_state_dict
from tui.cli import main as cli

K_NAMES = tuple(t.name for t in K_QUANT_TYPES)
RANKS = (32, 32, 32, 32)
BIG = ("att.receptance.weight", "att.key.weight", "att.value.weight", "att.output.weight",
       "ffn.key.weight", "ffn.value.weight")
F16_NAN = struct.pack("<H", 0x7E00)
F16_INF = struct.pack("<H", 0x7C00)


@pytest.fixture(scope="module")
def sd():
    return v7_state_dict(n_layer=2, n_embd=256, head_size=64, n_vocab=96, ranks=RANKS, seed=5)


@pytest.fixture
def mixed(tmp_path, sd):
    """A llama.cpp rwkv7 GGUF whose twelve big matrices cycle through Q2_K, Q3_K, Q4_K, Q5_K, Q6_K."""
    return write_llamacpp_rwkv7(tmp_path / "mixed.gguf", sd, 2, 64, RANKS, matrix_type=K_NAMES)


def _big_types(ckpt) -> dict[str, str]:
    return {f"blocks.{i}.{n}": ckpt.tensors[f"blocks.{i}.{n}"].dtype.name for i in range(2) for n in BIG}


def _poke(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_gguf_mixing_every_k_type_opens_and_decodes_as_gguf_does(mixed, sd):
    ckpt = open_checkpoint(mixed)
    types = _big_types(ckpt)
    assert set(types.values()) == set(K_NAMES)
    for name, type_name in types.items():
        t = ckpt.tensors[name]
        want = stored(np.ascontiguousarray(sd[name], np.float32), type_name)  # decoded by gguf
        np.testing.assert_array_equal(t.numpy(), want, err_msg=name)
        np.testing.assert_array_equal(t.read_rows(3, 7), want[3:7], err_msg=name)
        assert t.nbytes == t.n_rows * (t.n_cols // 256) * DType[type_name].block_bytes


def test_inspect_lists_the_k_types_and_verify_passes(mixed, capsys):
    assert cli(["inspect", "--all", "--verify", str(mixed)]) == 0
    out = capsys.readouterr().out
    for name in K_NAMES:
        assert name in out
    assert "verified: all" in out
    assert verify_tensors(open_checkpoint(mixed)) is None


@pytest.mark.parametrize("target", [DType.F16, DType.Q8_0])
def test_convert_from_a_k_quant_gguf(tmp_path, mixed, target):
    src = open_checkpoint(mixed)
    result = convert(mixed, tmp_path / "out.gguf", target)
    out = open_checkpoint(result.path)
    for name in _big_types(src):
        values = src.tensors[name].numpy()
        t = out.tensors[name]
        assert t.dtype is target
        want = to_float32(quantize(values, target), target)
        np.testing.assert_array_equal(t.numpy(), want, err_msg=name)


@pytest.mark.parametrize("dtype", [DType.Q4_K, DType.Q5_K])
def test_rwkvcpp_file_in_k_quants(tmp_path, dtype):
    sd = v4_state_dict(n_layer=2, n_embd=256, n_vocab=96, seed=2)
    path = write_v4_model(tmp_path / "m.bin", sd, dtype)
    ckpt = open_checkpoint(path)
    t = ckpt.tensors["blocks.1.ffn.key.weight"]
    assert t.dtype is dtype
    np.testing.assert_array_equal(t.numpy(), decode(sd["blocks.1.ffn.key.weight"], dtype))
    assert verify_tensors(ckpt) is None
    out = convert(path, tmp_path / "m.gguf", DType.Q8_0)
    assert open_checkpoint(out.path).tensors["blocks.1.ffn.key.weight"].dtype is DType.Q8_0


# --- bad input ----------------------------------------------------------------------------------


def _gguf_with(path, cols: int, type_code: int, n_rows: int = 2) -> None:
    """A GGUF holding one tensor 'w' of (n_rows, cols) values of ggml type `type_code`, data zeroed."""
    name = b"w"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<I2Q", 2, cols, n_rows) + struct.pack("<IQ", type_code, 0)
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + info
    head += b"\0" * (-len(head) % 32)
    path.write_bytes(head + bytes(n_rows * cols))


@pytest.mark.parametrize("dtype", K_QUANT_TYPES, ids=lambda t: t.name)
def test_rows_that_are_not_whole_super_blocks_are_refused(tmp_path, dtype, capsys):
    path = tmp_path / "odd.gguf"
    _gguf_with(path, 384, int(dtype))
    with pytest.raises(ModelFileError) as e:
        read_gguf(path)
    assert str(path) in str(e.value)
    assert "tensor 'w' has rows of 384 values" in e.value.problem
    assert "K-quant super-blocks of 256 values" in e.value.problem
    assert cli(["inspect", "--verify", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "K-quant super-blocks of 256 values" in err and "Traceback" not in err


# (type, scale field, its offset in the block, damage)
DAMAGE = [
    ("Q2_K", "d", 80, F16_NAN),
    ("Q2_K", "dmin", 82, F16_INF),
    ("Q3_K", "d", 108, F16_INF),
    ("Q4_K", "dmin", 2, F16_NAN),
    ("Q5_K", "d", 0, F16_NAN),
    ("Q6_K", "d", 208, F16_INF),
]


@pytest.mark.parametrize(("type_name", "field", "at", "value"), DAMAGE)
def test_a_damaged_super_block_scale_is_named_by_verify_and_convert(tmp_path, mixed, capsys, type_name, field, at,
                                                                     value):
    ckpt = open_checkpoint(mixed)
    name = next(n for n, t in _big_types(ckpt).items() if t == type_name)
    t = ckpt.tensors[name]
    block = t.n_cols // 256 - 1  # the row's last super-block
    _poke(mixed, t.offset + 5 * t.row_bytes + block * t.dtype.block_bytes + at, value)
    what = "NaN" if value == F16_NAN else "infinite"
    cause = f"its {type_name} super-block {block}'s scale {field} is {what}"

    finding = verify_tensors(open_checkpoint(mixed))
    assert (finding.tensor, finding.row, finding.cause) == (name, 5, cause)
    assert block * 256 <= finding.column < (block + 1) * 256
    assert cli(["inspect", "--verify", str(mixed)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert str(mixed) in err and f"tensor '{name}' row 5" in err and cause in err

    dst = tmp_path / "out" / "o.gguf"
    dst.parent.mkdir()
    with pytest.raises(ModelFileError) as e:
        convert(mixed, dst, DType.F16)
    assert str(mixed) in str(e.value)
    stored_name = next(n for n, g in read_gguf(mixed).tensors.items() if g.offset == t.offset)  # llama.cpp's
    assert f"tensor '{stored_name}' contains NaN or Inf values (first in row 5: {cause})" in e.value.problem
    assert cli(["convert", str(mixed), str(dst), "--type", "q8_0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert cause in err and "Traceback" not in err
    assert list(dst.parent.iterdir()) == []  # nothing written, no temp file left
