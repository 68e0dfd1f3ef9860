"""Does a quantized head keep the logits close? KL, logit error and top-1 agreement per head type.

    python bench/head_quality.py [--tokens 64] [--reference DIR NAME]

Runs the float64 numpy oracle (tests/support/numpy_rwkv.py) over a reference fixture's tokens, keeps the
hidden vector after ln_out at every step, then compares logits = head @ h for the head in F32 against the
head quantized and decoded in F16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0 (everything else stays float).
Default fixture: bench/out/reference/rwkv4-169m-random if present, else tests/fixtures/reference/small.

Limits: the fixture's weights are random, so its logits are nearly flat (std ≈ 1) and its head has no
structure. Two synthetic variants bracket a trained head: "spread" (log-normal row scales and a few
outlier input channels, the pattern that hurts per-block scales) and "sharp" (the same, scaled so logits
have std ≈ 3 and a peaked softmax, where logit errors turn into KL). None of them is a trained model;
the hidden vectors also come from random weights.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.quant.codec import quantize, to_float32  # noqa: E402
from runtime.quant.types import DType  # noqa: E402
from tests.support import numpy_rwkv  # noqa: E402
from tests.support.reference import load_reference, read_pth_arrays  # noqa: E402

HEAD_TYPES = (DType.F16, DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0)
MATRIX_TYPE = DType.Q5_1


def _hidden_states(weights: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """(T, C) float64: ln_out(x) after each token, via the oracle with the head replaced by identity."""
    model = numpy_rwkv.prepare(weights)
    model.head = np.eye(model.n_embd)
    hidden, _ = numpy_rwkv.forward_each(model, [int(t) for t in tokens])
    return hidden.astype(np.float64)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _compare(head: np.ndarray, hidden: np.ndarray) -> list[tuple[str, float, float, float]]:
    ref = hidden @ head.astype(np.float64).T
    lp_ref = _log_softmax(ref)
    p_ref = np.exp(lp_ref)
    rows = []
    for t in HEAD_TYPES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            deq = to_float32(quantize(head, t), t).astype(np.float64)
        z = hidden @ deq.T
        kl = float(np.mean(np.sum(p_ref * (lp_ref - _log_softmax(z)), axis=-1)))
        rel = float(np.abs(z - ref).max() / np.abs(ref).max())
        top1 = float(np.mean(z.argmax(axis=-1) == ref.argmax(axis=-1)))
        rows.append((t.name, kl, rel, top1))
    return rows


def _variants(head: np.ndarray, hidden: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    V, C = head.shape
    spread = head * rng.lognormal(0.0, 0.5, (V, 1)).astype(np.float32)
    outliers = rng.choice(C, max(1, C // 100), replace=False)
    spread[:, outliers] *= 8.0  # a few hidden channels with large weights, as trained heads have
    logits_std = float((hidden @ spread.astype(np.float64).T).std())
    sharp = (spread * (3.0 / logits_std)).astype(np.float32)
    return {
        "random (as fixture)": head,
        "spread rows + outlier channels": spread,
        "spread, sharp (std 3)": sharp,
    }


def _bytes_per_token(n_layer: int, C: int, V: int, head: DType) -> tuple[int, int]:
    """(head bytes, all bytes read per token) with the layer matrices in MATRIX_TYPE."""
    matrices = n_layer * MATRIX_TYPE.nbytes((13 * C, C))  # att k, v, r, o: 4·C²; ffn k, v: 8·C²; ffn r: C²
    vectors = n_layer * 12 * C * 4 + 2 * C * 4  # ln, mixes, decay, first (f32), ln_out
    emb_row = C * 4
    head_bytes = head.nbytes((V, C))
    return head_bytes, matrices + vectors + emb_row + head_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reference", nargs=2, metavar=("DIR", "NAME"))
    args = ap.parse_args()
    if args.reference:
        directory, name = Path(args.reference[0]), args.reference[1]
    elif (ROOT / "bench/out/reference/rwkv4-169m-random.npz").is_file():
        directory, name = ROOT / "bench/out/reference", "rwkv4-169m-random"
    else:
        directory, name = ROOT / "tests/fixtures/reference", "small"
    ref = load_reference(name, directory)
    weights = read_pth_arrays(ref.pth_path)
    tokens = ref.tokens[: args.tokens]
    hidden = _hidden_states(weights, tokens)
    head = weights["head.weight"].astype(np.float32)
    V, C = head.shape
    oracle = hidden @ head.astype(np.float64).T
    official = ref.logits_decode[: len(tokens)]
    print(f"fixture {name}: L={ref.n_layer} C={C} V={V}, {len(tokens)} tokens")
    print(
        f"oracle vs official logits: max |Δ| {np.abs(oracle - official).max():.2e} "
        f"(max |logit| {np.abs(official).max():.2f}); logits std {oracle.std():.2f}"
    )
    print(f"\nper-token bytes with layer matrices in {MATRIX_TYPE.name} (L={ref.n_layer}, C={C}, V={V}):")
    for t in (DType.F32, *HEAD_TYPES):
        hb, total = _bytes_per_token(ref.n_layer, C, V, t)
        share = 100 * hb / total
        print(f"  head {t.name:5} {hb / 2**20:7.1f} MiB of {total / 2**20:7.1f} MiB = {share:4.1f} %")
    rng = np.random.default_rng(0)
    for label, h in _variants(head, hidden, rng).items():
        print(f"\nhead: {label}")
        print(f"  {'type':5} {'mean KL':>10} {'max|Δz|/max|z|':>15} {'top-1':>7}")
        for tname, kl, rel, top1 in _compare(h, hidden):
            print(f"  {tname:5} {kl:10.2e} {rel:15.2e} {100 * top1:6.1f}%")


if __name__ == "__main__":
    main()
