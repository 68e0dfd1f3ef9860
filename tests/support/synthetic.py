"""Random RWKV-4 state dicts with BlinkDL's tensor names and shapes.

The values are scaled like a trained model's (small matrices, decays spread over channels) so the
forward pass neither explodes nor saturates, which keeps comparisons between implementations
meaningful.
"""

from __future__ import annotations

import numpy as np


def v4_state_dict(
    n_layer: int = 2, n_embd: int = 64, n_vocab: int = 256, seed: int = 0, dtype: str = "float32"
) -> dict[str, np.ndarray]:
    """A random RWKV-4 checkpoint as BlinkDL's `.pth` files hold it (before any conversion)."""
    rng = np.random.default_rng(seed)
    C, F = n_embd, 4 * n_embd

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def vec(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, C).astype(np.float32)

    sd: dict[str, np.ndarray] = {"emb.weight": (rng.standard_normal((n_vocab, C)) * 0.1).astype(np.float32)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:
            sd[p + "ln0.weight"] = vec(0.8, 1.2)
            sd[p + "ln0.bias"] = vec(-0.1, 0.1)
        for ln in ("ln1", "ln2"):
            sd[p + ln + ".weight"] = vec(0.8, 1.2)
            sd[p + ln + ".bias"] = vec(-0.1, 0.1)
        sd[p + "att.time_decay"] = np.linspace(-4.0, 1.5, C, dtype=np.float32) + vec(-0.3, 0.3)
        sd[p + "att.time_first"] = vec(-0.5, 1.0)
        for m in ("k", "v", "r"):
            sd[p + f"att.time_mix_{m}"] = vec(0.1, 0.9).reshape(1, 1, C)
        sd[p + "att.key.weight"] = mat(C, C, 1.0)
        sd[p + "att.value.weight"] = mat(C, C, 1.0)
        sd[p + "att.receptance.weight"] = mat(C, C, 1.0)
        sd[p + "att.output.weight"] = mat(C, C, 0.5)
        sd[p + "ffn.time_mix_k"] = vec(0.1, 0.9).reshape(1, 1, C)
        sd[p + "ffn.time_mix_r"] = vec(0.1, 0.9).reshape(1, 1, C)
        sd[p + "ffn.key.weight"] = mat(F, C, 1.0)
        sd[p + "ffn.receptance.weight"] = mat(C, C, 1.0)
        sd[p + "ffn.value.weight"] = mat(C, F, 0.5)
    sd["ln_out.weight"] = vec(0.8, 1.2)
    sd["ln_out.bias"] = vec(-0.1, 0.1)
    sd["head.weight"] = mat(n_vocab, C, 1.0)
    if dtype != "float32":
        sd = {k: v.astype(dtype) for k, v in sd.items()}
    return sd
