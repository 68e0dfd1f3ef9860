"""RWKV-7 decoding and prompt reading on random weights of a real shape, with a rough profile.

    python bench/rwkv7_profile.py --shape 0.4b --type q5_1 --dir /tmp/v7bench [--lora-type f16]
    python bench/rwkv7_profile.py --model bench/out/rwkv7-0.4b-q5_1.gguf     # any RWKV-7 file, e.g. convert's

Writes (once) a random RWKV-7 model as an rwkv.cpp `.bin` (fused lerps, transposed LoRA factors;
embedding and head F16, matrices in --type, LoRA factors in --lora-type or, by default, what `convert`
writes for --type: Q8_0 for a quantized type), or takes the file --model
names (e.g. `rwkv-tui convert`'s GGUF of bench/make_models.py's model: head Q8_0), then prints:
- decode ms/token (median of --steps) and the weight bytes a step reads, as GB/s and as a share of
  the compiled memory read `rwkv-tui bench` prints;
- prompt reading (one call of --prompt tokens) in tokens/s and its ratio to the decode rate;
- a rough profile of a decode step on one thread in CPU time (so other processes matter less): the
  same model compiled without the big matrices, then also without the LoRA factors, then also
  without the per-head work (decay, kk norm, WKV-7, GroupNorm); the differences are what each part
  costs (layer norms, mixes and the head are what remains); --rounds times in turn, the least kept.
Figures are noisy on a shared machine: run it when nothing else does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.step_profile import part_times, speed_report
from runtime.quant.codec import quantize
from runtime.quant.mixes import lora_factor_type, parse_target
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import CODES, header_bytes, record_bytes

SHAPES = {  # n_layer, n_embd, ranks (Dw, Da, Dv, Dg) of the released models
    "0.1b": (12, 768, (64, 64, 32, 128)),
    "0.4b": (24, 1024, (64, 64, 32, 128)),
    "1.5b": (24, 2048, (96, 96, 64, 256)),
}
VOCAB = 65536


def _encode(a: np.ndarray, dtype: DType) -> bytes:
    if dtype is DType.F32:
        return a.astype("<f4").tobytes()
    if dtype is DType.F16:
        return a.astype("<f2").tobytes()
    return quantize(a.reshape(-1, a.shape[-1]), dtype).tobytes()


def write_model(path: Path, shape: str, mat_type: DType, lora_type: DType | None) -> None:
    """The random model, LoRA factors in `lora_type`, or (None) in what `convert` writes for a file of
    `mat_type` matrices (mixes.lora_factor_type: Q8_0 in quantized files)."""
    n_layer, C, (dw, da, dv, dg) = SHAPES[shape]
    target = parse_target(mat_type.name.lower())
    F, N = 4 * C, 64
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(header_bytes(VOCAB, C, n_layer, CODES[DType.F16]))

        def put(name: str, a: np.ndarray, dtype: DType) -> None:
            f.write(record_bytes(name, a.shape, CODES[dtype], _encode(np.ascontiguousarray(a, np.float32), dtype)))

        def mat(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
            return rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale / np.sqrt(cols))

        def vec(lo: float, hi: float, shape3: bool = False) -> np.ndarray:
            v = rng.uniform(lo, hi, C).astype(np.float32)
            return v.reshape(1, 1, C) if shape3 else v

        put("emb.weight", rng.standard_normal((VOCAB, C), dtype=np.float32) * np.float32(0.1), DType.F16)
        for i in range(n_layer):
            p = f"blocks.{i}."
            for ln in ("ln1", "ln2") + (("ln0",) if i == 0 else ()):
                put(p + ln + ".weight", vec(0.8, 1.2), DType.F32)
                put(p + ln + ".bias", vec(-0.1, 0.1), DType.F32)
            put(p + "att.x_rwkvag", rng.uniform(0.05, 0.95, (6, 1, C)).astype(np.float32), DType.F32)
            for name, rows, cols in (("w1", dw, C), ("w2", C, dw), ("a1", da, C), ("a2", C, da), ("g1", dg, C),
                                     ("g2", C, dg)) + ((("v1", dv, C), ("v2", C, dv)) if i else ()):
                put(p + "att." + name, mat(rows, cols, 0.5), lora_type or lora_factor_type(target, cols))
            put(p + "att.w0", (np.linspace(-6, 1, C, dtype=np.float32)).reshape(1, 1, C), DType.F32)
            for name in ("a0", "v0") if i else ("a0",):
                put(p + "att." + name, vec(-0.5, 0.5, True), DType.F32)
            put(p + "att.k_k", vec(0.5, 1.0, True), DType.F32)
            put(p + "att.k_a", vec(0.5, 1.0, True), DType.F32)
            put(p + "att.r_k", rng.standard_normal((C // N, N)).astype(np.float32) * np.float32(0.3), DType.F32)
            for name in ("receptance", "key", "value"):
                put(p + f"att.{name}.weight", mat(C, C), mat_type)
            put(p + "att.output.weight", mat(C, C, 0.5), mat_type)
            put(p + "att.ln_x.weight", vec(0.5, 1.0), DType.F32)
            put(p + "att.ln_x.bias", vec(-0.1, 0.1), DType.F32)
            put(p + "ffn.x_k", vec(0.05, 0.95, True), DType.F32)
            put(p + "ffn.key.weight", mat(F, C), mat_type)
            put(p + "ffn.value.weight", mat(C, F, 0.5), mat_type)
        put("ln_out.weight", vec(0.8, 1.2), DType.F32)
        put("ln_out.bias", vec(-0.1, 0.1), DType.F32)
        put("head.weight", mat(VOCAB, C), DType.F16)
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.4b")
    ap.add_argument("--type", default="q5_1", help="type of the big matrices")
    ap.add_argument("--lora-type", default=None,
                    help="type of the LoRA factors (default: what convert writes: Q8_0 for quantized --type)")
    ap.add_argument("--dir", type=Path, help="where to write the model (not with --model)")
    ap.add_argument("--model", type=Path, help="profile this RWKV-7 file instead of writing one")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="profile rounds; each part's least time is kept")
    args = ap.parse_args()
    mat_type = DType.parse(args.type)
    lora_type = DType.parse(args.lora_type) if args.lora_type else None
    if (args.model is None) == (args.dir is None):
        ap.error("give --dir (a random model is written there) or --model FILE")
    lora_name = lora_type.name.lower() if lora_type else "as-convert"
    path = args.model or args.dir / f"rwkv7-{args.shape}-{mat_type.name.lower()}-lora-{lora_name}.bin"
    if args.model is None and not path.exists():
        args.dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_model(path, args.shape, mat_type, lora_type)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    speed_report(path, args.threads, args.steps, args.prompt, ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"))
    omits = ((), ("matrices",), ("matrices", "lora"), ("matrices", "lora", "heads"))
    parts = part_times(path, omits, args.steps, args.rounds)
    ms, rest, no_lora, base = parts
    print(f"profile of a decode step, 1 thread, CPU time ({ms:.2f} ms): big matrices {ms - rest:.2f} ms, LoRA factors "
          f"{rest - no_lora:.2f}, per-head work (decay, kk, WKV-7, GroupNorm, gate) {no_lora - base:.2f}, "
          f"the rest (layer norms, mixes, barriers, head) {base:.2f}; WKV-7 + LoRA + norms "
          f"{100 * (rest - base) / ms:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
