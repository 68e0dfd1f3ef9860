"""Make a small rwkv.cpp `.bin` fixture with torch, the way rwkv.cpp's own converter does it.

Run by hand with torch installed (the test suite never imports this):

    cd /work/main && /work/refvenv/bin/python tools/make_rwkvcpp_fixture.py
        -> tests/fixtures/rwkvcpp/tiny-fp16.bin   (committed)

Input: tests/fixtures/reference/tiny.pth (a torch.save'd random RWKV-4, see tools/make_reference.py).
The conversion follows the semantics of python/convert_pytorch_to_ggml.py in github.com/RWKV/rwkv.cpp
(format version 101, "FP16"): tensors in state-dict order; every tensor taken as float32; `.time_`
tensors squeezed; `time_decay` replaced by -exp(time_decay); tensors of more than one dimension, other
than `.time_` ones, stored as float16; everything else float32. Header: six little-endian int32
(magic 0x67676d66, 101, n_vocab, n_embed, n_layer, 1 for FP16); per tensor: dim count, key length,
type (0 float32, 1 float16), dims reversed, key, data. It uses torch and struct only, so it shares no
code with tests/support/rwkvcpp_writer.py or the reader under test.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests/fixtures/reference/tiny.pth"
TARGET = ROOT / "tests/fixtures/rwkvcpp/tiny-fp16.bin"


def convert(state_dict: dict[str, torch.Tensor], out) -> None:
    emb = state_dict["emb.weight"]
    n_layer = 0
    while f"blocks.{n_layer}.ln1.weight" in state_dict:
        n_layer += 1
    out.write(struct.pack("<6i", 0x67676D66, 101, emb.shape[0], emb.shape[1], n_layer, 1))
    for name, value in state_dict.items():
        t = value.float()
        if ".time_" in name:
            t = t.squeeze()
        if ".time_decay" in name:
            t = -torch.exp(t)
        if t.dim() > 1 and ".time_" not in name:
            t = t.half()
        key = name.encode("utf-8")
        out.write(struct.pack("<3i", t.dim(), len(key), 1 if t.dtype == torch.float16 else 0))
        out.write(struct.pack(f"<{t.dim()}i", *reversed(t.shape)))
        out.write(key)
        out.write(t.contiguous().numpy().tobytes())


def main() -> None:
    state_dict = torch.load(SOURCE, map_location="cpu", weights_only=True)
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    with open(TARGET, "wb") as f:
        convert(state_dict, f)
    print(f"wrote {TARGET} ({TARGET.stat().st_size} bytes) from {SOURCE.name}")


if __name__ == "__main__":
    main()
