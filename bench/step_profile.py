"""What the per-architecture profiles share (bench/rwkv6_profile.py, bench/rwkv7_profile.py): decode and
prompt timing, the speed report against the compiled memory read, and a decode step's parts in CPU time.
Run as a script, it compares files' decoding side by side against the compiled read, interleaved:

    python bench/step_profile.py rwkv6-1.5b-q5_1.gguf rwkv7-1.5b-q5_1.gguf --rounds 5

A part's cost comes from compiling the same model without it (the spec's bench-only `omit` set): the
variants are timed on one thread in CPU time (so other processes matter less), interleaved over
rounds, the least time of each kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.bench import bytes_per_decoded_token, stream_read_gbs
from runtime.jit.kernels.stream_read import STEP, stream_sum
from runtime.model.loader import load_weights
from runtime.model.model import Model


def decode_ms(model: Model, steps: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median ms of a decode step over `steps` random tokens (after 3 not counted)."""
    rng = np.random.default_rng(0)
    _, state = model.forward(rng.integers(0, model.n_vocab, 4))
    times = []
    for tok in rng.integers(0, model.n_vocab, steps + 3):
        t0 = clock()
        _, state = model.forward([int(tok)], state)
        times.append(clock() - t0)
    return float(np.median(times[3:]) * 1e3)


def prompt_tok_s(model: Model, n: int) -> float:
    """Tokens/s reading `n` random tokens in one call (the better of two)."""
    tokens = np.random.default_rng(1).integers(0, model.n_vocab, n)
    model.forward(tokens[:8])
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        model.forward(tokens, want_logits=False)
        best = min(best, time.perf_counter() - t0)
    return n / best


def speed_report(path: Path, threads: int | None, steps: int, prompt: int, lora: Iterable[str]) -> None:
    """Print decode ms/token as GB/s and as a share of the compiled read, and the prompt rate; `lora` the
    last parts of the tensor names (after the last dot) counted as LoRA factors in the bytes a step reads."""
    endings = frozenset(lora)
    model = Model(load_weights(path), threads)
    step_bytes = bytes_per_decoded_token(model)
    lora_bytes = sum(t.nbytes for n, t in model.tensors.items() if n.split(".")[-1] in endings)
    stream_sum(np.ones(STEP, np.float32))  # compiled once here: stream_read's cache is not safe across threads
    read = stream_read_gbs(threads=model.threads)
    ms = decode_ms(model, steps)
    gbs = step_bytes / ms / 1e6
    print(f"{path.name}: {model.threads} threads; a decode step reads {step_bytes / 1e6:.0f} MB "
          f"(LoRA factors {lora_bytes / 1e6:.1f} MB)")
    print(f"decode {ms:.2f} ms/token = {gbs:.1f} GB/s = {100 * gbs / read:.0f} % of the compiled read "
          f"({read:.1f} GB/s)")
    tps = prompt_tok_s(model, prompt)
    print(f"prompt {tps:.0f} tokens/s ({prompt} tokens in one call) = {tps * ms / 1e3:.1f}x the decode rate")
    model.close()


def part_times(path: Path, omits: Sequence[Iterable[str]], steps: int, rounds: int) -> list[float]:
    """CPU ms of a decode step on one thread for the model compiled without each set of parts in `omits`."""
    variants = []
    for omit in omits:
        w = load_weights(path)
        w.spec = dataclasses.replace(w.spec, omit=frozenset(omit))
        variants.append(Model(w, 1))
    parts = [float("inf")] * len(variants)
    for _ in range(rounds):  # interleaved, the least of each: a busy moment does not land on one variant
        parts = [min(t, decode_ms(m, steps, time.process_time)) for t, m in zip(parts, variants, strict=True)]
    for m in variants:
        m.close()
    return parts


def compare(paths: Sequence[Path], threads: int | None, steps: int, rounds: int) -> None:
    """Decode ms/token of each file (wall, `threads`) and on one thread in CPU time, with the compiled read,
    interleaved over `rounds` (file A, file B, …, read; again): the best of each, as GB/s and % of the read."""
    models = [Model(load_weights(p), threads) for p in paths]
    singles = [Model(load_weights(p), 1) for p in paths]
    step_bytes = [bytes_per_decoded_token(m) for m in models]
    stream_sum(np.ones(STEP, np.float32))
    wall = [float("inf")] * len(paths)
    cpu = [float("inf")] * len(paths)
    read = 0.0
    for _ in range(rounds):
        for i, (m, s) in enumerate(zip(models, singles, strict=True)):
            wall[i] = min(wall[i], decode_ms(m, steps))
            cpu[i] = min(cpu[i], decode_ms(s, steps, time.process_time))
        read = max(read, stream_read_gbs(threads=models[0].threads))
    print(f"compiled read, {models[0].threads} threads: {read:.1f} GB/s (best of {rounds})")
    for p, b, w, c in zip(paths, step_bytes, wall, cpu, strict=True):
        print(f"{p.name}: {b / 1e6:.0f} MB/step; {models[0].threads} threads {w:.2f} ms/token = {b / w / 1e6:.1f} GB/s "
              f"= {100 * b / w / 1e6 / read:.0f} % of the read; 1 thread {c:.2f} ms CPU = {b / c / 1e6:.1f} GB/s")
    for m in models + singles:
        m.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    compare(args.models, args.threads, args.steps, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
