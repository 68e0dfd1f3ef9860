"""Random RWKV state dicts (RWKV-4, RWKV-5.2, RWKV-6, RWKV-7) with BlinkDL's tensor names and shapes.

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


def v7_state_dict(
    n_layer: int = 2,
    n_embd: int = 128,
    head_size: int = 64,
    n_vocab: int = 256,
    ranks: tuple[int, int, int, int] = (24, 40, 16, 48),
    seed: int = 0,
    layer0_v: bool = False,
    dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """A random RWKV-7 checkpoint as BlinkDL's `.pth` files hold it (before any conversion).

    `ranks` are the LoRA ranks (Dw, Da, Dv, Dg), unlike any released model's on purpose, so a reader
    that takes them from a table instead of the shapes fails. `layer0_v` adds the unused
    `blocks.0.att.v0/v1/v2` some released files carry.
    """
    rng = np.random.default_rng(seed)
    C, F, N = n_embd, 4 * n_embd, head_size
    if C % N:
        raise ValueError("n_embd must be a multiple of head_size")
    H = C // N
    Dw, Da, Dv, Dg = ranks

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def vec(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, C).astype(np.float32)

    def row(lo: float, hi: float) -> np.ndarray:
        return vec(lo, hi).reshape(1, 1, C)

    sd: dict[str, np.ndarray] = {"emb.weight": (rng.standard_normal((n_vocab, C)) * 0.1).astype(np.float32)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:
            sd[p + "ln0.weight"] = vec(0.8, 1.2)
            sd[p + "ln0.bias"] = vec(-0.1, 0.1)
        for ln in ("ln1", "ln2"):
            sd[p + ln + ".weight"] = vec(0.8, 1.2)
            sd[p + ln + ".bias"] = vec(-0.1, 0.1)
        for m in ("r", "w", "k", "v", "a", "g"):
            sd[p + f"att.x_{m}"] = row(0.05, 0.95)
        sd[p + "att.w0"] = (np.linspace(-6.0, 1.0, C, dtype=np.float32) + vec(-0.3, 0.3)).reshape(1, 1, C)
        sd[p + "att.r_k"] = (rng.standard_normal((H, N)) * 0.3).astype(np.float32)
        sd[p + "att.w1"] = mat(C, Dw, 0.5)
        sd[p + "att.w2"] = mat(Dw, C, 0.5)
        sd[p + "att.a1"] = mat(C, Da, 0.5)
        sd[p + "att.a2"] = mat(Da, C, 0.5)
        sd[p + "att.a0"] = row(-0.5, 0.5)
        sd[p + "att.g1"] = mat(C, Dg, 0.5)
        sd[p + "att.g2"] = mat(Dg, C, 0.5)
        if i > 0 or layer0_v:
            sd[p + "att.v2"] = mat(Dv, C, 0.5)
            sd[p + "att.v1"] = mat(C, Dv, 0.5)
            sd[p + "att.v0"] = row(-0.5, 0.5)
        sd[p + "att.k_k"] = row(0.5, 1.0)
        sd[p + "att.k_a"] = row(0.5, 1.0)
        sd[p + "att.receptance.weight"] = mat(C, C, 1.0)
        sd[p + "att.key.weight"] = mat(C, C, 1.0)
        sd[p + "att.value.weight"] = mat(C, C, 1.0)
        sd[p + "att.output.weight"] = mat(C, C, 0.5)
        sd[p + "att.ln_x.weight"] = vec(0.5, 1.0)
        sd[p + "att.ln_x.bias"] = vec(-0.1, 0.1)
        sd[p + "ffn.x_k"] = row(0.05, 0.95)
        sd[p + "ffn.key.weight"] = mat(F, C, 1.0)
        sd[p + "ffn.value.weight"] = mat(C, F, 0.5)
    sd["ln_out.weight"] = vec(0.8, 1.2)
    sd["ln_out.bias"] = vec(-0.1, 0.1)
    sd["head.weight"] = mat(n_vocab, C, 1.0)
    if dtype != "float32":
        sd = {k: v.astype(dtype) for k, v in sd.items()}
    return sd


def v56_state_dict(
    version: str = "6",
    n_layer: int = 2,
    n_embd: int = 128,
    head_size: int = 64,
    n_vocab: int = 256,
    ranks: tuple[int, int] = (24, 40),
    n_ffn: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """A random RWKV-6 (`version` "6") or RWKV-5.2 ("5.2") checkpoint as BlinkDL's `.pth` files hold it.

    `ranks` are RWKV-6's LoRA ranks (D_mix of time_maa_w1/w2, D_decay of time_decay_w1/w2), unlike the
    released 32/64 on purpose, so a reader that takes them from a table instead of the shapes fails.
    The FFN is 3.5·C rounded down to 32 as in training, unless `n_ffn` says otherwise.
    """
    rng = np.random.default_rng(seed)
    C, N = n_embd, head_size
    F = n_ffn or int(3.5 * C) // 32 * 32
    if C % N:
        raise ValueError("n_embd must be a multiple of head_size")
    H = C // N
    dm, dd = ranks

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def vec(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, C).astype(np.float32)

    def row(lo: float, hi: float) -> np.ndarray:
        return vec(lo, hi).reshape(1, 1, C)

    mix = "time_maa" if version == "6" else "time_mix"
    sd: dict[str, np.ndarray] = {"emb.weight": (rng.standard_normal((n_vocab, C)) * 0.1).astype(np.float32)}
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:
            sd[p + "ln0.weight"] = vec(0.8, 1.2)
            sd[p + "ln0.bias"] = vec(-0.1, 0.1)
        for ln in ("ln1", "ln2"):
            sd[p + ln + ".weight"] = vec(0.8, 1.2)
            sd[p + ln + ".bias"] = vec(-0.1, 0.1)
        decay = np.linspace(-6.0, 1.0, C, dtype=np.float32) + vec(-0.3, 0.3)
        if version == "6":
            for m in ("x", "w", "k", "v", "r", "g"):
                sd[p + f"att.time_maa_{m}"] = row(0.05, 0.95)
            sd[p + "att.time_maa_w1"] = mat(C, 5 * dm, 0.5)
            sd[p + "att.time_maa_w2"] = (rng.standard_normal((5, dm, C)) * 0.5 / np.sqrt(dm)).astype(np.float32)
            sd[p + "att.time_decay"] = decay.reshape(1, 1, C)
            sd[p + "att.time_decay_w1"] = mat(C, dd, 0.5)
            sd[p + "att.time_decay_w2"] = mat(dd, C, 0.5)
        else:
            for m in ("k", "v", "r", "g"):
                sd[p + f"att.time_mix_{m}"] = row(0.05, 0.95)
            sd[p + "att.time_decay"] = decay.reshape(H, N)
        sd[p + "att.time_faaaa"] = (rng.standard_normal((H, N)) * 0.3).astype(np.float32)
        sd[p + "att.receptance.weight"] = mat(C, C, 1.0)
        sd[p + "att.key.weight"] = mat(C, C, 1.0)
        sd[p + "att.value.weight"] = mat(C, C, 1.0)
        sd[p + "att.output.weight"] = mat(C, C, 0.5)
        sd[p + "att.gate.weight"] = mat(C, C, 1.0)
        sd[p + "att.ln_x.weight"] = vec(0.5, 1.0)
        sd[p + "att.ln_x.bias"] = vec(-0.1, 0.1)
        sd[p + f"ffn.{mix}_k"] = row(0.05, 0.95)
        sd[p + f"ffn.{mix}_r"] = row(0.05, 0.95)
        sd[p + "ffn.key.weight"] = mat(F, C, 1.0)
        sd[p + "ffn.receptance.weight"] = mat(C, C, 1.0)
        sd[p + "ffn.value.weight"] = mat(C, F, 0.5)
    sd["ln_out.weight"] = vec(0.8, 1.2)
    sd["ln_out.bias"] = vec(-0.1, 0.1)
    sd["head.weight"] = mat(n_vocab, C, 1.0)
    if dtype != "float32":
        sd = {k: v.astype(dtype) for k, v in sd.items()}
    return sd
