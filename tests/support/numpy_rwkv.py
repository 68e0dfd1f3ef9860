"""A plain numpy RWKV-4 (RNN mode), used as the test oracle for the runtime.

It takes BlinkDL's unconverted weights (`.pth` names and shapes, e.g. `time_mix_k` shaped (1, 1, C),
raw `time_decay`) and a state in the official package's layout: a float32 array (5·n_layer, n_embd)
whose rows for layer i are

    [5i+0] att_xx (time-mix token shift: ln1 output of the previous token)
    [5i+1] aa     [5i+2] bb     [5i+3] pp   (WKV numerator, denominator, exponent)
    [5i+4] ffn_xx (channel-mix token shift: ln2 output of the previous token)

The equations are those of docs/REFERENCE.md, computed token by token (a sequence gives the same result
as feeding its tokens one at a time). Arithmetic is float64 by default, so the result is closer to the
exact value than any float32 implementation; logits and state are returned as float32.

    logits, state = forward(weights, tokens)            # fresh state
    logits, state = forward(weights, more, state)       # continue
    every, state = forward_each(weights, tokens)         # (T, V) logits after each token

The official package rounds `LN0(emb)` to bfloat16 when the checkpoint stores bfloat16 (it folds ln0
into the embedding in the checkpoint's dtype at load); `round_emb_to_bf16=True` reproduces that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PP_INIT = -1e30
LN_EPS = 1e-5


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), returned as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * w + b


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Layer:
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    mix_k: np.ndarray
    mix_v: np.ndarray
    mix_r: np.ndarray
    decay: np.ndarray  # w = -exp(time_decay)
    first: np.ndarray  # u = time_first
    wk: np.ndarray
    wv: np.ndarray
    wr: np.ndarray
    wo: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray
    fmix_k: np.ndarray
    fmix_r: np.ndarray
    fwk: np.ndarray
    fwr: np.ndarray
    fwv: np.ndarray


@dataclass
class Prepared:
    """Weights ready for the recurrence: ln0 folded into the embedding, decays as -exp, mixes flat."""

    emb: np.ndarray  # (V, C), LN0 already applied
    layers: list[Layer]
    ln_out_w: np.ndarray
    ln_out_b: np.ndarray
    head: np.ndarray  # (V, C)

    @property
    def n_layer(self) -> int:
        return len(self.layers)

    @property
    def n_embd(self) -> int:
        return int(self.emb.shape[1])

    @property
    def n_vocab(self) -> int:
        return int(self.emb.shape[0])


def prepare(
    weights: Mapping[str, np.ndarray],
    *,
    dtype: type = np.float64,
    round_emb_to_bf16: bool = False,
    emb_ln0: np.ndarray | None = None,
) -> Prepared:
    """Turn BlinkDL weights into a `Prepared` model (do it once when calling `forward` many times).

    `emb_ln0`, if given, is used as the already-normalised embedding instead of LN0(emb) (e.g. the
    official package's own, recorded in the fixtures); `round_emb_to_bf16` rounds LN0(emb) to bf16.
    """

    def g(name: str) -> np.ndarray:
        if name not in weights:
            raise KeyError(f"RWKV-4 weights lack tensor {name!r}")
        return np.asarray(weights[name], dtype=np.float32)

    def flat(name: str) -> np.ndarray:
        return g(name).reshape(-1).astype(dtype)

    n_layer = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    if emb_ln0 is not None:
        emb = np.asarray(emb_ln0, dtype=np.float32)
        if emb.shape != g("emb.weight").shape:
            raise ValueError(f"emb_ln0 shape {emb.shape} != emb.weight shape {g('emb.weight').shape}")
    else:
        emb = _ln(g("emb.weight").astype(np.float64), flat("blocks.0.ln0.weight"), flat("blocks.0.ln0.bias"))
        if round_emb_to_bf16:
            emb = bf16_round(emb.astype(np.float32))
    layers = []
    for i in range(n_layer):
        p = f"blocks.{i}."
        layers.append(
            Layer(
                ln1_w=flat(p + "ln1.weight"),
                ln1_b=flat(p + "ln1.bias"),
                mix_k=flat(p + "att.time_mix_k"),
                mix_v=flat(p + "att.time_mix_v"),
                mix_r=flat(p + "att.time_mix_r"),
                decay=-np.exp(flat(p + "att.time_decay")),
                first=flat(p + "att.time_first"),
                wk=g(p + "att.key.weight").astype(dtype),
                wv=g(p + "att.value.weight").astype(dtype),
                wr=g(p + "att.receptance.weight").astype(dtype),
                wo=g(p + "att.output.weight").astype(dtype),
                ln2_w=flat(p + "ln2.weight"),
                ln2_b=flat(p + "ln2.bias"),
                fmix_k=flat(p + "ffn.time_mix_k"),
                fmix_r=flat(p + "ffn.time_mix_r"),
                fwk=g(p + "ffn.key.weight").astype(dtype),
                fwr=g(p + "ffn.receptance.weight").astype(dtype),
                fwv=g(p + "ffn.value.weight").astype(dtype),
            )
        )
    return Prepared(
        emb=emb.astype(dtype),
        layers=layers,
        ln_out_w=flat("ln_out.weight"),
        ln_out_b=flat("ln_out.bias"),
        head=g("head.weight").astype(dtype),
    )


def new_state(n_layer: int, n_embd: int) -> np.ndarray:
    """A fresh state in the official layout: zeros, with pp = -1e30."""
    s = np.zeros((5 * n_layer, n_embd), dtype=np.float32)
    s[3::5] = PP_INIT
    return s


def _run(
    model: Prepared, tokens: Sequence[int], state: np.ndarray | None, every: bool
) -> tuple[np.ndarray, np.ndarray]:
    L, C, V = model.n_layer, model.n_embd, model.n_vocab
    if len(tokens) == 0:
        raise ValueError("no tokens")
    for t in tokens:
        if not 0 <= int(t) < V:
            raise ValueError(f"token id {t} outside the vocabulary (0..{V - 1})")
    if state is None:
        state = new_state(L, C)
    state = np.asarray(state)
    if state.shape != (5 * L, C):
        raise ValueError(f"state shape {state.shape} != {(5 * L, C)}")
    dt = model.emb.dtype
    s = state.astype(dt)  # a copy: the caller's state is never modified
    out = []
    for n, tok in enumerate(tokens):
        x = model.emb[int(tok)]
        for i, ly in enumerate(model.layers):
            att_xx, aa, bb, pp, ffn_xx = s[5 * i : 5 * i + 5]
            xa = _ln(x, ly.ln1_w, ly.ln1_b)
            xk = xa * ly.mix_k + att_xx * (1 - ly.mix_k)
            xv = xa * ly.mix_v + att_xx * (1 - ly.mix_v)
            xr = xa * ly.mix_r + att_xx * (1 - ly.mix_r)
            r = _sigmoid(ly.wr @ xr)
            k = ly.wk @ xk
            v = ly.wv @ xv
            ww = ly.first + k
            p = np.maximum(pp, ww)
            e1 = np.exp(pp - p)
            e2 = np.exp(ww - p)
            wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
            ww = pp + ly.decay
            p = np.maximum(ww, k)
            e1 = np.exp(ww - p)
            e2 = np.exp(k - p)
            new_aa = e1 * aa + e2 * v
            new_bb = e1 * bb + e2
            x = x + ly.wo @ (r * wkv)
            xf = _ln(x, ly.ln2_w, ly.ln2_b)
            fk = xf * ly.fmix_k + ffn_xx * (1 - ly.fmix_k)
            fr = xf * ly.fmix_r + ffn_xx * (1 - ly.fmix_r)
            kk = np.maximum(ly.fwk @ fk, 0.0) ** 2
            x = x + _sigmoid(ly.fwr @ fr) * (ly.fwv @ kk)
            s[5 * i + 0] = xa
            s[5 * i + 1] = new_aa
            s[5 * i + 2] = new_bb
            s[5 * i + 3] = p
            s[5 * i + 4] = xf
        if every or n == len(tokens) - 1:
            out.append(model.head @ _ln(x, model.ln_out_w, model.ln_out_b))
    logits = np.stack(out) if every else out[-1]
    return logits.astype(np.float32), s.astype(np.float32)


def _model(weights: Mapping[str, np.ndarray] | Prepared, round_emb_to_bf16: bool) -> Prepared:
    if isinstance(weights, Prepared):
        return weights
    return prepare(weights, round_emb_to_bf16=round_emb_to_bf16)


def forward(
    weights: Mapping[str, np.ndarray] | Prepared,
    tokens: Sequence[int],
    state: np.ndarray | None = None,
    *,
    round_emb_to_bf16: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (V,) after the last token and the new state (5L, C); `state` None means a fresh one."""
    return _run(_model(weights, round_emb_to_bf16), tokens, state, every=False)


def forward_each(
    weights: Mapping[str, np.ndarray] | Prepared,
    tokens: Sequence[int],
    state: np.ndarray | None = None,
    *,
    round_emb_to_bf16: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (T, V) after each token (as T one-token calls would give) and the final state."""
    return _run(_model(weights, round_emb_to_bf16), tokens, state, every=True)
