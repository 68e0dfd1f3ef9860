"""`rwkv-tui bench` on a small model: the figures it prints and the bytes it counts (not their speed)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from runtime.bench import bytes_per_decoded_token, memory_read_bandwidth, run_bench
from runtime.formats.checkpoint import open_checkpoint
from runtime.model.model import load_model
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import write_v4_model
from tests.support.synthetic import v4_state_dict
from tui.cli import main as cli


@pytest.fixture(scope="module")
def small_bin(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "small-q5_1.bin"
    return write_v4_model(path, v4_state_dict(n_layer=2, n_embd=64, n_vocab=300, seed=3), DType.Q5_1)


def test_bytes_per_token_are_the_matrices_the_head_and_one_embedding_row(small_bin):
    t = open_checkpoint(small_bin).tensors
    matrices = [n for n in t if n.startswith("blocks.") and len(t[n].shape) == 2]
    assert len(matrices) == 2 * 7
    expected = sum(t[n].nbytes for n in matrices) + t["head.weight"].nbytes + t["emb.weight"].nbytes // 300
    with load_model(small_bin, threads=1) as model:
        assert bytes_per_decoded_token(model) == expected


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


def test_run_bench_measures_each_thread_count(small_bin):
    seen: list[str] = []
    r = run_bench(small_bin, threads=[1, 2], steps=3, report=seen.append, drop_cache=True)
    assert [run.threads for run in r.runs] == [1, 2]
    for run in r.runs:
        assert run.decode_ms > 0
        assert set(run.prompt_tok_s) == {16, 64, 256} and all(v > 0 for v in run.prompt_tok_s.values())
    assert set(r.bandwidth_gbs) == {1, 2} and set(r.stream_gbs) == {1, 2}
    assert r.file_bytes == small_bin.stat().st_size
    assert r.load_cold_s > 0 and r.load_warm_s > 0
    assert r.peak_rss_mb > 0
    assert r.huge_page_share is None or 0.0 <= r.huge_page_share <= 1.0
    assert any("decoding" in m for m in seen) and any("bandwidth" in m for m in seen)


def test_cli_bench_prints_the_table(small_bin, capsys):
    assert cli(["bench", str(small_bin), "--threads", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "weights read per decoded token" in out
    assert re.search(r"load: cold \(compiling\) [\d.]+ s, warm \(cached\) [\d.]+ s", out)
    row = next(line for line in out.splitlines() if re.match(r"\s*1\s+│", line))
    cells = [c.strip() for c in row.split("│")]
    assert len(cells) == 8  # threads, decode, effective GB/s, % of sum, % of best, three prompt sizes
    assert float(cells[1]) > 0 and float(cells[2]) > 0 and cells[3].endswith("%") and cells[4].endswith("%")
    assert re.search(r"memory read, 1 thread: sum [\d.]+ GB/s, best [\d.]+ GB/s", out)
    assert "peak RSS of a session" in out
    assert "issue" not in out  # the figures are explained in the user's terms
    assert "how fast an ordinary program" in " ".join(out.split())
