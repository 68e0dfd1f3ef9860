"""Write random-weight RWKV-4, -5.2, -6 or -7 models of real shapes as rwkv.cpp `.bin` files, for benchmarks.

    python bench/make_models.py --layers 24 --embd 2048 --types f16,q8_0,q5_1,q4_0 --dir /work/bench15b
    python bench/make_models.py --arch 7 --layers 24 --embd 2048 --types f16 --dir bench/out   # 1.5B-shaped v7
    python bench/make_models.py --arch 7 --layers 24 --embd 1024 --types f16 --dir bench/out   # 0.4B-shaped v7
    python bench/make_models.py --arch 6 --layers 24 --embd 2048 --types f32 --dir bench/out   # 1.5B-shaped v6
    python bench/make_models.py --arch 5 --layers 24 --embd 1024 --types f16 --dir bench/out   # 0.4B-shaped v5.2

One pass generates each tensor once (values scaled like a trained model's, see bench/convert.py for
RWKV-4 and `v7_shapes` here) and appends it to every requested file, laid out as rwkv.cpp's converter
and quantizer leave it: RWKV-4 with embedding and head in F16 (F32 for an F32 file), 1-D tensors in
F32, time_decay already -exp'd, the other matrices in the file's type; RWKV-7 as
tests/support/rwkvcpp_writer.py's `blinkdl_v7_to_rwkvcpp` says (lerps fused, LoRA factors transposed
and in float, head size 64, vocabulary 65536 by default, LoRA ranks those of the released model of
the width unless --ranks says); RWKV-6 and RWKV-5.2 as `blinkdl_v56_to_rwkvcpp` says (`.time_` tensors
squeezed and F32 in float files, LoRA factors transposed, head size 64, FFN int(3.5·C)//32·32, RWKV-6
LoRA ranks D_mix, D_decay those of the released models: 32, 64; 64, 128 at width 4096). Our runtime
reads these files directly; `rwkv-tui convert model-f16.bin model.gguf --type q5_1` then gives our
default conversion of the same weights.
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
from tests.support.rwkvcpp_writer import (
    CODES,
    blinkdl_v7_to_rwkvcpp,
    blinkdl_v56_to_rwkvcpp,
    header_bytes,
    record_bytes,
)

V7_HEAD_SIZE = 64
V7_RANKS = {768: (64, 64, 32, 128), 1024: (64, 64, 32, 128), 2048: (96, 96, 64, 256)}  # released (Dw, Da, Dv, Dg)
V56_HEAD_SIZE = 64


def v6_ranks(n_embd: int) -> tuple[int, int]:
    """RWKV-6's (D_mix, D_decay) of the released models: 32, 64, and 64, 128 at width 4096 (RWKV5-7.md §2)."""
    return (64, 128) if n_embd == 4096 else (32, 64)

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


def v56_shapes(version: str, n_layer: int, n_embd: int, n_vocab: int, ranks: tuple[int, int]) -> Spec:
    """name → (shape, mean, spread) for an RWKV-6 ("6") or RWKV-5.2 ("5.2") checkpoint, BlinkDL's layout.

    Scaled as `v7_shapes` (matrices 1/√fan-in, outputs 0.5/√fan-in); token-shift mixes around 0.3;
    time_decay around −4 (raw: w = exp(−exp(·)), 0.6 to nearly 1 per token); the bonus around 0.3.
    """
    C, N = n_embd, V56_HEAD_SIZE
    F = int(3.5 * C) // 32 * 32
    dm, dd = ranks
    v6 = version == "6"
    mix = "time_maa" if v6 else "time_mix"
    out: Spec = {"emb.weight": ((n_vocab, C), 0.0, 0.1)}
    row = (1, 1, C)
    for i in range(n_layer):
        p = f"blocks.{i}."
        for ln in ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2"):
            out[p + ln + ".weight"] = ((C,), 1.0, 0.1)
            out[p + ln + ".bias"] = ((C,), 0.0, 0.05)
        for m in ("x", "w", "k", "v", "r", "g") if v6 else ("k", "v", "r", "g"):
            out[p + f"att.{mix}_{m}"] = (row, 0.3, 0.2)
        if v6:
            out[p + "att.time_maa_w1"] = ((C, 5 * dm), 0.0, 0.5 / np.sqrt(C))
            out[p + "att.time_maa_w2"] = ((5, dm, C), 0.0, 0.5 / np.sqrt(dm))
            out[p + "att.time_decay"] = (row, -4.0, 1.5)
            out[p + "att.time_decay_w1"] = ((C, dd), 0.0, 0.5 / np.sqrt(C))
            out[p + "att.time_decay_w2"] = ((dd, C), 0.0, 0.5 / np.sqrt(dd))
        else:
            out[p + "att.time_decay"] = ((C // N, N), -4.0, 1.5)
        out[p + "att.time_faaaa"] = ((C // N, N), 0.3, 0.3)
        for m in ("receptance", "key", "value", "gate"):
            out[p + f"att.{m}.weight"] = ((C, C), 0.0, 1.0 / np.sqrt(C))
        out[p + "att.output.weight"] = ((C, C), 0.0, 0.5 / np.sqrt(C))
        out[p + "att.ln_x.weight"] = ((C,), 0.7, 0.2)
        out[p + "att.ln_x.bias"] = ((C,), 0.0, 0.05)
        out[p + f"ffn.{mix}_k"] = (row, 0.3, 0.2)
        out[p + f"ffn.{mix}_r"] = (row, 0.3, 0.2)
        out[p + "ffn.key.weight"] = ((F, C), 0.0, 1.0 / np.sqrt(C))
        out[p + "ffn.receptance.weight"] = ((C, C), 0.0, 1.0 / np.sqrt(C))
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


def _layer_groups(spec: Spec, rng) -> Iterator[dict[str, np.ndarray]]:
    """Tensors in groups (the embedding, each layer, the rest): a layer is converted together (RWKV-7's
    lerps are fused, RWKV-5.2's decay is shaped by its bonus)."""
    group: dict[str, np.ndarray] = {}
    prefix = None
    for name, a in _generated(spec, rng):
        p = name.split(".")[1] if name.startswith("blocks.") else name
        if group and p != prefix:
            yield group
            group = {}
        group[name], prefix = a, p
    yield group


def write_models(arch: str, layers: int, embd: int, types: list[DType], out_dir: Path, vocab: int | None = None,
                 ranks: tuple[int, ...] | None = None) -> list[Path]:
    """Write one random model of `arch` ("4", "5" = RWKV-5.2, "6", "7") per type into `out_dir`; their paths."""
    args = argparse.Namespace(layers=layers, embd=embd, vocab=vocab or (50277 if arch == "4" else 65536))
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if arch == "7":
        if ranks is None and embd not in V7_RANKS:
            raise ValueError(f"no released RWKV-7 of width {embd} known here; give its LoRA ranks")
        groups = _layer_groups(v7_shapes(layers, embd, args.vocab, ranks or V7_RANKS[embd]), rng)
        layout = blinkdl_v7_to_rwkvcpp
    elif arch in ("5", "6"):
        version = "6" if arch == "6" else "5.2"
        ranks6 = v6_ranks(embd) if version == "6" else (0, 0)
        groups = _layer_groups(v56_shapes(version, layers, embd, args.vocab, ranks6), rng)
        layout = blinkdl_v56_to_rwkvcpp
    else:
        groups, layout = _v4_tensors(args, rng), _v4_layout
    stem = f"rwkv{arch}-{layers}x{embd}"
    files = {t: open(out_dir / f"{stem}-{t.name.lower()}.bin.part", "wb") for t in types}  # noqa: SIM115
    for t, f in files.items():
        f.write(header_bytes(args.vocab, embd, layers, CODES[t]))
    for group in groups:
        for t, f in files.items():
            for name, (a, st) in layout(group, t).items():
                f.write(record_bytes(name, a.shape, CODES[st], encode(a, st)))
    paths = []
    for f in files.values():
        f.close()
        final = Path(f.name).with_suffix("")
        Path(f.name).rename(final)
        paths.append(final)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("4", "5", "6", "7"), default="4", help="5: RWKV-5.2")
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--embd", type=int, required=True)
    ap.add_argument("--vocab", type=int, default=None, help="default 50277 (RWKV-4), 65536 (RWKV-5/6/7)")
    ap.add_argument("--ranks", default=None, help="RWKV-7 LoRA ranks Dw,Da,Dv,Dg (default: the released model's)")
    ap.add_argument("--types", default="f16,q8_0,q5_1,q4_0")
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args()
    ranks = tuple(int(r) for r in args.ranks.split(",")) if args.ranks else None
    try:
        paths = write_models(args.arch, args.layers, args.embd, [DType.parse(t) for t in args.types.split(",")],
                             args.dir, args.vocab, ranks)
    except ValueError as e:
        ap.error(str(e))
    for path in paths:
        print(f"{path}  {path.stat().st_size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
