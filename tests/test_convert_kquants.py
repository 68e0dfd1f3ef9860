"""`convert --type` with K-quant mixes (q2_k … q6_k, q4_k_m, q4_k_s, q5_k_m, q5_k_s) for every
architecture the converter writes: each tensor holds the type runtime.quant.mixes chooses for it,
general.file_type is llama.cpp's, and `inspect` reports the types with their rule."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from runtime.quant.mixes import Policy, is_lora_factor, lora_factor_type, parse_target, small_matrix_type
from runtime.quant.types import DType
from tests.support.synthetic import v4_state_dict, v7_state_dict, v56_state_dict
from tests.support.torch_writer import write_pth
from tui.cli import main as cli

TINY6 = Path(__file__).parent / "fixtures" / "rwkvcpp" / "tiny56" / "tiny-rwkv-6v0-3m-Q5_1.bin"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _stored(path: Path) -> tuple[dict[str, tuple[tuple[int, ...], DType]], int]:
    """Each tensor's numpy-order shape and type, and general.file_type."""
    r = gguf.GGUFReader(str(path))
    tensors = {t.name: (tuple(int(d) for d in reversed(t.shape)), DType(int(t.tensor_type))) for t in r.tensors}
    return tensors, int(r.get_field("general.file_type").contents())


def _check_policy(path: Path, target: str, n_layer: int) -> dict[DType, int]:
    """Every quantized tensor holds what the policy says (RWKV-7's LoRA factors: lora_factor_type); returns
    the count per type."""
    tensors, file_type = _stored(path)
    t = parse_target(target)
    assert file_type == t.file_type
    policy = Policy(t, n_layer)
    v7 = gguf.GGUFReader(str(path)).get_field("general.architecture").contents() == "rwkv7"
    counts: dict[DType, int] = {}
    for name, (shape, dtype) in tensors.items():
        counts[dtype] = counts.get(dtype, 0) + 1
        if is_lora_factor(name):  # RWKV-6's token-shift pair has two of these names: always F16/F32
            assert dtype is (lora_factor_type(t, shape[-1]) if v7 else small_matrix_type(t)), name
        elif dtype.is_quantized or name in ("token_embd.weight", "emb.weight"):
            assert dtype is policy.matrix(name, shape), name
    return counts


def test_trained_rwkv6_with_short_rows_falls_back_as_ggml_does(tmp_path, capsys):
    """Width 128, FFN 448: no row splits into super-blocks of 256, so Q4_K_M falls back to Q5_0 and the
    head (rows of 128) to Q8_0, as llama.cpp's quantizer does."""
    dst = tmp_path / "m.gguf"
    rc, out, err = _run(capsys, "convert", str(TINY6), str(dst), "--type", "q4_k_m")
    assert rc == 0, err
    assert "Q4_K_M" in out
    counts = _check_policy(dst, "q4_k_m", 12)
    assert counts[DType.Q5_0] == 12 * 8 and counts[DType.Q8_0] == 1
    rc, out, _ = _run(capsys, "inspect", str(dst))
    assert rc == 0
    assert "types (Q4_K_M)" in out
    rows = {ln.split()[0]: ln.split()[2] for ln in out.splitlines() if ln.strip()[:1] in "QF" and "│" in ln}
    assert rows["Q5_0"] == "96" and rows["Q8_0"] == "1"
    assert "fallback" in out and "base type Q4_K" in out


def _source(tmp_path: Path, arch: str) -> tuple[Path, int]:
    """A random checkpoint of width 256 (rows split into super-blocks) of `arch`, and its layer count."""
    if arch == "4":
        sd = v4_state_dict(n_layer=2, n_embd=256, n_vocab=320)
    elif arch == "7":
        sd = v7_state_dict(n_layer=2, n_embd=256, head_size=64, n_vocab=320, ranks=(32, 32, 32, 32))
    else:
        sd = v56_state_dict(arch, n_layer=2, n_embd=256, head_size=64, n_vocab=320, ranks=(32, 64), n_ffn=896)
    return write_pth(tmp_path / f"v{arch}.pth", sd, "float32"), 2


@pytest.mark.parametrize("arch", ["4", "5.2", "6", "7"])
@pytest.mark.parametrize("target", ["q4_k_m", "q3_k", "q6_k"])
def test_every_architecture_gets_the_policys_types(tmp_path, capsys, arch, target):
    src, n_layer = _source(tmp_path, arch)
    dst = tmp_path / "m.gguf"
    rc, _, err = _run(capsys, "convert", str(src), str(dst), "--type", target)
    assert rc == 0, err
    counts = _check_policy(dst, target, n_layer)
    base = parse_target(target).base
    assert counts[base] >= 6 * n_layer  # the layer matrices
    assert counts[DType.Q6_K] >= 1  # the head (rows of 256)
    rc, out, _ = _run(capsys, "inspect", str(dst))
    assert rc == 0 and f"types ({target.upper()})" in out and "output: Q6_K" in " ".join(out.split())
