"""Per-position quality figures of a model's logits against a reference's, accumulated in float64.

For each scored position t (the logits after feeding tokens[0..t], which predict tokens[t+1]):

    log p   = log_softmax(logits)                       float64, max-subtracted
    nll_t   = -log p_model[tokens[t+1]]                 -> perplexity = exp(mean nll)
    KL_t    = sum_v p_ref(v) · (log p_ref(v) - log p_model(v))   KL(reference ‖ model), >= 0
    top-1   = argmax logits_model == argmax logits_ref
    max |Δ| = max over positions and vocabulary of |logit_model - logit_ref|

The logits arrive as float32 from the runtime; the log-softmax is done in float64 because a KL of
1e-6 (an F16 file) is a sum of 50k terms whose float32 rounding error is of the same size. This is
a measuring tool, not the per-token path of chat, and the extra cost is ~0.1 ms per position.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of `logits` (…, V) in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class Scores:
    """Accumulates the figures of one model over chunks of positions."""

    def __init__(self) -> None:
        self._nll: list[np.ndarray] = []
        self._kl: list[np.ndarray] = []
        self._top1 = 0
        self._max_diff = 0.0
        self.positions = 0

    def add(self, logits: np.ndarray, targets: np.ndarray, ref_logits: np.ndarray | None = None) -> None:
        """Score rows of `logits` (K, V) whose next tokens are `targets` (K,), against `ref_logits` (K, V).

        Without `ref_logits` only the perplexity is accumulated (the reference itself).
        """
        logits = np.asarray(logits)
        targets = np.asarray(targets, dtype=np.int64)
        if logits.shape[0] == 0:
            return
        lp = log_softmax(logits)
        self._nll.append(-lp[np.arange(len(targets)), targets])
        if ref_logits is not None:
            ref_logits = np.asarray(ref_logits)
            lr = log_softmax(ref_logits)
            kl = (np.exp(lr) * (lr - lp)).sum(axis=-1)
            self._kl.append(np.maximum(kl, 0.0))  # >= 0 exactly; rounding can give -1e-17
            self._top1 += int((logits.argmax(axis=-1) == ref_logits.argmax(axis=-1)).sum())
            diff = np.abs(logits.astype(np.float64) - ref_logits.astype(np.float64)).max()
            self._max_diff = max(self._max_diff, float(diff))
        self.positions += logits.shape[0]

    @property
    def perplexity(self) -> float:
        return float(np.exp(np.concatenate(self._nll).mean())) if self._nll else float("nan")

    @property
    def kl_values(self) -> np.ndarray:
        return np.concatenate(self._kl) if self._kl else np.zeros(0)

    @property
    def kl_mean(self) -> float:
        kl = self.kl_values
        return float(kl.mean()) if kl.size else float("nan")

    @property
    def kl_p99(self) -> float:
        """99th percentile of the per-position KL (numpy's linear interpolation between ranks)."""
        kl = self.kl_values
        return float(np.percentile(kl, 99)) if kl.size else float("nan")

    @property
    def top1(self) -> float:
        """Fraction of positions where the model's most likely token is the reference's."""
        n = self.kl_values.size
        return self._top1 / n if n else float("nan")

    @property
    def max_logit_diff(self) -> float:
        return self._max_diff if self._kl else float("nan")
