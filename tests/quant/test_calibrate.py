"""`convert --calibrate TEXT`: the numpy forward pass it reads the text with (checked against rwkv.cpp's
expected logits and the RWKV-4 oracle), the importance it collects, the calibrated file end to end on
a tiny trained model (same types and size, lower activation-weighted error, written atomically,
nothing left on cancel or error) and its bad inputs (exit 2 with the problem named)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest

from runtime.convert import convert
from runtime.errors import CancelledError
from runtime.formats.checkpoint import open_checkpoint
from runtime.progress import CancelToken
from runtime.quant import calibrate
from runtime.quant.calibrate import FLOOR, LayerStatistics, collect_importance, tokens_for
from runtime.quant.forward_np import final_hidden, logits
from runtime.quant.types import DType
from runtime.quant.weighted import quantize_weighted
from tests.support import numpy_rwkv
from tests.support.rwkvcpp_writer import write_v7_model
from tests.support.synthetic import v4_state_dict, v7_state_dict
from tests.support.torch_writer import write_pth
from tui.cli import main as cli

FIX = Path(__file__).parent.parent / "fixtures" / "rwkvcpp"
TINY7 = FIX / "tiny7" / "tiny-rwkv-7v0-834K-FP32.bin"
TEXT = (
    "The quick brown fox jumps over the lazy dog. RWKV is a recurrent network with the quality of a "
    "transformer: it reads one token at a time and keeps a fixed-size state. "
) * 4


@pytest.mark.parametrize(("model", "expected", "bound"), [
    ("tiny7/tiny-rwkv-7v0-834K-FP32.bin", "tiny7/expected-logits-7v0-834K.bin", 1e-5),
    ("tiny56/tiny-rwkv-6v0-3m-Q5_1.bin", "tiny56/expected-logits-6v0-3m.bin", 0.1),  # rwkv.cpp's own: 0.077
])
def test_numpy_forward_matches_rwkvcpps_expected_logits(model, expected, bound):
    got = logits(open_checkpoint(FIX / model), np.array([34, 105, 110]))[-1]
    want = np.fromfile(FIX / expected, np.float32)
    assert np.abs(got - want).max() < bound
    assert got.argmax() == want.argmax()


def test_numpy_forward_matches_the_rwkv4_oracle(tmp_path):
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=256)
    src = write_pth(tmp_path / "v4.pth", sd, "float32")
    tokens = [3, 7, 100, 5, 9]
    want, _ = numpy_rwkv.forward_each(sd, tokens)
    np.testing.assert_allclose(logits(open_checkpoint(src), np.array(tokens)), want, atol=1e-5)


def test_importance_is_the_mean_square_of_each_matrix_input():
    ckpt = open_checkpoint(TINY7)
    tokens = tokens_for(ckpt, TEXT)
    assert len(tokens) == len(TEXT.encode())  # byte vocabulary: one token per byte
    imp = collect_importance(ckpt, tokens)
    a = ckpt.arch
    for i in range(a.n_layer):
        for leaf in ("receptance", "key", "value", "output"):
            assert imp[f"blocks.{i}.att.{leaf}.weight"].shape == (a.n_embd,)
        assert imp[f"blocks.{i}.ffn.value.weight"].shape == (a.n_ffn,)
    head = np.mean(np.square(final_hidden(ckpt, tokens).astype(np.float64)), axis=0)
    np.testing.assert_allclose(imp["head.weight"], head, rtol=1e-5)


def _activation_error(path: Path, ckpt, tokens) -> float:
    """Σ over the big matrices of Σ_t ‖(W − Q)·x_t‖² / ‖W·x_t‖², x_t the matrix's input on `tokens`."""
    quantized = open_checkpoint(path)
    total = 0.0

    def record(name: str, rows: np.ndarray) -> None:
        nonlocal total
        if name.endswith(("key.weight", "value.weight", "receptance.weight", "output.weight")):
            w = ckpt.tensors[name].numpy().astype(np.float64)
            q = quantized.tensors[name].numpy().astype(np.float64)
            total += float(np.square(rows @ (w - q).T).sum() / np.square(rows @ w.T).sum())

    final_hidden(ckpt, tokens, record=record)
    return total


def test_calibrated_file_has_the_same_types_and_a_lower_activation_error(tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    plain, calibrated = tmp_path / "plain.gguf", tmp_path / "cal.gguf"
    convert(TINY7, plain, "q4_k_m")
    result = convert(TINY7, calibrated, "q4_k_m", calibrate=text)
    assert result.target == "Q4_K_M"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.gguf", "calib.txt", "plain.gguf"]
    r_plain, r_cal = gguf.GGUFReader(str(plain)), gguf.GGUFReader(str(calibrated))
    assert [(t.name, t.tensor_type) for t in r_plain.tensors] == [(t.name, t.tensor_type) for t in r_cal.tensors]
    assert r_cal.get_field("rwkv_tui.calibration.tokens").contents() == len(TEXT.encode())
    assert r_cal.get_field("rwkv_tui.calibration.text").contents() == "calib.txt"
    assert r_plain.get_field("rwkv_tui.calibration.text") is None
    ckpt = open_checkpoint(TINY7)
    tokens = tokens_for(ckpt, TEXT)
    assert _activation_error(calibrated, ckpt, tokens) < 0.9 * _activation_error(plain, ckpt, tokens)
    # the FFN key (it feeds relu²) is quantized with the importance only, without error feedback
    importance = collect_importance(ckpt, tokens)
    name = "blocks.3.ffn.key.weight"
    stored = open_checkpoint(calibrated).tensors[name]
    want = quantize_weighted(ckpt.tensors[name].numpy(), stored.dtype, importance[name])
    got = np.asarray(stored.read_raw_rows(0, stored.n_rows)).reshape(want.shape)
    np.testing.assert_array_equal(got, want)


def test_cancel_during_calibration_leaves_nothing(tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    token = CancelToken()

    def progress(p) -> None:
        if p.what == "calibrating" and p.done >= 3:
            token.cancel()

    with pytest.raises(CancelledError):
        convert(TINY7, tmp_path / "out.gguf", "q3_k", calibrate=text, progress=progress, cancel=token)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt"]


def _run(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli(list(argv))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(("content", "problem"), [
    (None, "not found"),
    (b"", "is empty"),
    (b"  \n\t ", "is empty"),
    (b"\xff\xfe bad", "not UTF-8"),
    (b"x", "too short"),
])
def test_bad_calibration_texts_exit_2_and_write_nothing(tmp_path, capsys, content, problem):
    text = tmp_path / "calib.txt"
    if content is not None:
        text.write_bytes(content)
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    rc, err = _run(capsys, "convert", str(TINY7), str(out), "--type", "q4_k_m", "--calibrate", str(text))
    assert rc == 2
    message = " ".join(err.split())
    assert problem in message and "Traceback" not in message
    if problem != "too short":
        assert "calib.txt" in message
    assert list(out.parent.iterdir()) == []


def _calibrated_peak(tmp_path: Path, n_layer: int) -> int:
    """Peak traced memory (numpy's arrays included) of a calibrated Q4_0 conversion of a random RWKV-7
    of `n_layer` layers × 128, FFN 512."""
    src = write_v7_model(tmp_path / f"v7-{n_layer}.bin", v7_state_dict(n_layer=n_layer, n_embd=128), DType.F32)
    text = tmp_path / "calib.txt"
    text.write_text(TEXT[: len(TEXT) // 4])
    tracemalloc.start()
    try:
        convert(src, tmp_path / f"v7-{n_layer}.gguf", "q4_0", calibrate=text, threads=1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_calibration_memory_does_not_grow_with_depth(tmp_path):
    # each layer's second moments: 4 inputs of 128 and the FFN value's of 512, float64 (2.5 MB); they
    # are measured as the conversion reaches the layer and dropped once its matrices are written
    one_layer = 8 * (4 * 128**2 + 512**2)
    shallow, deep = _calibrated_peak(tmp_path, 2), _calibrated_peak(tmp_path, 8)
    assert deep - shallow < one_layer


@pytest.mark.parametrize("record_rows", [calibrate.RECORD_ROWS, 100])  # 100: the text's tokens in pieces
def test_layer_statistics_in_any_order_are_the_whole_pass_ones(monkeypatch, record_rows):
    monkeypatch.setattr(calibrate, "RECORD_ROWS", record_rows)
    ckpt = open_checkpoint(TINY7)
    tokens = tokens_for(ckpt, TEXT)
    inputs: dict[str, np.ndarray] = {}
    final_hidden(ckpt, tokens, record=lambda name, rows: inputs.setdefault(name, rows.astype(np.float64)))
    stats = LayerStatistics(ckpt, tokens, wants_moments=lambda name: not name.endswith("ffn.key.weight"))
    for name in ("blocks.5.att.key.weight", "blocks.5.ffn.value.weight", "head.weight", "blocks.2.att.output.weight",
                 "blocks.2.ffn.key.weight"):
        importance, moments = stats.of(name)
        x = inputs[name]
        mean_square = np.square(x).mean(axis=0)
        np.testing.assert_allclose(importance, np.maximum(mean_square, FLOOR * mean_square.mean()), rtol=1e-5)
        if name.endswith("ffn.key.weight"):
            assert moments is None
        else:
            np.testing.assert_allclose(moments, x.T @ x / len(tokens), rtol=1e-10)
    assert stats.of("emb.weight") == (None, None)


@pytest.mark.parametrize("max_tokens", [64, 1000])
def test_the_text_is_read_up_to_the_ffn_width_or_max_tokens(monkeypatch, max_tokens):
    monkeypatch.setattr(calibrate, "MAX_TOKENS", max_tokens)
    ckpt = open_checkpoint(TINY7)
    n_ffn = ckpt.arch.n_ffn
    assert 64 < n_ffn < 1000
    assert len(tokens_for(ckpt, TEXT * 10)) == max(max_tokens, n_ffn)  # the FFN value's moments can have full rank
