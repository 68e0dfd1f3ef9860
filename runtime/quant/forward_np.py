"""A plain numpy forward pass over a whole token sequence, for calibration (runtime.quant.calibrate) and
quality measurements over dequantized weights: RWKV-4, RWKV-5.2, RWKV-6 and RWKV-7, float32.

Not the runtime's decoder: it runs layer after layer over all the tokens at once (one matrix product
per weight for the whole sequence, the recurrences token by token), reads each layer's weights when it
gets to it (so a model never has to fit in memory as float32), and can report the input of every
matrix product through `record(name, rows)` (the BlinkDL name of the weight, rows (T, n_in)). The
equations are those of /work/shared/RWKV5-7.md §1 and docs/REFERENCE.md (RWKV-4), with the official
package's GroupNorm epsilon 64e-5; each checkpoint's `transforms` say which load-time transforms its
tensors already carry. The state starts at zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from runtime.formats.checkpoint import (
    LN0_FOLDED,
    TIME_DECAY_NEG_EXP,
    V5_DECAY_EXP,
    V6_LORA_TRANSPOSED,
    V7_LORA_TRANSPOSED,
    Checkpoint,
)
from runtime.progress import CancelToken

Record = Callable[[str, np.ndarray], None]
LN_EPS = 1e-5
GN_EPS = 64e-5
_F32 = np.float32


class _Source(Protocol):
    def get(self, name: str) -> np.ndarray: ...


class CheckpointWeights:
    """float32 arrays of a checkpoint's tensors by BlinkDL name, read when asked for."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt

    def get(self, name: str) -> np.ndarray:
        return np.asarray(self.ckpt.tensors[name].numpy(), dtype=_F32)

    def has(self, name: str) -> bool:
        return name in self.ckpt.tensors


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = LN_EPS) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    c = x - mu
    var = (c * c).mean(axis=-1, keepdims=True)
    return (c / np.sqrt(var + _F32(eps)) * w + b).astype(_F32)


def _group_norm(y: np.ndarray, n_head: int, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    t, c = y.shape
    g = y.reshape(t, n_head, c // n_head)
    return (_ln(g, 1, 0, GN_EPS).reshape(t, c) * w + b).astype(_F32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-x))).astype(_F32)


def _shift(x: np.ndarray) -> np.ndarray:
    """The previous token's rows (zeros before the first)."""
    prev = np.empty_like(x)
    prev[0] = 0
    prev[1:] = x[:-1]
    return prev


class _Layer:
    """Weights of one layer by leaf name, flattened vectors, matrix products that record their input."""

    def __init__(self, weights: _Source, prefix: str, record: Record | None) -> None:
        self.w, self.p, self.record = weights, prefix, record

    def vec(self, leaf: str) -> np.ndarray:
        return self.w.get(self.p + leaf).reshape(-1)

    def mat(self, leaf: str) -> np.ndarray:
        return self.w.get(self.p + leaf)

    def linear(self, leaf: str, x: np.ndarray) -> np.ndarray:
        if self.record is not None:
            self.record(self.p + leaf, x)
        return (x @ self.w.get(self.p + leaf).T).astype(_F32)


def _channel_mix(lay: _Layer, x: np.ndarray, v7: bool, v6: bool) -> np.ndarray:
    xb = _ln(x, lay.vec("ln2.weight"), lay.vec("ln2.bias"))
    prev = _shift(xb)
    if v7:
        k = xb + (prev - xb) * lay.vec("ffn.x_k")
        h = np.square(np.maximum(lay.linear("ffn.key.weight", k), 0))
        return lay.linear("ffn.value.weight", h)
    if v6:
        sx = prev - xb
        xk, xr = xb + sx * lay.vec("ffn.time_maa_k"), xb + sx * lay.vec("ffn.time_maa_r")
    else:
        mk, mr = lay.vec("ffn.time_mix_k"), lay.vec("ffn.time_mix_r")
        xk, xr = xb * mk + prev * (1 - mk), xb * mr + prev * (1 - mr)
    r = _sigmoid(lay.linear("ffn.receptance.weight", xr))
    h = np.square(np.maximum(lay.linear("ffn.key.weight", xk), 0))
    return r * lay.linear("ffn.value.weight", h)


def _time_mix_v4(lay: _Layer, xa: np.ndarray, neg_exp_done: bool) -> np.ndarray:
    prev = _shift(xa)
    mix = {m: lay.vec(f"att.time_mix_{m}") for m in "kvr"}
    xk, xv, xr = (xa * mix[m] + prev * (1 - mix[m]) for m in "kvr")
    r = _sigmoid(lay.linear("att.receptance.weight", xr))
    k = lay.linear("att.key.weight", xk).astype(np.float64)
    v = lay.linear("att.value.weight", xv).astype(np.float64)
    decay = lay.vec("att.time_decay").astype(np.float64)
    w = decay if neg_exp_done else -np.exp(decay)
    u = lay.vec("att.time_first").astype(np.float64)
    aa = np.zeros(xa.shape[1])
    bb = np.zeros(xa.shape[1])
    pp = np.full(xa.shape[1], -1e30)
    out = np.empty(xa.shape, np.float64)
    for t in range(xa.shape[0]):
        ww = u + k[t]
        p = np.maximum(pp, ww)
        e1, e2 = np.exp(pp - p), np.exp(ww - p)
        out[t] = (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
        ww = w + pp
        p = np.maximum(ww, k[t])
        e1, e2 = np.exp(ww - p), np.exp(k[t] - p)
        aa, bb, pp = e1 * aa + e2 * v[t], e1 * bb + e2, p
    return lay.linear("att.output.weight", (r * out).astype(_F32))


def _time_mix_v56(lay: _Layer, xa: np.ndarray, n_head: int, v6: bool, decay_exp_done: bool,
                  lora_transposed: bool) -> np.ndarray:
    t_count, c = xa.shape
    n = c // n_head
    prev = _shift(xa)
    if v6:
        sx = prev - xa
        w1, w2 = lay.mat("att.time_maa_w1"), lay.mat("att.time_maa_w2")
        dw1, dw2 = lay.mat("att.time_decay_w1"), lay.mat("att.time_decay_w2")
        if lora_transposed:
            w1, w2, dw1, dw2 = w1.T, w2.transpose(0, 2, 1), dw1.T, dw2.T
        m = np.tanh((xa + sx * lay.vec("att.time_maa_x")) @ w1).reshape(t_count, 5, -1)
        mixes = [m[:, j] @ w2[j] for j in range(5)]
        xw, xk, xv, xr, xg = (xa + sx * (lay.vec(f"att.time_maa_{name}") + mixes[j])
                              for j, name in enumerate("wkvrg"))
        wlog = lay.vec("att.time_decay") + np.tanh(xw @ dw1) @ dw2
        w = np.exp(-np.exp(wlog.astype(np.float64))).reshape(t_count, n_head, n)
    else:
        mix = {m: lay.vec(f"att.time_mix_{m}") for m in "kvrg"}
        xk, xv, xr, xg = (xa * mix[m] + prev * (1 - mix[m]) for m in "kvrg")
        decay = lay.vec("att.time_decay").astype(np.float64)
        w = np.broadcast_to((decay if decay_exp_done else np.exp(-np.exp(decay))).reshape(n_head, n),
                            (t_count, n_head, n))
    r = lay.linear("att.receptance.weight", xr).reshape(t_count, n_head, n).astype(np.float64)
    k = lay.linear("att.key.weight", xk).reshape(t_count, n_head, n).astype(np.float64)
    v = lay.linear("att.value.weight", xv).reshape(t_count, n_head, n).astype(np.float64)
    g = lay.linear("att.gate.weight", xg)
    g = g * _sigmoid(g)
    u = lay.vec("att.time_faaaa").astype(np.float64).reshape(n_head, n)
    state = np.zeros((n_head, n, n))  # [head][key][value]
    y = np.empty((t_count, n_head, n))
    for t in range(t_count):
        a = k[t][:, :, None] * v[t][:, None, :]
        y[t] = np.einsum("hk,hkv->hv", r[t], u[:, :, None] * a + state)
        state = a + w[t][:, :, None] * state
    y = _group_norm(y.reshape(t_count, c).astype(_F32), n_head, lay.vec("att.ln_x.weight"), lay.vec("att.ln_x.bias"))
    return lay.linear("att.output.weight", y * g)


def _time_mix_v7(lay: _Layer, xa: np.ndarray, n_head: int, layer: int, v_first: np.ndarray,
                 lora_transposed: bool) -> np.ndarray:
    t_count, c = xa.shape
    n = c // n_head
    xx = _shift(xa) - xa
    xr, xw, xk, xv, xa_, xg = (xa + xx * lay.vec(f"att.x_{m}") for m in "rwkvag")

    def lora(x: np.ndarray, kind: str, inner: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        a1, a2 = lay.mat(f"att.{kind}1"), lay.mat(f"att.{kind}2")
        if lora_transposed:
            a1, a2 = a1.T, a2.T
        h = x @ a1
        return (inner(h) if inner is not None else h) @ a2

    r = lay.linear("att.receptance.weight", xr)
    w = lora(xw, "w", np.tanh)
    k = lay.linear("att.key.weight", xk)
    v = lay.linear("att.value.weight", xv)
    a = _sigmoid(lay.vec("att.a0") + lora(xa_, "a"))
    g = lora(xg, "g", _sigmoid)
    kk = (k * lay.vec("att.k_k")).reshape(t_count, n_head, n)
    kk = kk / np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)
    k = k * (1 + (a - 1) * lay.vec("att.k_a"))
    if layer == 0:
        v_first[...] = v
    else:
        v = v + (v_first - v) * _sigmoid(lay.vec("att.v0") + lora(xv, "v"))
    decay = np.exp(-0.606531 * _sigmoid(lay.vec("att.w0") + w).astype(np.float64)).reshape(t_count, n_head, n)
    r3 = r.reshape(t_count, n_head, n).astype(np.float64)
    k3 = k.reshape(t_count, n_head, n).astype(np.float64)
    v3 = v.reshape(t_count, n_head, n).astype(np.float64)
    b3 = kk.astype(np.float64) * a.reshape(t_count, n_head, n)
    kk3 = kk.astype(np.float64)
    state = np.zeros((n_head, n, n))  # [head][value][key]
    y = np.empty((t_count, n_head, n))
    for t in range(t_count):
        sa = -np.einsum("hvk,hk->hv", state, kk3[t])
        state = (state * decay[t][:, None, :] + sa[:, :, None] * b3[t][:, None, :]
                 + v3[t][:, :, None] * k3[t][:, None, :])
        y[t] = np.einsum("hvk,hk->hv", state, r3[t])
    y = _group_norm(y.reshape(t_count, c).astype(_F32), n_head, lay.vec("att.ln_x.weight"), lay.vec("att.ln_x.bias"))
    bonus = (r3 * k3 * lay.vec("att.r_k").reshape(n_head, n)).sum(axis=-1, keepdims=True) * v3
    y = y + bonus.reshape(t_count, c).astype(_F32)
    return lay.linear("att.output.weight", (y * g).astype(_F32))


class SequenceForward:
    """The forward pass over a token sequence, one layer at a time: `layer()` runs the next layer (its
    matrix inputs go to `record`), `finish()` the final LayerNorm (the head's input). Holds the hidden
    states of all tokens (T × C float32, and RWKV-7's first-layer values), never more than a layer's weights."""

    def __init__(self, ckpt: Checkpoint, tokens: np.ndarray, weights: _Source | None = None,
                 record: Record | None = None) -> None:
        self.ckpt, self.record = ckpt, record
        self.src = weights if weights is not None else CheckpointWeights(ckpt)
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        x = self.src.get("emb.weight")[tokens].astype(_F32)
        if LN0_FOLDED not in ckpt.transforms and "blocks.0.ln0.weight" in ckpt.tensors:
            x = _ln(x, self.src.get("blocks.0.ln0.weight").reshape(-1), self.src.get("blocks.0.ln0.bias").reshape(-1))
        self.x = x
        self.v_first = np.zeros_like(x)
        self.next_layer = 0

    def layer(self) -> None:
        """Run layer `next_layer` over every token."""
        a, ckpt, i = self.ckpt.arch, self.ckpt, self.next_layer
        if i >= a.n_layer:
            raise IndexError(f"the model has {a.n_layer} layers")
        lay = _Layer(self.src, f"blocks.{i}.", self.record)
        x = self.x
        xa = _ln(x, lay.vec("ln1.weight"), lay.vec("ln1.bias"))
        if a.version == "7":
            x = x + _time_mix_v7(lay, xa, a.n_head, i, self.v_first, V7_LORA_TRANSPOSED in ckpt.transforms)
        elif a.version in ("5.2", "6"):
            x = x + _time_mix_v56(lay, xa, a.n_head, a.version == "6", V5_DECAY_EXP in ckpt.transforms,
                                  V6_LORA_TRANSPOSED in ckpt.transforms)
        else:
            x = x + _time_mix_v4(lay, xa, TIME_DECAY_NEG_EXP in ckpt.transforms)
        self.x = x + _channel_mix(lay, x, a.version == "7", a.version == "6")
        self.next_layer = i + 1

    def finish(self) -> np.ndarray:
        """ln_out of the last layer's output (T, C), recorded as the head's input."""
        x = _ln(self.x, self.src.get("ln_out.weight").reshape(-1), self.src.get("ln_out.bias").reshape(-1))
        if self.record is not None:
            self.record("head.weight", x)
        return x


def final_hidden(ckpt: Checkpoint, tokens: np.ndarray, weights: _Source | None = None, record: Record | None = None,
                 cancel: CancelToken | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """ln_out of the last layer's output for every token (T, C); `record` sees the input of every
    matrix product, the head's included. `weights` defaults to the checkpoint's own tensors."""
    forward = SequenceForward(ckpt, tokens, weights, record)
    n_layer = ckpt.arch.n_layer
    for i in range(n_layer):
        if cancel is not None:
            cancel.raise_if_cancelled()
        forward.layer()
        if progress is not None:
            progress(i + 1, n_layer)
    return forward.finish()


def logits(ckpt: Checkpoint, tokens: np.ndarray, weights: _Source | None = None) -> np.ndarray:
    """Logits (T, V) after each token."""
    src = weights if weights is not None else CheckpointWeights(ckpt)
    return (final_hidden(ckpt, tokens, src) @ src.get("head.weight").T).astype(_F32)
