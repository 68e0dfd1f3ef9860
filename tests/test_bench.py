"""`rwkv-tui bench` on a small model: the figures it prints and the bytes it counts (not their speed)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from runtime.bench import bytes_per_decoded_token, memory_read_bandwidth, run_bench
from runtime.convert import convert
from runtime.formats.checkpoint import open_checkpoint
from runtime.model.model import load_model
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import write_v4_model, write_v7_model, write_v56_model
from tests.support.synthetic import v4_state_dict, v7_state_dict, v56_state_dict
from tests.support.torch_writer import write_pth
from tui.cli import main as cli
from tui.units import human_bytes


@pytest.fixture(scope="module")
def small_bin(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "small-q5_1.bin"
    return write_v4_model(path, v4_state_dict(n_layer=2, n_embd=64, n_vocab=300, seed=3), DType.Q5_1)


def _all_but_the_embeddings_other_rows(path) -> int:
    """What a decode step reads of a file whose vectors are stored as float32: every tensor, one embedding row."""
    t = open_checkpoint(path).tensors
    assert all(x.dtype is DType.F32 for x in t.values() if len(x.shape) == 1 or x.shape[:2] == (1, 1))
    return sum(x.nbytes for x in t.values()) - t["emb.weight"].nbytes + t["emb.weight"].row_bytes


def test_bytes_per_token_are_the_matrices_the_head_one_embedding_row_and_the_vectors(small_bin):
    t = open_checkpoint(small_bin).tensors
    matrices = [n for n in t if n.startswith("blocks.") and len(t[n].shape) == 2]
    vectors = [n for n in t if len(t[n].shape) == 1]
    # per layer ln1, ln2 (weight, bias), decay, first, 3 + 2 mixes; ln0, ln_out
    assert len(matrices) == 2 * 7 and len(vectors) == 2 * 11 + 4
    expected = sum(t[n].nbytes for n in matrices + vectors) + t["head.weight"].nbytes + t["emb.weight"].nbytes // 300
    assert expected == _all_but_the_embeddings_other_rows(small_bin)
    with load_model(small_bin, threads=1) as model:
        assert bytes_per_decoded_token(model) == expected


@pytest.fixture(scope="module")
def v7_files(tmp_path_factory):
    """One small RWKV-7 as an rwkv.cpp Q5_1 file (LoRA factors F16) and as our Q8_0 GGUF (LoRA factors Q8_0
    where their rows are whole blocks: the first factors, rows of C; F16 for ranks 24-48)."""
    d = tmp_path_factory.mktemp("bench7")
    sd = v7_state_dict(n_layer=2, n_embd=128, n_vocab=320, seed=4)
    pth = write_pth(d / "v7.pth", sd, "bfloat16")
    gguf = d / "v7-q8_0.gguf"
    convert(pth, gguf, DType.Q8_0)
    return write_v7_model(d / "v7-q5_1.bin", sd, DType.Q5_1), gguf


def test_rwkv7_bytes_per_token_count_the_lora_factors_and_vectors(v7_files):
    for path, first in zip(v7_files, (DType.F16, DType.Q8_0), strict=True):
        t = open_checkpoint(path).tensors
        assert {t[f"blocks.1.att.{n}"].dtype for n in ("w1", "v1")} == {first}
        assert {t[f"blocks.1.att.{n}"].dtype for n in ("a2", "g2")} == {DType.F16}
        with load_model(path, threads=1) as model:
            assert bytes_per_decoded_token(model) == _all_but_the_embeddings_other_rows(path)


def test_cli_bench_runs_an_rwkv7_file(v7_files, capsys):
    assert cli(["bench", str(v7_files[1]), "--threads", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    want = _all_but_the_embeddings_other_rows(v7_files[1])
    assert f"weights read per decoded token  {human_bytes(want)}" in out
    row = next(line for line in out.splitlines() if re.match(r"\s*1\s+│", line))
    assert float(row.split("│")[1]) > 0


@pytest.fixture(scope="module")
def v56_files(tmp_path_factory):
    """A small RWKV-6 as an rwkv.cpp Q5_1 file (LoRA factors quantized too, as rwkv.cpp's quantizer leaves
    them) and as our Q8_0 GGUF (LoRA factors F16), and a small RWKV-5.2 as our Q5_1 GGUF."""
    d = tmp_path_factory.mktemp("bench56")
    sd6 = v56_state_dict("6", n_layer=2, n_embd=128, n_vocab=320, ranks=(32, 64), seed=5)
    pth6 = write_pth(d / "v6.pth", sd6, "bfloat16")
    gguf6 = d / "v6-q8_0.gguf"
    convert(pth6, gguf6, DType.Q8_0)
    gguf5 = d / "v5-q5_1.gguf"
    convert(write_pth(d / "v5.pth", v56_state_dict("5.2", n_layer=2, n_embd=128, n_vocab=320, seed=6), "bfloat16"),
            gguf5, DType.Q5_1)
    return write_v56_model(d / "v6-q5_1.bin", sd6, DType.Q5_1), gguf6, gguf5


def test_rwkv56_bytes_per_token_count_the_lora_factors_and_vectors(v56_files):
    bin6, gguf6, _ = v56_files
    lora = ("time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2")
    assert {open_checkpoint(gguf6).tensors[f"blocks.1.att.{n}"].dtype for n in lora} == {DType.F16}
    assert open_checkpoint(bin6).tensors["blocks.1.att.time_maa_w1"].dtype is DType.Q5_1
    for path in v56_files:
        with load_model(path, threads=1) as model:
            assert bytes_per_decoded_token(model) == _all_but_the_embeddings_other_rows(path)


@pytest.mark.parametrize("which", [1, 2], ids=["rwkv6", "rwkv5"])
def test_cli_bench_runs_an_rwkv56_file(v56_files, which, capsys):
    path = v56_files[which]
    assert cli(["bench", str(path), "--threads", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert f"weights read per decoded token  {human_bytes(_all_but_the_embeddings_other_rows(path))}" in out
    row = next(line for line in out.splitlines() if re.match(r"\s*1\s+│", line))
    assert float(row.split("│")[1]) > 0


def test_memory_read_bandwidth_is_a_positive_rate():
    one = memory_read_bandwidth(megabytes=16, repeats=2, threads=1)
    two = memory_read_bandwidth(megabytes=16, repeats=2, threads=2)
    assert np.isfinite(one) and one > 0.1
    assert np.isfinite(two) and two > 0.1


def test_stream_read_sums_every_float_and_gives_a_rate():
    from runtime.bench import stream_read_gbs
    from runtime.jit.kernels.stream_read import stream_sum

    values = np.random.default_rng(0).integers(0, 8, 64 * 1000).astype(np.float32)
    assert stream_sum(values) == float(values.sum(dtype=np.float64))
    assert stream_sum(values[:64]) == float(values[:64].sum(dtype=np.float64))
    shifted = np.concatenate([[np.float32(0)], values])[1:]  # only 4-byte aligned
    assert shifted.ctypes.data % 32 != 0
    assert stream_sum(shifted) == float(values.sum(dtype=np.float64))
    for threads in (1, 2, 3):  # shares of whole 64-float steps for any thread count
        rate = stream_read_gbs(megabytes=16, repeats=2, threads=threads)
        assert np.isfinite(rate) and rate > 0.1


def test_the_word_read_sums_every_word():
    from runtime.jit.kernels.stream_read import STEP, stream_words_sum

    words = np.random.default_rng(1).integers(0, 2**32, STEP * 999, dtype=np.uint64).astype(np.uint32)
    assert stream_words_sum(words) == int(words.sum(dtype=np.uint64)) % 2**32
    assert stream_words_sum(words[:STEP]) == int(words[:STEP].sum(dtype=np.uint64)) % 2**32
    raw = np.frombuffer(b"\0" + words.tobytes(), np.uint8)[1:]  # bytes only 1-aligned, viewed as words
    assert stream_words_sum(raw.view(np.uint32)) == int(words.sum(dtype=np.uint64)) % 2**32
    with pytest.raises(ValueError, match="uint32 arrays of a multiple of 64"):
        stream_words_sum(words[:10])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_own_pages_read_covers_what_a_decode_step_reads(v7_files, threads):
    """The read over the model's pages takes each matrix and the head once, split nearly evenly, and
    leaves out only the few bytes that do not make whole 256-byte steps."""
    from runtime.bench import _decoded_matrices, weight_read_parts, weights_read_gbs

    for path in v7_files:
        with load_model(path, threads=threads) as model:
            parts = weight_read_parts(model)
            base = model.mapped_bytes().ctypes.data
            spans = sorted((a.ctypes.data - base, a.ctypes.data - base + a.nbytes) for part in parts for a in part)
            assert all(b0 >= a1 for (_, a1), (b0, _) in itertools.pairwise(spans))  # no byte twice
            wanted = [t for name, t in model.tensors.items() if name in _decoded_matrices(model)]
            whole = sum(t.nbytes for t in wanted)
            read = sum(end - start for start, end in spans)
            assert whole - (4 * 64 + 3) * (len(wanted) + threads) <= read <= whole
            union: list[list[int]] = []  # the tensors' bytes, adjacent ones joined
            for lo, hi in sorted((t.offset, t.offset + t.nbytes) for t in wanted):
                if union and lo <= union[-1][1]:
                    union[-1][1] = max(union[-1][1], hi)
                else:
                    union.append([lo, hi])
            for start, end in spans:  # every byte read belongs to those tensors
                assert any(lo <= start and end <= hi for lo, hi in union)
            sizes = [sum(a.nbytes for a in part) for part in parts]
            assert len(sizes) == threads and max(sizes) - min(sizes) <= (4 * 64 + 3) * (len(wanted) + 1) + 4 * 64
            assert weights_read_gbs(model, repeats=1) > 0


def test_run_bench_measures_each_thread_count(small_bin):
    seen: list[str] = []
    r = run_bench(small_bin, threads=[1, 2], steps=3, report=seen.append, drop_cache=True)
    assert [run.threads for run in r.runs] == [1, 2]
    for run in r.runs:
        assert run.decode_ms > 0
        assert set(run.prompt_tok_s) == {16, 64, 256} and all(v > 0 for v in run.prompt_tok_s.values())
    assert set(r.bandwidth_gbs) == {1, 2} and set(r.stream_gbs) == {1, 2} and set(r.weights_gbs) == {1, 2}
    assert all(v > 0 for v in r.weights_gbs.values())
    # the kernels-in-cache bound: a rate per matrix type and thread count, combined by the types' bytes
    assert set(r.kernel_gbs) == {1, 2} and set(r.ceiling_gbs) == {1, 2}
    assert all(set(rates) == set(r.type_bytes) for rates in r.kernel_gbs.values())
    for n, rates in r.kernel_gbs.items():
        assert min(rates.values()) * (1 - 1e-9) <= r.ceiling_gbs[n] <= max(rates.values()) * (1 + 1e-9)
        assert r.kernel_ms(n) == pytest.approx(sum(r.type_bytes.values()) / r.ceiling_gbs[n] / 1e6)
    assert 0 < sum(r.type_bytes.values()) < r.bytes_per_token
    assert list(r.type_bytes.values()) == sorted(r.type_bytes.values(), reverse=True)
    assert any("rows in cache" in m for m in seen)
    assert r.file_bytes == small_bin.stat().st_size
    assert r.load_cold_s > 0 and r.load_warm_s > 0
    assert r.peak_rss_mb > 0
    assert r.huge_page_share is None or 0.0 <= r.huge_page_share <= 1.0
    assert any("decoding" in m for m in seen) and any("bandwidth" in m for m in seen)


def test_the_read_figures_are_measured_beside_each_decoding(small_bin, monkeypatch):
    """On a shared machine the decode rate means something only against a read measured at the same
    time: each thread count's reads come right before and right after its decoding, the better kept."""
    import runtime.bench as bench

    events: list[str] = []
    rates = iter([5.0, 4.0, 7.0, 6.0, 3.0, 2.0, 9.0, 8.0])  # sum, stream: before and after, 1 then 2 threads
    monkeypatch.setattr(bench, "memory_read_bandwidth", lambda threads, buffer: events.append(f"sum{threads}")
                        or next(rates))
    monkeypatch.setattr(bench, "stream_read_gbs", lambda threads, buffer: events.append(f"read{threads}")
                        or next(rates))
    own = iter([1.0, 1.5, 2.5, 2.0])
    monkeypatch.setattr(bench, "weights_read_gbs", lambda model: events.append(f"own{model.threads}") or next(own))
    real_decode = bench._decode_ms
    monkeypatch.setattr(bench, "_decode_ms", lambda model, steps: events.append(f"decode{model.threads}")
                        or real_decode(model, steps))
    r = run_bench(small_bin, threads=[1, 2], steps=2)
    assert events == ["sum1", "read1", "own1", "decode1", "sum1", "read1", "own1",
                      "sum2", "read2", "own2", "decode2", "sum2", "read2", "own2"]
    assert r.bandwidth_gbs == {1: 7.0, 2: 9.0} and r.stream_gbs == {1: 6.0, 2: 8.0}
    assert r.weights_gbs == {1: 1.5, 2: 2.5}


def test_the_session_peak_is_the_sessions_own(small_bin, tmp_path):
    """The probe runs in a child process; Linux hands a vforked child the parent's peak RSS in
    ru_maxrss, so a parent holding a large buffer (as bench does) must not show in the figure."""
    from runtime.bench import peak_rss_of_a_session

    held = np.ones(600 << 18, dtype=np.float32)  # 600 MB, touched
    peak = peak_rss_of_a_session(small_bin, 1, str(tmp_path))
    assert held.sum() > 0
    assert 0 < peak < 400


def test_cli_bench_prints_the_table(small_bin, capsys):
    assert cli(["bench", str(small_bin), "--threads", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "weights read per decoded token" in out
    flat = " ".join(out.split())  # rich folds long lines at the terminal's width
    assert re.search(r"kernels with their rows in cache, 1 thread: Q5_1 [\d.]+", flat)
    assert re.search(r"for this mix at most [\d.]+ GB/s = \d+% of best", flat)
    assert re.search(r"load: cold \(compiling\) [\d.]+ s, warm \(cached\) [\d.]+ s", out)
    row = next(line for line in out.splitlines() if re.match(r"\s*1\s+│", line))
    cells = [c.strip() for c in row.split("│")]
    assert len(cells) == 10  # threads, decode, GB/s, % of sum, of best, of own pages, of kernels, three prompts
    assert float(cells[1]) > 0 and float(cells[2]) > 0 and all(c.endswith("%") for c in cells[3:7])
    assert re.search(r"memory read, 1 thread: sum [\d.]+ GB/s, best [\d.]+ GB/s, the model's own pages [\d.]+ GB/s",
                     " ".join(out.split()))
    assert "peak RSS of a session" in out
    assert "issue" not in out  # the figures are explained in the user's terms
    assert "how fast an ordinary program" in " ".join(out.split())
