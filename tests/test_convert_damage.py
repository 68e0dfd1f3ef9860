"""`convert` never writes inf: a finite value too large for the target type (float16's range, a
quantized block's float16 scale) is refused, naming the tensor, the row and the value, with the
option that keeps it."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.convert import convert
from runtime.errors import ModelFileError
from runtime.formats.gguf_file import read_gguf
from runtime.quant.codec import bf16_to_float32, float32_to_bf16
from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import write_pth
from tui.cli import main as cli


def _bf16(x: float) -> float:
    return float(bf16_to_float32(float32_to_bf16(np.array([x], np.float32)))[0])


def _source(tmp_path, name: str, row: int, col: int, value: float):
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=96, seed=3)
    sd[name][row, col] = value
    return write_pth(tmp_path / "m.pth", sd, "bfloat16")


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize(("name", "target", "head", "stored", "option"), [
    ("head.weight", "q5_1", None, "Q8_0", "--head-type f32"),  # the head's default type, a block scale
    ("head.weight", "f16", None, "F16", "--head-type f32"),
    ("blocks.1.att.key.weight", "q4_0", None, "Q4_0", "--type f32"),
    ("blocks.0.ffn.value.weight", "q5_1", None, "Q5_1", "--type f32"),
    ("blocks.0.ffn.value.weight", "f16", None, "F16", "--type f32"),
    ("head.weight", "f32", "q8_0", "Q8_0", "--head-type f32"),
])
def test_values_that_overflow_the_target_type_are_refused(tmp_path, monkeypatch, native, name, target,
                                                           head, stored, option):
    monkeypatch.setenv("RWKV_TUI_NATIVE_QUANTIZE", native)
    src = _source(tmp_path, name, 37, 45, 3e9)
    out = tmp_path / "out.gguf"
    with pytest.raises(ModelFileError) as err:
        convert(src, out, target, head_dtype=head)
    message = str(err.value)
    assert message.startswith(f"{src}: tensor '{name}' row 37 holds {_bf16(3e9):.6g}, which does not fit {stored}")
    assert f"Convert with {option} to keep such values" in message
    assert not out.exists()


def test_the_suggested_type_keeps_the_value(tmp_path):
    """--head-type f32 was ignored (DType.F32 is 0, so `head or default` took the default)."""
    src = _source(tmp_path, "head.weight", 5, 6, -2e12)
    convert(src, tmp_path / "out.gguf", "q5_1", head_dtype="f32")
    head = read_gguf(tmp_path / "out.gguf").tensors["head.weight"].numpy()
    assert head[5, 6] == _bf16(-2e12)
    assert np.isfinite(head).all()


@pytest.mark.parametrize("value", [65280.0, -60000.0])  # 65280: the largest bf16 below 65504
def test_values_inside_float16s_range_convert(tmp_path, value):
    src = _source(tmp_path, "head.weight", 2, 3, value)
    convert(src, tmp_path / "out.gguf", "f16")
    assert read_gguf(tmp_path / "out.gguf").tensors["head.weight"].numpy()[2, 3] == _bf16(value)


def test_cli_prints_the_refusal_without_a_traceback(tmp_path, capsys):
    src = _source(tmp_path, "head.weight", 1, 2, 1e20)
    assert cli(["convert", str(src), str(tmp_path / "out.gguf"), "--type", "q8_0"]) == 2
    err = capsys.readouterr().err
    assert "tensor 'head.weight' row 1 holds" in err and "Traceback" not in err
