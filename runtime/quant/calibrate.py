"""`convert --calibrate TEXT`: activation statistics from reading a text with the source model.

The text is tokenized with the model's tokenizer (rwkv.cpp's tiny byte-level models, vocabulary 256
and no tokenizer: one token per byte), cut to token_budget (MAX_TOKENS, or the FFN's width if larger),
and read by the numpy forward pass (runtime.quant.forward_np) over the source's float weights. For
every matrix the importance of input column j is the mean of x_j² over the tokens, as llama.cpp's
imatrix; a column the text never activates gets a floor of FLOOR × the matrix's mean importance
instead of 0 (with 0, ggml's weighted search can zero a whole block that other texts do use).
runtime.quant.weighted uses them when choosing scales and rounding; the mean x·xᵀ of each matrix's
input lets runtime.quant.gptq carry rounding errors over to the columns not quantized yet.

The statistics are measured a layer at a time, as the conversion reaches each layer (LayerStatistics):
float64 x·xᵀ of every matrix's input would take 15 GB at 1.5B (24 layers, each 4 of 2048² and an FFN
value of 8192²), one layer's take 0.6 GB, and the forward pass keeps only the hidden states of the
tokens between layers (T × C float32); a matrix's input is added to its statistics RECORD_ROWS
tokens at a time (8192 tokens × 8192 in float64 would be 0.5 GB more).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import RwkvError
from runtime.formats.checkpoint import Checkpoint
from runtime.progress import CancelToken, Progress, ProgressCallback, no_progress
from runtime.quant.forward_np import SequenceForward

MAX_TOKENS = 4096  # tokens read at most, or the FFN's width if larger (token_budget)
RECORD_ROWS = 2048  # tokens whose float64 copy is made at a time when recording a matrix's input
FLOOR = 1e-3
BYTE_VOCAB = 256


class CalibrationError(RwkvError, ValueError):
    """The calibration text cannot be used (missing, empty, not UTF-8, no tokenizer)."""


@dataclass(frozen=True)
class Calibration:
    """The statistics of each matrix's input (by BlinkDL name) on a text, and what the text was."""

    statistics: LayerStatistics
    text_name: str
    text_sha256: str
    n_tokens: int


def read_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(text, sha256 of its bytes) of a calibration text file; CalibrationError if unusable."""
    p = Path(path)
    if not p.is_file():
        problem = "is not a file" if p.exists() else "not found"
        raise CalibrationError(f"calibration text {p} {problem}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(f"calibration text {p} is not UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise CalibrationError(f"calibration text {p} is empty: give a few thousand words of representative text")
    return text, hashlib.sha256(raw).hexdigest()


def token_budget(ckpt: Checkpoint) -> int:
    """How many tokens of the text are read: MAX_TOKENS, or the model's FFN width if larger.

    The FFN value's input (n_ffn wide) is the widest a matrix has; from fewer tokens than that its
    second moments cannot have full rank, and error feedback fits directions other texts do use
    (random RWKV-7 of 1.5B width, FFN 8192, Q4_K_M, KL on a held-out text ÷ uncalibrated: 1016
    tokens 0.89, 4096 0.83, 8192 0.79). Narrower models keep MAX_TOKENS."""
    return max(MAX_TOKENS, int(ckpt.arch.n_ffn))


def tokens_for(ckpt: Checkpoint, text: str) -> np.ndarray:
    """The model's token ids of `text` (at most token_budget(ckpt))."""
    from runtime.text.gguf_vocab import tokenizer_for_metadata, tokenizer_name_for_metadata

    n_vocab = ckpt.arch.n_vocab
    if tokenizer_name_for_metadata(ckpt.metadata, n_vocab) == "none":
        if n_vocab != BYTE_VOCAB:
            raise CalibrationError(
                f"{ckpt.path}: no known tokenizer for a vocabulary of {n_vocab} tokens, so the calibration "
                "text cannot be read; convert without --calibrate"
            )
        ids = list(text.encode("utf-8"))
    else:
        ids = [int(i) for i in tokenizer_for_metadata(ckpt.metadata, n_vocab).encode(text)]
    if len(ids) < 2:
        raise CalibrationError("the calibration text is too short: it gives fewer than 2 tokens")
    return np.asarray(ids[: token_budget(ckpt)], np.int64)


def layer_of(name: str, n_layer: int) -> int | None:
    """The layer whose pass reads matrix `name`'s input (n_layer for the head), None for other tensors."""
    if name == "head.weight":
        return n_layer
    if name.startswith("blocks."):
        index = name.split(".", 2)[1]
        if index.isdigit():
            return int(index)
    return None


class LayerStatistics:
    """Importance and second moments of each matrix's input, measured layer by layer when asked for.

    `of(name)` runs the forward pass through the matrix's layer (the head: to the end) if it has not
    got there yet and gives (importance, mean x·xᵀ or None). A layer's second moments are kept until
    the pass moves on, so asking in the model's order (as convert writes tensors) holds one layer's
    at a time; asking for a layer the pass has left starts it again from the embedding. Second moments
    are measured for the matrices `wants_moments` accepts (default: all)."""

    def __init__(self, ckpt: Checkpoint, tokens: np.ndarray, *, progress: ProgressCallback = no_progress,
                 cancel: CancelToken | None = None, wants_moments: Callable[[str], bool] | None = None) -> None:
        self.ckpt, self.tokens, self.cancel = ckpt, np.asarray(tokens, np.int64), cancel
        self._progress = progress
        self._wants_moments = wants_moments if wants_moments is not None else lambda _name: True
        self._importance: dict[str, np.ndarray] = {}
        self._moments: dict[str, np.ndarray] = {}
        self._sums: dict[str, np.ndarray] = {}
        self._forward: SequenceForward | None = None
        self._done = -1  # the last layer measured (n_layer: the head's input too)

    def of(self, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(importance, second moments) of matrix `name`'s input; (None, None) for a tensor no matrix
        product reads (the embedding)."""
        n_layer = self.ckpt.arch.n_layer
        layer = layer_of(name, n_layer)
        if layer is None:
            return None, None
        if layer < self._done or self._forward is None:
            self._restart()
        while self._done < layer:
            self._step()
        return self._importance.get(name), self._moments.get(name)

    def all_importance(self) -> dict[str, np.ndarray]:
        """The importance of every matrix's input (runs the pass to the end)."""
        self.of("head.weight")
        return dict(self._importance)

    def _restart(self) -> None:
        self._forward = SequenceForward(self.ckpt, self.tokens, record=self._record)
        self._done = -1

    def _step(self) -> None:
        """Measure the next layer (after the last, the head's input), dropping the previous one's moments."""
        assert self._forward is not None
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        self._moments.clear()
        self._sums.clear()
        n_layer = self.ckpt.arch.n_layer
        if self._done + 1 < n_layer:
            self._forward.layer()
            self._progress(Progress("calibrating", self._done + 2, n_layer, "layers"))
        else:
            self._forward.finish()
        self._done += 1
        n = len(self.tokens)
        for name, s in self._sums.items():
            self._importance[name] = _importance(self.ckpt, name, s / n)
        for h in self._moments.values():
            h /= n

    def _record(self, name: str, rows: np.ndarray) -> None:
        for start in range(0, len(rows), RECORD_ROWS):
            x = rows[start : start + RECORD_ROWS].astype(np.float64)
            sq = np.square(x).sum(axis=0)
            self._sums[name] = self._sums[name] + sq if name in self._sums else sq
            if self._wants_moments(name):
                if name in self._moments:
                    self._moments[name] += x.T @ x
                else:
                    self._moments[name] = x.T @ x


def _importance(ckpt: Checkpoint, name: str, mean: np.ndarray) -> np.ndarray:
    """The mean squares of a matrix's input columns, floored (see the module's docstring)."""
    if not np.isfinite(mean).all():
        raise CalibrationError(f"{ckpt.path}: the activations entering '{name}' are not finite on this text")
    floor = FLOOR * float(mean.mean()) if mean.any() else 1.0
    return np.maximum(mean, floor).astype(np.float32)


def collect_importance(ckpt: Checkpoint, tokens: np.ndarray, *, progress: ProgressCallback = no_progress,
                       cancel: CancelToken | None = None) -> dict[str, np.ndarray]:
    """Mean x² per input column of every matrix the model multiplies by, over `tokens`."""
    stats = LayerStatistics(ckpt, tokens, progress=progress, cancel=cancel, wants_moments=lambda _name: False)
    return stats.all_importance()


def calibrate(ckpt: Checkpoint, text_path: str | os.PathLike[str], *, progress: ProgressCallback = no_progress,
              cancel: CancelToken | None = None, wants_moments: Callable[[str], bool] | None = None) -> Calibration:
    """Read and tokenize `text_path` for `ckpt`; its statistics are measured as `statistics.of` asks."""
    text, digest = read_text(text_path)
    tokens = tokens_for(ckpt, text)
    stats = LayerStatistics(ckpt, tokens, progress=progress, cancel=cancel, wants_moments=wants_moments)
    return Calibration(stats, Path(text_path).name, digest, len(tokens))
