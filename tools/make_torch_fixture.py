"""Make the real-torch `.pth` fixtures in tests/fixtures/torch/ (run by hand; tests never need torch).

    /work/refvenv/bin/python tools/make_torch_fixture.py [--out tests/fixtures/torch]

Writes, with genuine `torch.save` (the committed files were made with torch 2.13.0+cpu, CPU build):

- tiny_{bf16,fp16,fp32}.pth: an OrderedDict state dict of a random RWKV-4 with BlinkDL's names and shapes
  (tests.support.synthetic.v4_state_dict, n_layer=2, n_vocab=64, seed=0; n_embd=16 rather than 32 to
  keep all fixtures under 300 KB), converted by torch to bfloat16 / float16 / float32.
  tiny_{...}.npz: every tensor's exact values after torch's conversion, as float32 (bf16 and fp16 widen
  exactly), so readers and our own bf16 rounding are checked against torch's.
- views.pth / views.npz: tensors that share one storage and start at storage_offset != 0 (row slices of
  a float32 and of a bfloat16 matrix), a size-1 dimension with an arbitrary stride (still contiguous in
  torch's sense), all of which a reader must accept.
- views_noncontig.pth: a transposed view (non-contiguous), which a reader must refuse by name.
- double.pth: a float64 tensor (DoubleStorage), which a reader must refuse by name and type.
- uint16.pth: a uint16 tensor, which torch 2.13 saves with `_rebuild_tensor_v3`, an UntypedStorage and
  `torch.uint16`; a reader must refuse it by name and type (not as an unsafe pickle).
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.synthetic import v4_state_dict  # noqa: E402

SHAPE = {"n_layer": 2, "n_embd": 16, "n_vocab": 64, "seed": 0}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _save(sd: OrderedDict, path: Path) -> None:
    torch.save(sd, path)
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size} bytes")


def _expected(sd: OrderedDict, path: Path) -> None:
    np.savez_compressed(path, **{k: v.float().numpy() for k, v in sd.items()})
    print(f"{path.name}: {path.stat().st_size} bytes")


def make_tiny(out: Path) -> None:
    base = v4_state_dict(**SHAPE)
    for tag, dtype in DTYPES.items():
        sd = OrderedDict((k, torch.from_numpy(v).to(dtype)) for k, v in base.items())
        _save(sd, out / f"tiny_{tag}.pth")
        _expected(sd, out / f"tiny_{tag}.npz")


def make_views(out: Path) -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 8, generator=g)
    half = torch.randn(3, 16, generator=g).to(torch.bfloat16)
    sd = OrderedDict()
    sd["base"] = base
    sd["rows_1_3"] = base[1:3]  # storage_offset 8, shares base's storage
    sd["row_3"] = base[3]  # storage_offset 24, 1-D
    sd["singleton"] = torch.as_strided(base, (1, 8), (100, 1), 16)  # size-1 dim with an odd stride
    sd["half_tail"] = half[2]  # bf16, storage_offset 32; its storage is not saved separately
    sd["half"] = half
    for k, v in sd.items():
        assert v.is_contiguous(), k
    assert sd["rows_1_3"].storage_offset() == 8 and sd["singleton"].stride() == (100, 1)
    _save(sd, out / "views.pth")
    _expected(sd, out / "views.npz")
    bad = OrderedDict(base=base, transposed=base.t())
    assert not bad["transposed"].is_contiguous()
    _save(bad, out / "views_noncontig.pth")
    _save(OrderedDict(weight=torch.arange(4, dtype=torch.float64)), out / "double.pth")
    _save(OrderedDict(counts=torch.arange(4).to(torch.uint16)), out / "uint16.pth")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "torch")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}")
    make_tiny(args.out)
    make_views(args.out)
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
