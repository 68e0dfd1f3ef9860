"""Write random-weight RWKV-4 models of real shapes as rwkv.cpp `.bin` files, for benchmarks.

    python bench/make_models.py --layers 24 --embd 2048 --types f16,q8_0,q5_1,q4_0 --dir /work/bench15b

One pass generates each tensor once (values scaled like a trained model's, see bench/convert.py)
and appends it to every requested file, laid out as rwkv.cpp's converter and quantizer leave it:
embedding and head in F16 (F32 for an F32 file), 1-D tensors in F32, time_decay already -exp'd, the
other matrices in the file's type. Our runtime reads these files directly; `rwkv-tui convert
model-f16.bin model.gguf --type q5_1` then gives our default conversion of the same weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.convert import shapes
from runtime.quant.codec import quantize
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import CODES, header_bytes, record_bytes


def stored_type(name: str, ndim: int, file_type: DType) -> DType:
    if ndim == 1 or ".time_" in name:
        return DType.F32
    float_type = DType.F32 if file_type is DType.F32 else DType.F16
    if name in ("emb.weight", "head.weight") or not file_type.is_quantized:
        return float_type
    return file_type


def encode(a: np.ndarray, dtype: DType) -> bytes:
    if dtype is DType.F32:
        return a.astype("<f4").tobytes()
    if dtype is DType.F16:
        return a.astype("<f2").tobytes()
    return quantize(a.reshape(-1, a.shape[-1]), dtype).tobytes()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--embd", type=int, required=True)
    ap.add_argument("--vocab", type=int, default=50277)
    ap.add_argument("--types", default="f16,q8_0,q5_1,q4_0")
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args()
    types = [DType.parse(t) for t in args.types.split(",")]
    args.dir.mkdir(parents=True, exist_ok=True)
    stem = f"rwkv4-{args.layers}x{args.embd}"
    files = {t: open(args.dir / f"{stem}-{t.name.lower()}.bin.part", "wb") for t in types}  # noqa: SIM115
    for t, f in files.items():
        f.write(header_bytes(args.vocab, args.embd, args.layers, CODES[t]))
    rng = np.random.default_rng(0)
    for name, (shape, mean, spread) in shapes(args.layers, args.embd, args.vocab).items():
        a = rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * np.float32(spread) + np.float32(mean)
        a = a.reshape(shape)
        if ".time_" in name:
            a = a.reshape(-1)
        if name.endswith(".time_decay"):
            a = -np.exp(a)
        for t, f in files.items():
            st = stored_type(name, a.ndim, t)
            f.write(record_bytes(name, a.shape, CODES[st], encode(a, st)))
    for f in files.values():
        f.close()
        final = Path(f.name).with_suffix("")
        Path(f.name).rename(final)
        print(f"{final}  {final.stat().st_size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
