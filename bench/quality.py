"""Quantized quality against the official implementation: mean KL and top-1 agreement per format.

    python bench/quality.py [--reference bench/out/reference] [--name rwkv4-169m-random] [--steps 256]

Converts the reference checkpoint (made by tools/make_reference.py --shape 169m) to every type,
decodes the reference tokens one at a time and compares each step's softmax with the official
fp32 logits: mean KL(official ‖ ours), top-1 agreement and max |Δlogit| / max |logit|.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.convert import convert  # noqa: E402
from runtime.model.model import load_model  # noqa: E402
from tests.support.reference import load_reference  # noqa: E402

TYPES = ["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, default=ROOT / "bench/out/reference")
    ap.add_argument("--name", default="rwkv4-169m-random")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    ref = load_reference(args.name, args.reference)
    steps = min(args.steps, len(ref.tokens))
    want = _log_softmax(ref.logits_decode[:steps])
    print(f"{args.name}: {steps} decode steps against the official implementation (cpu fp32)")
    print(f"{'type':6} {'head':5} {'mean KL':>10} {'top-1':>7} {'max|Δ|/max':>11}")
    for t in args.types.split(","):
        path = ROOT / "bench/out" / f"{args.name}-{t}.gguf"
        if not path.exists():
            convert(ref.pth_path, path, t)
        with load_model(path) as model:
            state = model.new_state()
            got = np.empty((steps, model.n_vocab), np.float32)
            for i, tok in enumerate(ref.tokens[:steps]):
                got[i], state = model.forward([int(tok)], state)
            head = model.metadata.get("rwkv_tui.quant.head", "?")
        lg = _log_softmax(got)
        kl = (np.exp(want) * (want - lg)).sum(-1).mean()
        top1 = (got.argmax(-1) == ref.logits_decode[:steps].argmax(-1)).mean()
        rel = np.abs(got - ref.logits_decode[:steps]).max() / np.abs(ref.logits_decode[:steps]).max()
        print(f"{t:6} {head:5} {kl:10.2e} {top1:7.1%} {rel:11.2e}")


if __name__ == "__main__":
    main()
