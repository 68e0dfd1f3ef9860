"""`rwkv-tui convert` and `inspect`: checkpoints to GGUF, metadata, quantization, safety.

Sources are the committed reference fixtures (written by real `torch.save`) and checkpoints made
by tests/support/torch_writer.py.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil

import numpy as np
import pytest

from runtime.convert import convert
from runtime.errors import CancelledError, InsufficientDiskSpaceError, ModelFileError
from runtime.formats.checkpoint import LN0_FOLDED, TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED
from runtime.formats.gguf_file import read_gguf
from runtime.progress import CancelToken
from runtime.quant.codec import quantize
from runtime.quant.types import DType
from tests.support.pagecache import assert_not_cached, require_droppable_page_cache
from tests.support.reference import load_reference, read_pth_arrays
from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import write_pth
from tui.cli import main as cli

TINY = load_reference("tiny")
SMALL = load_reference("small")


def test_f32_conversion_records_everything_and_applies_transforms(tmp_path):
    out = tmp_path / "tiny.gguf"
    result = convert(TINY.pth_path, out, "f32")
    g = read_gguf(out)
    md = g.metadata
    assert md["general.architecture"] == "rwkv4"
    assert (md["rwkv4.block_count"], md["rwkv4.embedding_length"], md["rwkv4.vocab_size"]) == (2, 64, 320)
    assert md["tokenizer.ggml.model"] == "none"  # vocab 320 is neither 20B nor World
    assert md["rwkv_tui.source.file_name"] == "tiny.pth"
    assert md["rwkv_tui.source.sha256"] == hashlib.sha256(TINY.pth_path.read_bytes()).hexdigest()
    assert result.source_sha256 == md["rwkv_tui.source.sha256"]
    assert set(md["rwkv_tui.transforms"]) == {TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED, LN0_FOLDED}
    assert g.data_offset % 64 == 0 and all(t.offset % 64 == 0 for t in g.tensors.values())

    sd = read_pth_arrays(TINY.pth_path)
    assert "blocks.0.ln0.weight" not in g.tensors
    emb = g.tensors["emb.weight"].numpy()
    assert np.abs(emb - TINY.emb_ln0).max() < 1e-5  # the official fold, in fp32
    decay = g.tensors["blocks.1.att.time_decay"].numpy()
    assert np.allclose(decay, -np.exp(sd["blocks.1.att.time_decay"]), rtol=1e-6)
    assert g.tensors["blocks.0.att.time_mix_k"].shape == (64,)
    assert np.array_equal(g.tensors["blocks.0.ffn.key.weight"].numpy(), sd["blocks.0.ffn.key.weight"])


@pytest.mark.parametrize("target", ["q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "f16"])
def test_quantized_matrices_are_ggml_blocks_of_the_source(tmp_path, target):
    out = tmp_path / f"small-{target}.gguf"
    convert(SMALL.pth_path, out, target)
    g = read_gguf(out)
    sd = read_pth_arrays(SMALL.pth_path)  # bf16 source, widened exactly
    dtype = DType.parse(target)
    w = g.tensors["blocks.2.att.key.weight"]
    assert w.dtype is dtype
    raw = w.read_raw_rows()
    want = quantize(sd["blocks.2.att.key.weight"], dtype)
    assert np.array_equal(raw.view(np.uint8), want.view(np.uint8))
    assert g.metadata["rwkv_tui.quant.matrices"] == dtype.name
    assert g.tensors["ln_out.weight"].dtype is DType.F32
    assert g.tensors["emb.weight"].dtype is DType.F16
    assert g.metadata["rwkv_tui.quant.head"] == g.tensors["head.weight"].dtype.name


def test_requantizing_a_gguf_equals_converting_the_source(tmp_path):
    direct = convert(SMALL.pth_path, tmp_path / "direct.gguf", "q4_0").path
    f32 = convert(SMALL.pth_path, tmp_path / "f32.gguf", "f32").path
    again = convert(f32, tmp_path / "again.gguf", "q4_0").path
    a, b = read_gguf(direct), read_gguf(again)
    assert a.tensors.keys() == b.tensors.keys()
    for name in a.tensors:
        if name == "emb.weight":  # F16 either way, from an F32 fold
            continue
        assert np.array_equal(a.tensors[name].read_raw_rows(), b.tensors[name].read_raw_rows()), name
    assert b.metadata["rwkv_tui.source.format"] == "gguf"


def test_progress_reaches_the_total(tmp_path):
    events = []
    convert(TINY.pth_path, tmp_path / "p.gguf", "q8_0", progress=events.append)
    assert events[-1].done == events[-1].total > 0
    assert all(a.done <= b.done for a, b in itertools.pairwise(events))


def test_cancel_leaves_nothing_behind(tmp_path):
    token = CancelToken()
    seen = []

    def progress(ev):
        seen.append(ev)
        if len(seen) == 3:
            token.cancel()

    out = tmp_path / "c.gguf"
    with pytest.raises(CancelledError):
        convert(SMALL.pth_path, out, "q5_1", progress=progress, cancel=token)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_an_existing_destination(tmp_path):
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=128, seed=3)
    sd["blocks.1.ffn.value.weight"][5, 7] = np.nan
    src = write_pth(tmp_path / "nan.pth", sd, dtype="float32")
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous")
    with pytest.raises(ModelFileError, match=r"blocks\.1\.ffn\.value\.weight.*NaN or Inf.*row 5"):
        convert(src, out, "q8_0")
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pth", "out.gguf"]


def test_disk_space_is_checked_first(tmp_path, monkeypatch):
    real = shutil.disk_usage

    def tiny_disk(path):
        u = real(path)
        return type(u)(u.total, u.total - 1000, 1000)

    monkeypatch.setattr(shutil, "disk_usage", tiny_disk)
    with pytest.raises(InsufficientDiskSpaceError, match=r"need \d+\.\d+ GB, 0\.00 GB free"):
        convert(TINY.pth_path, tmp_path / "x.gguf", "f16")
    assert list(tmp_path.iterdir()) == []


def test_cli_convert_and_inspect(tmp_path, capsys):
    out = tmp_path / "t.gguf"
    assert cli(["convert", str(TINY.pth_path), str(out), "--type", "q8_0"]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert cli(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in ("RWKV-4", "2 × 64", "320", "blocks.0.att.key.weight", "Q8_0", "rwkv_tui.source.sha256"):
        assert needle in text


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"\x00" * 64, "unknown file format"), (b"PK\x03\x04" + b"\x00" * 40, "")],
)
def test_cli_bad_files_exit_2_with_the_file_named(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    assert cli(["convert", str(bad), str(tmp_path / "o.gguf")]) == 2
    err = capsys.readouterr().err
    assert "bad.pth" in err and message in err
    assert not (tmp_path / "o.gguf").exists()


def test_cli_unknown_type_exits_2(tmp_path, capsys):
    assert cli(["convert", str(TINY.pth_path), str(tmp_path / "o.gguf"), "--type", "q3_z"]) == 2
    assert "unknown type 'q3_z'" in capsys.readouterr().err


def test_inspect_names_unrunnable_versions(tmp_path, capsys):
    sd = v4_state_dict(n_layer=1, n_embd=32, n_vocab=64)
    sd["blocks.0.att.ln_x.weight"] = np.ones(32, np.float32)
    sd["blocks.0.att.ln_x.bias"] = np.zeros(32, np.float32)
    src = write_pth(tmp_path / "v5.pth", sd, dtype="float32")
    assert cli(["inspect", str(src)]) == 2
    assert "RWKV-5" in capsys.readouterr().err


def test_converted_file_is_an_ordinary_file_not_private(tmp_path):
    import os
    import stat

    from runtime.atomic import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "out.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o644


def test_a_converted_file_leaves_the_page_cache_so_its_first_load_gets_large_pages(tmp_path):
    require_droppable_page_cache(tmp_path)
    out = tmp_path / "small.gguf"
    convert(SMALL.pth_path, out, "q8_0")
    assert_not_cached(out)
