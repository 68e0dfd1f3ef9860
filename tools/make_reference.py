"""Record reference outputs of BlinkDL's official RWKV implementation for random RWKV-4/5.2/6/7 models.

Run by hand, with torch and the `rwkv` package (0.8.32) installed; the test suite never imports this:

    cd /work/main && /work/refvenv/bin/python tools/make_reference.py
        -> tests/fixtures/reference/{tiny,small}.{pth,npz}   (committed)
    cd /work/main && /work/refvenv/bin/python tools/make_reference.py --shape 169m --steps 256 \
        --out bench/out/reference
        -> bench/out/reference/rwkv4-169m-random.{pth,npz}   (not committed; also 430m, 1b5)
    cd /work/main && /work/venv-ref/bin/python tools/make_reference.py --arch 7
        -> tests/fixtures/reference/rwkv7-{a,b}.{pth,npz}   (committed)
    cd /work/main && /work/venv-ref/bin/python tools/make_reference.py --arch 6   (and --arch 5)
        -> tests/fixtures/reference/rwkv6-{a,b}.{pth,npz}, rwkv5-{a,b}.{pth,npz}   (committed)

RWKV-7 needs `RWKV_V7_ON=1` before `rwkv.model` is imported, after which the package can no longer
load RWKV-4 in that process: one architecture per run. Its models come from `v7_state_dict`, are saved
as float32 and loaded with `RWKV_x070(path without '.pth', 'cpu fp32')`. RWKV-5.2 and RWKV-6 models
come from `v56_state_dict` and run in the package's main class (RWKV_V7_ON unset), `cpu fp32` (so no
fp16 rescaling); their states are stored in rwkv-tui's layout as RWKV-7's are.

Each model is built with tests/support/synthetic.py `v4_state_dict` (BlinkDL's tensor names and
shapes), saved with `torch.save` as a `.pth`, loaded with `rwkv.model.RWKV(path, 'cpu fp32')`, and run
on a seeded sequence of token ids twice: one token per call (decode mode) and all tokens in one call
(sequence mode), both from a fresh state. docs/REFERENCE_FIXTURES.md describes the `.npz` it writes.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Must be set before rwkv.model is imported: it reads them at import time.
os.environ["RWKV_CUDA_ON"] = "0"  # no CUDA kernels (CPU strategy anyway)
for _var in ("RWKV_RESCALE_LAYER", "RWKV_V7_ON", "RWKV_DML_ON"):
    os.environ.pop(_var, None)  # no fp16 rescaling (0 for fp32 strategies anyway), v4 class, no DirectML

import numpy as np  # noqa: E402

from tests.support import numpy_rwkv  # noqa: E402
from tests.support.synthetic import v4_state_dict, v7_state_dict, v56_state_dict  # noqa: E402

FIXTURES = {
    # name: (n_layer, n_embd, n_vocab, model seed, storage dtype)
    "tiny": (2, 64, 320, 1, "float32"),
    "small": (3, 128, 512, 2, "bfloat16"),
}
V7_FIXTURES = {
    # name: (n_layer, n_embd, n_vocab, LoRA ranks (Dw, Da, Dv, Dg), model seed, layer-0 v0/v1/v2)
    # ranks unlike any released model's; rwkv7-a's are whole 32-value blocks, rwkv7-b's are not
    "rwkv7-a": (2, 64, 256, (32, 64, 32, 96), 3, False),
    "rwkv7-b": (2, 128, 320, (24, 40, 16, 48), 4, True),
}
V56_FIXTURES = {
    # name: (version, n_layer, n_embd, head size, n_vocab, RWKV-6 LoRA ranks (D_mix, D_decay), model seed)
    # ranks unlike the released 32/64; the -a ranks are whole 32-value blocks, the -b ones are not
    "rwkv6-a": ("6", 2, 128, 64, 256, (64, 32), 5),
    "rwkv6-b": ("6", 3, 96, 32, 320, (24, 40), 6),
    "rwkv5-a": ("5.2", 2, 128, 64, 256, (0, 0), 7),
    "rwkv5-b": ("5.2", 3, 96, 32, 320, (0, 0), 8),
}
SHAPES = {
    "169m": (12, 768),
    "430m": (24, 1024),
    "1b5": (24, 2048),
}
REAL_VOCAB = 50277
STRATEGY = "cpu fp32"


def save_pth(sd: dict[str, np.ndarray], path: Path, storage: str) -> None:
    """Save like BlinkDL's files: an OrderedDict of contiguous CPU tensors, in `storage` dtype."""
    import torch

    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[storage]
    out = collections.OrderedDict()
    for name, arr in sd.items():
        out[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(tdt).contiguous()
    # torch names the archive's inner folder after the file's stem, so write under the final name
    with tempfile.TemporaryDirectory(dir=path.parent) as tmpdir:
        tmp = Path(tmpdir) / path.name
        torch.save(out, tmp)
        tmp.replace(path)


def record(pth: Path, tokens: list[int]) -> dict[str, np.ndarray]:
    """Run the official model on `tokens` in decode and in sequence mode; return logits and states."""
    import torch
    from rwkv.model import RWKV

    torch.set_grad_enabled(False)
    model = RWKV(model=str(pth), strategy=STRATEGY, verbose=False)
    assert model.version == 4, model.version

    def state_array(state: list) -> np.ndarray:
        return np.stack([s.detach().float().cpu().numpy().copy() for s in state]).astype(np.float32)

    t0 = time.perf_counter()
    # The embedding as the package uses it: LN0 folded in at load, computed in the checkpoint's dtype.
    emb_ln0 = model.w["emb.weight"].detach().float().numpy().copy()

    state = None
    rows = []
    for tok in tokens:
        logits, state = model.forward([tok], state)
        rows.append(logits.detach().float().numpy().copy())
    state_decode = state_array(state)
    t_decode = time.perf_counter() - t0

    t0 = time.perf_counter()
    logits_seq, state = model.forward(list(tokens), None)
    t_seq = time.perf_counter() - t0
    print(f"  official: decode {t_decode / len(tokens) * 1e3:.2f} ms/token, sequence call {t_seq:.2f} s")
    return {
        "logits_decode": np.stack(rows).astype(np.float32),
        "state_decode": state_decode,
        "logits_seq": logits_seq.detach().float().numpy().copy().astype(np.float32),
        "state_seq": state_array(state),
        "emb_ln0": emb_ln0,
    }


def three_part_state(state: list) -> np.ndarray:
    """The package's v5/v6/v7 state (per layer att x_prev, the (H, N, N) matrix, ffn x_prev) in rwkv-tui's
    layout: per layer att x_prev, ffn x_prev, then the matrix as N rows of C."""
    rows = []
    for i in range(len(state) // 3):
        att, wkv, ffn = (s.detach().float().cpu().numpy() for s in state[3 * i : 3 * i + 3])
        rows += [att.reshape(1, -1), ffn.reshape(1, -1), wkv.reshape(-1, att.size)]
    return np.concatenate(rows).astype(np.float32)


def record_v7(pth: Path, tokens: list[int]) -> dict[str, np.ndarray]:
    """The official RWKV-7 on `tokens`: decode and sequence mode, states in rwkv-tui's layout."""
    import torch
    from rwkv.model import RWKV  # RWKV_x070, with RWKV_V7_ON=1 set before the import

    torch.set_grad_enabled(False)
    model = RWKV(model=str(pth.with_suffix("")), strategy=STRATEGY)
    assert type(model).__name__ == "RWKV_x070", type(model)
    return record_three_part(model, tokens)


def record_three_part(model, tokens: list[int]) -> dict[str, np.ndarray]:
    """Decode and sequence mode (every position) of a loaded v5/v6/v7 model, states in rwkv-tui's layout."""
    t0 = time.perf_counter()
    state = None
    out_rows = []
    for tok in tokens:
        logits, state = model.forward([tok], state)
        out_rows.append(logits.detach().float().numpy().copy())
    state_decode = three_part_state(state)
    t_decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits_all, state = model.forward(list(tokens), None, full_output=True)
    t_seq = time.perf_counter() - t0
    print(f"  official: decode {t_decode / len(tokens) * 1e3:.2f} ms/token, sequence call {t_seq:.2f} s")
    all_np = logits_all.detach().float().numpy().copy().astype(np.float32)
    return {
        "logits_decode": np.stack(out_rows).astype(np.float32),
        "state_decode": state_decode,
        "logits_seq_all": all_np,
        "logits_seq": all_np[-1].copy(),
        "state_seq": three_part_state(state),
    }


def make_v7(name: str, steps: int, out_dir: Path) -> None:
    n_layer, n_embd, n_vocab, ranks, seed, layer0_v = V7_FIXTURES[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    pth = out_dir / f"{name}.pth"
    print(f"{name}: n_layer={n_layer} n_embd={n_embd} n_vocab={n_vocab} ranks={ranks} seed={seed}")
    sd = v7_state_dict(n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, ranks=ranks, seed=seed, layer0_v=layer0_v)
    save_pth(sd, pth, "float32")
    token_seed = seed + 100
    tokens = [int(t) for t in np.random.default_rng(token_seed).integers(0, n_vocab, steps)]
    out = record_v7(pth, tokens)
    ld, ls = out["logits_decode"], out["logits_seq_all"]
    print(f"  decode vs sequence, all positions: logits rel {rel_max(ld, ls, ls):.3g}, "
          f"state rel {rel_max(out['state_decode'], out['state_seq'], out['state_seq']):.3g}")
    meta = {
        "tokens": np.array(tokens, dtype=np.int32), "n_layer": np.array(n_layer), "n_embd": np.array(n_embd),
        "n_vocab": np.array(n_vocab), "head_size": np.array(64), "ranks": np.array(ranks, dtype=np.int32),
        "layer0_v": np.array(layer0_v), "seed": np.array(seed), "token_seed": np.array(token_seed),
        "storage_dtype": np.array("float32"), **versions(),
    }
    npz = out_dir / f"{name}.npz"
    tmp = out_dir / f"{name}.part.npz"
    np.savez_compressed(tmp, **out, **meta)
    tmp.replace(npz)
    print(f"  wrote {pth} ({pth.stat().st_size:,} bytes), {npz} ({npz.stat().st_size:,} bytes)")


def make_v56(name: str, steps: int, out_dir: Path) -> None:
    version, n_layer, n_embd, head_size, n_vocab, ranks, seed = V56_FIXTURES[name]
    import torch
    from rwkv.model import RWKV

    out_dir.mkdir(parents=True, exist_ok=True)
    pth = out_dir / f"{name}.pth"
    print(f"{name}: RWKV-{version} n_layer={n_layer} n_embd={n_embd} head_size={head_size} ranks={ranks} seed={seed}")
    sd = v56_state_dict(version, n_layer=n_layer, n_embd=n_embd, head_size=head_size, n_vocab=n_vocab,
                        ranks=ranks, seed=seed)
    save_pth(sd, pth, "float32")
    torch.set_grad_enabled(False)
    model = RWKV(model=str(pth), strategy=STRATEGY, verbose=False)
    assert model.version == float(version), model.version
    token_seed = seed + 100
    tokens = [int(t) for t in np.random.default_rng(token_seed).integers(0, n_vocab, steps)]
    out = record_three_part(model, tokens)
    ld, ls = out["logits_decode"], out["logits_seq_all"]
    print(f"  decode vs sequence, all positions: logits rel {rel_max(ld, ls, ls):.3g}, "
          f"state rel {rel_max(out['state_decode'], out['state_seq'], out['state_seq']):.3g}")
    meta = {
        "tokens": np.array(tokens, dtype=np.int32), "version": np.array(version), "n_layer": np.array(n_layer),
        "n_embd": np.array(n_embd), "n_vocab": np.array(n_vocab), "head_size": np.array(head_size),
        "ranks": np.array(ranks, dtype=np.int32), "seed": np.array(seed), "token_seed": np.array(token_seed),
        "storage_dtype": np.array("float32"), **versions(),
    }
    npz = out_dir / f"{name}.npz"
    tmp = out_dir / f"{name}.part.npz"
    np.savez_compressed(tmp, **out, **meta)
    tmp.replace(npz)
    print(f"  wrote {pth} ({pth.stat().st_size:,} bytes), {npz} ({npz.stat().st_size:,} bytes)")


def rel_max(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(scale)))


def check(
    out: dict[str, np.ndarray], sd: dict[str, np.ndarray] | None, tokens: list[int], bf16: bool
) -> None:
    """Print how far decode and sequence mode are apart, and how far the numpy oracle is from both."""
    ld, ls = out["logits_decode"], out["logits_seq"]
    print(
        f"  decode[-1] vs seq: max|dlogit| {np.max(np.abs(ld[-1] - ls)):.3g} "
        f"(rel {rel_max(ld[-1], ls, ls):.3g}); max|dstate| rel "
        f"{state_rel(out['state_decode'], out['state_seq']):.3g}"
    )
    if sd is None:
        return
    base = numpy_rwkv.prepare(sd)  # LN0(emb) in float64, not rounded
    emb_own = base.emb
    official = out["emb_ln0"].astype(emb_own.dtype)
    print(f"  official emb_ln0 vs exact LN0(emb): max|d| {np.max(np.abs(official - emb_own)):.3g}")
    variants = {"numpy oracle, official emb_ln0": official}
    if bf16:
        rounded = numpy_rwkv.bf16_round(emb_own.astype(np.float32))
        variants["numpy oracle, own bf16-rounded LN0(emb)"] = rounded
    variants["numpy oracle, exact LN0(emb)"] = emb_own
    for tag, emb in variants.items():
        every, st = numpy_rwkv.forward_each(dataclasses.replace(base, emb=emb.astype(emb_own.dtype)), tokens)
        print(
            f"  {tag} vs official: decode logits rel {rel_max(every, ld, ld):.3g}, "
            f"seq logits rel {rel_max(every[-1], ls, ls):.3g}, "
            f"state rel {state_rel(st, out['state_decode']):.3g}"
        )


def state_rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a-b| per kind of state row (pp rows compared where finite), relative to max |b| of that kind."""
    worst = 0.0
    for j in range(5):
        x, y = a[j::5].astype(np.float64), b[j::5].astype(np.float64)
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
    return worst


def versions() -> dict[str, np.ndarray]:
    import importlib.metadata

    import torch

    return {
        "rwkv_version": np.array(importlib.metadata.version("rwkv")),
        "torch_version": np.array(torch.__version__),
        "jit": np.array(os.environ.get("RWKV_JIT_ON", "")),
        "strategy": np.array(STRATEGY),
    }


def make(
    name: str, n_layer: int, n_embd: int, n_vocab: int, seed: int, storage: str, steps: int, out_dir: Path,
    token_seed: int, compress: bool, oracle: bool, keep_emb: bool,
) -> None:
    assert n_embd % 32 == 0, "n_embd must be a multiple of 32"
    out_dir.mkdir(parents=True, exist_ok=True)
    pth = out_dir / f"{name}.pth"
    t0 = time.perf_counter()
    print(f"{name}: n_layer={n_layer} n_embd={n_embd} n_vocab={n_vocab} seed={seed} storage={storage}")
    sd = v4_state_dict(n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, seed=seed)
    save_pth(sd, pth, storage)
    print(f"  wrote {pth} ({pth.stat().st_size:,} bytes) in {time.perf_counter() - t0:.1f} s")
    if storage == "bfloat16":  # what the official package reads: weights rounded to bf16
        sd = {k: numpy_rwkv.bf16_round(v) for k, v in sd.items()}
    if not oracle:
        sd = None  # type: ignore[assignment]
    tokens = [int(t) for t in np.random.default_rng(token_seed).integers(0, n_vocab, steps)]
    out = record(pth, tokens)
    check(out, sd, tokens, storage == "bfloat16")
    meta = {
        "tokens": np.array(tokens, dtype=np.int32),
        "n_layer": np.array(n_layer),
        "n_embd": np.array(n_embd),
        "n_vocab": np.array(n_vocab),
        "seed": np.array(seed),
        "token_seed": np.array(token_seed),
        "storage_dtype": np.array(storage),
        **versions(),
    }
    if not keep_emb:
        del out["emb_ln0"]
    npz = out_dir / f"{name}.npz"
    tmp = out_dir / f"{name}.part.npz"
    (np.savez_compressed if compress else np.savez)(tmp, **out, **meta)
    tmp.replace(npz)
    print(f"  wrote {npz} ({npz.stat().st_size:,} bytes); total {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder")
    ap.add_argument("--arch", choices=["4", "5", "6", "7"], default="4",
                    help="architecture of the fixtures (one per run)")
    ap.add_argument("--only", choices=sorted(FIXTURES) + sorted(V7_FIXTURES) + sorted(V56_FIXTURES), action="append",
                    help="fixture(s) to make")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="a real-shape model (vocab 50277) instead")
    ap.add_argument("--steps", type=int, default=None, help="token count (64 for fixtures, 256 for --shape)")
    ap.add_argument("--storage", choices=["float32", "bfloat16", "float16"], default="bfloat16",
                    help="checkpoint dtype for --shape (official files are bfloat16)")
    ap.add_argument("--jit", choices=["0", "1"], default="1", help="RWKV_JIT_ON (the package's default is 1)")
    ap.add_argument("--no-oracle", action="store_true", help="skip the numpy oracle comparison")
    args = ap.parse_args(argv)

    os.environ["RWKV_JIT_ON"] = args.jit
    fixtures_of = {"4": FIXTURES, "7": V7_FIXTURES,
                   "6": {k: v for k, v in V56_FIXTURES.items() if v[0] == "6"},
                   "5": {k: v for k, v in V56_FIXTURES.items() if v[0] == "5.2"}}[args.arch]
    wrong = [n for n in args.only or () if n not in fixtures_of]
    if wrong:
        ap.error(f"{', '.join(wrong)} is not an RWKV-{args.arch} fixture (--arch)")
    if args.arch == "7":
        os.environ["RWKV_V7_ON"] = "1"  # before rwkv.model is imported (record_v7 imports it)
        out_dir = args.out or ROOT / "tests" / "fixtures" / "reference"
        for name in args.only or list(V7_FIXTURES):
            make_v7(name, steps=args.steps or 64, out_dir=out_dir)
        return 0
    if args.arch in ("5", "6"):
        out_dir = args.out or ROOT / "tests" / "fixtures" / "reference"
        for name in args.only or list(fixtures_of):
            make_v56(name, steps=args.steps or 64, out_dir=out_dir)
        return 0
    if args.shape:
        n_layer, n_embd = SHAPES[args.shape]
        out_dir = args.out or ROOT / "bench" / "out" / "reference"
        make(f"rwkv4-{args.shape}-random", n_layer, n_embd, REAL_VOCAB, seed=169, storage=args.storage,
             steps=args.steps or 256, out_dir=out_dir, token_seed=4, compress=False,
             oracle=not args.no_oracle and args.shape == "169m", keep_emb=False)
        return 0
    out_dir = args.out or ROOT / "tests" / "fixtures" / "reference"
    for name in args.only or list(FIXTURES):
        n_layer, n_embd, n_vocab, seed, storage = FIXTURES[name]
        make(name, n_layer, n_embd, n_vocab, seed, storage, steps=args.steps or 64, out_dir=out_dir,
             token_seed=seed + 100, compress=True, oracle=not args.no_oracle, keep_emb=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
