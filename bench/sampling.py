"""Benchmark choosing a token: our native sampler against a numpy version of the official algorithm.

    python bench/sampling.py [--tokens 200] [--repeats 5]

Per token, both sides do the same work as `rwkv.utils.PIPELINE.generate` with the official chat's
settings (temperature 1.0, top_p 0.3, presence/frequency penalty 0.4, decay 0.996): penalties for the
tokens generated so far, softmax, top-p, temperature, a draw, and the count update. The official
side is the numpy (CPU) branch of `sample_logits`: argsort of the whole vocabulary, cumsum, cutoff,
`np.random.choice`, with the penalty bookkeeping in Python dicts. Logits are synthetic but shaped
like a language model's (a Zipf-like spread of probabilities plus noise), cycled from a small pool.
Times are the best of several runs of `--tokens` tokens, in µs of this process's CPU time per token
(`time.process_time`: both sides are single-threaded, and CPU time stays meaningful on a busy
machine, where wall time does not). A second table times one native call (`Sampler.choose`, no
recording) for other settings and logit shapes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.text.sampling import Sampler, SamplingSettings

VOCABS = (50277, 65536)
POOL = 16


def lm_like_logits(n: int, seed: int) -> np.ndarray:
    """Logits whose softmax falls off like a Zipf law over a random order of the vocabulary."""
    rng = np.random.default_rng(seed)
    ranks = rng.permutation(n) + 1
    return (-1.2 * np.log(ranks) * 1.5 + rng.normal(0, 0.5, n)).astype(np.float32)


def official_numpy(pool: list[np.ndarray], tokens: int, settings: SamplingSettings, weights: np.ndarray,
                   seed: int) -> list[int]:
    """PIPELINE.generate's per-token sampling work, numpy branch."""
    np.random.seed(seed)
    occurrence: dict[int, float] = {}
    out = []
    for i in range(tokens):
        logits = pool[i % len(pool)].copy()
        for n in settings.banned_tokens:
            logits[n] = -np.inf
        for n in occurrence:
            logits[n] -= settings.presence_penalty + occurrence[n] * settings.frequency_penalty
        e = np.exp(logits - logits.max())
        probs = e / e.sum()
        sorted_ids = np.argsort(probs)
        sorted_probs = probs[sorted_ids][::-1]
        cumulative = np.cumsum(sorted_probs)
        cutoff = float(sorted_probs[np.argmax(cumulative >= settings.top_p)])
        probs[probs < cutoff] = 0
        if 0 < settings.top_k < len(probs):
            probs[sorted_ids[: -settings.top_k]] = 0
        if settings.temperature != 1.0:
            probs = probs ** (1.0 / settings.temperature)
        probs = probs / np.sum(probs)
        token = int(np.random.choice(a=len(probs), p=probs))
        for k in occurrence:
            occurrence[k] *= settings.penalty_decay
        occurrence[token] = occurrence.get(token, 0.0) + float(weights[token])
        out.append(token)
    return out


def ours(pool: list[np.ndarray], tokens: int, settings: SamplingSettings, weights: np.ndarray, seed: int) -> list[int]:
    sampler = Sampler(settings, len(pool[0]), weights, seed=seed)
    return [sampler.sample(pool[i % len(pool)]) for i in range(tokens)]


def best_per_token(fn: Callable[[], object], tokens: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / tokens * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    settings = SamplingSettings(temperature=1.0, top_p=0.3, presence_penalty=0.4, frequency_penalty=0.4,
                                penalty_decay=0.996)
    print(f"CPU µs per token, {args.tokens} tokens with penalties, best of {args.repeats}: T 1.0, top_p 0.3, "
          "penalties 0.4/0.4, decay 0.996")
    print(f"{'vocab':>6}  {'ours':>8}  {'numpy':>9}  {'ratio':>6}")
    for n in VOCABS:
        pool = [lm_like_logits(n, seed) for seed in range(POOL)]
        weights = np.ones(n, dtype=np.float32)
        ours(pool, 4, settings, weights, 0)  # compile / load the kernel
        t_ours = best_per_token(lambda p=pool, w=weights: ours(p, args.tokens, settings, w, 1), args.tokens,
                                args.repeats)
        t_np = best_per_token(lambda p=pool, w=weights: official_numpy(p, args.tokens, settings, w, 1), args.tokens,
                              max(2, args.repeats // 2))
        print(f"{n:>6}  {t_ours:>8.1f}  {t_np:>9.1f}  {t_np / t_ours:>5.0f}x")

    print("\none native call (Sampler.choose, no penalties), CPU µs, best of runs:")
    variants = {
        "T1 p0.3": SamplingSettings(top_p=0.3),
        "T1 p0.85": SamplingSettings(top_p=0.85),
        "T1.2 p0.5": SamplingSettings(temperature=1.2, top_p=0.5),
        "T1 p1": SamplingSettings(top_p=1.0),
        "T1 p1 k40": SamplingSettings(top_p=1.0, top_k=40),
        "greedy": SamplingSettings(temperature=0.0),
    }
    print(f"{'vocab':>6} {'logits':>8}  " + "  ".join(f"{k:>10}" for k in variants))
    for n in VOCABS:
        rng = np.random.default_rng(n)
        shapes = {
            "lm-like": lm_like_logits(n, 99),
            "normal3": (rng.standard_normal(n) * 3).astype(np.float32),
            "flat": (rng.standard_normal(n) * 0.1).astype(np.float32),
        }
        for shape, x in shapes.items():
            row = []
            for s in variants.values():
                sampler = Sampler(s, n, np.ones(n), seed=0)
                us = best_per_token(lambda sampler=sampler, x=x: [sampler.choose(x, 0.5) for _ in range(100)], 100,
                                    args.repeats)
                row.append(f"{us:>10.1f}")
            print(f"{n:>6} {shape:>8}  " + "  ".join(row))


if __name__ == "__main__":
    main()
