"""Tests of runtime.quant.native: stored bf16/f16/f32 rows → ggml blocks in native code, byte-identical to
runtime.quant.codec (itself byte-identical to gguf.quants), NaN/Inf rows reported, the same bytes on a
baseline x86-64 target without F16C, and conversions byte-identical through both paths."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import runtime.convert
from runtime.convert import convert
from runtime.errors import ModelFileError
from runtime.formats.gguf_file import read_gguf
from runtime.quant import native
from runtime.quant.codec import float32_to_bf16, quantize, to_float32
from runtime.quant.native import NonFiniteRowError, quantize_stored, supported
from runtime.quant.types import DType
from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import write_pth

SOURCES = (DType.BF16, DType.F16, DType.F32)
TARGETS = (DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0, DType.F16, DType.F32)
PAIRS = [(s, d) for s in SOURCES for d in TARGETS]
PAIR_IDS = [f"{s.name}-{d.name}" for s, d in PAIRS]
REPO = Path(__file__).resolve().parents[2]


def stored(x: np.ndarray, src: DType) -> np.ndarray:
    """float32 values as `src` stores them (f16: clipped to the finite range first)."""
    if src is DType.BF16:
        return float32_to_bf16(x)
    if src is DType.F16:
        return np.clip(x, -65504, 65504).astype(np.float16)
    return np.ascontiguousarray(x, np.float32)


def codec_bytes(raw: np.ndarray, src: DType, dst: DType) -> np.ndarray:
    """What the numpy path produces for the same stored rows."""
    with np.errstate(over="ignore"):
        return quantize(to_float32(raw, src), dst).view(np.uint8).reshape(raw.shape[0], -1)


def cases() -> dict[str, np.ndarray]:
    """float32 rows (n, 96 or 64) covering every edge case of the encoders."""
    rng = np.random.default_rng(42)

    def normal(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.normal(size=(rows, cols)) * scale).astype(np.float32)

    signed_zeros = np.zeros((10, 64), np.float32)
    signed_zeros[0, 5] = -0.0  # one -0 among +0
    signed_zeros[1] = -0.0
    signed_zeros[1, 7] = 0.0
    signed_zeros[2] = -0.0  # all -0
    signed_zeros[3] = np.abs(rng.normal(size=64))
    signed_zeros[3, [2, 20]] = [-0.0, 0.0]  # positive block, min is a zero of either sign
    signed_zeros[4] = -np.abs(rng.normal(size=64))
    signed_zeros[4, [3, 20]] = [-0.0, 0.0]
    signed_zeros[5] = np.abs(rng.normal(size=64))
    signed_zeros[5, 9] = -0.0  # min is -0 only
    signed_zeros[6] = -np.abs(rng.normal(size=64))
    signed_zeros[6, 9] = -0.0  # max is -0 only
    signed_zeros[7, :32] = np.abs(rng.normal(size=32))
    signed_zeros[7, [0, 31]] = [-0.0, 0.0]
    signed_zeros[8] = rng.normal(size=64)
    signed_zeros[8, ::7] = -0.0
    signed_zeros[9, 32:] = -0.0
    equal_extremes = normal(8, 64, 1.0)
    equal_extremes[:, 3], equal_extremes[:, 9] = 5.0, -5.0  # the first of equal magnitudes decides
    equal_extremes[4:, 3], equal_extremes[4:, 9] = -5.0, 5.0
    # scales of exactly 1 (for Q8_0, Q4_0, Q5_0, Q4_1 and Q5_1 in turn), so values land on k + 0.5
    ties = (rng.integers(-8, 8, (40, 64)) + 0.5).astype(np.float32)
    ties[:8] = rng.integers(-126, 126, (8, 64)) + 0.5
    ties[:8, ::32] = 127.0 * rng.choice([-1, 1], (8, 2))
    ties[0, 1:7] = np.nextafter(np.float32([0.5, -0.5, 2.5, -2.5, 126.5, 0.5]), np.float32(0))  # just below .5
    ties[8:16, ::32] = -8.0
    ties[16:24] = rng.integers(-16, 15, (8, 64)) + 0.5
    ties[16:24, ::32] = -16.0
    for lo, top in ((24, 15), (32, 31)):
        ties[lo : lo + 8] = rng.integers(0, top, (8, 64)) + 0.5
        ties[lo : lo + 8, ::32] = 0.0
        ties[lo : lo + 8, 1::32] = top
        ties[lo + 4 : lo + 8] -= 4.0
    overflow = normal(6, 64, 1.0)
    overflow[:, ::32] = 3.0e4  # f16 scales: Q4_1/Q5_1 d = 6e4/15 fine, m ok; with 1e6 d overflows
    overflow[3:] *= 40.0
    constant = np.repeat(np.array([[0.7], [-0.7], [3e-3], [-1e4], [0.0], [65504.0]], np.float32), 64, axis=1)
    return {
        "unit": normal(37, 96, 1.0),  # odd row count
        "weights": normal(16, 256, 0.02),
        "large": normal(8, 96, 1e3),
        "tiny": normal(8, 64, 1e-30),
        "positive": rng.uniform(0.5, 2, (8, 64)).astype(np.float32),
        "zeros": np.zeros((3, 64), np.float32),
        "signed_zeros": signed_zeros,
        "equal_extremes": equal_extremes,
        "ties": ties,
        "constant": constant,
        "huge": normal(8, 64, 1e6),  # scales overflow float16
        "scale_overflow": overflow,
        "near_float32_max": (rng.uniform(-1, 1, (4, 64)) * 3e38).astype(np.float32),  # max - min overflows
        "denormal_scale": normal(8, 64, 1e-38),  # 1/d overflows
        "subnormal_values": normal(8, 64, 1e-42),
        "f16_subnormal_scale": normal(8, 64, 1e-5),
        "mixed_scales": normal(8, 256, 1.0) * np.logspace(-40, 30, 8, dtype=np.float32)[:, None],
    }


CASES = cases()


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=PAIR_IDS)
def test_byte_identical_to_codec(src, dst):
    for name, x in CASES.items():
        raw = stored(x, src)
        got = quantize_stored(raw, src, dst, x.shape[1])
        want = codec_bytes(raw, src, dst)
        assert got.shape == want.shape and got.dtype == np.uint8, name
        diff = np.argwhere(got != want)
        assert diff.size == 0, f"{name}: first differing (row, byte): {diff[:4].tolist()}"


@pytest.mark.parametrize("dst", [DType.F16, DType.F32], ids=lambda t: t.name)
@pytest.mark.parametrize("src", SOURCES, ids=lambda t: t.name)
def test_float_targets_take_any_row_length(src, dst):
    x = (np.random.default_rng(1).normal(size=(7, 45)) * 100).astype(np.float32)  # 315 values: a tail of 27
    raw = stored(x, src)
    assert np.array_equal(quantize_stored(raw, src, dst, 45), codec_bytes(raw, src, dst))


def test_float_to_half_rounding_matches_numpy_on_every_exponent():
    """The integer float → half routine (hosts without F16C): nearest-even ties, subnormals, overflow."""
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    exps = np.arange(0, 255, dtype=np.uint32)  # every finite exponent, with tie and near-tie mantissas
    for low in (0x1000, 0x0FFF, 0x1001, 0x3000, 0x2000, 0, 0x7FFFFF, 0x7FF000):
        bits = np.concatenate([bits, exps << 23 | low, exps << 23 | low | 0x80000000])
    bits = bits[(bits & 0x7F800000) != 0x7F800000]  # finite only
    x = bits.view(np.float32)
    for native_half in (False, True):
        if native_half and not native.native_half():
            continue
        got = quantize_stored(x, DType.F32, DType.F16, x.size, native_half_conversion=native_half)
        with np.errstate(over="ignore"):
            want = x.astype(np.float16)
        np.testing.assert_array_equal(got.view(np.uint16).reshape(-1), want.view(np.uint16))


@pytest.mark.parametrize("dst", [DType.Q8_0, DType.Q5_1, DType.Q4_0, DType.F32], ids=lambda t: t.name)
def test_integer_half_paths_give_the_same_bytes(dst):
    """F16 sources and f16 scales through the integer conversions (what a host without F16C runs)."""
    for name, x in CASES.items():
        raw = stored(x, DType.F16)
        got = quantize_stored(raw, DType.F16, dst, x.shape[1], native_half_conversion=False)
        assert np.array_equal(got, codec_bytes(raw, DType.F16, dst)), name


def _bad(src: DType, value: str) -> np.ndarray:
    """One stored value of `src`: NaN, inf or -inf."""
    f = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[value]
    if src is DType.BF16:
        return float32_to_bf16(np.array([f], np.float32))
    return np.array([f], np.float16 if src is DType.F16 else np.float32)


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=PAIR_IDS)
def test_first_nonfinite_row_is_reported(src, dst):
    n_rows, n_cols = 9, 96
    x = np.random.default_rng(3).normal(size=(n_rows, n_cols)).astype(np.float32)
    for value, spots in (("nan", [(4, 50)]), ("inf", [(0, 0)]), ("-inf", [(8, 95)]), ("nan", [(6, 31), (2, 64)])):
        raw = stored(x, src).copy()
        for r, c in spots:
            raw[r, c] = _bad(src, value)[0]
        with pytest.raises(NonFiniteRowError) as err:
            quantize_stored(raw, src, dst, n_cols)
        assert err.value.row == min(r for r, _ in spots), (value, spots)


@pytest.mark.parametrize("spot", [(2, 44), (1, 10)], ids=["tail", "mid-group"])
@pytest.mark.parametrize("src", SOURCES, ids=lambda t: t.name)
def test_nonfinite_rows_of_a_float_target_with_short_rows(src, spot):
    """Rows of 45 values: (2, 44) lies past the last whole group of 32, (1, 10) in a group that starts in row 0."""
    x = np.ones((3, 45), np.float32)
    raw = stored(x, src).copy()
    raw[spot] = _bad(src, "inf")[0]
    for dst in (DType.F16, DType.F32):
        with pytest.raises(NonFiniteRowError) as err:
            quantize_stored(raw, src, dst, 45)
        assert err.value.row == spot[0]


def test_blocks_left_to_numpy_are_few_and_reencoded(monkeypatch):
    """Denormal scales and zero extremes of mixed sign are re-encoded with codec.py; ordinary data never."""
    encoded = []
    real = native.quantize

    def spy(values, dtype):
        encoded.append(values.shape[0])
        return real(values, dtype)

    monkeypatch.setattr(native, "quantize", spy)
    x = CASES["weights"]
    quantize_stored(x, DType.F32, DType.Q5_1, x.shape[1])
    assert encoded == []
    x = CASES["subnormal_values"]
    for dst in (DType.Q8_0, DType.Q4_0, DType.Q5_1):
        encoded.clear()
        assert np.array_equal(quantize_stored(x, DType.F32, dst, 64), codec_bytes(x, DType.F32, dst))
        assert encoded == [16], dst  # every block of the 8 × 64 values
    x = CASES["signed_zeros"]
    encoded.clear()
    quantize_stored(x, DType.F32, DType.Q4_1, 64)
    assert encoded == [5]  # the blocks with both zeros where the min or max is a zero
    encoded.clear()
    quantize_stored(x, DType.F32, DType.Q4_0, 64)  # symmetric types decide zeros themselves
    assert encoded == []


def test_many_odd_blocks_fall_back_to_codec_for_the_whole_call():
    """More blocks than the kernel can list (denormal scales everywhere) still give codec's bytes."""
    x = (np.random.default_rng(8).normal(size=(40, 1024)) * 1e-39).astype(np.float32)  # 1280 blocks
    assert x.size // 32 > native.ODD_CAPACITY
    for dst in (DType.Q8_0, DType.Q4_1):
        assert np.array_equal(quantize_stored(x, DType.F32, dst, 1024), codec_bytes(x, DType.F32, dst))


def test_out_buffer_and_input_checks():
    x = np.random.default_rng(2).normal(size=(4, 64)).astype(np.float32)
    raw = float32_to_bf16(x)
    out = np.full(4 * 48 + 10, 0xAB, np.uint8)
    got = quantize_stored(raw.tobytes(), DType.BF16, DType.Q5_1, 64, out=out)
    assert np.shares_memory(got, out) and np.array_equal(got, codec_bytes(raw, DType.BF16, DType.Q5_1))
    assert (out[4 * 48 :] == 0xAB).all()  # nothing written past the rows
    with pytest.raises(ValueError, match="writable contiguous uint8"):
        quantize_stored(raw, DType.BF16, DType.Q5_1, 64, out=np.empty(10, np.uint8))
    with pytest.raises(ValueError, match="not a whole number of rows"):
        quantize_stored(raw.tobytes()[:-2], DType.BF16, DType.Q5_1, 64)
    assert not supported(DType.BF16, DType.Q4_0, 48) and supported(DType.BF16, DType.F16, 48)
    assert not supported(DType.Q8_0, DType.Q4_0, 64)
    with pytest.raises(ValueError, match="no native conversion"):
        quantize_stored(raw, DType.BF16, DType.Q4_0, 48)
    assert quantize_stored(b"", DType.F32, DType.Q8_0, 64).shape == (0, 68)


_BASELINE_SCRIPT = """
import json, sys
import numpy as np
from runtime.jit.kernels.irhelpers import native_half
from runtime.quant.native import quantize_stored
from runtime.quant.types import DType
from tests.quant.test_native_quantize import CASES, PAIRS, codec_bytes, stored
bad = []
for src, dst in PAIRS:
    for name, x in CASES.items():
        raw = stored(x, src)
        if not np.array_equal(quantize_stored(raw, src, dst, x.shape[1]), codec_bytes(raw, src, dst)):
            bad.append(f"{src.name}->{dst.name} {name}")
print(json.dumps({"native_half": native_half(), "bad": bad}))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
def test_baseline_x86_64_without_f16c_gives_the_same_bytes():
    """Compiled for plain x86-64 (SSE2, no F16C/AVX) in a fresh process: same bytes for every pair."""
    env = dict(os.environ, RWKV_TUI_CPU="x86-64", RWKV_TUI_FEATURES="", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["native_half"] is False
    assert result["bad"] == []


@pytest.mark.parametrize("storage", ["bfloat16", "float16", "float32"])
def test_conversion_output_is_byte_identical_through_both_paths(tmp_path, monkeypatch, storage):
    """Whole files: native path (small pieces and chunks, so both loops turn) vs RWKV_TUI_NATIVE_QUANTIZE=0."""
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=200, seed=11)
    src = write_pth(tmp_path / f"m-{storage}.pth", sd, dtype=storage)
    monkeypatch.setattr(runtime.convert, "PIECE_BYTES", 640)  # a few rows per native call
    monkeypatch.setattr(runtime.convert, "CHUNK_VALUES", 64 * 24)  # several chunks per matrix
    monkeypatch.setattr(runtime.convert, "NUMPY_CHUNK_VALUES", 64 * 40)
    calls = []

    class Counting(native.RowEncoder):
        def encode_at(self, src_addr: int, n_rows: int, dst_addr: int) -> None:
            calls.append(self.dst)
            super().encode_at(src_addr, n_rows, dst_addr)

    monkeypatch.setattr(runtime.convert, "RowEncoder", Counting)
    for target in ("q5_1", "q8_0", "q4_0", "f16"):
        calls.clear()
        monkeypatch.setenv("RWKV_TUI_NATIVE_QUANTIZE", "1")
        a = convert(src, tmp_path / f"native-{target}.gguf", target).path.read_bytes()
        assert DType.parse(target) in calls and len(calls) > 40  # matrices went through native code
        monkeypatch.setenv("RWKV_TUI_NATIVE_QUANTIZE", "0")
        calls.clear()
        b = convert(src, tmp_path / f"numpy-{target}.gguf", target).path.read_bytes()
        assert calls == []
        assert a == b, target


def test_conversion_reports_the_row_of_a_nan_from_native_code(tmp_path, monkeypatch):
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=128, seed=3)
    sd["blocks.0.att.output.weight"][41, 3] = np.inf
    src = write_pth(tmp_path / "inf.pth", sd, dtype="bfloat16")
    monkeypatch.setattr(runtime.convert, "PIECE_BYTES", 1024)  # the bad row is in a later piece
    with pytest.raises(ModelFileError, match=r"blocks\.0\.att\.output\.weight.*NaN or Inf.*row 41\)"):
        convert(src, tmp_path / "out.gguf", "q5_1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf.pth"]


def test_source_hash_is_paced_by_the_conversion_and_still_right(tmp_path, monkeypatch):
    """The sha256 thread reads at most HASH_WINDOW bytes past the furthest byte conversion asked for
    (until conversion is done), and the digest in the file is the file's."""
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=200, seed=5)
    src = write_pth(tmp_path / "m.pth", sd, dtype="bfloat16")
    monkeypatch.setattr(runtime.convert, "HASH_WINDOW", 4096)
    monkeypatch.setattr(runtime.convert, "CHUNK_VALUES", 64 * 16)
    lead: list[int] = []
    real_wait = runtime.convert._Pacer.wait

    def wait(self, position: int) -> None:
        real_wait(self, position)
        if self.limit < 1 << 62:  # not yet released: record how far ahead of the converter the hasher is
            lead.append(position - (self.limit - self.window))

    monkeypatch.setattr(runtime.convert._Pacer, "wait", wait)
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(convert(src, tmp_path / "o.gguf", "q8_0")))
    worker.start()
    worker.join(120)
    assert done, "conversion did not finish (hasher and converter waiting on each other?)"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert done[0].source_sha256 == digest
    assert read_gguf(tmp_path / "o.gguf").metadata["rwkv_tui.source.sha256"] == digest
    assert lead and max(lead) < 4096
