"""RWKV-6 (or RWKV-5.2) decoding and prompt reading on random weights of a real shape, with a rough profile.

    python bench/rwkv6_profile.py --shape 0.4b --type q5_1 --dir /tmp/v6bench
    python bench/rwkv6_profile.py --model model.gguf          # any RWKV-6 or RWKV-5.2 file

Writes (once) a random RWKV-6 model with bench/make_models.py (an rwkv.cpp F16 file) and converts it
with `rwkv-tui convert` to --type (our default layout: LoRA factors F16, head Q8_0 unless F16/F32),
or takes the file --model names, then prints (bench/step_profile.py):
- decode ms/token (median of --steps) and the weight bytes a step reads, as GB/s and as a share of
  the compiled memory read `rwkv-tui bench` prints;
- prompt reading (one call of --prompt tokens) in tokens/s and its ratio to the decode rate;
- a rough profile of a decode step on one thread in CPU time: the model compiled without the big
  matrices, then also without the four LoRA products, then also without the rest of the
  data-dependent token shift and decay (tanh, the five mixes, exp(−exp)), then also without the
  per-head work (silu(g), WKV, GroupNorm·gate); the differences are what each part costs (layer
  norms, the fixed mixes, barriers and the head are what remains). RWKV-5.2 files have no LoRA or
  data-dependent parts (their rows read 0).
Figures are noisy on a shared machine: run it when nothing else does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.make_models import write_models
from bench.step_profile import part_times, speed_report
from runtime.convert import convert
from runtime.quant.types import DType

SHAPES = {"0.1b": (12, 768), "0.4b": (24, 1024), "1.5b": (24, 2048)}  # n_layer, n_embd (RWKV-5/6 World)
LORA = ("time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2")


def random_model(out_dir: Path, shape: str, dtype: DType) -> Path:
    """bench/make_models.py's RWKV-6 of `shape` converted to `dtype` (both written once, then reused)."""
    n_layer, n_embd = SHAPES[shape]
    path = out_dir / f"rwkv6-{shape}-{dtype.name.lower()}.gguf"
    if path.exists():
        return path
    source = out_dir / f"rwkv6-{n_layer}x{n_embd}-f16.bin"
    t0 = time.perf_counter()
    if not source.exists():
        write_models("6", n_layer, n_embd, [DType.F16], out_dir)
    convert(source, path, dtype)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.4b")
    ap.add_argument("--type", default="q5_1", help="type of the big matrices")
    ap.add_argument("--dir", type=Path, help="where to write the model (not with --model)")
    ap.add_argument("--model", type=Path, help="profile this RWKV-6 or RWKV-5.2 file instead of writing one")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="profile rounds; each part's least time is kept")
    ap.add_argument("--no-profile", action="store_true", help="decode and prompt figures only")
    args = ap.parse_args()
    if (args.model is None) == (args.dir is None):
        ap.error("give --dir (a random model is written there) or --model FILE")
    path = args.model or random_model(args.dir, args.shape, DType.parse(args.type))
    speed_report(path, args.threads, args.steps, args.prompt, LORA)
    if args.no_profile:
        return 0
    omits = ((), ("matrices",), ("matrices", "lora"), ("matrices", "lora", "ddlerp"),
             ("matrices", "lora", "ddlerp", "heads"))
    ms, no_big, no_lora, no_ddlerp, base = part_times(path, omits, args.steps, args.rounds)
    print(f"profile of a decode step, 1 thread, CPU time ({ms:.2f} ms): big matrices {ms - no_big:.2f} ms, "
          f"LoRA products {no_big - no_lora:.2f}, the rest of the token shift and decay (tanh, mixes, "
          f"exp(-exp)) {no_lora - no_ddlerp:.2f}, per-head work (silu, WKV, GroupNorm, gate) "
          f"{no_ddlerp - base:.2f}, the rest (layer norms, fixed mixes, barriers, head) {base:.2f}")
    print(f"data-dependent token shift and decay {100 * (no_big - no_ddlerp) / ms:.1f} % of the step; "
          f"with the per-head work {100 * (no_big - base) / ms:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
