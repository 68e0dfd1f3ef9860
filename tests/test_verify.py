"""`rwkv-tui inspect --verify`: every tensor read, the first damaged value named by tensor, row and column."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from runtime.errors import CancelledError
from runtime.formats.checkpoint import open_checkpoint
from runtime.formats.gguf_file import read_gguf
from runtime.progress import CancelToken
from runtime.quant.types import DType
from runtime.verify import MAX_PLAUSIBLE, verify_tensors
from tests.support.gguf_model import write_model_gguf
from tests.support.rwkvcpp_writer import write_v4_model
from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import write_pth
from tui.cli import main as cli

F16_NAN = struct.pack("<H", 0x7E00)


def _sd():
    return v4_state_dict(n_layer=2, n_embd=64, n_vocab=96, seed=4)


def _poke(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_sound_file_verifies_with_progress_to_the_end(tmp_path):
    path = write_model_gguf(tmp_path / "m.gguf", _sd(), DType.Q5_1, head=DType.Q8_0, emb=DType.F16)
    ckpt = open_checkpoint(path)
    events = []
    assert verify_tensors(ckpt, events.append) is None
    assert events[0].done == 0 and events[-1].done == events[-1].total == ckpt.tensor_bytes
    assert all(e.what == "verifying" for e in events)


def test_a_nan_block_scale_in_a_quantized_head(tmp_path):
    path = write_model_gguf(tmp_path / "m.gguf", _sd(), DType.Q5_1, head=DType.Q8_0, emb=DType.F16)
    head = read_gguf(path).tensors["head.weight"]
    _poke(path, head.offset + 41 * head.row_bytes + 1 * 34, F16_NAN)  # row 41, second block's scale
    finding = verify_tensors(open_checkpoint(path))
    assert (finding.tensor, finding.row, finding.column) == ("head.weight", 41, 32)
    assert np.isnan(finding.value) and finding.problem == "not a number"
    assert finding.cause == "its Q8_0 block 1's scale d is NaN"
    assert finding.describe().endswith("holds nan: not a number (its Q8_0 block 1's scale d is NaN)")


def test_a_flipped_exponent_in_an_rwkvcpp_embedding_row(tmp_path):
    path = write_v4_model(tmp_path / "m.bin", _sd(), DType.F16)
    emb = open_checkpoint(path).tensors["emb.weight"]
    _poke(path, emb.offset + (17 * 64 + 5) * 2, struct.pack("<H", 0x7C00))  # +inf at row 17, column 5
    finding = verify_tensors(open_checkpoint(path))
    assert (finding.tensor, finding.row, finding.column, finding.value) == ("emb.weight", 17, 5, np.inf)
    assert finding.problem == "infinite"


@pytest.mark.parametrize("value", [3e38, -2e9])
def test_a_finite_value_out_of_range_in_a_pth(tmp_path, value):
    sd = _sd()
    sd["blocks.1.ln2.weight"][9] = value
    sd["head.weight"][3, 3] = np.nan  # later in the file: the first damage is the one named
    finding = verify_tensors(open_checkpoint(write_pth(tmp_path / "m.pth", sd, "float32")))
    where = (finding.tensor, finding.row, finding.column, finding.value)
    assert where == ("blocks.1.ln2.weight", 0, 9, np.float32(value))
    assert finding.problem == f"beyond ±{MAX_PLAUSIBLE:g}, far outside any trained weight"


def test_values_at_the_limit_are_not_damage(tmp_path):
    sd = _sd()
    sd["head.weight"][3, 3] = -MAX_PLAUSIBLE
    assert verify_tensors(open_checkpoint(write_pth(tmp_path / "m.pth", sd, "float32"))) is None


def test_cancel(tmp_path):
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(CancelledError):
        verify_tensors(open_checkpoint(write_pth(tmp_path / "m.pth", _sd())), cancel=cancel)


def test_cli_verify(tmp_path, capsys):
    path = write_v4_model(tmp_path / "m.bin", _sd(), DType.Q5_1)
    assert cli(["inspect", "--verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "verified: all 42 tensors" in out and f"finite and within ±{MAX_PLAUSIBLE:g}" in out
    head = open_checkpoint(path).tensors["head.weight"]
    assert head.dtype is DType.F16  # rwkv.cpp keeps the head in float
    _poke(path, head.offset + 2 * (2 * 64 + 7), F16_NAN)
    assert cli(["inspect", "--verify", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "damaged: tensor 'head.weight' row 2, column 7 holds nan: not a number" in err
    assert "Traceback" not in err
