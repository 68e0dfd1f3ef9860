"""What `rwkv-tui bench MODEL` measures: decode and prompt speed, bytes read, bandwidth, memory, load time.

Figures, not pass/fail: the machine is noisy, so everything compared is measured in the same run.
The memory read bandwidth is measured here too, two ways, over a buffer much larger than the caches:
a plain numpy sum (how the issue's reference figures were measured) and a compiled read that
prefetches ahead as the decode kernels do (runtime/jit/kernels/stream_read.py; on some machines it
reads far more), so the decode rate can be read as a fraction of what the memory can deliver; and
the compiled read once more over the model's own mapped pages, the bytes decoding reads
(`weights_read_gbs`): on a VM the host may back a file's page-cache pages and a fresh buffer with
memory of different speed (here the same file decoded up to 2× slower depending on which pages held
it), and then only the read of those same pages says what decoding could reach. Both are
measured right before and right after each thread count's decoding (the better of the two kept), so a
busy moment on a shared machine weighs on the rate and the figure it is compared with alike.
After decoding, each thread count also times the model's own kernels with their rows in cache
(runtime/kernel_ceiling.py): the other bound, how fast this CPU computes the products at all.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.jit.kernels.stream_read import STEP, stream_words_sum
from runtime.kernel_ceiling import bytes_by_type, cached_kernel_rates, ceiling_gbs, matrix_shapes, rate_by_type
from runtime.memory_read import memory_read_bandwidth, stream_read_gbs
from runtime.model.model import Model, load_model
from runtime.pagecache import drop_cached_pages
from runtime.threadcount import check_threads, default_threads

PROMPT_CHUNKS = (16, 64, 256)


@dataclass
class ThreadResult:
    threads: int
    decode_ms: float
    prompt_tok_s: dict[int, float] = field(default_factory=dict)

    def effective_gbs(self, bytes_per_token: int) -> float:
        return bytes_per_token / (self.decode_ms / 1000) / 1e9


@dataclass
class BenchResult:
    path: Path
    file_bytes: int
    bytes_per_token: int
    bandwidth_gbs: dict[int, float]  # threads → GB/s of a streaming read (numpy sum)
    load_cold_s: float
    load_warm_s: float
    peak_rss_mb: float  # of a fresh process: warm load, 256-token prompt, 16 decoded tokens
    runs: list[ThreadResult]
    huge_page_share: float | None = None  # of the mapped file after decoding (None: not known here)
    stream_gbs: dict[int, float] = field(default_factory=dict)  # threads → GB/s of the compiled read
    weights_gbs: dict[int, float] = field(default_factory=dict)  # threads → the same over the model's own pages
    # the block-kernel matrices' bytes per decoded token by type, most first (kernel_ceiling.matrix_shapes)
    type_bytes: dict[str, int] = field(default_factory=dict)
    kernel_gbs: dict[int, dict[str, float]] = field(default_factory=dict)  # threads → type → GB/s, rows in cache
    ceiling_gbs: dict[int, float] = field(default_factory=dict)  # threads → those rates combined by type_bytes

    def kernel_ms(self, threads: int) -> float | None:
        """ms a decode step's block-kernel matrices take at the kernels' in-cache rates on `threads`."""
        rates = self.kernel_gbs.get(threads)
        if not rates or any(t not in rates for t in self.type_bytes):
            return None
        return sum(n / rates[t] for t, n in self.type_bytes.items()) / 1e6


def _decoded_matrices(model: Model) -> set[str]:
    """The tensors a decode step reads whole: every layer matrix (RWKV-7's LoRA factors too) and the head."""
    return {f"blocks.{i}.{suffix}" for i in range(model.n_layer) for suffix in model.arch.LAYER_MATRICES} | {
        "head.weight"}


def bytes_per_decoded_token(model: Model) -> int:
    """Weight bytes one decode step reads: every layer matrix (RWKV-7's LoRA factors too), the head,
    one embedding row, and the per-channel vectors (as the float32 block the loader decodes them into)."""
    t = model.tensors
    matrices = _decoded_matrices(model)
    total = t["emb.weight"].row_bytes
    for name, tensor in t.items():
        if name in matrices:
            total += tensor.nbytes
        elif name != "emb.weight":
            total += 4 * math.prod(tensor.shape)
    return total


def weight_read_parts(model: Model) -> list[list[np.ndarray]]:
    """The bytes of the mapped file a decode step reads whole (its matrices and head) as uint32 views,
    in shares of nearly equal size for each of the model's threads; each view starts on a 4-byte
    boundary and holds whole STEPs (so up to 4·STEP + 3 bytes per tensor are left out)."""
    view = model.mapped_bytes()
    matrices = _decoded_matrices(model)
    spans = sorted((t.offset, t.offset + t.nbytes) for name, t in model.tensors.items() if name in matrices)
    merged: list[list[int]] = []
    for start, end in spans:  # views into one fused tensor may touch or overlap
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    threads, step_bytes = model.threads, 4 * STEP
    share = -(-sum(end - start for start, end in merged) // threads)
    parts: list[list[np.ndarray]] = [[] for _ in range(threads)]
    done = 0
    for start, end in merged:
        while start < end:
            k = min(done // share, threads - 1)
            take = end - start if k == threads - 1 else min(end - start, (k + 1) * share - done)
            first = -(-start // 4) * 4
            n = max(0, (start + take - first) // step_bytes * step_bytes)
            if n:
                parts[k].append(view[first : first + n].view(np.uint32))
            start += take
            done += take
    return parts


def weights_read_gbs(model: Model, repeats: int = 3) -> float:
    """GB/s of the compiled read (as integers, stream_read.stream_words_sum) over the very pages of the
    mapped file that a decode step reads (weight_read_parts), each thread of the model its share; the
    best of `repeats`. The rate to hold decoding against: on a VM a file's page-cache pages and a
    freshly allocated buffer can sit on memory of quite different speed."""
    parts = weight_read_parts(model)
    nbytes = sum(a.nbytes for part in parts for a in part)
    best = float("inf")
    with cf.ThreadPoolExecutor(max_workers=len(parts)) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda arrays: [stream_words_sum(a) for a in arrays], parts))
            best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


_RSS_PROBE = """
import resource, sys
import numpy as np
from runtime.model.model import load_model
model = load_model(sys.argv[1], threads=int(sys.argv[2]))
rng = np.random.default_rng(0)
_, state = model.forward(rng.integers(0, model.n_vocab, 256))
for tok in rng.integers(0, model.n_vocab, 16):
    _, state = model.forward([int(tok)], state)
try:  # this process's own peak: ru_maxrss would also hold the parent's, inherited through vfork + exec
    with open("/proc/self/status") as status:
        print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024 / 1e6)
except (OSError, StopIteration):
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e6)
"""


def peak_rss_of_a_session(path: Path, threads: int, cache_dir: str) -> float:
    """Peak RSS (MB of 10^6 bytes, as the file sizes beside it) of a fresh process that loads the model
    (warm cache), reads 256 tokens, decodes 16."""
    env = dict(os.environ, RWKV_TUI_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path), str(threads)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _timed_load(path: Path, cache_dir: str, threads: int) -> tuple[Model, float]:
    old = os.environ.get("RWKV_TUI_CACHE_DIR")
    os.environ["RWKV_TUI_CACHE_DIR"] = cache_dir
    try:
        t0 = time.perf_counter()
        model = load_model(path, threads=threads)
        return model, time.perf_counter() - t0
    finally:
        if old is None:
            os.environ.pop("RWKV_TUI_CACHE_DIR", None)
        else:
            os.environ["RWKV_TUI_CACHE_DIR"] = old


def _read_rates(threads: int, buffer: np.ndarray) -> tuple[float, float]:
    """(numpy sum, compiled read) GB/s over `buffer` on `threads` threads."""
    return memory_read_bandwidth(threads=threads, buffer=buffer), stream_read_gbs(threads=threads, buffer=buffer)


def _decode_ms(model: Model, steps: int) -> float:
    rng = np.random.default_rng(0)
    _, state = model.forward(rng.integers(0, model.n_vocab, 8))
    for tok in rng.integers(0, model.n_vocab, 4):  # warm up
        _, state = model.forward([int(tok)], state)
    times = []
    for tok in rng.integers(0, model.n_vocab, steps):
        t0 = time.perf_counter()
        _, state = model.forward([int(tok)], state)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def _prompt_tok_s(model: Model, chunk: int, repeats: int) -> float:
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, model.n_vocab, chunk)
    model.forward(tokens[: min(chunk, 8)])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.forward(tokens)
        best = min(best, time.perf_counter() - t0)
    return chunk / best


def run_bench(
    path: str | os.PathLike[str], threads: list[int] | None = None, steps: int = 32,
    report: Callable[[str], None] = lambda _msg: None, drop_cache: bool = False,
) -> BenchResult:
    """Measure `path`. `drop_cache` first drops the file's page cache (where no other process maps
    it), so the loads read it from disk and, on Linux, map it with 2 MB pages (runtime/pagecache.py)."""
    for n in threads or ():
        check_threads(n)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the decode steps to time must be a positive whole number, got {steps!r}")
    path = Path(path)
    if drop_cache:
        drop_cached_pages(path)
    counts = threads or sorted({1, default_threads()})
    with tempfile.TemporaryDirectory(prefix="rwkv-bench-cache-") as cache:
        report("loading (cold: compiling kernels)")
        model, cold = _timed_load(path, cache, counts[0])
        model.close()
        model, warm = _timed_load(path, cache, counts[0])
        per_token = bytes_per_decoded_token(model)
        shapes = matrix_shapes(model, _decoded_matrices(model))
        model.close()
        runs = []
        kernels: dict[int, dict[str, float]] = {}
        ceiling: dict[int, float] = {}
        huge = None
        buffer = np.ones((1 << 30) // 4, dtype=np.float32)  # one 1 GiB buffer for every read
        bandwidth: dict[int, float] = {}
        stream: dict[int, float] = {}
        weights: dict[int, float] = {}
        for n in counts:
            model, _ = _timed_load(path, cache, n)
            # the reads right before and after decoding, so a busy machine weighs on both alike
            report(f"{n} thread(s): measuring memory bandwidth")
            before = _read_rates(n, buffer)
            own = weights_read_gbs(model)
            report(f"{n} thread(s): decoding")
            run = ThreadResult(n, _decode_ms(model, steps))
            after = _read_rates(n, buffer)
            weights[n] = max(own, weights_read_gbs(model))
            bandwidth[n], stream[n] = max(before[0], after[0]), max(before[1], after[1])
            huge = model.huge_page_share()
            report(f"{n} thread(s): timing the kernels with their rows in cache")
            rates = cached_kernel_rates(model, shapes, n)
            kernels[n] = {dtype.name: gbs for dtype, gbs in rate_by_type(shapes, rates).items()}
            top = ceiling_gbs(shapes, rates)
            if top is not None:
                ceiling[n] = top
            for chunk in PROMPT_CHUNKS:
                report(f"{n} thread(s): prompt of {chunk} tokens")
                run.prompt_tok_s[chunk] = _prompt_tok_s(model, chunk, repeats=3 if chunk < 256 else 2)
            model.close()
            runs.append(run)
        del buffer
        report("peak memory of a fresh session")
        peak = peak_rss_of_a_session(path, counts[-1], cache)
    return BenchResult(path, path.stat().st_size, per_token, bandwidth, cold, warm, peak, runs, huge, stream, weights,
                       {t.name: n for t, n in bytes_by_type(shapes).items()}, kernels, ceiling)
