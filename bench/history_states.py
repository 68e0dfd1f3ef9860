"""Decoding while earlier states are kept, as a reply is written (runtime/chat/conversation.py keeps the
last few token states to rewind to a stop string's start): fresh memory for every new state against the
memory of the state that leaves the history reused (Model.forward's `into`), and a plain loop.

    python bench/history_states.py MODEL [--threads 2] [--kept 11] [--rounds 4] [--steps 64]

Each round runs the three loops in turn over --steps tokens (the first --kept steps fill the history
and are not timed); printed: median ms/token per loop, wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.machine import cpu_name
from runtime.model.model import load_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kept", type=int, default=11, help="states kept (a reply keeps a stop string's bytes + 4)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args(argv)
    model = load_model(args.model, args.threads)
    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(0, model.n_vocab, args.steps)]
    times: dict[str, list[float]] = {"plain": [], "kept, fresh memory": [], "kept, memory reused": []}
    for _ in range(args.rounds):
        for loop in times:
            _, state = model.forward(tokens[:2])
            history: deque = deque(maxlen=args.kept)
            for i, tok in enumerate(tokens):
                t0 = time.perf_counter()
                into = None
                if loop != "plain":
                    dropped = history[0] if len(history) == history.maxlen else None
                    history.append(state)
                    into = dropped if loop.endswith("reused") else None
                _, state = model.forward([tok], state, into=into)
                if i >= args.kept:
                    times[loop].append(time.perf_counter() - t0)
    print(f"{args.model.name}, {cpu_name()}, {args.threads} thread(s), {args.kept} states kept "
          f"({model.new_state().data.nbytes / 1e6:.1f} MB each)")
    for loop, ts in times.items():
        print(f"  {loop:22s} median {1e3 * float(np.median(ts)):7.2f} ms/token")
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
