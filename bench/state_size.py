"""Size of a saved state per turn, raw and compressed, with encode/decode times, for real model shapes.

    python bench/state_size.py [--model PATH] [--turns 8] [--tokens 48] [--repeat 7]

169M (12 × 768): states from a real run of a model of that shape (`--model`, default the first
`bench/out/*169m*.gguf`; without one, a random-weight 12 × 768 model with a small vocabulary is
written to bench/out — the vocabulary does not change the state). The run feeds `--turns` turns
of `--tokens` random tokens and keeps the state after each turn.

1.5B (24 × 2048) and 7B (32 × 4096): synthesised. For each value of a bigger state, the sign and
exponent are drawn from the values of the same kind of row (att_xx, aa, bb, pp, ffn_xx) at the same
relative depth in the real 169M states, and the 23 mantissa bits are uniformly random. That keeps
what decides compressibility, the distribution of signs and exponents per kind of row and depth,
and leaves the mantissas as random as they are in real float32 states. (Drawing whole values
would repeat the 768 values of a 169M row many times over, which dictionary coders exploit: zlib
would then seem to reach 55 % on a "7B" state.)

For the real states the default codec is compared with the alternatives that were considered
(zlib and lzma on the raw bytes, lzma on byte-shuffled bytes).
"""

from __future__ import annotations

import argparse
import lzma
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.chat import state_codec  # noqa: E402
from runtime.model.model import load_model  # noqa: E402
from runtime.model.state import State  # noqa: E402

SHAPES = {"169M": (12, 768), "1.5B": (24, 2048), "7B": (32, 4096)}


def _default_model() -> Path:
    found = sorted((ROOT / "bench/out").glob("*169m*.gguf"))
    if found:
        return found[0]
    path = ROOT / "bench/out/state-size-169m.gguf"
    if not path.exists():
        from runtime.quant.types import DType
        from tests.support.gguf_model import write_model_gguf
        from tests.support.synthetic import v4_state_dict

        print(f"writing a random-weight 12 x 768 model to {path} …", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_model_gguf(path, v4_state_dict(12, 768, 2048, seed=1), DType.Q5_1)
    return path


def real_states(model_path: Path, turns: int, tokens: int) -> list[State]:
    rng = np.random.default_rng(0)
    with load_model(model_path) as model:
        if model.spec.state_shape != (5 * 12, 768):
            raise SystemExit(f"{model_path}: not a 12 x 768 model (state {model.spec.state_shape})")
        state = model.new_state()
        out = []
        for _ in range(turns):
            _, state = model.forward(rng.integers(0, model.n_vocab, tokens), state, want_logits=False)
            out.append(state)
    return out


def synthesise(real: list[State], n_layer: int, n_embd: int, seed: int) -> State:
    """A state of the given shape: sign and exponent from the same kind of row at the same depth, random mantissa."""
    rng = np.random.default_rng(seed)
    src = real[seed % len(real)].data.view(np.uint32)
    src_layers = src.shape[0] // 5
    bits = np.empty((5 * n_layer, n_embd), dtype=np.uint32)
    for layer in range(n_layer):
        s = round(layer * (src_layers - 1) / max(1, n_layer - 1))
        for kind in range(5):
            sign_exp = rng.choice(src[5 * s + kind], size=n_embd, replace=True) & np.uint32(0xFF800000)
            mantissa = rng.integers(0, 1 << 23, size=n_embd, dtype=np.uint32)
            bits[5 * layer + kind] = sign_exp | mantissa
    return State(bits.view(np.float32), real[0].fingerprint)


def _shuffle(raw: bytes) -> bytes:
    n4 = len(raw) - len(raw) % 4
    return b"".join(raw[i:n4:4] for i in range(4)) + raw[n4:]


def _time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(label: str, states: list[bytes], repeat: int, alternatives: bool) -> None:
    raw_size = len(states[0])
    codecs: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        f"{state_codec.DEFAULT_CODEC} (default)": (state_codec.encode, state_codec.decode),
    }
    if alternatives:
        codecs |= {
            "zlib-6": (lambda r: zlib.compress(r, 6), zlib.decompress),
            "lzma-6": (lambda r: lzma.compress(r, preset=6), lzma.decompress),
            "shuffle4+zlib-6": (lambda r: zlib.compress(_shuffle(r), 6), zlib.decompress),
            "shuffle4+lzma-6": (lambda r: lzma.compress(_shuffle(r), preset=6), lzma.decompress),
        }
    for name, (enc, dec) in codecs.items():
        sizes = [len(enc(r)) for r in states]
        blob = enc(states[-1])
        if name.endswith("(default)"):
            assert all(state_codec.decode(state_codec.encode(r)) == r for r in states)
        enc_ms = _time(lambda e=enc: e(states[-1]), repeat)
        dec_ms = _time(lambda d=dec, b=blob: d(b), repeat)
        mean = statistics.mean(sizes)
        print(f"{label:5s} {raw_size / 1024:9.1f} {name:26s} {mean / 1024:9.1f} {mean / raw_size:6.3f} "
              f"{enc_ms:8.2f} {dec_ms:8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a 12 x 768 model file (GGUF or rwkv.cpp .bin)")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    model = args.model or _default_model()
    print(f"169M states: real run of {model} ({args.turns} turns x {args.tokens} tokens); "
          "1.5B and 7B synthesised from them (see the docstring)")
    real = real_states(model, args.turns, args.tokens)
    print(f"{'shape':5s} {'raw KiB':>9s} {'codec':26s} {'KiB/turn':>9s} {'ratio':>6s} {'enc ms':>8s} {'dec ms':>8s}")
    measure("169M", [s.to_bytes() for s in real], args.repeat, alternatives=True)
    for label in ("1.5B", "7B"):
        n_layer, n_embd = SHAPES[label]
        states = [synthesise(real, n_layer, n_embd, seed).to_bytes() for seed in range(3)]
        measure(label, states, args.repeat, alternatives=label == "7B")


if __name__ == "__main__":
    main()
