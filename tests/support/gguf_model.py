"""Write a runnable GGUF straight from a numpy state dict (BlinkDL names), for runtime tests.

It lays the file out as `rwkv-tui convert` does (ln0 folded into emb, time_* squeezed, time_decay
stored as -exp) but lets a test choose the folded embedding itself: the official implementation
folds ln0 in the checkpoint's dtype, so runtime tests use the exact embedding it used (`emb_ln0`
of a reference fixture) to compare the forward pass and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.formats.checkpoint import LN0_FOLDED, TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED
from runtime.formats.gguf_file import TensorPlan, write_gguf
from runtime.quant.codec import quantize
from runtime.quant.types import DType
from tests.support.numpy_rwkv import _ln as layer_norm


def write_model_gguf(
    path: Path, sd: dict[str, np.ndarray], matrices: DType, *, head: DType | None = None,
    emb: DType = DType.F32, emb_ln0: np.ndarray | None = None,
) -> Path:
    """Write `sd` (raw checkpoint values) as a GGUF with layer matrices of type `matrices`."""
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    V, C = sd["emb.weight"].shape
    if emb_ln0 is None:
        names = ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias")
        emb_ln0 = layer_norm(*(sd[k].astype(np.float64) for k in names)).astype(np.float32)
    arrays: dict[str, np.ndarray] = {"emb.weight": emb_ln0}
    for name, value in sd.items():
        if name.startswith(("emb.", "blocks.0.ln0.")):
            continue
        v = np.asarray(value, dtype=np.float32)
        if name.endswith("time_decay"):
            v = -np.exp(v.astype(np.float64)).astype(np.float32)
        arrays[name] = v.reshape(-1) if ".time_" in name else v
    plan = []
    for name, v in arrays.items():
        if name == "emb.weight":
            t = emb
        elif name == "head.weight":
            t = head or matrices
        else:
            t = matrices if v.ndim == 2 else DType.F32
        plan.append(TensorPlan(name, v.shape, t))
    metadata = [
        ("rwkv4.block_count", n_layer), ("rwkv4.embedding_length", C), ("rwkv4.vocab_size", V),
        ("rwkv_tui.transforms", [TIME_DECAY_NEG_EXP, TIME_MIX_SQUEEZED, LN0_FOLDED]),
    ]

    def chunks(t: TensorPlan):
        rows = arrays[t.name].reshape(-1, t.shape[-1])
        yield quantize(np.ascontiguousarray(rows, dtype=np.float32), t.dtype).tobytes()

    with open(path, "wb") as f:
        write_gguf(f, "rwkv4", metadata, plan, chunks)
    return path
