"""Whole-model decoding of several model files side by side: best ms/token (and weight GB/s) of
`--steps` greedy steps, files interleaved round by round, so a loaded machine slows them alike.

    python bench/decode_side_by_side.py /tmp/kq/m-q5_1.gguf /tmp/kq/m-q4_k.gguf --threads 1 --rounds 4

(`rwkv-tui bench` gives one file's full picture; this is for comparing files, e.g. the K-quant copies
bench/kquant_model.py writes.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.bench import bytes_per_decoded_token
from runtime.model.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args()
    models = {p: load_model(p, threads=args.threads) for p in args.models}
    best: dict[Path, float] = {}
    for _ in range(args.rounds):
        for path, model in models.items():
            logits, state = model.forward([1], model.new_state())
            t0 = time.perf_counter()
            for _ in range(args.steps):
                logits, state = model.forward([int(np.argmax(logits))], state)
            best[path] = min(best.get(path, float("inf")), (time.perf_counter() - t0) / args.steps)
    for path, seconds in best.items():
        weights = bytes_per_decoded_token(models[path])
        print(f"{path.name:40} {seconds * 1e3:7.1f} ms/token  {weights / seconds / 1e9:5.1f} GB/s of weights")


if __name__ == "__main__":
    main()
