"""Write random-weight RWKV-4 or RWKV-7 models of real shapes as rwkv.cpp `.bin` files, for benchmarks.

    python bench/make_models.py --layers 24 --embd 2048 --types f16,q8_0,q5_1,q4_0 --dir /work/bench15b
    python bench/make_models.py --arch 7 --layers 24 --embd 2048 --types f16 --dir bench/out   # 1.5B-shaped v7
    python bench/make_models.py --arch 7 --layers 24 --embd 1024 --types f16 --dir bench/out   # 0.4B-shaped v7

One pass generates each tensor once (values scaled like a trained model's, see bench/convert.py for
RWKV-4 and `v7_shapes` here) and appends it to every requested file, laid out as rwkv.cpp's converter
and quantizer leave it: RWKV-4 with embedding and head in F16 (F32 for an F32 file), 1-D tensors in
F32, time_decay already -exp'd, the other matrices in the file's type; RWKV-7 as
tests/support/rwkvcpp_writer.py's `blinkdl_v7_to_rwkvcpp` says (lerps fused, LoRA factors transposed
and in float, head size 64, vocabulary 65536 by default, LoRA ranks those of the released model of
the width unless --ranks says). Our runtime reads these files directly; `rwkv-tui convert
model-f16.bin model.gguf --type q5_1` then gives our default conversion of the same weights.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.convert import shapes
from runtime.quant.codec import quantize
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import CODES, blinkdl_v7_to_rwkvcpp, header_bytes, record_bytes

V7_HEAD_SIZE = 64
V7_RANKS = {768: (64, 64, 32, 128), 1024: (64, 64, 32, 128), 2048: (96, 96, 64, 256)}  # released (Dw, Da, Dv, Dg)

Spec = dict[str, tuple[tuple[int, ...], float, float]]  # name → (shape, mean, spread)


def v7_shapes(n_layer: int, n_embd: int, n_vocab: int, ranks: tuple[int, int, int, int]) -> Spec:
    """name → (shape, mean, spread) for a RWKV-7 checkpoint, in BlinkDL's order and layout (LoRA (C, D)).

    Matrices spread as 1/√fan-in (the outputs' 0.5/√fan-in, so the residual grows slowly, as in
    RWKV-4's `shapes`); token-shift mixes around 0.3; w0 around −4 (decays spread like a trained
    model's, from nearly 0.55 to nearly 1 per token); k_k, k_a, ln_x around their trained values.
    Logits come out with a standard deviation near 1: nearly flat, like the RWKV-4 benchmark models.
    """
    C, F, N = n_embd, 4 * n_embd, V7_HEAD_SIZE
    Dw, Da, Dv, Dg = ranks
    out: Spec = {"emb.weight": ((n_vocab, C), 0.0, 0.1)}
    row = (1, 1, C)
    for i in range(n_layer):
        p = f"blocks.{i}."
        for ln in ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2"):
            out[p + ln + ".weight"] = ((C,), 1.0, 0.1)
            out[p + ln + ".bias"] = ((C,), 0.0, 0.05)
        for m in ("r", "w", "k", "v", "a", "g"):
            out[p + f"att.x_{m}"] = (row, 0.3, 0.2)
        out[p + "att.w0"] = (row, -4.0, 1.5)
        out[p + "att.r_k"] = ((C // N, N), 0.0, 0.1)
        out[p + "att.w1"] = ((C, Dw), 0.0, 0.5 / np.sqrt(C))
        out[p + "att.w2"] = ((Dw, C), 0.0, 0.5 / np.sqrt(Dw))
        out[p + "att.a1"] = ((C, Da), 0.0, 0.5 / np.sqrt(C))
        out[p + "att.a2"] = ((Da, C), 0.0, 0.5 / np.sqrt(Da))
        out[p + "att.a0"] = (row, 0.0, 0.5)
        out[p + "att.g1"] = ((C, Dg), 0.0, 0.5 / np.sqrt(C))
        out[p + "att.g2"] = ((Dg, C), 0.0, 1.0 / np.sqrt(Dg))
        if i > 0:
            out[p + "att.v2"] = ((Dv, C), 0.0, 0.5 / np.sqrt(Dv))
            out[p + "att.v1"] = ((C, Dv), 0.0, 0.5 / np.sqrt(C))
            out[p + "att.v0"] = (row, 0.0, 0.5)
        out[p + "att.k_k"] = (row, 0.85, 0.1)
        out[p + "att.k_a"] = (row, 1.0, 0.1)
        for m in ("receptance", "key", "value"):
            out[p + f"att.{m}.weight"] = ((C, C), 0.0, 1.0 / np.sqrt(C))
        out[p + "att.output.weight"] = ((C, C), 0.0, 0.5 / np.sqrt(C))
        out[p + "att.ln_x.weight"] = ((C,), 0.7, 0.2)
        out[p + "att.ln_x.bias"] = ((C,), 0.0, 0.05)
        out[p + "ffn.x_k"] = (row, 0.3, 0.2)
        out[p + "ffn.key.weight"] = ((F, C), 0.0, 1.0 / np.sqrt(C))
        out[p + "ffn.value.weight"] = ((C, F), 0.0, 0.5 / np.sqrt(F))
    out["ln_out.weight"] = ((C,), 1.0, 0.1)
    out["ln_out.bias"] = ((C,), 0.0, 0.05)
    out["head.weight"] = ((n_vocab, C), 0.0, 1.0 / np.sqrt(C))
    return out


def stored_type(name: str, ndim: int, file_type: DType) -> DType:
    """What rwkv.cpp stores an RWKV-4 tensor as in a file of `file_type`."""
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


def _generated(spec: Spec, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    for name, (shape, mean, spread) in spec.items():
        a = rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * np.float32(spread) + np.float32(mean)
        yield name, a.reshape(shape)


def _v4_tensors(args, rng) -> Iterator[dict[str, np.ndarray]]:
    """RWKV-4 tensors one at a time, as rwkv.cpp stores them before typing (time_ squeezed, decay -exp'd)."""
    for name, a in _generated(shapes(args.layers, args.embd, args.vocab), rng):
        if ".time_" in name:
            a = a.reshape(-1)
        if name.endswith(".time_decay"):
            a = -np.exp(a)
        yield {name: a}


def _v4_layout(group: dict[str, np.ndarray], file_type: DType) -> dict[str, tuple[np.ndarray, DType]]:
    return {n: (a, stored_type(n, a.ndim, file_type)) for n, a in group.items()}


def _v7_groups(args, ranks: tuple[int, int, int, int], rng) -> Iterator[dict[str, np.ndarray]]:
    """RWKV-7 tensors in groups (the embedding, each layer, the rest): a layer's lerps are fused together."""
    group: dict[str, np.ndarray] = {}
    prefix = None
    for name, a in _generated(v7_shapes(args.layers, args.embd, args.vocab, ranks), rng):
        p = name.split(".")[1] if name.startswith("blocks.") else name
        if group and p != prefix:
            yield group
            group = {}
        group[name], prefix = a, p
    yield group


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("4", "7"), default="4")
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--embd", type=int, required=True)
    ap.add_argument("--vocab", type=int, default=None, help="default 50277 (RWKV-4), 65536 (RWKV-7)")
    ap.add_argument("--ranks", default=None, help="RWKV-7 LoRA ranks Dw,Da,Dv,Dg (default: the released model's)")
    ap.add_argument("--types", default="f16,q8_0,q5_1,q4_0")
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args()
    args.vocab = args.vocab or (65536 if args.arch == "7" else 50277)
    types = [DType.parse(t) for t in args.types.split(",")]
    args.dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if args.arch == "7":
        if args.ranks is None and args.embd not in V7_RANKS:
            ap.error(f"no released RWKV-7 of width {args.embd} known here; give --ranks Dw,Da,Dv,Dg")
        ranks = tuple(int(r) for r in args.ranks.split(",")) if args.ranks else V7_RANKS[args.embd]
        groups, layout = _v7_groups(args, ranks, rng), blinkdl_v7_to_rwkvcpp
    else:
        groups, layout = _v4_tensors(args, rng), _v4_layout
    stem = f"rwkv{args.arch}-{args.layers}x{args.embd}"
    files = {t: open(args.dir / f"{stem}-{t.name.lower()}.bin.part", "wb") for t in types}  # noqa: SIM115
    for t, f in files.items():
        f.write(header_bytes(args.vocab, args.embd, args.layers, CODES[t]))
    for group in groups:
        for t, f in files.items():
            for name, (a, st) in layout(group, t).items():
                f.write(record_bytes(name, a.shape, CODES[st], encode(a, st)))
    for f in files.values():
        f.close()
        final = Path(f.name).with_suffix("")
        Path(f.name).rename(final)
        print(f"{final}  {final.stat().st_size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
