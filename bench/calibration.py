"""Calibrated against uncalibrated quantization on rwkv.cpp's tiny trained models: mean KL from the
float32 source and file size, measured with the numpy forward pass over the dequantized weights
(runtime.quant.forward_np), since the native kernels for K-quant files come from another branch.

    python bench/calibration.py [--calib docs/ARCHITECTURE.md] [--eval README.md] [--tokens 1024]
                                [--types q4_k_m,q3_k] [--models 7,5,6]

Calibration reads --calib; KL is measured on --eval (another text), byte tokens (these models have
a vocabulary of 256 bytes). The rwkv.cpp files are 12 × 64 (RWKV-7, RWKV-5.2) and 12 × 128 (RWKV-6),
so most of their rows are not a multiple of 256 and take ggml's fallback types (Q4_K→Q5_0,
Q3_K→Q4_0); `inspect` on the written files shows which tensors got which type.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.convert import convert  # noqa: E402
from runtime.eval.metrics import Scores  # noqa: E402
from runtime.formats.checkpoint import open_checkpoint  # noqa: E402
from runtime.quant.forward_np import logits  # noqa: E402

TINY = ROOT / "tests" / "fixtures" / "rwkvcpp"
MODELS = {
    "7": TINY / "tiny7" / "tiny-rwkv-7v0-834K-FP32.bin",
    "5": TINY / "tiny56" / "tiny-rwkv-5v2-730K-FP32.bin",
    "6": TINY / "tiny56" / "tiny-rwkv-6v0-3m-Q5_1.bin",  # no float file: its dequantized Q5_1 is the reference
}


def _kl(path: Path, tokens: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    got = logits(open_checkpoint(path), tokens)
    s = Scores()
    s.add(got[:-1], tokens[1:], ref[:-1])
    return s.kl_mean, s.kl_p99, s.top1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", default=str(ROOT / "docs" / "ARCHITECTURE.md"))
    ap.add_argument("--eval", default=str(ROOT / "README.md"))
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--types", default="q4_k_m,q3_k")
    ap.add_argument("--models", default="7,5,6")
    args = ap.parse_args()
    tokens = np.frombuffer(Path(args.eval).read_bytes()[: args.tokens], np.uint8).astype(np.int64)
    print(f"calibration text {Path(args.calib).name}, KL on {len(tokens)} bytes of {Path(args.eval).name}")
    print(f"{'model':8} {'type':8} {'size':>9} {'KL plain':>10} {'KL calib':>10} {'ratio':>6} "
          f"{'p99 plain':>10} {'p99 calib':>10} {'top1 p/c':>11} {'calib s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.models.split(","):
            src = MODELS[m]
            ref = logits(open_checkpoint(src), tokens)
            for t in args.types.split(","):
                plain, cal = Path(tmp) / f"{m}-{t}.gguf", Path(tmp) / f"{m}-{t}-cal.gguf"
                convert(src, plain, t)
                t0 = time.perf_counter()
                convert(src, cal, t, calibrate=args.calib)
                secs = time.perf_counter() - t0
                # same tensors and types: only the header differs (the calibration keys)
                assert open_checkpoint(plain).tensor_bytes == open_checkpoint(cal).tensor_bytes
                kp, pp, tp = _kl(plain, tokens, ref)
                kc, pc, tc = _kl(cal, tokens, ref)
                print(f"v{m:7} {t:8} {plain.stat().st_size:9d} {kp:10.3e} {kc:10.3e} {kc / kp:6.2f} "
                      f"{pp:10.3e} {pc:10.3e} {tp:5.3f}/{tc:5.3f} {secs:7.1f}", flush=True)


if __name__ == "__main__":
    main()
